#!/usr/bin/env bash
# bench-xks.sh measures keys in an external key store end to end: kmsd (its
# XKS client, double encryption) → xks-proxy over HTTPS with SigV4 → keys in a
# SoftHSM2 token (default) or in the proxy's software key file. It prints
# ConnectCustomKeyStore → CONNECTED latency and Encrypt/Decrypt/GenerateDataKey
# throughput with p50/p99 at concurrency 1/16/64 (kmsbench).
#
#   scripts/bench-xks.sh [softhsm|keyfile] [kmsbench flags…]
#
# kmsd and the proxy share CPU 1 (GOMAXPROCS=1 each: the "server" is one
# core), kmsbench runs on CPU 0. KMSD_KEYSTORE_CONNECT_DELAY is 0 so the
# connect figure is the work of a connect (kmsd's default adds 500ms of
# CONNECTING for clients to observe). Everything binds 127.0.0.1 and is
# stopped on exit. Needs softhsm2 and opensc for the SoftHSM2 backend
# (scripts/test.sh installs them).
set -euo pipefail

backend=${1:-softhsm}
[ $# -gt 0 ] && shift
case "$backend" in softhsm | keyfile) ;; *)
	echo "usage: $0 [softhsm|keyfile] [kmsbench flags…]" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/bench-xks.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

freeport() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitport() {
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.05
	done
	echo "nothing listens on 127.0.0.1:$1" >&2
	exit 1
}

echo "building into $work"
(cd "$root" && go build -o "$work/kmsd" ./cmd/kmsd && go build -o "$work/xks-proxy" ./cmd/xks-proxy &&
	go build -o "$work/kmsbench" ./cmd/kmsbench)

akid=BENCHXKSACCESSKEYID234567
secret=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
(umask 077 && printf '%s' "$secret" >"$work/secret") # xks-proxy refuses a readable secret file
"$work/xks-proxy" dev-cert --hostname localhost,127.0.0.1 --out-dir "$work/pki" >/dev/null

export XKS_PROXY_KEYS_PASSPHRASE="bench passphrase"
proxy_port=$(freeport)
proxy_args=(serve --listen "127.0.0.1:$proxy_port" --access-key-id "$akid" --secret-access-key-file "$work/secret"
	--tls-cert "$work/pki/cert.pem" --tls-key "$work/pki/key.pem" --log-level warn)
if [ "$backend" = softhsm ]; then
	export SOFTHSM2_CONF="$work/softhsm2.conf"
	mkdir "$work/tokens"
	printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" >"$SOFTHSM2_CONF"
	softhsm2-util --init-token --free --label bench --pin 1234 --so-pin 12345678 >/dev/null
	pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label bench --login --pin 1234 \
		--keygen --key-type AES:32 --label bench-key --usage-decrypt >/dev/null 2>&1
	printf '1234\n' >"$work/pin"
	proxy_args+=(--pkcs11-module /usr/lib/softhsm/libsofthsm2.so --pkcs11-token-label bench --pkcs11-pin-file "$work/pin")
else
	"$work/xks-proxy" keys create --keys-file "$work/keys.json" --id bench-key >/dev/null
	proxy_args+=(--keys-file "$work/keys.json")
fi
GOMAXPROCS=1 taskset -c 1 "$work/xks-proxy" "${proxy_args[@]}" >"$work/proxy.log" 2>&1 &
pids+=($!)
waitport "$proxy_port"

kmsd_port=$(freeport)
admin_id=AKIABENCHXKSADMIN001
admin_secret=$(head -c 30 /dev/urandom | base64 | tr -d '\n/+=')
KMSD_ADMIN_ACCESS_KEY_ID=$admin_id KMSD_ADMIN_SECRET_ACCESS_KEY=$admin_secret KMSD_KEYSTORE_CONNECT_DELAY=0 \
	GOMAXPROCS=1 taskset -c 1 "$work/kmsd" serve --listen "127.0.0.1:$kmsd_port" --data-dir "$work/data" \
	--log-level warn --xks-ca-bundle "$work/pki/ca.pem" >"$work/kmsd.log" 2>&1 &
kmsd_pid=$!
pids+=("$kmsd_pid")
waitport "$kmsd_port"

endpoint="http://127.0.0.1:$kmsd_port"
export AWS_ACCESS_KEY_ID=$admin_id AWS_SECRET_ACCESS_KEY=$admin_secret AWS_DEFAULT_REGION=us-east-1 AWS_PAGER= \
	AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
awskms() { /usr/bin/aws --endpoint-url "$endpoint" --output text kms "$@"; }

store=$(awskms create-custom-key-store --custom-key-store-name bench --custom-key-store-type EXTERNAL_KEY_STORE \
	--xks-proxy-connectivity PUBLIC_ENDPOINT --xks-proxy-uri-endpoint "https://localhost:$proxy_port" \
	--xks-proxy-uri-path /kms/xks/v1 \
	--xks-proxy-authentication-credential "AccessKeyId=$akid,RawSecretAccessKey=$secret" \
	--query CustomKeyStoreId)
echo "backend $backend, store $store"

bench=("$work/kmsbench" -endpoint "$endpoint" -access-key "$admin_id" -secret-key "$admin_secret" -server-pid "$kmsd_pid")
"${bench[@]}" -connect-store "$store" -connect-rounds 20

awskms connect-custom-key-store --custom-key-store-id "$store" >/dev/null
for _ in $(seq 200); do
	state=$(awskms describe-custom-key-stores --custom-key-store-id "$store" --query 'CustomKeyStores[0].ConnectionState')
	[ "$state" = CONNECTED ] && break
	sleep 0.05
done
[ "$state" = CONNECTED ] || { echo "store $store is $state" >&2; exit 1; }
key=$(awskms create-key --origin EXTERNAL_KEY_STORE --custom-key-store-id "$store" --xks-key-id bench-key \
	--query KeyMetadata.KeyId)
echo "key $key"
"${bench[@]}" -key-id "$key" -ops encrypt,decrypt,generatedatakey -duration 4s "$@"
