"""An external key store driven by boto3, one phase per run, against kmsd and
an xks-proxy whose keys live in a SoftHSM2 token.

Usage:
  boto3_xks.py setup     --endpoint URL --state FILE --proxy-uri URI --proxy-path PATH
                         --access-key-id ID --secret-file FILE --xks-key ID --bad-usage-key ID
  boto3_xks.py disabled  --endpoint URL --state FILE
  boto3_xks.py reenabled --endpoint URL --state FILE
  boto3_xks.py decrypt   --endpoint URL --in FILE

The test between the phases changes the proxy: before "disabled" it lists the
external key in the proxy's disabled_keys and reloads it (SIGHUP); before
"reenabled" it removes it again. Phases share FILE (JSON: store id, key ARNs,
ciphertexts). "decrypt" decrypts ciphertexts another client made (a JSON list
like the state's "ciphertexts").

Credentials and region come from the environment (profile "kmsd"). Each step
prints one JSON line {"phase", "step", "ok", ...}; the first failed
expectation prints "ok": false with the reason and exits 1. The last line of a
successful run is {"phase": PHASE, "done": true}.
"""

import argparse
import base64
import datetime
import json
import sys
import time
import traceback

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

MESSAGE = b"external key in SoftHSM2, driven by boto3"
CONTEXT = {"purpose": "e2e-boto3"}


class Failed(Exception):
    pass


class Run:
    def __init__(self, phase):
        self.phase = phase
        self.step_name = None

    def step(self, step, **detail):
        """Records that the step before succeeded and starts step."""
        self.done_step()
        self.step_name = step
        self.detail = detail

    def done_step(self):
        if self.step_name is not None:
            print(json.dumps({"phase": self.phase, "step": self.step_name, "ok": True, **self.detail}), flush=True)
        self.step_name = None

    def fail(self, why):
        print(json.dumps({"phase": self.phase, "step": self.step_name, "ok": False, "error": why}), flush=True)
        sys.exit(1)


def check(cond, why):
    if not cond:
        raise Failed(why)


def expect_error(code, fn, **kwargs):
    """Calls fn(**kwargs), which must fail with error code code."""
    try:
        out = fn(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"{fn.__name__}: error {got} ({e.response['Error'].get('Message')}), want {code}")
        return e.response["Error"].get("Message", "")
    raise Failed(f"{fn.__name__} succeeded ({out}), want {code}")


def recent(ts, what):
    check(isinstance(ts, datetime.datetime), f"{what} is {type(ts).__name__}, want a datetime")
    check(ts.tzinfo is not None, f"{what} {ts} has no time zone")
    age = datetime.datetime.now(datetime.timezone.utc) - ts
    check(abs(age) < datetime.timedelta(hours=1), f"{what} {ts} is not about now")


def wait_state(kms, store_id, want):
    deadline = time.time() + 20
    while time.time() < deadline:
        s = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]
        if s["ConnectionState"] not in ("CONNECTING", "DISCONNECTING"):
            check(s["ConnectionState"] == want, f"store {store_id}: {s['ConnectionState']} {s.get('ConnectionErrorCode')}, want {want}")
            return s
        time.sleep(0.1)
    raise Failed(f"store {store_id} stays in a transient state")


def decrypts(kms, c):
    """Decrypts state ciphertext c and checks plaintext and key."""
    out = kms.decrypt(CiphertextBlob=base64.b64decode(c["blob"]), EncryptionContext=c["context"])
    check(out["Plaintext"] == base64.b64decode(c["plaintext"]), f"{c['name']}: wrong plaintext")
    check(out["KeyId"] == c["key"], f"{c['name']}: decrypted by {out['KeyId']}, want {c['key']}")


def record(name, blob, context, plaintext, key):
    return {"name": name, "blob": base64.b64encode(blob).decode(), "context": context,
            "plaintext": base64.b64encode(plaintext).decode(), "key": key}


def setup(run, kms, a):
    with open(a.secret_file) as f:
        secret = f.read().strip()
    run.step("create-custom-key-store")
    store_id = kms.create_custom_key_store(
        CustomKeyStoreName="softhsm-boto3", CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyUriEndpoint=a.proxy_uri, XksProxyUriPath=a.proxy_path, XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyAuthenticationCredential={"AccessKeyId": a.access_key_id, "RawSecretAccessKey": secret},
    )["CustomKeyStoreId"]
    check(store_id.startswith("cks-") and len(store_id) == 21, f"store id {store_id}")

    run.step("describe-custom-key-stores", store=store_id)
    s = kms.describe_custom_key_stores(CustomKeyStoreName="softhsm-boto3")["CustomKeyStores"][0]
    check(s["CustomKeyStoreId"] == store_id and s["ConnectionState"] == "DISCONNECTED", f"describe: {s}")
    check(s["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE" and "ConnectionErrorCode" not in s, f"describe: {s}")
    want = {"AccessKeyId": a.access_key_id, "UriEndpoint": a.proxy_uri, "UriPath": a.proxy_path, "Connectivity": "PUBLIC_ENDPOINT"}
    check(s.get("XksProxyConfiguration") == want, f"XksProxyConfiguration {s.get('XksProxyConfiguration')}, want {want}")
    check(secret not in repr(s), "DescribeCustomKeyStores shows the proxy secret")
    recent(s["CreationDate"], "store CreationDate")

    run.step("create-key while DISCONNECTED")
    expect_error("CustomKeyStoreInvalidStateException", kms.create_key, Origin="EXTERNAL_KEY_STORE",
                 CustomKeyStoreId=store_id, XksKeyId=a.xks_key)

    run.step("connect-custom-key-store")
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "CONNECTED")

    run.step("create-key with XksKeyId", xks_key=a.xks_key)
    md = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=a.xks_key,
                        Description="boto3 over SoftHSM2")["KeyMetadata"]
    check(md["Origin"] == "EXTERNAL_KEY_STORE" and md["CustomKeyStoreId"] == store_id, f"create_key: {md}")
    check(md.get("XksKeyConfiguration") == {"Id": a.xks_key}, f"XksKeyConfiguration {md.get('XksKeyConfiguration')}")
    check(md["KeyState"] == "Enabled" and md["Enabled"] is True, f"create_key: {md}")
    check(md["KeySpec"] == "SYMMETRIC_DEFAULT" and md["KeyUsage"] == "ENCRYPT_DECRYPT", f"create_key: {md}")
    recent(md["CreationDate"], "key CreationDate")
    xk = md["Arn"]
    d = kms.describe_key(KeyId=md["KeyId"])["KeyMetadata"]
    check(d["XksKeyConfiguration"] == {"Id": a.xks_key} and d["CustomKeyStoreId"] == store_id, f"describe_key: {d}")

    run.step("create-key errors")
    expect_error("XksKeyAlreadyInUseException", kms.create_key, Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=a.xks_key)
    expect_error("XksKeyNotFoundException", kms.create_key, Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId="no-such-key")
    expect_error("XksKeyInvalidConfigurationException", kms.create_key, Origin="EXTERNAL_KEY_STORE",
                 CustomKeyStoreId=store_id, XksKeyId=a.bad_usage_key)

    run.step("encrypt/decrypt")
    nk = kms.create_key(Description="normal key for boto3 re-encrypt")["KeyMetadata"]["Arn"]
    enc = kms.encrypt(KeyId=md["KeyId"], Plaintext=MESSAGE, EncryptionContext=CONTEXT)
    check(enc["KeyId"] == xk and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT", f"encrypt: {enc}")
    ct = record("boto3 encrypt", enc["CiphertextBlob"], CONTEXT, MESSAGE, xk)
    decrypts(kms, ct)
    # The proxy, not kmsd, finds the wrong context (it is AAD of the outer
    # layer): every proxy-side failure is KMSInvalidStateException.
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"purpose": "other"})

    run.step("generate-data-key")
    dk = kms.generate_data_key(KeyId=xk, KeySpec="AES_256")
    check(len(dk["Plaintext"]) == 32 and dk["KeyId"] == xk, f"generate_data_key: {dk}")
    gdk = record("boto3 generate-data-key", dk["CiphertextBlob"], {}, dk["Plaintext"], xk)
    decrypts(kms, gdk)
    dkw = kms.generate_data_key_without_plaintext(KeyId=xk, NumberOfBytes=16, EncryptionContext=CONTEXT)
    check("Plaintext" not in dkw, "generate_data_key_without_plaintext returned a plaintext")
    check(len(kms.decrypt(CiphertextBlob=dkw["CiphertextBlob"], EncryptionContext=CONTEXT)["Plaintext"]) == 16, "data key length")

    run.step("re-encrypt external -> normal -> external")
    re = kms.re_encrypt(CiphertextBlob=enc["CiphertextBlob"], SourceEncryptionContext=CONTEXT, DestinationKeyId=nk)
    check(re["SourceKeyId"] == xk and re["KeyId"] == nk, f"re_encrypt to the normal key: {re}")
    to_normal = record("boto3 re-encrypt to normal", re["CiphertextBlob"], {}, MESSAGE, nk)
    decrypts(kms, to_normal)
    back = kms.re_encrypt(CiphertextBlob=re["CiphertextBlob"], DestinationKeyId=xk, DestinationEncryptionContext=CONTEXT)
    check(back["SourceKeyId"] == nk and back["KeyId"] == xk, f"re_encrypt to the external key: {back}")
    to_external = record("boto3 re-encrypt to external", back["CiphertextBlob"], CONTEXT, MESSAGE, xk)
    decrypts(kms, to_external)

    return {"store_id": store_id, "key": xk, "normal_key": nk, "ciphertexts": [ct, gdk, to_normal, to_external]}


def disabled(run, kms, st):
    xk = st["key"]
    ct = st["ciphertexts"][0]
    run.step("encrypt with the external key disabled in the proxy")
    msg = expect_error("KMSInvalidStateException", kms.encrypt, KeyId=xk, Plaintext=MESSAGE)
    run.detail = {"message": msg}
    run.step("decrypt/generate-data-key/re-encrypt with the external key disabled")
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=base64.b64decode(ct["blob"]), EncryptionContext=CONTEXT)
    expect_error("KMSInvalidStateException", kms.generate_data_key, KeyId=xk, KeySpec="AES_256")
    normal = st["ciphertexts"][2]
    expect_error("KMSInvalidStateException", kms.re_encrypt, CiphertextBlob=base64.b64decode(normal["blob"]), DestinationKeyId=xk)
    run.step("key state ignores the external key")
    md = kms.describe_key(KeyId=xk)["KeyMetadata"]
    check(md["KeyState"] == "Enabled", f"KeyState {md['KeyState']} while the external key is disabled, want Enabled")
    return st


def reenabled(run, kms, st):
    xk, store_id = st["key"], st["store_id"]
    run.step("works again after enabling in the proxy")
    for c in st["ciphertexts"]:
        decrypts(kms, c)
    enc = kms.encrypt(KeyId=xk, Plaintext=MESSAGE, EncryptionContext=CONTEXT)
    st["ciphertexts"].append(record("boto3 encrypt after enabling", enc["CiphertextBlob"], CONTEXT, MESSAGE, xk))

    run.step("disconnect-custom-key-store")
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "DISCONNECTED")
    md = kms.describe_key(KeyId=xk)["KeyMetadata"]
    check(md["KeyState"] == "Unavailable" and md["Enabled"] is False, f"while disconnected: KeyState {md['KeyState']} Enabled {md['Enabled']}")
    check(md["Origin"] == "EXTERNAL_KEY_STORE" and md["XksKeyConfiguration"]["Id"], f"while disconnected: {md}")
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=base64.b64decode(st["ciphertexts"][0]["blob"]), EncryptionContext=CONTEXT)
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=xk, Plaintext=MESSAGE)
    expect_error("CustomKeyStoreInvalidStateException", kms.create_key, Origin="EXTERNAL_KEY_STORE",
                 CustomKeyStoreId=store_id, XksKeyId="another-key")

    run.step("reconnect; old ciphertexts decrypt")
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    wait_state(kms, store_id, "CONNECTED")
    md = kms.describe_key(KeyId=xk)["KeyMetadata"]
    check(md["KeyState"] == "Enabled" and md["Enabled"] is True, f"after reconnect: KeyState {md['KeyState']}")
    for c in st["ciphertexts"]:
        decrypts(kms, c)
    run.detail = {"decrypted": len(st["ciphertexts"])}
    return st


def decrypt_foreign(run, kms, path):
    with open(path) as f:
        cts = json.load(f)
    check(cts, f"{path}: no ciphertexts")
    for c in cts:
        run.step("decrypt", ciphertext=c["name"])
        decrypts(kms, c)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["setup", "disabled", "reenabled", "decrypt"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--state")
    p.add_argument("--in", dest="input")
    p.add_argument("--proxy-uri")
    p.add_argument("--proxy-path")
    p.add_argument("--access-key-id")
    p.add_argument("--secret-file")
    p.add_argument("--xks-key")
    p.add_argument("--bad-usage-key")
    a = p.parse_args()
    run = Run(a.phase)
    kms = boto3.session.Session().client("kms", endpoint_url=a.endpoint, config=Config(retries={"total_max_attempts": 1}))
    try:
        if a.phase == "decrypt":
            decrypt_foreign(run, kms, a.input)
        else:
            if a.phase == "setup":
                st = setup(run, kms, a)
            else:
                with open(a.state) as f:
                    st = json.load(f)
                st = {"disabled": disabled, "reenabled": reenabled}[a.phase](run, kms, st)
            with open(a.state, "w") as f:
                json.dump(st, f)
        run.done_step()
    except Failed as e:
        run.fail(str(e))
    except ClientError as e:
        run.fail(f"unexpected {e.response['Error']['Code']}: {e}")
    except Exception as e:
        traceback.print_exc()
        run.fail(f"{type(e).__name__}: {e}")
    print(json.dumps({"phase": a.phase, "done": True}))


if __name__ == "__main__":
    main()
