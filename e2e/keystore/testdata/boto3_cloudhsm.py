"""A CloudHSM key store driven by boto3: create, connect, describe, a key
in it, encrypt/decrypt and a data key, disconnect.

Usage: boto3_cloudhsm.py ENDPOINT CLUSTER_ID TRUST_ANCHOR_FILE KMSUSER_PASSWORD

Credentials and region come from the environment (profile "kmsd").
Every check is an assert; the last line printed on success is
"boto3 cloudhsm ok".
"""

import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def wait_state(kms, store_id, want):
    deadline = time.time() + 20
    while time.time() < deadline:
        s = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]
        if s["ConnectionState"] not in ("CONNECTING", "DISCONNECTING"):
            assert s["ConnectionState"] == want, f"store {store_id}: {s['ConnectionState']} {s.get('ConnectionErrorCode')}, want {want}"
            return s
        time.sleep(0.1)
    raise AssertionError(f"store {store_id} stays in a transient state")


def main(endpoint, cluster_id, anchor_file, password):
    kms = boto3.session.Session().client("kms", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))
    with open(anchor_file) as f:
        anchor = f.read()
    store_id = kms.create_custom_key_store(
        CustomKeyStoreName="boto3-store", CloudHsmClusterId=cluster_id, TrustAnchorCertificate=anchor, KeyStorePassword=password
    )["CustomKeyStoreId"]
    assert store_id.startswith("cks-") and len(store_id) == 21, store_id
    s = kms.describe_custom_key_stores(CustomKeyStoreName="boto3-store")["CustomKeyStores"][0]
    assert s["CustomKeyStoreId"] == store_id and s["ConnectionState"] == "DISCONNECTED", s
    assert s["CloudHsmClusterId"] == cluster_id and s["CustomKeyStoreType"] == "AWS_CLOUDHSM", s
    assert "KeyStorePassword" not in s and "ConnectionErrorCode" not in s, s

    try:
        kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
        raise AssertionError("create_key in a DISCONNECTED store succeeded")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "CustomKeyStoreInvalidStateException", e.response

    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "CONNECTED")

    md = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id, Description="boto3 in the HSM")["KeyMetadata"]
    assert md["Origin"] == "AWS_CLOUDHSM" and md["CustomKeyStoreId"] == store_id and md["CloudHsmClusterId"] == cluster_id, md
    assert md["KeyState"] == "Enabled", md
    ctx = {"purpose": "boto3"}
    ct = kms.encrypt(KeyId=md["KeyId"], Plaintext=b"hello HSM", EncryptionContext=ctx)["CiphertextBlob"]
    out = kms.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)
    assert out["Plaintext"] == b"hello HSM" and out["KeyId"] == md["Arn"], out
    try:
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"purpose": "other"})
        raise AssertionError("decrypt with the wrong encryption context succeeded")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidCiphertextException", e.response
    dk = kms.generate_data_key(KeyId=md["Arn"], KeySpec="AES_256")
    assert len(dk["Plaintext"]) == 32, dk
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "DISCONNECTED")
    assert kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]["KeyState"] == "Unavailable"
    try:
        kms.decrypt(CiphertextBlob=ct, EncryptionContext=ctx)
        raise AssertionError("decrypt with a disconnected store succeeded")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "KMSInvalidStateException", e.response
    print("boto3 cloudhsm ok")


if __name__ == "__main__":
    main(*sys.argv[1:5])
