# shellcheck shell=bash
# Shared by hack/kind-up.sh and hack/cluster-up.sh: install (or upgrade) Shoal's chart with
# images that were loaded into the cluster, and wait for the operator to roll out.
#
# The caller defines h (helm with its kube context) and k (kubectl with its kube context).
#
# Usage: shoal_chart_install NAMESPACE OPERATOR_REPOSITORY TAG SERVING_IMAGE [HELM ARGS...]

shoal_chart_install() {
  local ns="$1" repository="$2" tag="$3" serving_image="$4"
  shift 4
  local chart
  chart="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../charts/shoal" && pwd)"
  h upgrade --install shoal "$chart" --namespace "$ns" --create-namespace \
    --set image.repository="$repository" --set image.tag="$tag" --set image.pullPolicy=Never \
    --set serving.image="$serving_image" --set serving.gpuImage="$serving_image" \
    "$@" --wait --timeout 5m
  k -n "$ns" rollout status deployment/shoal --timeout 5m
}
