#!/usr/bin/env bash
# Starts and stops an etcd for tests and development, from Debian's etcd-server (installed when missing).
#
#   scripts/etcd.sh start [--state-dir DIR]          one member on 127.0.0.1, free ports it picks
#   scripts/etcd.sh start --state-dir DIR --name N --ip IP --initial-cluster N1=http://IP1:2380,...
#                                                    one member of a multi-member cluster (e.g. one per
#                                                    network namespace, see scripts/netns-cluster.sh)
#   scripts/etcd.sh stop [--state-dir DIR] [--purge] stops it by its pid; --purge removes the state dir
#   scripts/etcd.sh endpoint [--state-dir DIR]       prints its client URL
#   scripts/etcd.sh install                          installs Debian's etcd-server when etcd is missing
#
# The state dir (default ${TMPDIR:-/tmp}/chatbroker-etcd) holds pid, endpoint, the ports, the data dir and
# etcd.log. A restart with the same state dir reuses its ports and data. start prints the client URL.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command="${1:-}"
[ $# -gt 0 ] && shift
state_dir="${TMPDIR:-/tmp}/chatbroker-etcd"
name="" ip="" initial_cluster="" purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) state_dir="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --ip) ip="$2"; shift 2 ;;
    --initial-cluster) initial_cluster="$2"; shift 2 ;;
    --purge) purge=1; shift ;;
    *) echo "etcd.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

# True while the pid in the state dir is a live etcd (a reused pid of another program does not count).
running_pid() {
  local pid
  [ -f "$state_dir/pid" ] || return 1
  pid="$(cat "$state_dir/pid")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "etcd" ] || return 1
  echo "$pid"
}

# A port nobody on this host (or namespace) listens on or talks from now; etcd's bind is the final check.
free_port() {
  local p hex
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    hex="$(printf ':%04X ' "$p")"
    if ! grep -qi -- "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "etcd.sh: found no free port" >&2
  return 1
}

# Asks etcd's /health over bash's /dev/tcp (no curl needed); true when it answers {"health":"true"...}.
healthy() {
  local host="$1" port="$2" reply
  reply="$( { exec 3<>"/dev/tcp/$host/$port" &&
    printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "$host" >&3 &&
    timeout 2 cat <&3; } 2>/dev/null || true)"
  [[ "$reply" == *'"health":"true"'* ]]
}

listening() {
  local host="$1" port="$2"
  { (exec 3<>"/dev/tcp/$host/$port"); } 2>/dev/null
}

start_once() {
  local host client_port peer_port pid
  if [ -n "$ip" ]; then
    host="$ip" client_port=2379 peer_port=2380
  else
    host=127.0.0.1
    client_port="$(cat "$state_dir/client_port" 2>/dev/null || free_port)"
    peer_port="$(cat "$state_dir/peer_port" 2>/dev/null || free_port)"
  fi
  echo "$client_port" >"$state_dir/client_port"
  echo "$peer_port" >"$state_dir/peer_port"
  local args=(--name "${name:-default}" --data-dir "$state_dir/data"
    --listen-client-urls "http://$host:$client_port" --advertise-client-urls "http://$host:$client_port"
    --listen-peer-urls "http://$host:$peer_port" --initial-advertise-peer-urls "http://$host:$peer_port"
    --initial-cluster "${initial_cluster:-${name:-default}=http://$host:$peer_port}"
    --initial-cluster-token chatbroker-test --initial-cluster-state new
    --logger zap --log-outputs stderr)
  # setsid: etcd outlives this script and its caller's process group; it is stopped by pid.
  setsid etcd "${args[@]}" >>"$state_dir/etcd.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$state_dir/pid"
  echo "http://$host:$client_port" >"$state_dir/endpoint"

  # A lone member of a bigger cluster is not healthy until a quorum has started: wait for its port only.
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if { [ -n "$initial_cluster" ] && listening "$host" "$client_port"; } || healthy "$host" "$client_port"; then
      return 0
    fi
    sleep 0.1
  done
  echo "etcd.sh: etcd (pid $pid) did not become ready within 20 s; see $state_dir/etcd.log" >&2
  kill -KILL "$pid" 2>/dev/null || true
  return 1
}

case "$command" in
  install)
    # Installs etcd when missing, nothing else. Run it in the host's namespace: a network namespace of the
    # cluster runs has no route to the package mirrors (the checker does this before it starts members).
    exec "$root/scripts/ensure-test-deps.sh" --etcd-only
    ;;
  start)
    "$root/scripts/ensure-test-deps.sh" --etcd-only
    mkdir -p "$state_dir"
    if pid="$(running_pid)"; then
      echo "etcd.sh: already running (pid $pid) at $(cat "$state_dir/endpoint")" >&2
      exit 1
    fi
    for attempt in 1 2 3; do
      if start_once; then
        cat "$state_dir/endpoint"
        exit 0
      fi
      # Another program may have taken a port between the check and etcd's bind: pick new ones (a member
      # of a namespace has fixed ports, and a restart keeps its ports for the data it has).
      if [ -n "$ip" ] || [ -d "$state_dir/data/member" ]; then
        break
      fi
      rm -f "$state_dir/client_port" "$state_dir/peer_port"
      echo "etcd.sh: etcd exited during start (attempt $attempt); retrying on other ports" >&2
    done
    echo "etcd.sh: etcd failed to start; the end of $state_dir/etcd.log:" >&2
    tail -n 20 "$state_dir/etcd.log" >&2 || true
    exit 1
    ;;
  stop)
    if pid="$(running_pid)"; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$state_dir/pid"
    if [ "$purge" = 1 ]; then
      rm -rf "$state_dir"
    fi
    ;;
  endpoint)
    cat "$state_dir/endpoint"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
