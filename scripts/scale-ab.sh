#!/usr/bin/env bash
# scale-ab.sh: kmsd's CPU per request on several stores (or binaries) at
# once, interleaved, so that a shared machine's slow minutes fall on every
# configuration alike.
#
#   scripts/scale-ab.sh [-o OP] [-d DURATION] [-r ROUNDS] [-w WARMUP] [-p PGDIR] NAME=KMSD@STORE...
#
# Each NAME=KMSD@STORE is a kmsd binary (or a script that execs one) and
# a store made by e2e/scale (STORE/data, STORE/ids; two configurations
# never share a store). A PostgreSQL store kept by e2e/scale also has
# STORE/args, kmsd's flags for its database and root key, which are
# passed on. With -p PGDIR (a server of scripts/postgres.sh) each window
# and total also gives that server's CPU per request (the postmaster and
# its children; the idle configurations' background falls in it too),
# and each PostgreSQL store's total also the CPU of the server processes
# working for its own database (its kmsd's connections, autovacuum) from
# the end of the warm-up to the end, like kmsd's: a merge of last uses
# that one configuration runs during another's window is charged to its
# own database there, not to the window it fell in.
#
# Every kmsd starts at once on CPU 1 with its cache preloaded
# (--cache-size 1100000 --cache-preload on); kmsbench runs on CPU 0 with
# 16 connections, first WARMUP (default 20s) on each, then DURATION
# (default 30s) on each in turn, ROUNDS (default 6) times, every other
# round in the reverse order (in an A/A run of one binary on two copies
# of a store, the second window of three rounds in six read 3.5–4.7 µs a
# request above the first; alternating gives no configuration a fixed
# place), OP (default encrypt) on a random key of STORE/ids. kmsbench
# needs to be on PATH or in $KMSBENCH.
#
# It prints each window (kmsbench's requests and server CPU per request)
# and, per configuration, the total: the process's CPU time from the end
# of the warm-up to the end of the last window, idle periods included
# (a merge of last uses that falls between its windows is its own cost),
# over the requests of its windows, which run with no warm-up of their own,
# and how many merges of last uses the kmsd logged in that time (a kmsd
# older than the count-triggered merge logs none).
# The stores' kmsd processes are stopped at the end by their process ids.
set -euo pipefail

op=encrypt dur=30s rounds=6 warm=20s pgdir=
while getopts o:d:r:w:p: f; do
	case $f in
	o) op=$OPTARG ;;
	d) dur=$OPTARG ;;
	r) rounds=$OPTARG ;;
	w) warm=$OPTARG ;;
	p) pgdir=$OPTARG ;;
	*) sed -n '2,38p' "$0" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,38p' "$0" >&2; exit 2; }
bench=${KMSBENCH:-$(command -v kmsbench || true)}
[ -x "$bench" ] || { echo "scale-ab: kmsbench not found (go build -o /tmp/kmsbench ./cmd/kmsbench; KMSBENCH=/tmp/kmsbench)" >&2; exit 2; }

tmp=$(mktemp -d)
declare -A pid port store
names=()
cleanup() {
	for n in "${names[@]}"; do
		[ -n "${pid[$n]:-}" ] && kill "${pid[$n]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

for spec in "$@"; do
	n=${spec%%=*} rest=${spec#*=}
	bin=${rest%%@*} st=${rest#*@}
	[ -f "$st/data/credentials" ] && [ -f "$st/ids" ] || { echo "scale-ab: $st is not a store of e2e/scale" >&2; exit 2; }
	names+=("$n")
	store[$n]=$st
	extra=()
	if [ -f "$st/args" ]; then read -ra extra <"$st/args"; fi
	taskset -c 1 "$bin" serve --data-dir "$st/data" --listen 127.0.0.1:0 --cache-size 1100000 \
		--cache-preload on --log-level info "${extra[@]}" >"$tmp/$n.log" 2>&1 &
	pid[$n]=$!
done
for n in "${names[@]}"; do
	for _ in $(seq 1 1500); do
		grep -q "cache preloaded" "$tmp/$n.log" && break
		kill -0 "${pid[$n]}" 2>/dev/null || { cat "$tmp/$n.log" >&2; exit 1; }
		sleep 0.2
	done
	grep -q "cache preloaded" "$tmp/$n.log" || { echo "scale-ab: $n did not preload" >&2; exit 1; }
	port[$n]=$(sed -n 's|.*serving the AWS KMS API at http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$tmp/$n.log" | head -1)
done

run() { # NAME WARMUP DURATION: kmsbench's result line
	local n=$1 st=${store[$1]}
	taskset -c 0 "$bench" -pin=false -endpoint "http://127.0.0.1:${port[$n]}" \
		-access-key "$(awk -F' = ' '/aws_access_key_id/{print $2}' "$st/data/credentials")" \
		-secret-key "$(awk -F' = ' '/aws_secret_access_key/{print $2}' "$st/data/credentials")" \
		-server-pid "${pid[$n]}" -key-ids "$st/ids" -ops "$op" -c 16 -warmup "$2" -duration "$3" 2>&1 |
		awk '$2 == 16 && $3 ~ /^[0-9]+$/'
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
# pgcpu prints the PostgreSQL server's CPU so far in clock ticks (0
# without -p): the postmaster's own and its waited-for children's, and
# its live children's.
pgcpu() {
	[ -n "$pgdir" ] || { echo 0; return; }
	local pm
	pm=$(head -1 "$pgdir/data/postmaster.pid")
	{
		awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat"
		for c in $(pgrep -P "$pm"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
	} | awk '{ s += $1 } END { print s }'
}
# dbcpu DB prints the CPU so far, in clock ticks, of the live server
# processes working for database DB: its backends (kmsd's pooled
# connections, which live as long as kmsd) and autovacuum workers.
dbcpu() {
	[ -n "$pgdir" ] && [ -n "$1" ] || { echo 0; return; }
	local pm c
	pm=$(head -1 "$pgdir/data/postmaster.pid")
	for c in $(pgrep -P "$pm"); do
		case " $(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null) " in
		*" $1 "*) awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true ;;
		esac
	done | awk '{ s += $1 } END { print s + 0 }'
}
pgper() { # TICKS REQUESTS: " PostgreSQL X µs/req", or nothing without -p
	[ -n "$pgdir" ] && awk -v c="$1" -v r="$2" -v t="$tck" 'BEGIN { printf ", PostgreSQL %.1f µs/req", c / t * 1e6 / r }'
	return 0
}

# merges counts a kmsd's merges of its last-use journal so far (logged).
merges() { grep -c 'merged the journal' "$tmp/$1.log" || true; }
declare -A cpu0 reqs pgsum db db0 merge0
for n in "${names[@]}"; do run "$n" 0 "$warm" >/dev/null; done
for n in "${names[@]}"; do
	cpu0[$n]=$(cpu "${pid[$n]}") reqs[$n]=0 pgsum[$n]=0 merge0[$n]=$(merges "$n")
	db[$n]=$(sed -n 's|.*--database-url [^ ]*/\([^/?[:space:]]*\).*|\1|p' "${store[$n]}/args" 2>/dev/null || true)
	db0[$n]=$(dbcpu "${db[$n]}")
done
for r in $(seq 1 "$rounds"); do
	order=("${names[@]}")
	if ((r % 2 == 0)); then # every other round backwards: A B, B A, A B, …
		order=()
		for ((i = ${#names[@]} - 1; i >= 0; i--)); do order+=("${names[$i]}"); done
	fi
	for n in "${order[@]}"; do
		p0=$(pgcpu)
		line=$(run "$n" 0 "$dur")
		p=$(($(pgcpu) - p0))
		read -r _ _ q _ _ _ _ us sys _ <<<"$line"
		reqs[$n]=$((reqs[$n] + q)) pgsum[$n]=$((pgsum[$n] + p))
		echo "round $r $n: $q requests, server $us µs/req ($sys system)$(pgper "$p" "$q")"
	done
done
for n in "${names[@]}"; do
	c=$(($(cpu "${pid[$n]}") - cpu0[$n]))
	awk -v n="$n" -v c="$c" -v r="${reqs[$n]}" -v t="$tck" \
		'BEGIN { printf "total %s: %d requests, %.1f s of CPU, %.1f µs/req", n, r, c / t, c / t * 1e6 / r }'
	printf '%s' "$(pgper "${pgsum[$n]}" "${reqs[$n]}")"
	if [ -n "$pgdir" ] && [ -n "${db[$n]}" ]; then
		awk -v c="$(($(dbcpu "${db[$n]}") - db0[$n]))" -v r="${reqs[$n]}" -v t="$tck" -v d="${db[$n]}" \
			'BEGIN { printf "; its database %s, over the run: %.1f µs/req", d, c / t * 1e6 / r }'
	fi
	echo "; $(($(merges "$n") - merge0[$n])) merges of last uses"
done
