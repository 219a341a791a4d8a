#!/usr/bin/env bash
# Starts and stops a mosquitto broker (Debian's `mosquitto`, installed when missing) on a loopback port, for the
# MQTT side-by-side runs of the load harness (LoadTests/run-mqtt-compare.sh). Defaults as shipped (in-memory: no
# persistence), anonymous clients allowed, only on 127.0.0.1.
#
#   scripts/mosquitto.sh start [--port P] [--state-dir DIR]   prints host:port
#   scripts/mosquitto.sh stop [--state-dir DIR]               stops it by its pid
#
# The state dir (default ${TMPDIR:-/tmp}/chatbroker-mosquitto) holds the config, pid and log.
set -euo pipefail

command="${1:-}"
[ $# -gt 0 ] && shift
state_dir="${TMPDIR:-/tmp}/chatbroker-mosquitto"
port=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --state-dir) state_dir="$2"; shift 2 ;;
    *) echo "mosquitto.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

mosquitto_bin() { command -v mosquitto || { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; } || true; }

case "$command" in
  start)
    if [ -z "$(mosquitto_bin)" ]; then
      echo "mosquitto is missing; installing Debian's mosquitto." >&2
      SUDO=""
      [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
      apt_install() { $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq mosquitto >&2; }
      # A fresh machine has no package lists yet: update them once and try again.
      if ! command -v apt-get >/dev/null 2>&1 ||
         ! { apt_install || { $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 && apt_install; }; }; then
        echo "Could not install mosquitto: install it (apt-get update && apt-get install mosquitto) and run this again." >&2
        exit 1
      fi
      # Where systemd runs, the package starts a system mosquitto on 1883: not ours, stop it.
      if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
      fi
    fi
    mkdir -p "$state_dir"
    if [ -f "$state_dir/pid" ] && kill -0 "$(cat "$state_dir/pid")" 2>/dev/null; then
      echo "127.0.0.1:$(cat "$state_dir/port")"
      exit 0
    fi
    if [ -z "$port" ]; then
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    cat > "$state_dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
log_dest file $state_dir/mosquitto.log
CONF
    echo "$port" > "$state_dir/port"
    "$(mosquitto_bin)" -c "$state_dir/mosquitto.conf" > /dev/null 2>&1 &
    echo $! > "$state_dir/pid"
    # Ready when the port accepts a connection (bounded: 10 s).
    for _ in $(seq 1 100); do
      if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
        echo "127.0.0.1:$port"
        exit 0
      fi
      if ! kill -0 "$(cat "$state_dir/pid")" 2>/dev/null; then break; fi
      sleep 0.1
    done
    echo "mosquitto did not start; see $state_dir/mosquitto.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$state_dir/pid" ]; then
      kill "$(cat "$state_dir/pid")" 2>/dev/null || true
      rm -f "$state_dir/pid"
    fi
    ;;
  *)
    echo "usage: scripts/mosquitto.sh start|stop [--port P] [--state-dir DIR]" >&2
    exit 2
    ;;
esac
