#!/usr/bin/env bash
# Build a real Kubernetes control plane for tests from the Go module proxy:
# kube-apiserver, kubectl, kube-controller-manager, kube-scheduler and etcd, and the node's
# kubelet and kube-proxy (one wrapper module over k8s.io/kubernetes, whose staging modules are
# replaced by their published versions), CoreDNS (the local node's DNS, hack/cluster-up.sh), helm (its own wrapper module), KubeRay's operator (ray-operator) and KWOK (nodes
# and pod status without kubelets) from their own modules; and fetch KubeRay's CRDs
# (RayCluster, RayJob, RayService) and the operator's ClusterRole from the KubeRay module and
# the prometheus-operator CRDs the chart's monitoring objects use (ServiceMonitor, PodMonitor,
# PrometheusRule) from the prometheus-operator Go module, and the Gateway API's CRDs from
# sigs.k8s.io/gateway-api (hack/fetch-gateway-api-crds.sh).
#
# Idempotent: a binary whose stamped version already matches is not rebuilt. Output goes
# to .tools/ (git-ignored). Go's module and build caches (GOMODCACHE, GOCACHE) make a
# second run on the same machine fast; nothing depends on them being there.
#
# Usage: hack/build-control-plane.sh [--force]
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"     # one pinned Kubernetes minor (1.34)
HELM_VERSION="${HELM_VERSION:-v3.19.5}"    # built against k8s.io/* v0.34
KUBERAY_VERSION="${KUBERAY_VERSION:-v1.4.2}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"       # built against k8s.io/* v0.33
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SHOAL_TOOLS_DIR:-$root/.tools}"
bin="$tools/bin"
work="$tools/src"
mkdir -p "$bin" "$work" "$tools/crds" "$tools/kuberay"

force=0
[[ "${1:-}" == "--force" ]] && force=1

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { printf '[control-plane] %s\n' "$*" >&2; }

k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"

have_version() {  # have_version BINARY EXPECTED-SUBSTRING VERSION-ARGS...
  local b="$1" want="$2"; shift 2
  [[ $force -eq 0 && -x "$bin/$b" ]] || return 1
  local out
  out="$("$bin/$b" "$@" 2>&1)" || return 1
  [[ "$out" == *"$want"* ]]
}

stamped() {  # stamped BINARY VERSION: built, and its stamp file (.tools/bin/.BINARY-version) says VERSION
  [[ $force -eq 0 && -x "$bin/$1" && "$(cat "$bin/.$1-version" 2>/dev/null)" == "$2" ]]
}

#: The Kubernetes commands the wrapper module builds (its .version stamp lists them).
K8S_COMMANDS="kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy"

build_k8s() {
  local mod="$work/k8s"
  mkdir -p "$mod"
  if [[ ! -f "$mod/go.mod" || "$(cat "$mod/.version" 2>/dev/null)" != "$K8S_VERSION $K8S_COMMANDS" ]]; then
    log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION"
    rm -rf "$mod"; mkdir -p "$mod/cmd/etcd"
    (cd "$mod" && go mod init shoal.dev/hack/k8s >/dev/null 2>&1)
    cat >"$mod/cmd/etcd/main.go" <<'GO'
// Command etcd runs etcd's server through etcdmain, the same entry point as upstream.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    cat >"$mod/tools.go" <<'GO'
//go:build tools

// Package tools keeps the Kubernetes commands in this module's dependency graph.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    local gomod
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    local args=()
    while read -r name; do
      args+=("-replace=$name=$name@$staging_version")
    done < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
    log "replacing ${#args[@]} staging modules with $staging_version"
    (cd "$mod" && go mod edit "${args[@]}" && go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 \
       && etcd_v="$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)" \
       && go get "go.etcd.io/etcd/server/v3@$etcd_v" && go mod tidy)
    echo "$K8S_VERSION $K8S_COMMANDS" >"$mod/.version"
  fi
  local git_commit="0000000000000000000000000000000000000000"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
    ld+=" -X $pkg.gitCommit=$git_commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  if ! have_version kube-apiserver "$K8S_VERSION" --version; then
    log "building kube-apiserver $K8S_VERSION (a cold build takes 10-25 minutes on 2 cores)"
    (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  fi
  if ! have_version kubectl "$K8S_VERSION" version --client; then
    log "building kubectl $K8S_VERSION"
    (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl)
  fi
  # Garbage collection, Endpoints/EndpointSlices and scheduling, for the tests that run
  # KubeRay's controller (its pods need nodes, its children need the garbage collector).
  # kubelet and kube-proxy: the real node of hack/cluster-up.sh (the e2e tests).
  local cmd
  for cmd in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if ! have_version "$cmd" "$K8S_VERSION" --version; then
      log "building $cmd $K8S_VERSION"
      (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
    fi
  done
  local etcd_v
  etcd_v="$(cd "$mod" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
  if ! have_version etcd "${etcd_v#v}" --version; then
    log "building etcd $etcd_v"
    (cd "$mod" && go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.Version=${etcd_v#v}" \
       -o "$bin/etcd" ./cmd/etcd)
  fi
}

build_helm() {
  if have_version helm "$HELM_VERSION" version --short; then return; fi
  local mod="$work/helm"
  rm -rf "$mod"; mkdir -p "$mod"
  log "building helm $HELM_VERSION"
  (cd "$mod" && go mod init shoal.dev/hack/helm >/dev/null 2>&1 \
     && printf '//go:build tools\n\npackage tools\n\nimport _ "helm.sh/helm/v3/cmd/helm"\n' >tools.go \
     && go get "helm.sh/helm/v3@$HELM_VERSION" >/dev/null 2>&1 && go mod tidy \
     && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
          -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
}

fetch_kuberay_crds() {
  # All three: KubeRay's RayService controller fails with 'no matches for kind "RayCluster"'
  # without the RayCluster CRD. The operator's ClusterRole goes beside them, for the tests
  # that run it under its own identity.
  local stamp="$tools/crds/.kuberay-version"
  if [[ $force -eq 0 && -s "$tools/crds/ray.io_rayclusters.yaml" && -s "$tools/kuberay/role.yaml" \
        && "$(cat "$stamp" 2>/dev/null)" == "$KUBERAY_VERSION" ]]; then
    return
  fi
  log "fetching KubeRay CRDs from github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION"
  local dir kind
  dir="$(cd "$work" && go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
         | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  for kind in rayclusters rayjobs rayservices; do
    cp "$dir/config/crd/bases/ray.io_$kind.yaml" "$tools/crds/"
    chmod 0644 "$tools/crds/ray.io_$kind.yaml"
  done
  cp "$dir/config/rbac/role.yaml" "$tools/kuberay/role.yaml"
  chmod 0644 "$tools/kuberay/role.yaml"
  echo "$KUBERAY_VERSION" >"$stamp"
}

build_kuberay_operator() {
  # KubeRay's operator as released: its module has no replace directives, so go install
  # builds it from the proxy as is. No version flag: a stamp file says what was built.
  if stamped ray-operator "$KUBERAY_VERSION"; then return; fi
  log "building KubeRay's ray-operator $KUBERAY_VERSION (a cold build takes 3-6 minutes on 2 cores)"
  (cd "$work" && GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
     "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION")
  echo "$KUBERAY_VERSION" >"$bin/.ray-operator-version"
}

build_coredns() {
  # The local node's DNS (hack/cluster-up.sh); its module builds with go install as released.
  if have_version coredns "CoreDNS-${COREDNS_VERSION#v}" -version; then return; fi
  log "building CoreDNS $COREDNS_VERSION (a cold build takes 3-4 minutes on 2 cores)"
  (cd "$work" && GOBIN="$bin" go install -trimpath -ldflags "-s -w" \
     "github.com/coredns/coredns@$COREDNS_VERSION")
}

build_kwok() {
  # KWOK plays the kubelets: it gives the test's Node objects a Ready status and the pods
  # scheduled onto them a Running status, a pod IP and Ready conditions.
  if stamped kwok "$KWOK_VERSION"; then return; fi
  log "building kwok $KWOK_VERSION"
  (cd "$work" && GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
  echo "$KWOK_VERSION" >"$bin/.kwok-version"
}

fetch_monitoring_crds() {
  # A folder of their own: the test control plane installs every CRD in crds/, these only
  # where a test asks for them.
  local out="$tools/crds/monitoring" stamp="$tools/crds/monitoring/.prometheus-operator-version"
  if [[ $force -eq 0 && "$(cat "$stamp" 2>/dev/null)" == "$PROMETHEUS_OPERATOR_VERSION" ]]; then
    return
  fi
  log "fetching monitoring CRDs from github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
  local dir kind
  dir="$(cd "$work" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
         | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  mkdir -p "$out"
  for kind in servicemonitors podmonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$out/"
    chmod 0644 "$out/monitoring.coreos.com_$kind.yaml"
  done
  echo "$PROMETHEUS_OPERATOR_VERSION" >"$stamp"
}

fetch_kuberay_crds
fetch_monitoring_crds
"$root/hack/fetch-gateway-api-crds.sh" $([[ $force -eq 1 ]] && echo --force)
build_k8s
build_helm
build_kuberay_operator
build_kwok
build_coredns
log "ready in $bin: $(ls "$bin" | tr '\n' ' ')"
