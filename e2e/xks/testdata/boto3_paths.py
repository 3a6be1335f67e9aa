"""boto3 as a line-oriented driver of kmsd's external key stores, for tests
that change the XKS proxy between calls.

Usage: boto3_paths.py --endpoint URL

Reads one JSON command a line from stdin and answers each with one JSON line
on stdout:

  {"op": "connect", "store": ID}     connect-custom-key-store, then
                                     describe-custom-key-stores until the store
                                     leaves CONNECTING → {"state", "code"}
  {"op": "disconnect", "store": ID}  disconnect, then wait for DISCONNECTED
                                     → {"state", "code"}
  {"op": "encrypt", "key": ID}       Encrypt → {"ok": true, "blob": B64} or
                                     {"error", "message", "status"}
  {"op": "decrypt", "blob": B64}     Decrypt → {"ok": true} or the error

Credentials and region come from the environment (profile "kmsd"); retries
are off, so every answer is kmsd's first.
"""

import argparse
import base64
import json
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def describe(kms, store):
    e = kms.describe_custom_key_stores(CustomKeyStoreId=store)["CustomKeyStores"][0]
    return {"state": e["ConnectionState"], "code": e.get("ConnectionErrorCode")}


def settle(kms, store):
    deadline = time.time() + 20
    while True:
        d = describe(kms, store)
        if d["state"] not in ("CONNECTING", "DISCONNECTING") or time.time() > deadline:
            return d
        time.sleep(0.05)


def call(fn, **kwargs):
    try:
        out = fn(**kwargs)
    except ClientError as e:
        err = e.response.get("Error", {})
        return None, {"error": err.get("Code"), "message": err.get("Message"),
                      "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")}
    return out, None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    a = p.parse_args()
    kms = boto3.session.Session().client("kms", endpoint_url=a.endpoint,
                                         config=Config(retries={"total_max_attempts": 1}))
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            _, err = call(kms.connect_custom_key_store, CustomKeyStoreId=cmd["store"])
            res = err or settle(kms, cmd["store"])
        elif op == "disconnect":
            _, err = call(kms.disconnect_custom_key_store, CustomKeyStoreId=cmd["store"])
            res = err or settle(kms, cmd["store"])
        elif op == "encrypt":
            out, err = call(kms.encrypt, KeyId=cmd["key"], Plaintext=b"driven by boto3")
            res = err or {"ok": True, "blob": base64.b64encode(out["CiphertextBlob"]).decode()}
        elif op == "decrypt":
            out, err = call(kms.decrypt, CiphertextBlob=base64.b64decode(cmd["blob"]))
            res = err or {"ok": True}
        else:
            res = {"error": "unknown op " + op}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
