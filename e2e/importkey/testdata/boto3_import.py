"""BYOK through boto3: kmsd's import operations with the third client,
the material wrapped by Python's cryptography package (an oracle
independent of kmsd's Go code and of OpenSSL's command line).

Debian's boto3 1.26 has the 2022 model of these operations: no ImportType,
KeyMaterialId or KeyMaterialDescription, no response members of
ImportKeyMaterial and DeleteImportedKeyMaterial, no ListKeyRotations or
RotateKeyOnDemand, and only the RSAES_* wrapping algorithms and RSA_2048 in
its enums (which botocore does not enforce). The newer members are driven
through aws-sdk-go-v2 in importkey_test.go."""
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

kms = boto3.client("kms", endpoint_url=sys.argv[1])


def error_code(fn, **kw):
    try:
        fn(**kw)
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("call succeeded: %s" % fn.__name__)


def wrap(params, material, algorithm):
    pub = serialization.load_der_public_key(params["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if algorithm == "RSAES_OAEP_SHA_256":
        return pub.encrypt(material, oaep)
    kek = os.urandom(32)
    return pub.encrypt(kek, oaep) + aes_key_wrap_with_padding(kek, material)


def do_import(key_id, material, algorithm="RSAES_OAEP_SHA_256", **kw):
    params = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048")
    assert params["ParametersValidTo"].timestamp() - time.time() > 23.9 * 3600, params["ParametersValidTo"]
    return kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                                   EncryptedKeyMaterial=wrap(params, material, algorithm), **kw)


key = kms.create_key(Origin="EXTERNAL", Description="boto3 byok")["KeyMetadata"]
key_id = key["KeyId"]
assert key["KeyState"] == "PendingImport" and not key["Enabled"], key
assert "ExpirationModel" not in key, key

material = os.urandom(32)
do_import(key_id, material, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
assert md["KeyState"] == "Enabled" and md["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE", md

blob = kms.encrypt(KeyId=key_id, Plaintext=b"boto3 plaintext", EncryptionContext={"k": "v"})["CiphertextBlob"]
assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})["Plaintext"] == b"boto3 plaintext"

kms.delete_imported_key_material(KeyId=key_id)
assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
assert error_code(kms.decrypt, CiphertextBlob=blob, EncryptionContext={"k": "v"}) == "KMSInvalidStateException"

# The same bytes, wrapped the RSA_AES way (an enum value newer than this
# boto3), with an expiry.
valid_to = int(time.time()) + 3600
do_import(key_id, material, "RSA_AES_KEY_WRAP_SHA_256", ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
assert md["ExpirationModel"] == "KEY_MATERIAL_EXPIRES" and int(md["ValidTo"].timestamp()) == valid_to, md
assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"k": "v"})["Plaintext"] == b"boto3 plaintext"

assert error_code(do_import, key_id=key_id, material=os.urandom(32),
                  ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE") == "IncorrectKeyMaterialException"
assert error_code(do_import, key_id=key_id, material=material) == "ValidationException"  # no ValidTo
print("boto3 import ok")
