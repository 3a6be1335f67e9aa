#!/usr/bin/env bash
# Runs openCryptoki's slot daemon (pkcsslotd) as a real service for the
# tests, without systemd, and prepares its software tokens.
#
#   scripts/opencryptoki.sh start       configure SLOTS software-token slots
#                                       (default 10) and start pkcsslotd
#   scripts/opencryptoki.sh stop        stop the pkcsslotd this script started
#   scripts/opencryptoki.sh status      exit 0 when pkcsslotd runs with the
#                                       slots this script configures
#   scripts/opencryptoki.sh module      print the PKCS#11 library's path
#   scripts/opencryptoki.sh init-token SLOT LABEL SO_PIN USER_PIN
#                                       (re)initialise a slot's token: every
#                                       object erased, the SO PIN set to
#                                       SO_PIN, the user PIN to USER_PIN
#   scripts/opencryptoki.sh wipe-token SLOT
#                                       erase a slot's token and leave it
#                                       uninitialised, with the shipped SO
#                                       PIN: free for kmsd's CreateHsm
#                                       (KMSD_HSM_SLOTS)
#
# Every slot is the software token (libpkcs11_sw.so) with a token directory
# of its own (tokname kmsd-swtok-N under /var/lib/opencryptoki), so that
# the tests have several independent tokens: openCryptoki's slots are fixed
# by its configuration, a PKCS#11 caller cannot create one. The daemon is
# system wide and talks to the library over a unix socket
# (/var/run/pkcsslotd.socket); it binds no network port. Needs root, like
# the daemon. The configuration this script writes is marked, and an
# operator's own configuration is kept as opencryptoki.conf.kmsd-saved.
set -euo pipefail

conf=/etc/opencryptoki/opencryptoki.conf
marker="# written by kmsd scripts/opencryptoki.sh"
pidfile=/var/run/pkcsslotd.pid
# The library: 'module' answers its path for configuration files.
lib=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
# openCryptoki's swtok ships with this SO PIN (and user PIN 12345678).
default_so=87654321

running() {
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# ours: the configuration is this script's, with at least SLOTS slots
# (a daemon started by an older version with fewer would not serve the
# tests' higher slots).
ours() {
  grep -qF "$marker" "$conf" && grep -qx "slot $((${SLOTS:-10} - 1))" "$conf"
}

configure() {
  local n=${SLOTS:-10}
  if [ -e "$conf" ] && ! grep -qF "$marker" "$conf" && [ ! -e "$conf.kmsd-saved" ]; then
    cp -p "$conf" "$conf.kmsd-saved"
  fi
  {
    echo "$marker"
    echo "version opencryptoki-3.1"
    for ((i = 0; i < n; i++)); do
      printf 'slot %d\n{\nstdll = libpkcs11_sw.so\ntokname = kmsd-swtok-%d\ndescription = "kmsd test software token %d"\n}\n' "$i" "$i" "$i"
    done
  } >"$conf.tmp"
  mv "$conf.tmp" "$conf"
  getent group pkcs11 >/dev/null || groupadd -r pkcs11
  for d in /var/lib/opencryptoki /var/lock/opencryptoki /var/log/opencryptoki; do
    install -d -m 0770 -g pkcs11 "$d"
  done
  for ((i = 0; i < n; i++)); do
    install -d -m 0770 -g pkcs11 "/var/lib/opencryptoki/kmsd-swtok-$i" "/var/lib/opencryptoki/kmsd-swtok-$i/TOK_OBJ" \
      "/var/lock/opencryptoki/kmsd-swtok-$i"
  done
}

start() {
  if running; then
    if grep -qF "$marker" "$conf" && ! ours; then
      # Started by an older version of this script with fewer slots.
      echo "pkcsslotd (pid $(cat "$pidfile")) serves fewer than ${SLOTS:-10} slots: restarting it"
      stop
    elif ! ours; then
      echo "pkcsslotd (pid $(cat "$pidfile")) runs with another configuration; stop it first" >&2
      return 1
    fi
  fi
  if running; then
    echo "pkcsslotd already running (pid $(cat "$pidfile"))"
    return 0
  fi
  configure
  # A daemon killed hard leaves its shared memory and socket behind; it
  # starts cleanly over both.
  /usr/sbin/pkcsslotd
  for _ in $(seq 50); do
    if running && [ -S /var/run/pkcsslotd.socket ]; then
      echo "pkcsslotd running (pid $(cat "$pidfile")), ${SLOTS:-10} software-token slots"
      return 0
    fi
    sleep 0.1
  done
  echo "pkcsslotd did not start" >&2
  return 1
}

stop() {
  if ! running; then
    echo "pkcsslotd not running"
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { echo "pkcsslotd stopped"; return 0; }
    sleep 0.1
  done
  echo "pkcsslotd (pid $pid) did not stop" >&2
  return 1
}

# init_token wipes a slot's token and sets its PINs. openCryptoki 3.8's
# C_InitToken over an initialised software token leaves it unusable
# (C_Login then answers CKR_FUNCTION_FAILED), so the token is wiped the way
# it started: its directory emptied and its shared-memory image removed,
# which the next C_Initialize of a process reloads from the (now absent)
# files. No process may have the slot open meanwhile: test packages use
# slots of their own. The fresh token is initialised with the shipped SO
# PIN, which is then changed to SO_PIN, and the user PIN set.
wipe_token() {
  local slot=$1
  local dir=/var/lib/opencryptoki/kmsd-swtok-$slot
  [ -d "$dir" ] || { echo "no software token slot $slot; run $0 start" >&2; return 1; }
  rm -rf "${dir:?}"/* "/dev/shm/var.lib.opencryptoki.kmsd-swtok-$slot"
  install -d -m 0770 -g pkcs11 "$dir/TOK_OBJ"
}

init_token() {
  local slot=$1 label=$2 so=$3 pin=$4
  local p11=(pkcs11-tool --module "$lib" --slot "$slot")
  wipe_token "$slot"
  "${p11[@]}" --init-token --label "$label" --so-pin "$default_so" >/dev/null
  if [ "$so" != "$default_so" ]; then
    "${p11[@]}" --login --login-type so --so-pin "$default_so" --change-pin --new-pin "$so" >/dev/null
  fi
  "${p11[@]}" --login --login-type so --so-pin "$so" --init-pin --new-pin "$pin" >/dev/null
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && ours ;;
  module) echo "$lib" ;;
  init-token)
    [ $# -eq 5 ] || { echo "usage: $0 init-token SLOT LABEL SO_PIN USER_PIN" >&2; exit 2; }
    init_token "$2" "$3" "$4" "$5"
    ;;
  wipe-token)
    [ $# -eq 2 ] || { echo "usage: $0 wipe-token SLOT" >&2; exit 2; }
    wipe_token "$2"
    ;;
  *)
    echo "usage: $0 start|stop|status|module|init-token SLOT LABEL SO_PIN USER_PIN|wipe-token SLOT" >&2
    exit 2
    ;;
esac
