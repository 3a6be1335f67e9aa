package e2e

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestEveryOperationServed walks the KMS model's operation table and
// sends each of its 54 operations, in an order that builds what the next
// needs, a request AWS accepts, through the real kmsd over SigV4. Each must
// succeed — except the custom key store operations, which need an HSM
// cluster or an XKS proxy this test does not build (their own e2e suites
// do) and must only answer something other than
// UnsupportedOperationException. An operation of the model without a step
// here fails the test, so a newer model cannot slip past it.
func TestEveryOperationServed(t *testing.T) {
	s := startServer(t, withArgs("--replica-delay", "0s"))
	cr := s.Creds()
	// The credentials kmsd writes are its bootstrap administrator's.
	caller := "arn:aws:iam::" + accountOf(t, s, cr) + ":user/kmsd-admin"
	done := map[string]bool{}

	call := func(op string, in map[string]any) (map[string]any, string) {
		t.Helper()
		body, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		r := post(t, s, "TrentService."+op, string(body), sigV4(cr.AccessKeyID, cr.SecretAccessKey, cr.Region, time.Now()))
		done[op] = true
		if r.Status != 200 {
			code, msg := errorEnvelope(t, r)
			return nil, code + ": " + msg
		}
		out := map[string]any{}
		if err := json.Unmarshal(r.Body, &out); err != nil {
			t.Fatalf("%s: answer is not JSON: %v: %q", op, err, r.Body)
		}
		return out, ""
	}
	ok := func(op string, in map[string]any) map[string]any {
		t.Helper()
		out, e := call(op, in)
		if e != "" {
			t.Fatalf("%s %v: %s", op, in, e)
		}
		return out
	}
	// served is for operations whose accepted request needs what this
	// test does not build: any answer but UnsupportedOperationException.
	served := func(op string, in map[string]any) {
		t.Helper()
		_, e := call(op, in)
		if strings.HasPrefix(e, "UnsupportedOperationException") {
			t.Errorf("%s %v: %s", op, in, e)
		}
		t.Logf("%s answered %q", op, e)
	}
	keyID := func(out map[string]any) string {
		t.Helper()
		md, _ := out["KeyMetadata"].(map[string]any)
		id, _ := md["KeyId"].(string)
		if id == "" {
			t.Fatalf("no KeyMetadata.KeyId in %v", out)
		}
		return id
	}
	b64 := base64.StdEncoding.EncodeToString
	unb64 := func(v any) []byte {
		t.Helper()
		s, _ := v.(string)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) == 0 {
			t.Fatalf("not a base64 blob: %v", v)
		}
		return b
	}

	// Keys of every kind.
	sym := keyID(ok("CreateKey", map[string]any{"Description": "operations walk"}))
	sym2 := keyID(ok("CreateKey", map[string]any{}))
	rsaSign := keyID(ok("CreateKey", map[string]any{"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"}))
	hmacKey := keyID(ok("CreateKey", map[string]any{"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}))
	agree := keyID(ok("CreateKey", map[string]any{"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}))
	external := keyID(ok("CreateKey", map[string]any{"Origin": "EXTERNAL"}))
	mrk := keyID(ok("CreateKey", map[string]any{"MultiRegion": true}))
	ok("DescribeKey", map[string]any{"KeyId": sym})
	ok("ListKeys", map[string]any{})

	// Symmetric cryptography.
	enc := ok("Encrypt", map[string]any{"KeyId": sym, "Plaintext": b64([]byte("walk"))})
	ok("Decrypt", map[string]any{"CiphertextBlob": enc["CiphertextBlob"]})
	ok("ReEncrypt", map[string]any{"CiphertextBlob": enc["CiphertextBlob"], "DestinationKeyId": sym2})
	ok("GenerateDataKey", map[string]any{"KeyId": sym, "KeySpec": "AES_256"})
	ok("GenerateDataKeyWithoutPlaintext", map[string]any{"KeyId": sym, "NumberOfBytes": 32})
	ok("GenerateDataKeyPair", map[string]any{"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"})
	ok("GenerateDataKeyPairWithoutPlaintext", map[string]any{"KeyId": sym, "KeyPairSpec": "ECC_NIST_P256"})
	ok("GenerateRandom", map[string]any{"NumberOfBytes": 16})

	// Asymmetric, HMAC and key agreement.
	sig := ok("Sign", map[string]any{"KeyId": rsaSign, "Message": b64([]byte("m")), "SigningAlgorithm": "RSASSA_PSS_SHA_256"})
	ok("Verify", map[string]any{"KeyId": rsaSign, "Message": b64([]byte("m")), "Signature": sig["Signature"], "SigningAlgorithm": "RSASSA_PSS_SHA_256"})
	ok("GetPublicKey", map[string]any{"KeyId": rsaSign})
	mac := ok("GenerateMac", map[string]any{"KeyId": hmacKey, "Message": b64([]byte("m")), "MacAlgorithm": "HMAC_SHA_256"})
	ok("VerifyMac", map[string]any{"KeyId": hmacKey, "Message": b64([]byte("m")), "Mac": mac["Mac"], "MacAlgorithm": "HMAC_SHA_256"})
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	peerSPKI, err := x509.MarshalPKIXPublicKey(peer.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	ok("DeriveSharedSecret", map[string]any{"KeyId": agree, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(peerSPKI)})

	// Aliases, tags, description, policy.
	ok("CreateAlias", map[string]any{"AliasName": "alias/walk", "TargetKeyId": sym})
	ok("ListAliases", map[string]any{})
	ok("UpdateAlias", map[string]any{"AliasName": "alias/walk", "TargetKeyId": sym2})
	ok("DeleteAlias", map[string]any{"AliasName": "alias/walk"})
	ok("TagResource", map[string]any{"KeyId": sym, "Tags": []map[string]string{{"TagKey": "k", "TagValue": "v"}}})
	ok("ListResourceTags", map[string]any{"KeyId": sym})
	ok("UntagResource", map[string]any{"KeyId": sym, "TagKeys": []string{"k"}})
	ok("UpdateKeyDescription", map[string]any{"KeyId": sym, "Description": "walked"})
	pol := ok("GetKeyPolicy", map[string]any{"KeyId": sym})
	ok("ListKeyPolicies", map[string]any{"KeyId": sym})
	ok("PutKeyPolicy", map[string]any{"KeyId": sym, "PolicyName": "default", "Policy": pol["Policy"]})

	// Rotation.
	ok("EnableKeyRotation", map[string]any{"KeyId": sym})
	ok("GetKeyRotationStatus", map[string]any{"KeyId": sym})
	ok("DisableKeyRotation", map[string]any{"KeyId": sym})
	ok("RotateKeyOnDemand", map[string]any{"KeyId": sym})
	ok("ListKeyRotations", map[string]any{"KeyId": sym})

	// States.
	ok("DisableKey", map[string]any{"KeyId": sym2})
	ok("EnableKey", map[string]any{"KeyId": sym2})
	ok("ScheduleKeyDeletion", map[string]any{"KeyId": sym2, "PendingWindowInDays": 7})
	ok("CancelKeyDeletion", map[string]any{"KeyId": sym2})

	// Grants.
	g := ok("CreateGrant", map[string]any{"KeyId": sym, "GranteePrincipal": caller, "RetiringPrincipal": caller, "Operations": []string{"Encrypt"}})
	ok("ListGrants", map[string]any{"KeyId": sym})
	ok("ListRetirableGrants", map[string]any{"RetiringPrincipal": caller})
	ok("RetireGrant", map[string]any{"GrantToken": g["GrantToken"]})
	g = ok("CreateGrant", map[string]any{"KeyId": sym, "GranteePrincipal": caller, "Operations": []string{"Decrypt"}})
	ok("RevokeGrant", map[string]any{"KeyId": sym, "GrantId": g["GrantId"]})

	// Imported key material, wrapped as AWS's guide does (RSAES-OAEP
	// with SHA-256 for hash and MGF1).
	params := ok("GetParametersForImport", map[string]any{"KeyId": external, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
	pub, err := x509.ParsePKIXPublicKey(unb64(params["PublicKey"]))
	if err != nil {
		t.Fatalf("wrapping key: %v", err)
	}
	material := make([]byte, 32)
	rand.Read(material)
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), material, nil)
	if err != nil {
		t.Fatal(err)
	}
	ok("ImportKeyMaterial", map[string]any{"KeyId": external, "ImportToken": params["ImportToken"],
		"EncryptedKeyMaterial": b64(wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
	ok("DeleteImportedKeyMaterial", map[string]any{"KeyId": external})

	// Multi-Region keys (replicas are Creating for --replica-delay: 0).
	ok("ReplicateKey", map[string]any{"KeyId": mrk, "ReplicaRegion": otherRegion(cr.Region)})
	ok("UpdatePrimaryRegion", map[string]any{"KeyId": mrk, "PrimaryRegion": otherRegion(cr.Region)})
	ok("GetKeyLastUsage", map[string]any{"KeyId": sym})

	// Custom key stores: served, with the exception their missing
	// backing gives (e2e/keystore, e2e/hsm and e2e/xks cover success).
	ok("DescribeCustomKeyStores", map[string]any{})
	served("CreateCustomKeyStore", map[string]any{"CustomKeyStoreName": "walk", "CloudHsmClusterId": "cluster-234abcdefgh",
		"TrustAnchorCertificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "KeyStorePassword": "kmsuser-pass"})
	const store = "cks-1234567890abcdef0"
	served("ConnectCustomKeyStore", map[string]any{"CustomKeyStoreId": store})
	served("DisconnectCustomKeyStore", map[string]any{"CustomKeyStoreId": store})
	served("UpdateCustomKeyStore", map[string]any{"CustomKeyStoreId": store, "NewCustomKeyStoreName": "walked"})
	served("DeleteCustomKeyStore", map[string]any{"CustomKeyStoreId": store})

	var missing []string
	for name := range kmsapi.Operations {
		if !done[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations of the model this walk does not send: %v", missing)
	}
	if len(kmsapi.Operations) != 54 || len(done) != 54 {
		t.Errorf("the model has %d operations and the walk sent %d; want 54", len(kmsapi.Operations), len(done))
	}
}

// otherRegion is a Region of the same partition other than region.
func otherRegion(region string) string {
	if region == "eu-west-1" {
		return "us-east-1"
	}
	return "eu-west-1"
}

// accountOf returns the account of the server's credentials, from the
// metadata of a key it creates.
func accountOf(t *testing.T, s *server, cr creds) string {
	t.Helper()
	r := post(t, s, "TrentService.CreateKey", "{}", sigV4(cr.AccessKeyID, cr.SecretAccessKey, cr.Region, time.Now()))
	var k struct{ KeyMetadata struct{ AWSAccountId string } }
	if r.Status != 200 || json.Unmarshal(r.Body, &k) != nil || k.KeyMetadata.AWSAccountId == "" {
		t.Fatalf("CreateKey: %d %s", r.Status, r.Body)
	}
	return k.KeyMetadata.AWSAccountId
}
