#!/usr/bin/env bash
# Network namespaces that stand in for separate machines in cluster tests: each node namespace has its own
# address on a private test subnet (10.77.0.0/24), joined by a bridge that lives in a hub namespace of its
# own, so nothing of it touches the host's interfaces or routes. Needs root (ip netns).
#
#   scripts/netns-cluster.sh up N [--root-link]
#                                          namespaces cbnet-1..cbnet-N at 10.77.0.1..N, hub cbnet-hub;
#                                          --root-link also puts this (root) namespace on the bridge at
#                                          10.77.0.254 (veth cbnet-root), so a test here reaches the nodes
#   scripts/netns-cluster.sh etcd start [M] an M-member etcd (default 3), member i in cbnet-i at
#                                          10.77.0.i:2379; prints the client URLs, comma-separated
#   scripts/netns-cluster.sh etcd stop     stops the members by pid
#   scripts/netns-cluster.sh exec I CMD... runs CMD in namespace cbnet-I
#   scripts/netns-cluster.sh status        the namespaces, addresses and etcd members
#   scripts/netns-cluster.sh down          kills what runs in the namespaces, deletes them and the state
#
# State (which namespaces, the etcd members' dirs and logs): ${TMPDIR:-/tmp}/chatbroker-netns.
# CHATBROKER_NETNS_NAME (default cbnet, at most 8 characters) names the namespaces, the root link and the
# state dir, so two users of the script (a test suite and a hand test) do not take each other's down.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${CHATBROKER_NETNS_NAME:-cbnet}"
if ! [[ "$name" =~ ^[a-z][a-z0-9]{0,7}$ ]]; then
  echo "netns-cluster.sh: CHATBROKER_NETNS_NAME must be 1 to 8 of a-z 0-9, starting with a letter" >&2
  exit 2
fi
state="${CHATBROKER_NETNS_STATE:-${TMPDIR:-/tmp}/chatbroker-netns-$name}"
[ "$name" = cbnet ] && state="${CHATBROKER_NETNS_STATE:-${TMPDIR:-/tmp}/chatbroker-netns}"
hub="$name-hub"
root_link="$name-root"
subnet=10.77.0

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "netns-cluster.sh: network namespaces need root (run it with sudo)" >&2
    exit 1
  fi
  if ! command -v ip >/dev/null 2>&1; then
    echo "netns-cluster.sh: 'ip' (iproute2) is missing: apt-get install -y iproute2" >&2
    exit 1
  fi
}

count() { cat "$state/count" 2>/dev/null || echo 0; }

up() {
  local n="$1" with_root_link="${2:-}"
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then
    echo "netns-cluster.sh: up needs a node count from 1 to 200" >&2
    exit 2
  fi
  if [ -f "$state/count" ] || ip netns list | grep -qE "^$name-"; then
    echo "netns-cluster.sh: namespaces already exist; run 'down' first" >&2
    exit 1
  fi
  if [ "$with_root_link" = --root-link ] && [ -n "$(ip route show "$subnet.0/24")" ]; then
    # Another user of the subnet has its root link up: two would make the route ambiguous.
    echo "netns-cluster.sh: $subnet.0/24 is already routed in this namespace ($(ip route show "$subnet.0/24")); no root link" >&2
    exit 1
  fi
  mkdir -p "$state"
  echo "$n" >"$state/count"
  ip netns add "$hub"
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  for i in $(seq 1 "$n"); do
    local ns="$name-$i"
    ip netns add "$ns"
    # The pair is born across the two namespaces: one end on the hub's bridge, the other as eth0 of the node.
    ip -n "$hub" link add "hub$i" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "hub$i" master br0 up
    ip -n "$ns" addr add "$subnet.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
  if [ "$with_root_link" = --root-link ]; then
    ip link add "$root_link" type veth peer name hub0 netns "$hub"
    ip -n "$hub" link set hub0 master br0 up
    ip addr add "$subnet.254/24" dev "$root_link"
    ip link set "$root_link" up
    echo "$root_link" >"$state/root-link"
  fi
  echo "up: $n namespaces $name-1..$name-$n at $subnet.1..$subnet.$n/24 (bridge br0 in $hub)${with_root_link:+, this namespace at $subnet.254 ($root_link)}"
}

etcd_start() {
  local m="${1:-3}" n cluster="" endpoints=""
  n="$(count)"
  if [ "$n" -lt "$m" ]; then
    echo "netns-cluster.sh: $m etcd members need $m namespaces; 'up $m' first" >&2
    exit 1
  fi
  "$root/scripts/ensure-test-deps.sh"
  for i in $(seq 1 "$m"); do
    cluster+="${cluster:+,}e$i=http://$subnet.$i:2380"
    endpoints+="${endpoints:+,}http://$subnet.$i:2379"
  done
  for i in $(seq 1 "$m"); do
    ip netns exec "$name-$i" "$root/scripts/etcd.sh" start --state-dir "$state/etcd-$i" \
      --name "e$i" --ip "$subnet.$i" --initial-cluster "$cluster" >/dev/null
  done
  echo "$m" >"$state/etcd-members"
  # Healthy means a leader is elected and this member serves reads through it.
  for _ in $(seq 1 200); do
    if ip netns exec "$name-1" bash -c "exec 3<>/dev/tcp/$subnet.1/2379 && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && timeout 2 cat <&3" 2>/dev/null \
      | grep -q '"health":"true"'; then
      echo "$endpoints"
      return 0
    fi
    sleep 0.1
  done
  echo "netns-cluster.sh: the $m-member etcd has no leader after 20 s; logs in $state/etcd-*/etcd.log" >&2
  exit 1
}

etcd_stop() {
  local m
  m="$(cat "$state/etcd-members" 2>/dev/null || echo 0)"
  for i in $(seq 1 "$m"); do
    "$root/scripts/etcd.sh" stop --state-dir "$state/etcd-$i"
  done
  rm -f "$state/etcd-members"
}

down() {
  local n
  n="$(count)"
  [ -f "$state/etcd-members" ] && etcd_stop
  if [ -f "$state/root-link" ] || ip link show "$root_link" >/dev/null 2>&1; then
    ip link delete "$root_link" 2>/dev/null || true # its peer on the hub's bridge goes with it
  fi
  for ns in $(ip netns list | awk -v p="^$name-" '$1 ~ p {print $1}'); do
    # Whatever still runs in our namespaces was started in them by these scripts or the tests.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns delete "$ns"
  done
  rm -rf "$state"
  echo "down: removed $n node namespaces and $hub"
}

status() {
  for ns in $(ip netns list | awk -v p="^$name-" '$1 ~ p {print $1}' | sort -V); do
    local addr
    addr="$(ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | awk '{print $4}' || true)"
    echo "$ns ${addr:-(hub)} pids: $(ip netns pids "$ns" | tr '\n' ' ')"
  done
}

case "${1:-}" in
  up) need_root; up "${2:-3}" "${3:-}" ;;
  down) need_root; down ;;
  etcd)
    need_root
    case "${2:-}" in
      start) etcd_start "${3:-3}" ;;
      stop) etcd_stop ;;
      *) echo "usage: netns-cluster.sh etcd start [M] | etcd stop" >&2; exit 2 ;;
    esac
    ;;
  exec) need_root; i="$2"; shift 2; exec ip netns exec "$name-$i" "$@" ;;
  status) need_root; status ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
