#!/usr/bin/env bash
# servecost.sh counts what one request of internal/server's BenchmarkServe
# costs above its primitive, in work that does not depend on the machine's
# load: instructions executed (Ir) and misses of a simulated L1 instruction
# cache (I1mr) and L1 data cache (D1mr), this machine's cache sizes read
# from sysfs. Each case's handler and primitive run under valgrind's
# cachegrind twice, with N and 3N iterations; the difference divided by 2N
# is the cost of one iteration, the setup (key creation, first call,
# start-up) cancelled out.
#
#   scripts/servecost.sh [case…]     (default: Encrypt, Verify/ECC_NIST_P256, Sign/ECC_NIST_P256)
#
# A case is a BenchmarkServe sub-benchmark name (Encrypt, Sign/RSA_2048,
# GenerateMac/HMAC_256, GenerateDataKeyPair/ECC_NIST_P256,
# Encrypt+VerifyPrimitive, …). Wall-clock figures on a shared machine move
# by several µs from run to run; these counts move by a few thousand
# instructions (2–3% of Encrypt's overhead; the garbage collector's share
# varies), so they show whether a change removed work of that size or more. An L1 miss costs roughly 5–15 ns of a
# request when the next level holds the line: the misses a handler adds
# around a large primitive (its code and data evicted by the primitive's,
# and the primitive's by its own) are the part of the overhead that
# instruction counts do not show. Cases on RSA keys have a fixed setup:
# BenchmarkServe gives them a fixed RSA key (testdata/rsa2048.pem) instead
# of generating one, whose cost is random and would not cancel out; their
# primitive now counts the same to 0.05% from run to run. Their handler
# still counts poorly (Sign/RSA_2048 above its primitive: 108,000-185,000
# Ir, 1,800-4,000 I1mr in four runs), most likely because the audit
# writer's and the last-use tracker's flushes are timed by the wall clock
# (every 100 ms, every interval) and valgrind stretches one RSA request to
# ~50 ms, so that their share of a request depends on the machine's load.
# GenerateDataKeyPair cases run N = 480 (2N is a multiple of every batch
# size in kms.PairPool): with EC pairs made in batches, N and 3N requests
# then leave the same number of pairs made but not handed out, which
# would otherwise count as some requests' cost (8 P-256 pairs more in 3N
# than in N at N = 300: +2,100 Ir a request).
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || {
	echo "servecost.sh: valgrind is not installed (apt-get install valgrind)" >&2
	exit 1
}
[ $# -gt 0 ] || set -- Encrypt Verify/ECC_NIST_P256 Sign/ECC_NIST_P256

work=$(mktemp -d /tmp/servecost.XXXXXX)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/server.test" ./internal/server

# cache LEVEL TYPE prints valgrind's size,assoc,line for cpu0's cache.
cache() {
	for d in /sys/devices/system/cpu/cpu0/cache/index*; do
		if [ "$(cat "$d/level")" = "$1" ] && [ "$(cat "$d/type")" = "$2" ]; then
			size=$(cat "$d/size")
			echo "$((${size%K} * 1024)),$(cat "$d/ways_of_associativity"),$(cat "$d/coherency_line_size")"
			return
		fi
	done
}
caches=()
if c=$(cache 1 Data) && [ -n "$c" ]; then caches+=(--D1="$c"); fi
if c=$(cache 1 Instruction) && [ -n "$c" ]; then caches+=(--I1="$c"); fi
if c=$(cache 2 Unified) && [ -n "$c" ]; then caches+=(--LL="$c"); fi

# run NAME PATTERN N prints the summary line (Ir I1mr ILmr Dr D1mr DLmr Dw
# D1mw DLmw) of N iterations. Asynchronous preemption is off: valgrind
# mishandles Go's preemption signal. GOMAXPROCS=1 (kmsbench's kmsd runs on
# one core too): with more Ps, idle Ms spin looking for work each time a
# request wakes the audit writer, and under valgrind, which runs one thread
# at a time, how long they spin varies by tens of thousands of
# instructions per request. cpu.rdtscp=off: since Go 1.26 the runtime
# reads the cycle counter with RDTSCP where the CPU has it, which
# valgrind's x86 decoder does not know (SIGILL in runtime.cputicks).
run() {
	GOMAXPROCS=1 GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off valgrind --tool=cachegrind --cache-sim=yes "${caches[@]}" \
		--cachegrind-out-file="$work/$1.$3" "$work/server.test" -test.run '^$' \
		-test.bench "$2" -test.benchtime "${3}x" >"$work/$1.$3.log" 2>&1 || {
		# Without this the counts of two failed runs would pass for a cost.
		echo "servecost.sh: $2 failed:" >&2
		grep -v '^==' "$work/$1.$3.log" | tail -5 >&2
		exit 1
	}
	sed -n 's/^summary: //p' "$work/$1.$3"
}

# perop NAME PATTERN N prints "Ir I1mr D1mr" of one iteration.
perop() {
	a=$(run "$1" "$2" "$3")
	b=$(run "$1" "$2" "$(($3 * 3))")
	echo "$a" "$b" | awk -v n="$(($3 * 2))" '{ printf "%d %d %d\n", ($10-$1)/n, ($11-$2)/n, ($14-$5)/n }'
}

printf '%-36s %10s %10s %10s   (per request; handler - primitive)\n' case Ir I1mr D1mr
for c in "$@"; do
	# The pattern anchors each level of the name (Encrypt, not
	# Encrypt+VerifyPrimitive); '+' is escaped for the regexp.
	pat="BenchmarkServe"
	IFS=/ read -ra parts <<<"$c"
	for p in "${parts[@]}"; do pat="$pat/^${p//+/\\+}\$"; done
	n=300
	case "$c" in Sign/RSA*) n=60 ;; Encrypt | GenerateMac*) n=1000 ;; GenerateDataKeyPair*) n=480 ;; esac
	h=$(perop handler "$pat/^handler\$" "$n")
	p=$(perop primitive "$pat/^primitive\$" "$n")
	echo "$h $p" | awk -v c="$c" '{ printf "%-36s %10d %10d %10d   (%d %d %d - %d %d %d)\n", c, $1-$4, $2-$5, $3-$6, $1, $2, $3, $4, $5, $6 }'
done
