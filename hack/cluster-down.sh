#!/usr/bin/env bash
# Remove the local real node hack/cluster-up.sh started, and everything it created, and
# nothing else: its pods (through the kubelet, so that their network is torn down), the
# processes it recorded by PID, containerd's shims whose -address is its socket, kube-proxy's
# and the kubelet's iptables chains and its own egress chain, the mounts under its state
# folder, the kubepods cgroups, its bridge, the node address on lo, the IP forwarding setting
# as it was, and its state folder ($SHOAL_NODE_DIR, default /var/lib/shoal-node). Image
# archives stay in the cache. Idempotent: a second run finds nothing to do.
#
# Usage: hack/cluster-down.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/node-env.sh
source "$root/hack/lib/node-env.sh"
node_env_load

case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1" >&2; exit 2 ;;
esac

log() { printf '[cluster-down] %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { echo "needs root" >&2; exit 1; }
if [[ ! -d "$state" ]]; then
  log "nothing to remove ($state does not exist)"
  exit 0
fi
tools="${SHOAL_TOOLS_DIR:-$root/.tools}"
bin="$tools/bin"
sock="$state/containerd/containerd.sock"
kubeconfig="$state/admin.kubeconfig"
k() { timeout 30 "$bin/kubectl" --kubeconfig "$kubeconfig" --request-timeout 10s "$@"; }
ctr_() { timeout 30 ctr --address "$sock" -n k8s.io "$@"; }

# 1. Pods: no controller may replace them, then the kubelet stops them (CNI DEL included).
stop_recorded kube-controller-manager 10
stop_recorded kube-scheduler 10
if pid_alive kube-apiserver && pid_alive kubelet; then
  log "deleting every pod through the kubelet"
  k delete pods --all-namespaces --all --grace-period=2 --wait=false >/dev/null 2>&1 || true
  for ((i = 0; i < 120; i++)); do
    [[ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]] && break
    sleep 0.5
  done
fi

# 2. The node's and the control plane's processes.
for name in coredns kube-proxy kubelet kube-apiserver etcd; do
  stop_recorded "$name" 20
done

# 3. Containers still there (a kubelet that was already gone): killed through containerd.
if pid_alive containerd; then
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
fi
stop_recorded containerd 20
# containerd's shims outlive it: stop those that serve its socket, and only those.
for p in /proc/[0-9]*; do
  [[ -r "$p/cmdline" ]] || continue
  cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
  if [[ "$cmd" == *containerd-shim* && "$cmd" == *"-address $sock "* ]]; then
    kill -KILL "${p#/proc/}" 2>/dev/null || true
  fi
done

# 4. iptables: kube-proxy's own cleanup, the kubelet's chains, our egress chain.
if [[ -x "$bin/kube-proxy" ]] && iptables -w -t nat -n -L KUBE-SERVICES >/dev/null 2>&1; then
  "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi
# The kubelet's chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), IPv4 and
# IPv6, and whatever KUBE-* chain kube-proxy's cleanup left: those that were not there before.
for family in iptables ip6tables; do
  for table in filter nat mangle; do
    for chain in $("$family" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
      grep -qxF "$family $table $chain" "$state/preexisting-chains" 2>/dev/null && continue
      # Drop every rule that jumps to the chain, then the chain.
      "$family" -w -t "$table" -S | awk -v c="$chain" '$1 == "-A" && $0 ~ ("-j " c "( |$)") { $1 = "-D"; print }' \
        | while read -r rule; do eval "\"\$family\" -w -t \"\$table\" $rule" 2>/dev/null || true; done
      "$family" -w -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$family" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
      grep -qxF "$family $table $chain" "$state/preexisting-chains" 2>/dev/null && continue
      "$family" -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
done
while iptables -w -D FORWARD -j "$egress_chain" 2>/dev/null; do :; done
if iptables -w -n -L "$egress_chain" >/dev/null 2>&1; then
  iptables -w -F "$egress_chain"
  iptables -w -X "$egress_chain"
fi

# 5. Mounts under the state folder (volumes, container root filesystems, and the pods' network
#    namespaces: containerd keeps them there, netns_mounts_under_state_dir).
for ((pass = 0; pass < 3; pass++)); do
  mapfile -t mounts < <(awk -v s="$state/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  ((${#mounts[@]})) || break
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done

# 6. cgroups the kubelet made (pod cgroups are empty once their containers are gone).
for top in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [[ -d "$top" ]] || continue
  find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# 7. Network: the bridge, the node address, IP forwarding as it was.
ip link show "$bridge" >/dev/null 2>&1 && ip link delete "$bridge"
if [[ -f "$state/lo-address-added" ]]; then
  ip addr del "$node_ip/32" dev lo 2>/dev/null || true
fi
if [[ -f "$state/ip_forward" ]]; then
  cat "$state/ip_forward" >/proc/sys/net/ipv4/ip_forward
fi

# 8. Folders outside the state folder that the node's programs made.
preexisted() { [[ "$(cat "$state/preexisting$(echo "$1" | tr / -)" 2>/dev/null)" != 0 ]]; }
# CNI's result cache: the entries of our network only.
rm -f /var/lib/cni/results/shoal-node-* 2>/dev/null || true
# The kubelet's links to our pods' logs point into the state folder.
if [[ -d /var/log/containers ]]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$state/*" -delete 2>/dev/null || true
fi
for d in /var/log/containers /var/lib/cni/results /var/lib/cni /run/containerd; do
  preexisted "$d" && continue
  case "$d" in
    /run/containerd) rm -rf /run/containerd ;;  # shim sockets and fifos of our shims only
    *) rmdir "$d" 2>/dev/null || true ;;
  esac
done

rm -rf "$state"
log "removed"
