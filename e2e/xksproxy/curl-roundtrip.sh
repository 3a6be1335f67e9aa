#!/bin/sh
# An independent XKS client: curl signs with --aws-sigv4 (service kms-xks-proxy),
# sends Encrypt with AAD and a CDIV request, then Decrypt with the returned IV, tag
# and ciphertextMetadata, and prints the recovered plaintext.
#
# usage: curl-roundtrip.sh BASE_URL ACCESS_KEY_ID SECRET_FILE CA_FILE KEY_ID PLAINTEXT AAD
#   BASE_URL is https://host:port/prefix (without /kms/xks/v1)
set -eu
base=$1 akid=$2 secret=$(cat "$3") ca=$4 key=$5 pt=$6 aad=$7
b64() { printf '%s' "$1" | base64 -w0; }
field() { printf '%s' "$1" | sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p"; }
call() {
	curl -sS --fail-with-body --cacert "$ca" --aws-sigv4 "aws:amz:us-east-1:kms-xks-proxy" \
		--user "$akid:$secret" -H 'Content-Type: application/json' -d "$2" "$base/kms/xks/v1/keys/$key/$1"
}
md='"requestMetadata":{"awsPrincipalArn":"arn:aws:iam::111122223333:user/curl","kmsKeyArn":"arn:aws:kms:us-east-1:111122223333:key/curl","kmsOperation":"OP","kmsRequestId":"curl-OP"}'
enc=$(call encrypt "{$(echo "$md" | sed s/OP/Encrypt/g),\"plaintext\":\"$(b64 "$pt")\",\"encryptionAlgorithm\":\"AES_GCM\",\"additionalAuthenticatedData\":\"$(b64 "$aad")\",\"ciphertextDataIntegrityValueAlgorithm\":\"SHA_256\"}")
ct=$(field "$enc" ciphertext)
iv=$(field "$enc" initializationVector)
tag=$(field "$enc" authenticationTag)
meta=$(field "$enc" ciphertextMetadata)
cdiv=$(field "$enc" ciphertextDataIntegrityValue)
[ -n "$ct" ] && [ -n "$iv" ] && [ -n "$tag" ] && [ -n "$cdiv" ] || { echo "bad encrypt answer: $enc" >&2; exit 1; }
# Recompute the CDIV as KMS does: SHA-256(AAD || metadata || IV || ciphertext || tag).
want=$( { printf '%s' "$aad"; printf '%s' "$meta" | base64 -d; printf '%s' "$iv" | base64 -d;
	printf '%s' "$ct" | base64 -d; printf '%s' "$tag" | base64 -d; } | openssl dgst -sha256 -binary | base64 -w0)
[ "$want" = "$cdiv" ] || { echo "CDIV mismatch: got $cdiv want $want" >&2; exit 1; }
metafield=""
[ -z "$meta" ] || metafield=",\"ciphertextMetadata\":\"$meta\""
dec=$(call decrypt "{$(echo "$md" | sed s/OP/Decrypt/g),\"ciphertext\":\"$ct\",\"encryptionAlgorithm\":\"AES_GCM\",\"initializationVector\":\"$iv\",\"authenticationTag\":\"$tag\",\"additionalAuthenticatedData\":\"$(b64 "$aad")\"$metafield}")
out=$(field "$dec" plaintext)
[ -n "$out" ] || { echo "bad decrypt answer: $dec" >&2; exit 1; }
printf '%s' "$out" | base64 -d
printf '\nmetadata=%s\n' "$meta"
