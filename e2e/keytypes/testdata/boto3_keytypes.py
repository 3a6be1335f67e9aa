"""Asymmetric and HMAC keys driven by boto3, checked with Python's
cryptography package: sign and verify offline (ECDSA, RSA-PSS with the
salt fixed to the hash length, Ed25519), RSA-OAEP made offline decrypted
by KMS, HMAC, and the typed errors. (Debian's boto3 predates
DeriveSharedSecret; the Go SDK test covers it.)

Usage: boto3_keytypes.py ENDPOINT

Credentials and region come from the environment (profile "kmsd").
Every check is an assert; the last line printed on success is
"boto3 keytypes ok".
"""

import hashlib
import sys

import boto3
from botocore.config import Config
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.exceptions import InvalidSignature


def create(kms, spec, usage):
    return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]


def public(kms, key_id):
    return serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])


def main(endpoint):
    kms = boto3.session.Session().client("kms", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))
    msg = b"boto3 asks kmsd to sign this"

    p384 = create(kms, "ECC_NIST_P384", "SIGN_VERIFY")
    md = kms.describe_key(KeyId=p384)["KeyMetadata"]
    assert md["SigningAlgorithms"] == ["ECDSA_SHA_384"] and "EncryptionAlgorithms" not in md, md
    sig = kms.sign(KeyId=p384, Message=msg, SigningAlgorithm="ECDSA_SHA_384")["Signature"]
    public(kms, p384).verify(sig, msg, ec.ECDSA(hashes.SHA384()))
    digest = hashlib.sha384(msg).digest()
    sig = kms.sign(KeyId=p384, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_384")["Signature"]
    public(kms, p384).verify(sig, msg, ec.ECDSA(hashes.SHA384()))
    assert kms.verify(KeyId=p384, Message=msg, Signature=sig, SigningAlgorithm="ECDSA_SHA_384")["SignatureValid"] is True
    try:
        kms.verify(KeyId=p384, Message=msg + b"!", Signature=sig, SigningAlgorithm="ECDSA_SHA_384")
        raise AssertionError("a signature of another message verified")
    except kms.exceptions.KMSInvalidSignatureException:
        pass

    rsa_sign = create(kms, "RSA_3072", "SIGN_VERIFY")
    sig = kms.sign(KeyId=rsa_sign, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_384")["Signature"]
    assert len(sig) == 384, len(sig)
    public(kms, rsa_sign).verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48), hashes.SHA384())

    ed = create(kms, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
    sig = kms.sign(KeyId=ed, Message=msg, SigningAlgorithm="ED25519_SHA_512")["Signature"]
    public(kms, ed).verify(sig, msg)

    rsa_enc = create(kms, "RSA_2048", "ENCRYPT_DECRYPT")
    ct = public(kms, rsa_enc).encrypt(msg, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    out = kms.decrypt(KeyId=rsa_enc, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    assert out["Plaintext"] == msg and out["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256", out

    mac_key = create(kms, "HMAC_384", "GENERATE_VERIFY_MAC")
    mac = kms.generate_mac(KeyId=mac_key, Message=msg, MacAlgorithm="HMAC_SHA_384")["Mac"]
    assert len(mac) == 48
    assert kms.verify_mac(KeyId=mac_key, Message=msg, Mac=mac, MacAlgorithm="HMAC_SHA_384")["MacValid"] is True
    try:
        kms.verify_mac(KeyId=mac_key, Message=msg, Mac=bytes([mac[0] ^ 1]) + mac[1:], MacAlgorithm="HMAC_SHA_384")
        raise AssertionError("a flipped MAC verified")
    except kms.exceptions.KMSInvalidMacException:
        pass
    try:
        kms.sign(KeyId=mac_key, Message=msg, SigningAlgorithm="RSASSA_PSS_SHA_256")
        raise AssertionError("an HMAC key signed")
    except kms.exceptions.InvalidKeyUsageException as e:
        assert e.response["Error"]["Message"].endswith("key usage is GENERATE_VERIFY_MAC which is not valid for Sign."), e
    print("boto3 keytypes ok")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except InvalidSignature:
        raise AssertionError("a kmsd signature does not verify offline")
