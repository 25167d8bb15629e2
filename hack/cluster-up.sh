#!/usr/bin/env bash
# Shoal on a real single-node Kubernetes cluster on this machine, without Docker or a
# registry (the no-Docker sibling of hack/kind-up.sh):
#   1. builds what is missing: the control plane, kubelet, kube-proxy and CoreDNS
#      (hack/build-control-plane.sh), the pause image, and Shoal's and KubeRay's images
#      (hack/build-images.sh);
#   2. starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
#      (runc, the bridge CNI plugin), a kubelet, kube-proxy (iptables) and CoreDNS;
#   3. imports the images into containerd;
#   4. installs KubeRay's operator (its CRDs and ClusterRole from its Go module, its image)
#      and Shoal's chart (the operator as a Pod under its own RBAC, the local images);
#   5. prints, as its last line, the `export KUBECONFIG=...` line to use.
# Needs root and Debian's containerd, runc, containernetworking-plugins, iptables, conntrack,
# buildah and gcc (hack/setup.sh installs them). Idempotent: what runs is kept.
# Pod traffic never leaves the machine: a FORWARD rule drops anything from the pod range to
# an address outside it, the bridge does no masquerading, and CoreDNS answers cluster.local
# only. State (PIDs, logs, certificates, etcd, containerd) lives in $SHOAL_NODE_DIR
# (default /var/lib/shoal-node); hack/cluster-down.sh removes it and everything this created.
#
# Usage: hack/cluster-up.sh [--node-only]
#   --node-only  the cluster and the node, without images, KubeRay or Shoal
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
self="$root/hack/$(basename "$0")"
cd "$root"
# shellcheck source=lib/node-env.sh
source "$root/hack/lib/node-env.sh"
node_env_load

node_only=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$self"; }
while (($#)); do
  case "$1" in
    --node-only) node_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

started=$SECONDS
log() { printf '[cluster-up %3ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() { printf '[cluster-up] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (it starts containerd and a kubelet)"
for c in containerd containerd-shim-runc-v2 runc ctr iptables conntrack buildah gcc openssl ip; do
  command -v "$c" >/dev/null || die "missing $c: run hack/setup.sh (Debian packages)"
done
cni_bin=/usr/lib/cni
[[ -x "$cni_bin/bridge" && -x "$cni_bin/host-local" && -x "$cni_bin/loopback" ]] \
  || die "missing CNI plugins in $cni_bin: run hack/setup.sh (containernetworking-plugins)"

tools="${SHOAL_TOOLS_DIR:-$root/.tools}"
bin="$tools/bin"
mkdir -p "$state"/{pids,logs,pki} "$cache/images"
chmod 0700 "$state"
node_env_save
export PATH="$bin:$PATH"

wait_for() {  # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
  local what="$1" limit="$2" t0=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 > limit)); then
      die "$what not ready after ${limit}s (logs: $state/logs)"
    fi
    sleep 0.5
  done
}

write_if_changed() {  # write_if_changed FILE: stdin into FILE, only where it differs
  # (kube-proxy exits when its configuration file is written, even with the same content).
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

start() {  # start NAME BINARY ARGS...: run it in a session of its own, logged, PID recorded
  local name="$1" exe="$2"
  shift 2
  if pid_alive "$name"; then return; fi
  log "starting $name"
  setsid "$exe" "$@" >>"$state/logs/$name.log" 2>&1 </dev/null &
  echo "$! $(readlink -f "$exe")" >"$state/pids/$name.pid"
}

# --- 1. Build what is missing ----------------------------------------------------------------
node_binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy coredns)
((node_only)) || node_binaries+=(helm)
node_files=(crds/ray.io_rayclusters.yaml crds/ray.io_rayjobs.yaml crds/ray.io_rayservices.yaml kuberay/role.yaml)
have_all() {
  local b f
  for b in "${node_binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
  for f in "${node_files[@]}"; do [[ -s "$tools/$f" ]] || return 1; done
}
if ! have_all; then
  log "building what is missing (control plane, kubelet, kube-proxy, CoreDNS)"
  "$root/hack/build-control-plane.sh"
  have_all || die "hack/build-control-plane.sh did not build everything the node needs"
fi

pause_image="localhost/shoal-pause:1"
build_pause() {  # the pod sandbox image: a static binary that sleeps, from scratch
  local key out
  key="$( (cat "$root/hack/node/pause.c"; gcc --version | head -n 1) | sha256sum | cut -c1-16)"
  out="$cache/images/shoal-pause-$key.tar"
  if [[ ! -s "$out" ]]; then
    log "building $pause_image"
    local work ctr
    work="$(mktemp -d)"
    gcc -static -O2 -o "$work/pause" "$root/hack/node/pause.c"
    ctr="$(buildah from scratch)"
    buildah copy "$ctr" "$work/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
    buildah commit -q "$ctr" "docker-archive:$out.part:$pause_image" >/dev/null
    buildah rm "$ctr" >/dev/null
    rm -rf "$work"
    mv "$out.part" "$out"
  fi
  echo "$out"
}
archives=("$(build_pause)")
if ((!node_only)); then
  [[ -x "$root/hack/build-images.sh" ]] || die "hack/build-images.sh is missing: cannot build Shoal's images"
  log "building Shoal's and KubeRay's images (hack/build-images.sh)"
  while read -r a; do
    [[ -n "$a" ]] && archives+=("$a")
  done < <("$root/hack/build-images.sh")
fi

# --- 2. The machine: node address, pod egress rule -------------------------------------------
# Each change is recorded, so that cluster-down.sh undoes exactly it.
if ! ip -4 addr show dev lo | grep -q " $node_ip/32 "; then
  ip addr add "$node_ip/32" dev lo
  touch "$state/lo-address-added"
fi
[[ -f "$state/ip_forward" ]] || cat /proc/sys/net/ipv4/ip_forward >"$state/ip_forward"
# The kubelet's and kube-proxy's chains (KUBE-*, IPv4 and IPv6) that exist before the node
# runs are not the node's: cluster-down.sh leaves them.
if [[ ! -f "$state/preexisting-chains" ]]; then
  for family in iptables ip6tables; do
    for table in filter nat mangle; do
      "$family" -w -t "$table" -S 2>/dev/null | awk -v f="$family" -v t="$table" '$1 == "-N" { print f, t, $2 }'
    done
  done >"$state/preexisting-chains"
fi
for d in /run/containerd /var/log/containers /var/lib/cni /var/lib/cni/results; do
  f="$state/preexisting$(echo "$d" | tr / -)"
  [[ -f "$f" ]] || { if [[ -e "$d" ]]; then echo 1; else echo 0; fi; } >"$f"
done

ensure_egress_rule() {  # the first rule of FORWARD sends pod traffic through our chain
  if ! iptables -w -n -L "$egress_chain" >/dev/null 2>&1; then
    iptables -w -N "$egress_chain"
    # Pod to pod stays; anything else from a pod is logged (rate-limited) and dropped, and
    # nothing from outside reaches a pod through this machine.
    iptables -w -A "$egress_chain" -s "$pod_cidr" -d "$pod_cidr" -j RETURN
    iptables -w -A "$egress_chain" -s "$pod_cidr" -m limit --limit 6/min \
      -j LOG --log-prefix "shoal-node-egress-drop: "
    iptables -w -A "$egress_chain" -s "$pod_cidr" -j DROP
    iptables -w -A "$egress_chain" -d "$pod_cidr" -j DROP
  fi
  if [[ "$(iptables -w -S FORWARD | sed -n 2p)" != "-A FORWARD -j $egress_chain" ]]; then
    while iptables -w -D FORWARD -j "$egress_chain" 2>/dev/null; do :; done
    iptables -w -I FORWARD 1 -j "$egress_chain"
  fi
}
ensure_egress_rule

# --- 3. Certificates and kubeconfigs ---------------------------------------------------------
pki="$state/pki"
if [[ ! -s "$pki/ca.crt" ]]; then
  log "making the cluster's certificates"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=shoal-node-ca" -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key"
  openssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi
cert() {  # cert NAME SUBJECT [SUBJECT-ALT-NAMES]: a client cert, or a server cert with SANs
  local name="$1" subject="$2" san="${3:-}"
  [[ -s "$pki/$name.crt" ]] && return
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subject" \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
service_ip="$(python3 -c "import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[1])" "$service_cidr")"
cert apiserver "/CN=kube-apiserver" \
  "IP:$node_ip,IP:$service_ip,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
cert admin "/O=system:masters/CN=shoal-node-admin"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert kubelet "/O=system:nodes/CN=system:node:$node_name"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
cert coredns "/CN=system:coredns"

kubeconfig() {  # kubeconfig NAME: a kubeconfig for the client cert NAME
  cat >"$state/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: shoal-node
  cluster: {server: "https://$node_ip:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$pki/$1.crt", client-key: "$pki/$1.key"}
contexts:
- name: shoal-node
  context: {cluster: shoal-node, user: $1}
current-context: shoal-node
YAML
}
for n in admin kubelet controller-manager scheduler kube-proxy coredns; do kubeconfig "$n"; done
export KUBECONFIG="$state/admin.kubeconfig"
k() { "$bin/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
h() { "$bin/helm" --kubeconfig "$KUBECONFIG" "$@"; }

# --- 4. Control plane ------------------------------------------------------------------------
start etcd "$bin/etcd" --name shoal-node --data-dir "$state/etcd" \
  --listen-client-urls "http://$node_ip:2379" --advertise-client-urls "http://$node_ip:2379" \
  --listen-peer-urls "http://$node_ip:2380" --initial-advertise-peer-urls "http://$node_ip:2380" \
  --initial-cluster "shoal-node=http://$node_ip:2380" --listen-metrics-urls "http://$node_ip:2381" \
  --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf "http://$node_ip:2379/health"
start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://$node_ip:2379" \
  --bind-address "$node_ip" --advertise-address "$node_ip" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --profiling=false --v=1
wait_for kube-apiserver 90 k get --raw /readyz
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$state/controller-manager.kubeconfig" --secure-port 0 --leader-elect=false \
  --use-service-account-credentials --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" --cluster-cidr "$pod_cidr" --service-cluster-ip-range "$service_cidr" \
  --profiling=false --v=1
start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$state/scheduler.kubeconfig" \
  --secure-port 0 --leader-elect=false --profiling=false --v=1

# --- 5. containerd and the node --------------------------------------------------------------
mkdir -p "$state/containerd" "$state/cni/net.d" "$state/kubelet" "$state/pod-logs"
sock="$state/containerd/containerd.sock"
write_if_changed "$state/containerd/config.toml" <<TOML
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
# The opt plugin would install into /opt/containerd; nothing here needs it.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # No CAP_SYS_RESOURCE here: without it every sandbox fails to set its oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pods' network namespaces under the state folder, not /run/netns: cluster-down finds them.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$state/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$state/containerd/runc"
TOML
# The pod network: one bridge, host-local addresses, no masquerading (nothing leaves).
write_if_changed "$state/cni/net.d/10-shoal-node.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "shoal-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/ipam",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
start containerd "$(command -v containerd)" --config "$state/containerd/config.toml"
ctr_() { ctr --address "$sock" -n k8s.io "$@"; }
wait_for containerd 30 ctr_ version

# An archive is imported again where an image it holds is gone (the kubelet removes unused
# images under disk pressure, the pause image included).
imported="$state/imported-archives"
touch "$imported"
present="$(ctr_ images ls -q)"
for a in "${archives[@]}"; do
  sum="$(basename "$a")"
  refs="$(awk -v a="$sum" '$1 == a { $1 = ""; print }' "$imported")"
  missing=0
  if [[ -z "$refs" ]]; then missing=1; fi
  for r in $refs; do grep -qxF "$r" <<<"$present" || missing=1; done
  ((missing)) || continue
  log "importing $(basename "$a")"
  refs="$(ctr_ images import "$a" | sed -n 's/^unpacking \([^ ]*\) .*/\1/p' | tr '\n' ' ')"
  grep -vF "$sum " "$imported" >"$imported.tmp" || true
  echo "$sum $refs" >>"$imported.tmp"
  mv "$imported.tmp" "$imported"
done

# Host search domains stay out of pods; pods resolve cluster.local through CoreDNS only.
echo "nameserver $node_ip" >"$state/resolv.conf"
write_if_changed "$state/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$node_ip"
readOnlyPort: 0
healthzBindAddress: "$node_ip"
healthzPort: 10248
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: "unix://$sock"
podLogsDir: "$state/pod-logs"
resolvConf: "$state/resolv.conf"
clusterDNS: ["$node_ip"]
clusterDomain: cluster.local
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
serializeImagePulls: false
registerNode: true
# Image archives are imported, not pulled: keep them however full the disk gets.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Evict on absolute amounts, not on percentages: on a shared machine whose disk holds others'
# builds (and whose reported size can exceed what is usable), the default 15% of the image
# filesystem tainted the node with disk pressure while 39 GiB were free.
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2Gi
  imagefs.available: 2Gi
  nodefs.inodesFree: 5%
YAML
start kubelet "$bin/kubelet" --config "$state/kubelet.yaml" --kubeconfig "$state/kubelet.kubeconfig" \
  --root-dir "$state/kubelet" --hostname-override "$node_name" --node-ip "$node_ip" --v=1
node_ready() { [[ "$(k get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; }
wait_for "node $node_name" 90 node_ready

write_if_changed "$state/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$state/kube-proxy.kubeconfig"}
mode: iptables
clusterCIDR: "$pod_cidr"
hostnameOverride: "$node_name"
healthzBindAddress: "$node_ip:10256"
metricsBindAddress: "$node_ip:10249"
# NodePorts on the node's own address only, never on the machine's interfaces.
nodePortAddresses: ["$node_ip/32"]
iptables: {localhostNodePorts: false}
# Leave the machine's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
start kube-proxy "$bin/kube-proxy" --config "$state/kube-proxy.yaml" --v=1
wait_for kube-proxy 30 curl -sf "http://$node_ip:10256/healthz"
# kube-proxy prepends its jump rules to FORWARD in its first sync, which may come after its
# health check answers; it prepends only rules that are missing, so once all of them are
# there, ours goes first again and stays first.
kube_proxy_forward_rules() {
  local rules
  rules="$(iptables -w -S FORWARD)"
  for chain in KUBE-PROXY-FIREWALL KUBE-FORWARD KUBE-SERVICES KUBE-EXTERNAL-SERVICES; do
    grep -q -- "-j $chain\b" <<<"$rules" || return 1
  done
}
wait_for "kube-proxy's FORWARD rules" 60 kube_proxy_forward_rules
ensure_egress_rule

# CoreDNS as a process on the node, beside the kubelet: no image to build, and it answers the
# host and the pods alike on the node's address. cluster.local only: no forward plugin, so
# no name is ever resolved outside this machine.
k apply --server-side --force-conflicts -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
YAML
write_if_changed "$state/Corefile" <<COREFILE
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    health $node_ip:8082
    ready $node_ip:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/coredns.kubeconfig shoal-node
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
}
COREFILE
start coredns "$bin/coredns" -conf "$state/Corefile"
wait_for coredns 30 curl -sf "http://$node_ip:8181/ready"

if ((node_only)); then
  log "node ready (no images, KubeRay or Shoal: --node-only)"
  echo "export KUBECONFIG=$KUBECONFIG"
  exit 0
fi

# --- 6. KubeRay's operator -------------------------------------------------------------------
kuberay_image="$(ctr_ images ls -q | grep -m 1 '^localhost/kuberay-operator:')" \
  || die "no localhost/kuberay-operator image among the imported ones"
log "installing KubeRay's operator ($kuberay_image)"
k apply --server-side --force-conflicts -f "$tools/crds/ray.io_rayclusters.yaml" \
  -f "$tools/crds/ray.io_rayjobs.yaml" -f "$tools/crds/ray.io_rayservices.yaml" >/dev/null
k apply --server-side --force-conflicts -f "$tools/kuberay/role.yaml" >/dev/null
sed "s#@IMAGE@#$kuberay_image#" "$root/hack/node/kuberay-operator.yaml" \
  | k apply --server-side --force-conflicts -f - >/dev/null
# Polled by jsonpath, not `kubectl wait --for=condition`: right after the apply a CRD may have
# no status.conditions yet, and kubectl 1.34's wait then fails at once ("accessor error: <nil>")
# instead of waiting.
crds_established() {
  local crd
  for crd in "$@"; do
    [[ "$(k get crd "$crd" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" == True ]] || return 1
  done
}
wait_for "KubeRay's CRDs" 60 crds_established rayclusters.ray.io rayservices.ray.io
k -n kuberay-system rollout status deployment/kuberay-operator --timeout 3m >/dev/null

# --- 7. Shoal --------------------------------------------------------------------------------
log "installing Shoal's chart"
# shellcheck source=lib/shoal-chart.sh
source "$root/hack/lib/shoal-chart.sh"
# Ray reports no usage statistics from these pods (they could not reach anyone anyway).
shoal_chart_install shoal-system localhost/shoal-operator dev localhost/shoal-serving:dev \
  --set serving.kuberayNamespace=kuberay-system --set rbac.tenantSecrets=true \
  --set-string serving.rayServeEnv.RAY_USAGE_STATS_ENABLED=0 >/dev/null

log "cluster ready: $(k get nodes --no-headers | awk '{print $1, $2}'); logs in $state/logs"
echo "export KUBECONFIG=$KUBECONFIG"
