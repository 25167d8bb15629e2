#!/usr/bin/env bash
# Fetch the Gateway API's standard-channel CRDs (GatewayClass, Gateway, HTTPRoute, GRPCRoute,
# ReferenceGrant) from its Go module, sigs.k8s.io/gateway-api, into .tools/crds/gateway-api/.
# A folder of their own: the test control plane installs every CRD in .tools/crds/, these
# only where a test asks for them (the fleet's optional HTTPRoute).
#
# Idempotent: a stamp file names the version fetched. Called by hack/build-control-plane.sh;
# runs on its own too.
#
# Usage: hack/fetch-gateway-api-crds.sh [--force]
set -euo pipefail

GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.2.1}"

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SHOAL_TOOLS_DIR:-$root/.tools}"
out="$tools/crds/gateway-api"
stamp="$out/.gateway-api-version"

force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ $force -eq 0 && "$(cat "$stamp" 2>/dev/null)" == "$GATEWAY_API_VERSION" ]]; then
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
printf '[control-plane] fetching Gateway API CRDs from sigs.k8s.io/gateway-api@%s\n' \
  "$GATEWAY_API_VERSION" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dir="$(cd "$work" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
       | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[[ -d "$dir/config/crd/standard" ]] || { echo "no config/crd/standard in $dir" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out"/*.yaml
for f in "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
  cp "$f" "$out/"
  chmod 0644 "$out/$(basename "$f")"
done
echo "$GATEWAY_API_VERSION" >"$stamp"
