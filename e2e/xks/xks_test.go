package xks

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/xks/xksclient"
)

const (
	svcGood   = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000001"
	svcOther  = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000002"
	svcDead   = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000003"
	svcNotMap = "com.amazonaws.vpce.us-east-1.vpce-svc-0000000000000009"
)

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// TestExternalKeyStore drives an external key store end to end: create
// (and the create exceptions a stopped or well-behaved proxy causes),
// connect (and the connection error codes those cause), keys over external
// keys, double encryption, the external key disabled in the proxy,
// disconnect and reconnect. The other codes and exceptions are caused in
// TestConnectionErrorCodes, TestProxyRefusesKMS and TestVPCEndpointServices.
func TestExternalKeyStore(t *testing.T) {
	if _, err := os.Stat(awsCLI); err != nil {
		t.Fatalf("%s is missing; run scripts/test.sh (Debian package awscli)", awsCLI)
	}
	dir := t.TempDir()
	hosts := "localhost,127.0.0.1,v1.xks.test,v2.xks.test,v3.xks.test,v4.xks.test,v5.xks.test"
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", hosts, "--out-dir", pk)
	other := filepath.Join(dir, "other")
	proxyRun(t, "dev-cert", "--hostname", hosts, "--out-dir", other)
	keyFile := filepath.Join(dir, "keys.json")
	for _, id := range []string{"k1", "k2", "off"} {
		proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", id, "--kdf-iterations", "2000")
	}
	proxyRun(t, "keys", "disable", "--keys-file", keyFile, "--id", "off")
	p := startProxy(t, pk, keyFile)
	untrusted := startProxy(t, other, filepath.Join(dir, "keys.json"))
	dead := e2etest.FreeAddr(t)

	metrics := e2etest.FreeAddr(t)
	k := startKMSD(t, "--metrics-listen", metrics, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "200ms",
		"--xks-vpc-endpoint-services", svcGood+"=127.0.0.1:"+p.Port()+","+svcOther+"="+untrusted.Addr+","+svcDead+"="+dead)
	endpoint := "https://localhost:" + p.Port()
	const path = "/kms/xks/v1"

	// --- CreateCustomKeyStore and its exceptions.
	for _, c := range []struct {
		name, exc string
		req       map[string]any
	}{
		{"wrong secret", "XksProxyIncorrectAuthenticationCredentialException", storeReq("bad", "PUBLIC_ENDPOINT", endpoint, path, akid, strings.Repeat("A", 44))},
		{"wrong access key", "XksProxyIncorrectAuthenticationCredentialException", storeReq("bad", "PUBLIC_ENDPOINT", endpoint, path, "AKIDBBBBBBBBBBBBBBBBBBBB", secret)},
		{"wrong path", "XksProxyInvalidConfigurationException", storeReq("bad", "PUBLIC_ENDPOINT", endpoint, "/nope/kms/xks/v1", akid, secret)},
		{"stopped proxy", "XksProxyUriUnreachableException", storeReq("bad", "PUBLIC_ENDPOINT", "https://"+strings.Replace(dead, "127.0.0.1", "localhost", 1), path, akid, secret)},
		{"untrusted CA", "XksProxyUriUnreachableException", storeReq("bad", "PUBLIC_ENDPOINT", "https://localhost:"+untrusted.Port(), path, akid, secret)},
		{"unmapped VPC endpoint service", "XksProxyVpcEndpointServiceNotFoundException", withSvc(storeReq("bad", "VPC_ENDPOINT_SERVICE", "https://v5.xks.test", path, akid, secret), svcNotMap)},
		{"secret with bad characters", "ValidationException", storeReq("bad", "PUBLIC_ENDPOINT", endpoint, path, akid, strings.Repeat("!", 44))},
		{"endpoint with a path", "ValidationException", storeReq("bad", "PUBLIC_ENDPOINT", endpoint+"/x", path, akid, secret)},
	} {
		if _, errs, code := k.createStore(c.req); code == 0 || !strings.Contains(errs, "("+c.exc+")") {
			t.Fatalf("create with %s: exit %d, %q; want %s", c.name, code, errs, c.exc)
		}
	}
	id, errs, code := k.createStore(storeReq("xks", "PUBLIC_ENDPOINT", endpoint, path, akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	e := k.store(id)
	x, _ := e["XksProxyConfiguration"].(map[string]any)
	if e["ConnectionState"] != "DISCONNECTED" || e["CustomKeyStoreType"] != "EXTERNAL_KEY_STORE" || x == nil ||
		x["AccessKeyId"] != akid || x["UriEndpoint"] != endpoint || x["UriPath"] != path || x["Connectivity"] != "PUBLIC_ENDPOINT" {
		t.Fatalf("describe: %v", e)
	}
	if out, _, _ := k.cli("kms", "describe-custom-key-stores"); strings.Contains(out, secret) {
		t.Fatal("DescribeCustomKeyStores shows the secret")
	}
	for _, f := range []string{k.log, filepath.Join(k.dataDir, "audit.log")} {
		if b, err := os.ReadFile(f); err != nil || bytes.Contains(b, []byte(secret)) {
			t.Fatalf("%s: %v, or it holds the proxy secret", f, err)
		}
	}
	if _, errs, code := k.createStore(storeReq("xks2", "PUBLIC_ENDPOINT", endpoint, path, akid, secret)); code == 0 || !strings.Contains(errs, "(XksProxyUriInUseException)") {
		t.Fatalf("same endpoint and path: %q", errs)
	}
	if _, errs, code := k.createStore(storeReq("xks", "PUBLIC_ENDPOINT", endpoint, "/other/kms/xks/v1", akid, secret)); code == 0 || !strings.Contains(errs, "(CustomKeyStoreNameInUseException)") {
		t.Fatalf("same name: %q", errs)
	}

	// --- Connect: CONNECTED, timed.
	t0 := time.Now()
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if e := k.waitState(id); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	t.Logf("connect → CONNECTED in %v (aws CLI round trips included; 100ms connect delay)", time.Since(t0))

	// --- Connection error codes, through VPC stores (not probed at create).
	vpc := func(name, host, svc, path, sec string) string {
		id, errs, code := k.createStore(withSvc(storeReq(name, "VPC_ENDPOINT_SERVICE", "https://"+host, path, akid, sec), svc))
		if code != 0 {
			t.Fatalf("create VPC store %s: %s", name, errs)
		}
		return id
	}
	vpcGood := vpc("vpc-good", "v1.xks.test", svcGood, path, secret)
	// Each VPC store needs its own endpoint service: the credential and path
	// failures use the good proxy's service through updates while disconnected.
	for _, c := range []struct {
		svc, host, path, sec, want string
	}{
		{svcOther, "v3.xks.test", path, secret, "XKS_PROXY_INVALID_TLS_CONFIGURATION"},
		{svcDead, "v4.xks.test", path, secret, "XKS_PROXY_NOT_REACHABLE"},
	} {
		sid := vpc("vpc-"+c.want, c.host, c.svc, c.path, c.sec)
		k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", sid)
		if e := k.waitState(sid); e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != c.want {
			t.Fatalf("connect %s: %v, want FAILED %s", c.host, e, c.want)
		}
		k.awsFails("CustomKeyStoreInvalidStateException", "kms", "connect-custom-key-store", "--custom-key-store-id", sid)
		k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", sid)
		if e := k.waitState(sid); e["ConnectionState"] != "DISCONNECTED" || e["ConnectionErrorCode"] != nil {
			t.Fatalf("disconnect: %v", e)
		}
		k.aws("kms", "delete-custom-key-store", "--custom-key-store-id", sid)
	}
	for _, c := range []struct {
		update []string
		want   string
	}{
		{[]string{"--xks-proxy-authentication-credential", "AccessKeyId=" + akid + ",RawSecretAccessKey=" + strings.Repeat("C", 44)}, "INVALID_CREDENTIALS"},
		{[]string{"--xks-proxy-uri-path", "/nope/kms/xks/v1"}, "XKS_PROXY_INVALID_CONFIGURATION"},
	} {
		// A disconnected VPC store is not probed at update (spec §5.5 [R]).
		k.aws(append([]string{"kms", "update-custom-key-store", "--custom-key-store-id", vpcGood}, c.update...)...)
		k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", vpcGood)
		if e := k.waitState(vpcGood); e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != c.want {
			t.Fatalf("connect after %v: %v, want FAILED %s", c.update, e, c.want)
		}
		k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", vpcGood)
		k.waitState(vpcGood)
		k.aws("kms", "update-custom-key-store", "--custom-key-store-id", vpcGood, "--xks-proxy-uri-path", path,
			"--xks-proxy-authentication-credential", "AccessKeyId="+akid+",RawSecretAccessKey="+secret)
	}
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", vpcGood)
	if e := k.waitState(vpcGood); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("VPC store through the mapped endpoint service: %v", e)
	}
	// Live update of a connected store: a wrong credential is refused by the
	// probe; the endpoint needs DISCONNECTED.
	k.awsFails("XksProxyIncorrectAuthenticationCredentialException", "kms", "update-custom-key-store", "--custom-key-store-id", id,
		"--xks-proxy-authentication-credential", "AccessKeyId="+akid+",RawSecretAccessKey="+strings.Repeat("D", 44))
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "update-custom-key-store", "--custom-key-store-id", id,
		"--xks-proxy-uri-endpoint", "https://127.0.0.1:"+p.Port())
	k.aws("kms", "update-custom-key-store", "--custom-key-store-id", id, "--new-custom-key-store-name", "xks-renamed",
		"--xks-proxy-authentication-credential", "AccessKeyId="+akid+",RawSecretAccessKey="+secret)

	// --- Keys.
	md := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)
	xk := md["KeyId"].(string)
	if md["Origin"] != "EXTERNAL_KEY_STORE" || md["CustomKeyStoreId"] != id || md["XksKeyConfiguration"].(map[string]any)["Id"] != "k1" || md["KeyState"] != "Enabled" {
		t.Fatalf("create-key: %v", md)
	}
	k.awsFails("XksKeyAlreadyInUseException", "kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")
	k.awsFails("XksKeyNotFoundException", "kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "nosuch")
	k.awsFails("XksKeyInvalidConfigurationException", "kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "off")
	k.awsFails("UnsupportedOperationException", "kms", "enable-key-rotation", "--key-id", xk)
	nk := k.aws("kms", "create-key")["KeyMetadata"].(map[string]any)["KeyId"].(string)

	ctx := context.Background()
	c := k.sdk()
	ec := map[string]string{"purpose": "e2e"}
	msg := []byte("external key store plaintext")
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg, EncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	blob := enc.CiphertextBlob
	dec, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
	if err != nil || !bytes.Equal(dec.Plaintext, msg) || *dec.KeyId != *enc.KeyId {
		t.Fatalf("decrypt: %v %+v", err, dec)
	}
	if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: map[string]string{"purpose": "other"}}); apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("decrypt with another context: %v", err)
	}
	// The aws CLI too.
	pf := filepath.Join(dir, "pt")
	os.WriteFile(pf, msg, 0o600)
	cb := k.aws("kms", "encrypt", "--key-id", xk, "--plaintext", "fileb://"+pf)["CiphertextBlob"].(string)
	raw, _ := base64.StdEncoding.DecodeString(cb)
	bf := filepath.Join(dir, "ct")
	os.WriteFile(bf, raw, 0o600)
	if pt := k.aws("kms", "decrypt", "--ciphertext-blob", "fileb://"+bf)["Plaintext"].(string); pt != base64.StdEncoding.EncodeToString(msg) {
		t.Fatalf("CLI decrypt: %s", pt)
	}
	// GenerateDataKey (+WithoutPlaintext).
	gdk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: &xk, NumberOfBytes: aws.Int32(32)})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gdk.CiphertextBlob}); err != nil || !bytes.Equal(d.Plaintext, gdk.Plaintext) {
		t.Fatalf("decrypt data key: %v", err)
	}
	gdkw, err := c.GenerateDataKeyWithoutPlaintext(ctx, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: &xk, NumberOfBytes: aws.Int32(16)})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: gdkw.CiphertextBlob}); err != nil || len(d.Plaintext) != 16 {
		t.Fatalf("decrypt data key without plaintext: %v", err)
	}
	// ReEncrypt external → normal → external.
	re, err := c.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: ec, DestinationKeyId: &nk})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: re.CiphertextBlob}); err != nil || !bytes.Equal(d.Plaintext, msg) || !strings.HasSuffix(*d.KeyId, nk) {
		t.Fatalf("decrypt re-encrypted under the normal key: %v", err)
	}
	back, err := c.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: re.CiphertextBlob, DestinationKeyId: &xk, DestinationEncryptionContext: ec})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: back.CiphertextBlob, EncryptionContext: ec}); err != nil || !bytes.Equal(d.Plaintext, msg) {
		t.Fatalf("decrypt re-encrypted under the external key: %v", err)
	}

	// --- Double encryption: the proxy alone removes only the outer layer.
	b, err := keys.ParseBlob(blob)
	if err != nil || b.External == nil {
		t.Fatalf("blob: %v %+v", err, b)
	}
	pc, err := xksclient.New(xksclient.Config{Endpoint: endpoint, URIPath: path, AccessKeyID: akid, Secret: secret,
		Region: region, CABundle: mustRead(t, filepath.Join(pk, "ca.pem")), Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := pc.Decrypt(ctx, "k1", xksclient.DecryptInput{Ciphertext: b.External.Ciphertext, IV: b.External.IV,
		Tag: b.External.Tag, AAD: keys.ExternalAAD(b.Header, ec), Metadata: b.External.Metadata},
		xksclient.Meta{Principal: "arn:aws:iam::111122223333:root", KeyARN: *enc.KeyId})
	if err != nil {
		t.Fatalf("proxy decrypt of the outer layer: %v", err)
	}
	if len(inner) != keys.NonceSize+len(msg)+keys.TagSize || bytes.Contains(inner, msg) {
		t.Fatalf("the proxy layer hides the plaintext directly: inner %x", inner)
	}
	t.Logf("proxy-only decryption yields %d bytes of kmsd-layer ciphertext, not the %d-byte plaintext", len(inner), len(msg))

	// --- The external key disabled in the proxy, then enabled again.
	proxyRun(t, "keys", "disable", "--keys-file", keyFile, "--id", "k1")
	waitFor(t, "external key disabled", func() bool {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
		return apiCode(err) == "KMSInvalidStateException"
	})
	if d := k.aws("kms", "describe-key", "--key-id", xk)["KeyMetadata"].(map[string]any); d["KeyState"] != "Enabled" {
		t.Fatalf("key state follows the external key: %v", d["KeyState"])
	}
	proxyRun(t, "keys", "enable", "--keys-file", keyFile, "--id", "k1")
	waitFor(t, "external key enabled", func() bool {
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg})
		return err == nil
	})

	// --- Disconnect: Unavailable; reconnect: old ciphertexts decrypt.
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitState(id)
	if d := k.aws("kms", "describe-key", "--key-id", xk)["KeyMetadata"].(map[string]any); d["KeyState"] != "Unavailable" {
		t.Fatalf("key state while disconnected: %v", d["KeyState"])
	}
	if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec}); apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("decrypt while disconnected: %v", err)
	}
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k2")
	k.awsFails("CustomKeyStoreHasCMKsException", "kms", "delete-custom-key-store", "--custom-key-store-id", id)
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if e := k.waitState(id); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("reconnect: %v", e)
	}
	gauge := func(v string) func() bool {
		return func() bool {
			resp, err := http.Get("http://" + metrics + "/metrics")
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return strings.Contains(string(b), `kmsd_xks_proxy_healthy{custom_key_store_id="`+id+`"} `+v)
		}
	}
	waitFor(t, "health gauge 1", gauge("1"))
	for _, bl := range [][]byte{blob, back.CiphertextBlob} {
		if d, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: bl, EncryptionContext: ec}); err != nil || !bytes.Equal(d.Plaintext, msg) {
			t.Fatalf("decrypt after reconnect: %v", err)
		}
	}

	// --- A stopped proxy: the store stays CONNECTED, operations fail, the
	// background health check logs it.
	p.Stop()
	if _, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: msg}); apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("encrypt with the proxy stopped: %v", err)
	}
	waitFor(t, "health check failure logged", func() bool {
		b, _ := os.ReadFile(k.log)
		return strings.Contains(string(b), "XKS proxy health check failed")
	})
	waitFor(t, "health gauge 0", gauge("0"))
	if e := k.store(id); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("store after the proxy stopped: %v", e)
	}
}

func withSvc(r map[string]any, svc string) map[string]any {
	r["XksProxyVpcEndpointServiceName"] = svc
	return r
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
