#!/usr/bin/env bash
# Build a real Kubernetes control plane for tests from the Go module proxy:
# kube-apiserver, kubectl and etcd (one wrapper module over k8s.io/kubernetes, whose
# staging modules are replaced by their published versions), helm (its own wrapper
# module), and fetch the KubeRay RayService CRD from the KubeRay Go module and the
# prometheus-operator CRDs the chart's monitoring objects use (ServiceMonitor, PodMonitor,
# PrometheusRule) from the prometheus-operator Go module.
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
PROMETHEUS_OPERATOR_VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="${SHOAL_TOOLS_DIR:-$root/.tools}"
bin="$tools/bin"
work="$tools/src"
mkdir -p "$bin" "$work" "$tools/crds"

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

build_k8s() {
  local mod="$work/k8s"
  mkdir -p "$mod"
  if [[ ! -f "$mod/go.mod" || "$(cat "$mod/.version" 2>/dev/null)" != "$K8S_VERSION" ]]; then
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
	_ "k8s.io/kubernetes/cmd/kubectl"
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
    echo "$K8S_VERSION" >"$mod/.version"
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

fetch_kuberay_crd() {
  local out="$tools/crds/ray.io_rayservices.yaml"
  if [[ $force -eq 0 && -s "$out" && "$(cat "$tools/crds/.kuberay-version" 2>/dev/null)" == "$KUBERAY_VERSION" ]]; then
    return
  fi
  log "fetching RayService CRD from github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION"
  local dir
  dir="$(cd "$work" && go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
         | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  cp "$dir/config/crd/bases/ray.io_rayservices.yaml" "$out"
  chmod 0644 "$out"
  echo "$KUBERAY_VERSION" >"$tools/crds/.kuberay-version"
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

fetch_kuberay_crd
fetch_monitoring_crds
build_k8s
build_helm
log "ready in $bin: $(ls "$bin" | tr '\n' ' ')"
