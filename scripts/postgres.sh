#!/usr/bin/env bash
# Runs a private PostgreSQL 15 server (Debian's postgresql-15 binaries) for
# the tests, in a directory of its own, as an unprivileged user.
#
#   scripts/postgres.sh start DIR [PORT]  create the cluster in DIR if absent
#                                         and start it; prints its URL
#   scripts/postgres.sh stop DIR [MODE]   stop the server of DIR (MODE: fast, the
#                                         default, or smart or immediate)
#   scripts/postgres.sh restart DIR [MODE] stop (MODE as for stop) and start
#                                         again with the same options and port
#   scripts/postgres.sh standby DIR PRIMARY_DIR [PORT]
#                                         make DIR a synchronous streaming
#                                         standby of the server of PRIMARY_DIR
#                                         (pg_basebackup -R, application_name
#                                         s1, synchronous_standby_names
#                                         'FIRST 1 (s1)' on the primary), start
#                                         it on PORT (default: a free one),
#                                         print its URL
#   scripts/postgres.sh promote DIR       promote the standby of DIR
#   scripts/postgres.sh status DIR        exit 0 when the server of DIR runs
#   scripts/postgres.sh url DIR           print the server's URL
#
# KMSD_PG_SHARED_BUFFERS sets the server's shared_buffers (default 64MB, a
# test server's; the large-store measurement runs with one that holds its
# million-key index, as a production server's would).
#
# The server listens on 127.0.0.1:PORT only (PORT default: a free one picked
# here) and on a unix socket in DIR/sock, never on another address. Its
# superuser is "kmsd" with a random password kept in DIR/password (mode
# 0600), scram-sha-256 for every connection; the URL printed names the
# "postgres" database, in which tests create databases of their own. When
# run as root (as CI does) the server runs as the system user kmsdtest,
# created here if missing, since PostgreSQL refuses to run as root.
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,29p' "$0"; exit 2; }

as_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u kmsdtest -- "$@"; else "$@"; fi
}

# free_port prints a free port on 127.0.0.1 below the kernel's ephemeral
# range: a port bound with ":0" and closed may be taken next by an outgoing
# connection, and the server restarts on its port (restart, stop + start).
free_port() {
  python3 - <<'PY'
import random, socket
lo, hi = 32768, 60999
try:
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
except Exception:
    pass
a, z = (20000, lo - 1) if lo > 21000 else (1024, 65535)
for _ in range(200):
    p = random.randint(a, z)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}

url() {
  local port pass
  port=$(cat "$dir/port")
  pass=$(cat "$dir/password")
  echo "postgres://kmsd:$pass@127.0.0.1:$port/postgres?sslmode=disable"
}

running() {
  [ -d "$dir/data" ] && as_user "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

case "$cmd" in
start)
  [ -x "$bin/initdb" ] || { echo "postgres.sh: $bin/initdb missing (apt-get install postgresql)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" -eq 0 ]; then
    id kmsdtest >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin kmsdtest
    chown kmsdtest "$dir"
    runuser -u kmsdtest -- test -w "$dir" || {
      echo "postgres.sh: the user kmsdtest cannot reach $dir (a parent directory is closed to others); use a directory under /tmp" >&2
      exit 1
    }
  fi
  if running; then url; exit 0; fi
  if [ ! -d "$dir/data" ]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/password")
    [ "$(id -u)" -ne 0 ] || chown kmsdtest "$dir/password"
    as_user "$bin/initdb" -D "$dir/data" -U kmsd --pwfile="$dir/password" --auth=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  port=${3:-}
  if [ -z "$port" ]; then
    port=$(free_port)
  fi
  echo "$port" > "$dir/port"
  mkdir -p "$dir/sock"
  [ "$(id -u)" -ne 0 ] || chown kmsdtest "$dir/sock" "$dir/port"
  # fsync stays on: the tests prove durability across kill -9.
  as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir/sock -c max_connections=200 -c shared_buffers=${KMSD_PG_SHARED_BUFFERS:-64MB}" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  url
  ;;
stop)
  if running; then as_user "$bin/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null; fi
  ;;
restart)
  # pg_ctl restart keeps the options of the last start (postmaster.opts),
  # so the server comes back on the same port and socket directory; -w
  # returns once it accepts connections.
  as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m "${3:-fast}" -w -t 60 restart >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  ;;
standby)
  primary=${3:-}
  [ -n "$primary" ] && [ -f "$primary/port" ] || { echo "postgres.sh: standby needs the primary's DIR" >&2; exit 2; }
  primary=$(cd "$primary" && pwd)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ "$(id -u)" -ne 0 ] || chown kmsdtest "$dir"
  pport=$(cat "$primary/port")
  port=${4:-$(free_port)}
  (umask 077; cp "$primary/password" "$dir/password"
   printf '*:*:*:kmsd:%s\n' "$(cat "$primary/password")" > "$dir/pgpass")
  echo "$port" > "$dir/port"
  mkdir -p "$dir/sock"
  [ "$(id -u)" -ne 0 ] || chown kmsdtest "$dir/password" "$dir/pgpass" "$dir/port" "$dir/sock"
  # The password reaches the tools through a passfile, never argv; -R
  # writes primary_conninfo (with application_name s1) into the standby.
  as_user env PGPASSFILE="$dir/pgpass" "$bin/pg_basebackup" -d "host=127.0.0.1 port=$pport user=kmsd application_name=s1" \
    -D "$dir/data" -R -X stream -c fast >"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; exit 1; }
  as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir/sock -c max_connections=200 -c shared_buffers=${KMSD_PG_SHARED_BUFFERS:-64MB}" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
  psql() { as_user env PGPASSFILE="$dir/pgpass" "$bin/psql" -X -q -t -A -h 127.0.0.1 -p "$pport" -U kmsd -d postgres "$@"; }
  psql -c "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (s1)'" -c "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 300); do
    [ "$(psql -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 's1' AND sync_state = 'sync'")" = 1 ] && { url; exit 0; }
    sleep 0.1
  done
  echo "postgres.sh: the standby did not become synchronous in 30 s" >&2
  exit 1
  ;;
promote)
  as_user "$bin/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null
  ;;
status)
  running
  ;;
url)
  url
  ;;
*)
  sed -n '2,29p' "$0"; exit 2
  ;;
esac
