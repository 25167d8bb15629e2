#!/usr/bin/env bash
# Delete the kind cluster hack/kind-up.sh created (and everything in it).
#
# Usage: hack/kind-down.sh [--name NAME]   (default: shoal, or $KIND_CLUSTER)
set -euo pipefail

cluster="${KIND_CLUSTER:-shoal}"
while (($#)); do
  case "$1" in
    --name) cluster="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

command -v kind >/dev/null || { echo "missing kind" >&2; exit 1; }
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind delete cluster --name "$cluster"
else
  echo "no kind cluster named '$cluster'" >&2
fi
