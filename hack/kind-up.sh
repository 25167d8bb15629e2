#!/usr/bin/env bash
# Shoal on a local kind cluster, from nothing to an OpenAI-compatible endpoint:
#   1. create a kind cluster (kept if it exists);
#   2. build the operator and serving images (operator/Dockerfile, serving/Dockerfile) and
#      load them into the cluster;
#   3. install KubeRay's operator (its Helm chart, pinned);
#   4. install Shoal's chart (charts/shoal) with the local images;
#   5. apply the example fleet and wait until it is Ready;
#   6. print the endpoint and how to call it.
# Needs Docker, kind, kubectl and helm (kubectl and helm from .tools/bin when built there).
# The quickstart fleet runs three tiny llama.cpp models on CPU: a laptop with 4 CPUs and
# 8 GiB for Docker is enough. Undo with hack/kind-down.sh.
#
# Usage: hack/kind-up.sh [--name NAME] [--fleet FILE] [--no-build] [--timeout DURATION]
#   --name      kind cluster name (default: shoal, or $KIND_CLUSTER)
#   --fleet     fleet manifest to apply (default: examples/quickstart.yaml)
#   --no-build  use shoal-operator:dev and shoal-serving:dev as they are in Docker
#   --timeout   how long to wait for the fleet to be Ready (default: 20m)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
self="$root/hack/$(basename "$0")"
cd "$root"

cluster="${KIND_CLUSTER:-shoal}"
fleet_file="examples/quickstart.yaml"
build=1
timeout="20m"
kuberay_version="${KUBERAY_VERSION:-1.4.2}"
tag="${SHOAL_IMAGE_TAG:-dev}"
shoal_ns="shoal-system"
fleet_ns="${FLEET_NAMESPACE:-default}"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$self"; }
while (($#)); do
  case "$1" in
    --name) cluster="$2"; shift 2 ;;
    --fleet) fleet_file="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '\n[kind-up] %s\n' "$*" >&2; }
tool() {  # tool NAME: the built one in .tools/bin, else the one on PATH
  if [[ -x "$root/.tools/bin/$1" ]]; then echo "$root/.tools/bin/$1"
  elif command -v "$1" >/dev/null; then command -v "$1"
  else echo "missing $1: install it (or run hack/build-control-plane.sh for kubectl and helm)" >&2; exit 1
  fi
}
for t in docker kind; do
  command -v "$t" >/dev/null || { echo "missing $t: install it first" >&2; exit 1; }
done
kubectl_bin="$(tool kubectl)"
helm_bin="$(tool helm)"
context="kind-$cluster"
k() { "$kubectl_bin" --context "$context" "$@"; }
h() { "$helm_bin" --kube-context "$context" "$@"; }
[[ -f "$fleet_file" ]] || { echo "no such fleet manifest: $fleet_file" >&2; exit 1; }

# 1. The cluster.
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster '$cluster' exists; reusing it"
else
  log "creating kind cluster '$cluster'"
  kind create cluster --name "$cluster" --wait 180s
fi

# 2. The images.
operator_image="shoal-operator:$tag"
serving_image="shoal-serving:$tag"
if ((build)); then
  log "building $operator_image and $serving_image"
  docker build -f operator/Dockerfile -t "$operator_image" .
  docker build -f serving/Dockerfile -t "$serving_image" .
fi
log "loading the images into '$cluster'"
kind load docker-image --name "$cluster" "$operator_image" "$serving_image"

# 3. KubeRay.
log "installing KubeRay $kuberay_version"
h repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
h upgrade --install kuberay-operator kuberay/kuberay-operator --version "$kuberay_version" \
  --namespace kuberay-system --create-namespace --wait --timeout 10m

# 4. Shoal.
log "installing Shoal's chart"
# shellcheck source=lib/shoal-chart.sh
source "$root/hack/lib/shoal-chart.sh"
shoal_chart_install "$shoal_ns" shoal-operator "$tag" "$serving_image"

# 5. The fleet.
log "applying $fleet_file"
k create namespace "$fleet_ns" --dry-run=client -o yaml | k apply -f - >/dev/null
applied="$(k apply -n "$fleet_ns" -f "$fleet_file" -o name)"
echo "$applied"
fleet="$(printf '%s\n' "$applied" | sed -n 's#^modelfleet\.shoal\.dev/##p' | head -n 1)"
[[ -n "$fleet" ]] || { echo "$fleet_file declares no ModelFleet" >&2; exit 1; }
log "waiting up to $timeout for fleet '$fleet' to be Ready (images pull, Ray starts, models load)"
if ! k -n "$fleet_ns" wait --for=condition=Ready "modelfleet/$fleet" --timeout "$timeout"; then
  k -n "$fleet_ns" describe modelfleet "$fleet" >&2 || true
  k -n "$fleet_ns" get rayservice,pods -l "shoal.dev/fleet=$fleet" >&2 || true
  exit 1
fi

# 6. The endpoint.
endpoint="$(k -n "$fleet_ns" get modelfleet "$fleet" -o jsonpath='{.status.endpoint}')"
k -n "$fleet_ns" get modelfleet "$fleet"
cat <<MSG

Fleet '$fleet' is Ready. Its endpoint inside the cluster: $endpoint

From this machine:
  $kubectl_bin --context $context -n $fleet_ns port-forward svc/$fleet 8000:8000
  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "auto", "messages": [{"role": "user", "content": "What is 6 times 7?"}]}'

Tear down with: hack/kind-down.sh --name $cluster
MSG
