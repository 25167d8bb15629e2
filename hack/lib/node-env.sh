# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are read by the scripts that source this file
# Settings of the local real node, shared by hack/cluster-up.sh and hack/cluster-down.sh.
# cluster-up.sh records the values it used in "$state/node.env"; cluster-down.sh reads them
# back from there, so that it removes what was created even where the environment changed.

state="${SHOAL_NODE_DIR:-/var/lib/shoal-node}"
cache="${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}"
node_name="${SHOAL_NODE_NAME:-shoal-node}"
# The node's address: a /32 on lo (no dummy interfaces here, and the kubelet refuses a
# loopback address). Pods reach it through their bridge's gateway; nothing outside does.
node_ip="${SHOAL_NODE_IP:-10.41.0.1}"
# Pod and Service ranges: apart from the KWOK test stack's fake pods (10.244.0.0/16).
pod_cidr="${SHOAL_POD_CIDR:-10.42.0.0/16}"
pod_gateway="${SHOAL_POD_GATEWAY:-10.42.0.1}"
service_cidr="${SHOAL_SERVICE_CIDR:-10.43.0.0/16}"
api_port="${SHOAL_NODE_API_PORT:-6443}"
bridge="${SHOAL_NODE_BRIDGE:-shoal0}"
#: The iptables chain that keeps pod traffic on this machine (first rule of FORWARD).
egress_chain="SHOAL-NODE-FORWARD"

node_env_load() {  # node_env_load: the recorded settings override the defaults above
  if [[ -f "$state/node.env" ]]; then
    # shellcheck source=/dev/null
    source "$state/node.env"
  fi
}

node_env_save() {
  cat >"$state/node.env" <<ENV
node_name=$node_name
node_ip=$node_ip
pod_cidr=$pod_cidr
pod_gateway=$pod_gateway
service_cidr=$service_cidr
api_port=$api_port
bridge=$bridge
ENV
}

pid_alive() {  # pid_alive NAME: the process recorded as NAME runs, and is the binary recorded
  local f="$state/pids/$1.pid" pid exe
  [[ -f "$f" ]] || return 1
  read -r pid exe <"$f" || true
  [[ -n "${pid:-}" && -d "/proc/$pid" ]] || return 1
  [[ -z "${exe:-}" || "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]
}

stop_recorded() {  # stop_recorded NAME [SECONDS]: TERM, then KILL, the process recorded as NAME
  local name="$1" wait_s="${2:-20}" pid exe i
  if pid_alive "$name"; then
    read -r pid exe <"$state/pids/$name.pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
      [[ -d "/proc/$pid" ]] || break
      sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$state/pids/$name.pid"
}
