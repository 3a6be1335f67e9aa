"""The kmsd key life cycle driven by boto3, as a user would write it.

Usage: boto3_flow.py ENDPOINT

Credentials and region come from the profile "kmsd" of the shared
credentials file (AWS_SHARED_CREDENTIALS_FILE) that kmsd writes. Every
check is an assert; the last line printed on success is "boto3 flow ok".
"""

import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT = "111122223333"


def main(endpoint):
    session = boto3.session.Session(profile_name="kmsd")
    region = session.region_name
    assert region == "us-east-1", f"region from the kmsd profile: got {region!r}, want 'us-east-1'"
    kms = session.client(
        "kms", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1})
    )

    def key_arn(key_id):
        return f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"

    def alias_arn(name):
        return f"arn:aws:kms:{region}:{ACCOUNT}:{name}"

    def expect_error(code, message, call, **kwargs):
        try:
            call(**kwargs)
        except ClientError as e:
            got = (e.response["Error"]["Code"], e.response["Error"].get("Message", ""))
            assert got == (code, message), f"{call.__name__}: got {got}, want {(code, message)}"
            return
        raise AssertionError(f"{call.__name__}: no error, want {code}")

    def state(key_id):
        return kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]

    # create-key, encrypt, decrypt with and without KeyId.
    md = kms.create_key(Description="boto3 key")["KeyMetadata"]
    k1 = md["KeyId"]
    arn1 = key_arn(k1)
    assert md["Arn"] == arn1, md
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True, md
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT" and md["KeySpec"] == "SYMMETRIC_DEFAULT", md
    k2 = kms.create_key(Description="boto3 second key")["KeyMetadata"]["KeyId"]
    arn2 = key_arn(k2)

    pt = b"boto3 plaintext \x00\xff"
    ec = {"purpose": "boto3", "tenant": "acme"}
    enc = kms.encrypt(KeyId=k1, Plaintext=pt, EncryptionContext=ec)
    assert enc["KeyId"] == arn1, enc
    blob = enc["CiphertextBlob"]
    for kwargs in ({}, {"KeyId": k1}, {"KeyId": arn1}):
        out = kms.decrypt(CiphertextBlob=blob, EncryptionContext=ec, **kwargs)
        assert out["Plaintext"] == pt and out["KeyId"] == arn1, (kwargs, out)

    # re-encrypt to the second key.
    re = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext=ec,
        DestinationKeyId=k2,
        DestinationEncryptionContext={"stage": "re"},
    )
    assert re["SourceKeyId"] == arn1 and re["KeyId"] == arn2, re
    out = kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"stage": "re"})
    assert out["Plaintext"] == pt and out["KeyId"] == arn2, out

    # generate-data-key and without plaintext.
    dk = kms.generate_data_key(KeyId=k1, KeySpec="AES_256")
    assert len(dk["Plaintext"]) == 32, dk
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    dkw = kms.generate_data_key_without_plaintext(KeyId=k1, NumberOfBytes=24)
    assert "Plaintext" not in dkw, dkw
    assert len(kms.decrypt(CiphertextBlob=dkw["CiphertextBlob"])["Plaintext"]) == 24

    # Aliases.
    alias = "alias/boto3-flow"
    kms.create_alias(AliasName=alias, TargetKeyId=k1)
    assert kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == k1
    assert kms.describe_key(KeyId=alias_arn(alias))["KeyMetadata"]["KeyId"] == k1
    assert kms.encrypt(KeyId=alias, Plaintext=pt)["KeyId"] == arn1
    kms.update_alias(AliasName=alias, TargetKeyId=k2)
    aliases = kms.list_aliases(KeyId=k2)["Aliases"]
    assert [(a["AliasName"], a["AliasArn"], a["TargetKeyId"]) for a in aliases] == [
        (alias, alias_arn(alias), k2)
    ], aliases
    names = [a["AliasName"] for p in kms.get_paginator("list_aliases").paginate() for a in p["Aliases"]]
    assert alias in names, names
    kms.delete_alias(AliasName=alias)
    expect_error("NotFoundException", f"Alias {alias_arn(alias)} is not found.", kms.describe_key, KeyId=alias)

    # Rotation on demand: the blob made before still decrypts.
    kms.rotate_key_on_demand(KeyId=k1)
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ec)["Plaintext"] == pt
    rotations = kms.list_key_rotations(KeyId=k1)["Rotations"]
    assert [(r["KeyId"], r["RotationType"]) for r in rotations] == [(k1, "ON_DEMAND")], rotations

    # disable / enable.
    kms.disable_key(KeyId=k1)
    assert state(k1) == "Disabled"
    expect_error("DisabledException", f"{arn1} is disabled.", kms.encrypt, KeyId=k1, Plaintext=pt)
    expect_error("DisabledException", f"{arn1} is disabled.", kms.decrypt, CiphertextBlob=blob, EncryptionContext=ec)
    kms.enable_key(KeyId=k1)
    assert state(k1) == "Enabled"

    # schedule / cancel deletion.
    sd = kms.schedule_key_deletion(KeyId=k1, PendingWindowInDays=7)
    assert sd["KeyState"] == "PendingDeletion" and sd["PendingWindowInDays"] == 7, sd
    md = kms.describe_key(KeyId=k1)["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion" and md["DeletionDate"] == sd["DeletionDate"], md
    expect_error("KMSInvalidStateException", f"{arn1} is pending deletion.", kms.encrypt, KeyId=k1, Plaintext=pt)
    assert kms.cancel_key_deletion(KeyId=k1)["KeyId"] == arn1
    assert state(k1) == "Disabled"

    # Errors.
    missing = "5a0e6c2d-1f3b-4d8e-9a7c-000000000002"
    expect_error("NotFoundException", f"Key '{key_arn(missing)}' does not exist", kms.describe_key, KeyId=missing)
    ctx_blob = kms.encrypt(KeyId=k2, Plaintext=pt, EncryptionContext={"ab": "c"})["CiphertextBlob"]
    for i in (0, 2, len(ctx_blob) // 2, len(ctx_blob) - 1):
        bad = bytearray(ctx_blob)
        bad[i] ^= 0x01
        expect_error("InvalidCiphertextException", "", kms.decrypt, CiphertextBlob=bytes(bad), EncryptionContext={"ab": "c"})
    expect_error("InvalidCiphertextException", "", kms.decrypt, CiphertextBlob=ctx_blob, EncryptionContext={"a": "bc"})
    expect_error("InvalidCiphertextException", "", kms.decrypt, CiphertextBlob=ctx_blob)
    assert kms.decrypt(CiphertextBlob=ctx_blob, EncryptionContext={"ab": "c"})["Plaintext"] == pt

    print("boto3 flow ok")


if __name__ == "__main__":
    main(sys.argv[1])
