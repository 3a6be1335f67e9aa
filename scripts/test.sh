#!/usr/bin/env bash
# Runs every kmsd test on this machine, installing what the tests use when
# it is absent: a C toolchain for cgo and -race (gcc, libc6-dev), Debian's
# aws CLI v2 (awscli), boto3 (python3-boto3), Python's cryptography (the
# key-type tests' third oracle), SoftHSM2, openCryptoki (the second
# PKCS#11 implementation; its pkcsslotd daemon runs during the tests,
# started and stopped by scripts/opencryptoki.sh) and OpenSC
# (pkcs11-tool), curl, PostgreSQL 15 (postgresql; a private server runs
# during the tests, started and stopped by scripts/postgres.sh, its URL in
# KMSD_TEST_DATABASE_URL), Chromium (the web console's end-to-end tests
# drive it headless through chromedp), and staticcheck from the Go module
# proxy. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
[ -x /usr/bin/aws ] || need+=(awscli)
/usr/bin/python3 -c 'import boto3' 2>/dev/null || need+=(python3-boto3)
/usr/bin/python3 -c 'import cryptography' 2>/dev/null || need+=(python3-cryptography)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
[ -x /usr/sbin/pkcsslotd ] || need+=(opencryptoki)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

export PATH="$PATH:$(go env GOPATH)/bin"
if ! command -v staticcheck >/dev/null; then
  echo "== installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change: $bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...

# Services the tests use, stopped when this script ends (one EXIT trap
# runs every stop registered here).
stops=()
trap 'for c in "${stops[@]}"; do eval "$c" || true; done' EXIT

echo "== openCryptoki's pkcsslotd"
# A system-wide daemon (unix socket, no network port): started here unless
# it runs already, and then stopped when this script ends.
if ! $sudo scripts/opencryptoki.sh status; then
  $sudo scripts/opencryptoki.sh start
  stops+=('$sudo scripts/opencryptoki.sh stop')
fi

echo "== PostgreSQL"
# A private server on 127.0.0.1 (a free port) and a socket in its own
# directory, for the storage/postgres and e2e/postgres tests; each test
# creates a database of its own on it.
if [ -z "${KMSD_TEST_DATABASE_URL:-}" ]; then
  pgdir=$(mktemp -d /tmp/kmsd-ci-pg.XXXXXX)
  stops+=('scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"')
  KMSD_TEST_DATABASE_URL=$(scripts/postgres.sh start "$pgdir")
  export KMSD_TEST_DATABASE_URL
fi

# gotest runs go test with its arguments and, when it fails, repeats at the
# end what the failing tests themselves printed (their --- FAIL lines and
# t.Log/t.Error lines, not the server logs e2e tests dump on failure), so
# that the cause is in the last lines of a long CI output.
gotest() {
  local log
  log=$(mktemp /tmp/kmsd-ci-gotest.XXXXXX)
  if go test "$@" 2>&1 | tee "$log"; then rm -f "$log"; return 0; fi
  echo "== what failed (the failing tests' own lines from the output above)"
  grep -E -- '^ *--- FAIL|^ +[A-Za-z0-9_]+_test\.go:[0-9]+: |^panic: |^FAIL' "$log" | cut -c1-500 | tail -150 || true
  rm -f "$log"
  return 1
}

echo "== go test -race"
# e2e/multinode (the multi-node acceptance tests of MULTINODE §8) starts
# PostgreSQL servers of its own with scripts/postgres.sh, since it crashes,
# restarts and fails them over; its short versions run here (about 3.5 min;
# A8, 1,000 keys rotated exactly once across a controller kill, is ~30 s;
# A6, the key store controller killed at five failpoints, 20-60 s; A7, the
# controller frozen mid-connect past 2 × its lease TTL twice, 35-45 s; the
# other key store tests on several nodes 15-40 s).
# A2, porcupine over 8 paced clients with kills, a PostgreSQL restart and a
# blackhole, is ~25 s here. KMSD_MULTINODE_FULL=1 runs the full-length ones;
# KMSD_MULTINODE_PENDING=1 any gated as known to fail (none now).
# e2e/multinode/load runs alone after the others (below).
gotest -race -count=1 -timeout 20m $(go list ./... | grep -v '/e2e/multinode/load$')

echo "== go test -race ./e2e/multinode/load/ (alone)"
# A11, a custom key store's quota shared by three nodes at a sixth of AWS's
# rates (about 80 s), measures rates: three nodes, PostgreSQL, the XKS proxy
# and three load generators on two cores. Beside another -race test binary
# (go test runs two packages at once here) the nodes' change feed and
# heartbeats starve: data-plane reads fall back to the database past
# --cache-max-staleness and time out, and fewer requests than the quota
# are accepted (one CI run failed so; two CPU hogs beside it reproduce
# it). Its A10 throughput measurement runs only with KMSD_A10=1.
gotest -race -count=1 -timeout 10m ./e2e/multinode/load/

echo "== PKCS#11 tests again on openCryptoki"
# The tests parameterised by PKCS#11 implementation, on openCryptoki's
# software token; one implementation per test process (see
# internal/xks/keyman/pkcs11/pkcs11test). e2e/hsm's tests take the slots
# 0, 1 and 4-9 scripts/opencryptoki.sh configures, one test at a time.
KMSD_TEST_PKCS11=opencryptoki gotest -race -count=1 -timeout 15m \
  -run '^(TestDeclaredKeyStore|TestCreatedHSMKeyStore|TestClusterLifecycle|TestDeclaredCluster|TestBackupRepairPath|TestBackupCrash|TestConfigFileSoftHSMAndKeyFile|TestBench|TestConformance|TestWrongPIN)$' \
  ./e2e/hsm/ ./e2e/xksproxy/ ./internal/xks/keyman/pkcs11/

echo "== without cgo"
# The PKCS#11 code has a stub for builds without cgo; these are its tests
# (the rest of those packages needs cgo and ran above).
CGO_ENABLED=0 go build ./...
CGO_ENABLED=0 go test -count=1 -run '^(TestUnavailable|TestNoCgo)$' ./internal/hsm/ ./internal/xks/keyman/pkcs11/

echo "== fuzz (briefly)"
# Go's fuzz engine can fail a clean run with "context deadline exceeded"
# when fuzztime ends while a worker minimises a new input (seen on a loaded
# machine): that one case is run again once; a failing input never is.
fuzz() {
  echo "-- fuzz $1 $2"
  local out
  if out=$(go test -run='^$' -fuzz="^$2\$" -fuzztime="${FUZZTIME:-10s}" "$1" 2>&1); then
    echo "$out" | tail -2; return 0
  fi
  echo "$out"
  if echo "$out" | grep -q 'context deadline exceeded' && ! echo "$out" | grep -q 'Failing input'; then
    echo "-- fuzz $1 $2: the engine's deadline flake; once more"
    go test -run='^$' -fuzz="^$2\$" -fuzztime="${FUZZTIME:-10s}" "$1"
    return
  fi
  return 1
}
fuzz ./internal/sigv4 FuzzParseAuthorization
fuzz ./internal/sigv4 FuzzVerify
fuzz ./internal/awsjson FuzzDecode
fuzz ./internal/policy FuzzParse
fuzz ./internal/server FuzzAssumeRoleInput
fuzz ./internal/server FuzzKeyTypeOperations
fuzz ./internal/server FuzzOperations
fuzz ./internal/netallow FuzzParse
fuzz ./internal/keys FuzzParseBlob
fuzz ./internal/keys FuzzParseExternalBlob
fuzz ./internal/keys FuzzParseLocalKMSBlob
fuzz ./internal/seed FuzzParse
fuzz ./internal/server FuzzDecodeRequest
fuzz ./internal/xks FuzzParseEncryptRequest
fuzz ./internal/xks FuzzParseDecryptRequest
fuzz ./internal/xks/xksserver FuzzRoute
fuzz ./internal/xks/xksclient FuzzParseResponse
fuzz ./internal/server FuzzReadBackupHeader
fuzz ./internal/cli FuzzLegacyLiterals
echo "== all tests passed"
