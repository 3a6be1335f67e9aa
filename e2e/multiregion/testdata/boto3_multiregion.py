"""A multi-Region key driven by boto3: created in us-east-1, replicated
to eu-west-1 (Creating, then Enabled), a ciphertext of one Region
decrypted in the other, UpdatePrimaryRegion seen through Updating, and
the deletion of the primary waiting for its replica.

Usage: boto3_multiregion.py ENDPOINT

Credentials come from the environment (profile "kmsd"). Every check is an
assert; the last line printed on success is "boto3 multiregion ok".
"""

import sys
import time

import boto3
from botocore.config import Config


def wait(kms, key_id, state, timeout=20):
    deadline = time.time() + timeout
    while True:
        md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
        if md["KeyState"] == state:
            return md
        assert time.time() < deadline, (state, md)
        time.sleep(0.1)


def main(endpoint):
    session = boto3.session.Session()
    cfg = Config(retries={"total_max_attempts": 1})
    east = session.client("kms", endpoint_url=endpoint, region_name="us-east-1", config=cfg)
    west = session.client("kms", endpoint_url=endpoint, region_name="eu-west-1", config=cfg)

    md = east.create_key(MultiRegion=True, Description="boto3 mrk")["KeyMetadata"]
    key_id = md["KeyId"]
    assert key_id.startswith("mrk-") and md["MultiRegion"] is True, md
    conf = md["MultiRegionConfiguration"]
    assert conf["MultiRegionKeyType"] == "PRIMARY" and conf["ReplicaKeys"] == [], conf
    assert conf["PrimaryKey"] == {"Arn": md["Arn"], "Region": "us-east-1"}, conf

    out = east.replicate_key(KeyId=key_id, ReplicaRegion="eu-west-1", Description="west")
    rmd = out["ReplicaKeyMetadata"]
    assert rmd["KeyState"] == "Creating" and rmd["Enabled"] is False, rmd
    assert rmd["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA", rmd
    assert isinstance(out["ReplicaPolicy"], str) and "ReplicaTags" not in out, out
    assert east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["ReplicaKeys"] == [
        {"Arn": rmd["Arn"], "Region": "eu-west-1"}]
    wait(west, key_id, "Enabled")

    blob = east.encrypt(KeyId=key_id, Plaintext=b"from boto3 in the east")["CiphertextBlob"]
    got = west.decrypt(CiphertextBlob=blob)
    assert got["Plaintext"] == b"from boto3 in the east" and got["KeyId"] == rmd["Arn"], got
    blob = west.encrypt(KeyId=rmd["Arn"], Plaintext=b"and back")["CiphertextBlob"]
    assert east.decrypt(CiphertextBlob=blob, KeyId=key_id)["Plaintext"] == b"and back"
    try:
        west.describe_key(KeyId=md["Arn"])
        raise AssertionError("an ARN of another Region was found")
    except west.exceptions.NotFoundException as e:
        assert e.response["Error"]["Message"] == "Invalid arn us-east-1", e.response

    east.update_primary_region(KeyId=key_id, PrimaryRegion="eu-west-1")
    assert east.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Updating"
    wait(east, key_id, "Enabled")
    wmd = wait(west, key_id, "Enabled")
    assert wmd["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY", wmd
    assert east.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["PrimaryKey"]["Region"] == "eu-west-1"

    out = west.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingReplicaDeletion" and "DeletionDate" not in out, out
    wmd = west.describe_key(KeyId=key_id)["KeyMetadata"]
    assert wmd["PendingDeletionWindowInDays"] == 7 and "DeletionDate" not in wmd, wmd
    try:
        west.encrypt(KeyId=key_id, Plaintext=b"x")
        raise AssertionError("a primary pending replica deletion encrypted")
    except west.exceptions.KMSInvalidStateException:
        pass
    assert east.decrypt(CiphertextBlob=blob)["Plaintext"] == b"and back"
    west.cancel_key_deletion(KeyId=key_id)
    assert west.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
    print("boto3 multiregion ok")


if __name__ == "__main__":
    main(sys.argv[1])
