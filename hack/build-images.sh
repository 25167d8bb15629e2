#!/usr/bin/env bash
# Build Shoal's container images from the repository's own Dockerfiles, and KubeRay's operator
# image from its Go module, into docker-archive tars that a node imports (`ctr images import`,
# `docker load`, `kind load image-archive`):
#   localhost/shoal-operator:dev              operator/Dockerfile
#   localhost/shoal-serving:dev               serving/Dockerfile (Ray Serve, llama.cpp, the
#                                              model packages of hack/requirements-models.txt)
#   localhost/kuberay-operator:<version>      the ray-operator binary (hack/build-control-plane.sh
#                                              builds it into .tools/bin), non-root, from scratch
# Docker builds them when a Docker daemon answers; buildah (daemonless) otherwise: the same
# Dockerfiles either way.
#
# Base image: by default a Debian bookworm made here with mmdebstrap (minbase with Python,
# python3-venv, CA certificates, procps, wget, libgomp1), passed to the Dockerfiles as their
# base build argument, so that no image registry is needed. SHOAL_IMAGE_BASE=public builds
# from the Dockerfiles' own defaults (python:3.11-slim-bookworm from Docker Hub).
#
# Archives are cached under ${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}/images/, named by a hash of
# their inputs (Dockerfile, sources, requirement lists, base image): an archive whose inputs are
# unchanged is not rebuilt. Slow steps are cached apart: the mmdebstrap rootfs (keyed by its
# package list), the image layers (buildah --layers / Docker's build cache: the Python
# dependencies and the llama.cpp build sit in layers below the one that copies src/, so a
# source change rebuilds only that thin layer) and pip's download cache (a build cache mount).
#
# stdout: the archives' paths, one a line (operator, serving, KubeRay); progress goes to stderr.
#
# Usage: hack/build-images.sh [operator] [serving] [kuberay]   (default: all three)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

KUBERAY_VERSION="${KUBERAY_VERSION:-v1.4.2}"
TAG="${SHOAL_IMAGE_TAG:-dev}"
cache="${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}/images"
tools_bin="${SHOAL_TOOLS_DIR:-$root/.tools}/bin"
mkdir -p "$cache"

# Debian suite and packages of the local base image. wget: KubeRay's default probes run it in
# the Ray container; procps: `ray stop` and people debugging; libgomp1: llama.cpp's OpenMP.
DEBIAN_SUITE=bookworm
BASE_PACKAGES="python3,python3-venv,ca-certificates,procps,wget,libgomp1"

targets=("$@")
((${#targets[@]})) || targets=(operator serving kuberay)
for t in "${targets[@]}"; do
  [[ $t == operator || $t == serving || $t == kuberay ]] || die "unknown image '$t' (operator, serving, kuberay)"
done

# --- the builder ------------------------------------------------------------------------------
if [[ -n "${SHOAL_IMAGE_BUILDER:-}" ]]; then
  builder="$SHOAL_IMAGE_BUILDER"
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  builder=docker
elif command -v buildah >/dev/null; then
  builder=buildah
else
  die "neither a Docker daemon nor buildah (apt-get install buildah) is available"
fi
[[ $builder == docker || $builder == buildah ]] || die "SHOAL_IMAGE_BUILDER must be docker or buildah"
log "building with $builder"

# Hash of files (paths relative to the repository root), in order; a missing file hashes as absent.
hash_files() {
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then printf '%s %s\n' "$f" "$(sha256sum <"$f" | cut -c1-64)"; else printf '%s absent\n' "$f"; fi
  done | sha256sum | cut -c1-16
}
# The files a Dockerfile's context sends (its .dockerignore: pyproject, README, src/ without
# devtools and caches, and the hack/requirements-*.txt it names).
context_files() {
  printf '%s\n' pyproject.toml README.md "$@"
  find src -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path 'src/shoal/devtools/*' \
    ! -path '*.egg-info/*' | LC_ALL=C sort
}

# Write image $1 (a name in the builder's store) to archive $2, atomically.
save_archive() {
  local image="$1" archive="$2" tmp="$2.tmp.$$"
  rm -f "$tmp"
  if [[ $builder == docker ]]; then
    docker save -o "$tmp" "$image"
  else
    buildah push -q "$image" "docker-archive:$tmp:$image" >/dev/null
  fi
  mv "$tmp" "$archive"
}

# Remove the older archives of an image (name prefix $1), keeping $2: one archive an image.
prune() {
  local old
  for old in "$cache/$1"*.tar; do
    [[ -e $old && $old != "$2" ]] && rm -f "$old"
  done
  return 0
}

# Remove image ID $1, the build that tag $2 named before this one, once the tag has moved on:
# each source change would otherwise leave a whole untagged image (1-2 GiB) in the builder's
# store. The layers the new build shares with it stay (they belong to the new image too).
forget_image() {
  local old="$1" image="$2" now
  [[ -n $old ]] || return 0
  if [[ $builder == docker ]]; then
    now="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    [[ $old == "$now" ]] || docker image rm "$old" >/dev/null 2>&1 || true
  else
    now="$(buildah inspect --type image -f '{{.FromImageID}}' "$image" 2>/dev/null || true)"
    [[ $old == "$now" ]] || buildah rmi "$old" >/dev/null 2>&1 || true
  fi
  return 0
}

# --- the base image (mmdebstrap) -------------------------------------------------------------
base_args=()
base_image() {
  if [[ "${SHOAL_IMAGE_BASE:-local}" == public ]]; then
    log "base: the Dockerfiles' defaults (python:3.11-slim-bookworm)"
    base_ref=public
    return
  fi
  # The rootfs trusts the CA certificates this machine adds (/usr/local/share/ca-certificates,
  # e.g. a company proxy's), so that pip inside the build reaches PyPI as the host does.
  local extra_cas=()
  mapfile -t extra_cas < <(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | LC_ALL=C sort)
  local key
  key="$( (echo "$DEBIAN_SUITE $BASE_PACKAGES v1"; cat "${extra_cas[@]}" /dev/null) | sha256sum | cut -c1-16)"
  local rootfs="$cache/base-$DEBIAN_SUITE-$key.tar" name="localhost/shoal-base:$key"
  base_ref="$name"
  base_args=(--build-arg "PYTHON_IMAGE=$name" --build-arg "BASE_IMAGE=$name")
  if [[ ! -s $rootfs ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"
    log "base: mmdebstrap $DEBIAN_SUITE minbase + $BASE_PACKAGES (a few minutes, once)"
    local start=$SECONDS
    # The hooks run in mmdebstrap's shell, with the rootfs as $1.
    # shellcheck disable=SC2016
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --customize-hook='for c in '"${extra_cas[*]:-}"'; do cp "$c" "$1/usr/local/share/ca-certificates/"; done' \
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      "$DEBIAN_SUITE" "$rootfs.tmp.tar" >&2
    mv "$rootfs.tmp.tar" "$rootfs"
    log "base: rootfs in $((SECONDS - start)) s ($(du -m "$rootfs" | cut -f1) MiB)"
  fi
  if [[ $builder == docker ]]; then
    docker image inspect "$name" >/dev/null 2>&1 || docker import "$rootfs" "$name" >/dev/null
  elif ! buildah inspect --type image "$name" >/dev/null 2>&1; then
    local ctr
    ctr="$(buildah from scratch)"
    buildah add "$ctr" "$rootfs" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/bash "$ctr"
    buildah commit -q --rm "$ctr" "$name" >/dev/null
  fi
}

# --- Dockerfile images -------------------------------------------------------------------------
build_dockerfile() {  # build_dockerfile NAME DOCKERFILE EXTRA-CONTEXT-FILES...
  local what="$1" dockerfile="$2"; shift 2
  local image="localhost/shoal-$what:$TAG"
  local key
  key="$( (hash_files "$dockerfile" "$dockerfile.dockerignore"; mapfile -t files < <(context_files "$@");
          hash_files "${files[@]}"; echo "$base_ref $builder") | sha256sum | cut -c1-16)"
  local archive="$cache/shoal-$what-$key.tar"
  if [[ -s $archive ]]; then
    log "$what: cached $archive"
    echo "$archive"
    return
  fi
  log "$what: building $image from $dockerfile"
  local start=$SECONDS
  local previous=""
  if [[ $builder == docker ]]; then
    previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
    DOCKER_BUILDKIT=1 docker build -f "$dockerfile" "${base_args[@]}" -t "$image" . >&2
  else
    previous="$(buildah inspect --type image -f '{{.FromImageID}}' "$image" 2>/dev/null || true)"
    # --network host: RUN steps reach the package indexes the way the host does (no CNI needed).
    # --ignorefile: buildah reads only a .dockerignore at the context's root by itself.
    # --isolation chroot: RUN steps need no OCI runtime, cgroups or network namespace (they
    # reach the package indexes as the host does), so builds work inside containers and VMs
    # whose cgroups crun cannot use.
    nice -n 10 buildah bud --layers --isolation chroot -f "$dockerfile" \
      --ignorefile "$dockerfile.dockerignore" "${base_args[@]}" -t "$image" . >&2
  fi
  save_archive "$image" "$archive"
  prune "shoal-$what-" "$archive"
  forget_image "$previous" "$image"
  log "$what: built in $((SECONDS - start)) s, archive $(du -m "$archive" | cut -f1) MiB"
  echo "$archive"
}

# --- KubeRay's operator ------------------------------------------------------------------------
build_kuberay() {
  local binary="$tools_bin/ray-operator"
  if [[ "$(cat "$tools_bin/.ray-operator-version" 2>/dev/null)" != "$KUBERAY_VERSION" || ! -x $binary ]]; then
    command -v go >/dev/null || die "go is missing: run hack/build-control-plane.sh first"
    log "kuberay: building ray-operator $KUBERAY_VERSION from its Go module (3-6 minutes cold)"
    mkdir -p "$tools_bin"
    (export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$tools_bin"
     nice -n 10 go install "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION")
    echo "$KUBERAY_VERSION" >"$tools_bin/.ray-operator-version"
  fi
  local image="localhost/kuberay-operator:$KUBERAY_VERSION"
  local key
  key="$( (echo "$KUBERAY_VERSION v1 $builder"; sha256sum <"$binary") | sha256sum | cut -c1-16)"
  local archive="$cache/kuberay-operator-$KUBERAY_VERSION-$key.tar"
  if [[ -s $archive ]]; then
    log "kuberay: cached $archive"
    echo "$archive"
    return
  fi
  # Like KubeRay's own image: the static binary as /manager, run as uid 65532 (nonroot).
  local start=$SECONDS
  if [[ $builder == docker ]]; then
    local dir
    dir="$(mktemp -d)"
    cp "$binary" "$dir/manager"
    printf 'FROM scratch\nCOPY manager /manager\nUSER 65532:65532\nENTRYPOINT ["/manager"]\n' >"$dir/Dockerfile"
    docker build -q -t "$image" "$dir" >/dev/null
    rm -rf "$dir"
  else
    local ctr
    ctr="$(buildah from scratch)"
    buildah copy --chmod 0755 "$ctr" "$binary" /manager >/dev/null
    buildah config --user 65532:65532 --entrypoint '["/manager"]' --cmd '' \
      --label org.opencontainers.image.title=kuberay-operator \
      --label "org.opencontainers.image.version=$KUBERAY_VERSION" "$ctr"
    buildah commit -q --rm "$ctr" "$image" >/dev/null
  fi
  save_archive "$image" "$archive"
  prune "kuberay-operator-" "$archive"
  log "kuberay: built in $((SECONDS - start)) s, archive $(du -m "$archive" | cut -f1) MiB"
  echo "$archive"
}

for t in "${targets[@]}"; do
  case $t in
    operator|serving) [[ -n "${base_ref:-}" ]] || base_image ;;
  esac
  case $t in
    operator) build_dockerfile operator operator/Dockerfile hack/requirements-nodeps.txt ;;
    serving) build_dockerfile serving serving/Dockerfile hack/requirements-nodeps.txt hack/requirements-models.txt ;;
    kuberay) build_kuberay ;;
  esac
done
