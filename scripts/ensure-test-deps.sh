#!/usr/bin/env bash
# Makes sure the test-only tools beyond scripts/ensure-deps.sh are installed:
#   - Debian's chromium-headless-shell and fonts-dejavu-core: the browser tests (tests/ChatBroker.Web.Tests);
#   - etcd (Debian's etcd-server): the cluster tests start their own;
#   - python3 with grpcio and protobuf: the mesh test calls the mesh from a standard gRPC client (python3 also
#     starts a broker with its signals blocked or ignored, BrokerProcessTests, and runs LoadTests/sched_stalls.py,
#     SchedStallsScriptTests);
#   - python3-paho-mqtt and mosquitto-clients (mosquitto_pub, mosquitto_sub): the MQTT conformance tests
#     (tests/ChatBroker.Mqtt.Tests) drive the MQTT listener with these standard clients;
#   - iproute2 ('ip'): scripts/loopback-only.sh (the browser tests) and the network-namespace cluster tests
#     (a slim Debian image has no 'ip').
# On Debian/Ubuntu as root (or with passwordless sudo) it installs what is missing with apt-get in one
# step; anywhere else it says what to install and exits non-zero. Quiet when everything is there.
#
#   scripts/ensure-test-deps.sh              everything above
#   scripts/ensure-test-deps.sh --etcd-only  etcd and iproute2 only (scripts/etcd.sh, the cluster checker)
set -euo pipefail

etcd_only=0
if [ "${1:-}" = "--etcd-only" ]; then
  etcd_only=1
fi

# --- browser tests (tests/ChatBroker.Web.Tests): Debian's headless Chromium and a font to render text with.
# Playwright drives this browser (never one it downloads itself). CHROMIUM_PATH names another Chromium.
ensure_browser() {
  local chromium="${CHROMIUM_PATH:-/usr/lib/chromium/chromium-headless-shell}"
  local font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
  if [ -x "$chromium" ] && [ -f "$font" ]; then
    return 0
  fi
  if [ -n "${CHROMIUM_PATH:-}" ] && [ ! -x "$chromium" ]; then
    echo "CHROMIUM_PATH=$CHROMIUM_PATH is not an executable Chromium (the browser tests need one)." >&2
    return 1
  fi
  local browser_packages="chromium-headless-shell fonts-dejavu-core"
  echo "The browser tests need Debian's headless Chromium; installing $browser_packages." >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "Not running as root. Install it with:" >&2
      echo "    sudo apt-get install -y --no-install-recommends $browser_packages" >&2
      echo "or set CHROMIUM_PATH to a Chromium 156 (headless shell) executable." >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "No apt-get here: install a headless Chromium 156 and set CHROMIUM_PATH to its executable." >&2
    return 1
  fi
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $browser_packages >&2; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $browser_packages >&2
  fi
  if [ ! -x "$chromium" ]; then
    echo "Installed $browser_packages but $chromium is still missing." >&2
    return 1
  fi
}
[ "$etcd_only" = 1 ] || ensure_browser
# --- end browser tests

python=/usr/bin/python3
have_etcd() { command -v etcd >/dev/null 2>&1; }
have_python_grpc() { [ -x "$python" ] && "$python" -c 'import grpc, google.protobuf' >/dev/null 2>&1; }
# MQTT conformance tests (tests/ChatBroker.Mqtt.Tests)
have_paho() { [ -x "$python" ] && "$python" -c 'import paho.mqtt.client' >/dev/null 2>&1; }
have_mosquitto_clients() { command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1; }

packages=""
have_etcd || packages="$packages etcd-server"
if [ "$etcd_only" = 0 ]; then
  have_python_grpc || packages="$packages python3 python3-grpcio python3-protobuf"
  have_paho || packages="$packages python3-paho-mqtt"
  have_mosquitto_clients || packages="$packages mosquitto-clients"
fi
command -v ip >/dev/null 2>&1 || packages="$packages iproute2"
packages="${packages# }"
if [ -z "$packages" ]; then
  exit 0
fi

echo "Test tools are missing; installing $packages." >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "This is not a Debian-like system (no apt-get). Install etcd 3.4 or later ('etcd' on PATH) and" >&2
  echo "python3 with the grpcio and protobuf modules as $python, paho-mqtt for it, and the mosquitto clients" >&2
  echo "(mosquitto_pub, mosquitto_sub), then run this again." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "Not running as root and sudo needs a password. Install them yourself with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y $packages" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# Another installer (a parallel test script, unattended upgrades) may hold the dpkg lock for a while.
apt_get() { $SUDO apt-get -o DPkg::Lock::Timeout=300 "$@"; }
# shellcheck disable=SC2086
if ! apt_get install -y -qq $packages >&2; then
  # A stale package list is the usual cause: refresh once and retry.
  apt_get update -qq >&2
  # shellcheck disable=SC2086
  apt_get install -y -qq $packages >&2
fi

# Where systemd runs, etcd-server enables and starts a system etcd on 2379: the tests do not use it, so
# stop it rather than leave a service running that nobody asked for.
if [[ " $packages " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi

if ! have_etcd; then
  echo "Installed etcd-server but 'etcd' is still not on PATH." >&2
  exit 1
fi
if [ "$etcd_only" = 0 ] && ! have_python_grpc; then
  echo "Installed $packages but '$python -c \"import grpc, google.protobuf\"' still fails." >&2
  exit 1
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "Installed $packages but 'ip' (iproute2) is still missing." >&2
  exit 1
fi
if [ "$etcd_only" = 0 ] && { ! have_paho || ! have_mosquitto_clients; }; then
  echo "Installed $packages but paho-mqtt ('$python -c \"import paho.mqtt.client\"') or mosquitto_pub/mosquitto_sub is still missing." >&2
  exit 1
fi
echo "Installed $packages." >&2
