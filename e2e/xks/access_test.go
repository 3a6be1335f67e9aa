package xks

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// accessConfig is an xks-proxy configuration with two key stores over one
// key file: /open, with optional secondary-authorization rules (RULES), and
// /walled, answering only the client networks in WALLED.
const accessConfig = `
region = "us-east-1"
[tls]
cert_file = "PKI/cert.pem"
key_file = "PKI/key.pem"
[key_managers.soft]
type = "keyfile"
keys_file = "KEYS"
[[key_stores]]
uri_path_prefix = "/open"
key_manager = "soft"
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
RULES
[[key_stores]]
uri_path_prefix = "/walled"
key_manager = "soft"
allowed_source_cidrs = WALLED
  [[key_stores.credentials]]
  access_key_id = "AKID"
  secret_access_key_file = "SECRET"
`

// denyKMSD is a secondary-authorization rule refusing the operations kmsd
// makes for CreateKey, Encrypt and Decrypt (never health: the spec keeps
// GetHealthStatus out of secondary authorization).
const denyKMSD = `
  [[key_stores.authorization]]
  name = "refuse-kmsd"
  effect = "deny"
  operations = ["CreateKey", "Encrypt", "Decrypt"]
`

// TestProxyRefusesKMS: a proxy refusing kmsd, for real. At connect, only
// the proxy's network rule can refuse (allowed_source_cidrs applies to
// every API, health included; kmsd connects from 127.0.0.1 and the rule
// allows only 127.0.0.2/32): XKS_PROXY_ACCESS_DENIED, and a public create
// gets XksProxyInvalidConfigurationException (kmsd's choice: the spec maps
// no create exception to 403). Widening the rule and SIGHUP let the store
// connect. The secondary-authorization rules refuse kmsd where they apply:
// CreateKey (GetKeyMetadata denied → CustomKeyStoreInvalidStateException),
// Encrypt and Decrypt (→ KMSInvalidStateException), while health, and so
// the connection, are unaffected.
func TestProxyRefusesKMS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1,walled.xks.test", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	for _, id := range []string{"k1", "k2"} {
		proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", id, "--kdf-iterations", "2000")
	}
	conf := filepath.Join(dir, "xks-proxy.toml")
	configure := func(rules, walled string) {
		t.Helper()
		body := strings.NewReplacer("PKI", pk, "KEYS", keyFile, "AKID", akid, "SECRET", writeFile(t, filepath.Join(dir, "secret"), secret),
			"RULES", rules, "WALLED", walled).Replace(accessConfig)
		tmp := writeFile(t, conf+".tmp", body) // renamed: a SIGHUP never reads half a file
		if err := os.Rename(tmp, conf); err != nil {
			t.Fatal(err)
		}
	}
	configure("", `["127.0.0.2/32"]`)
	p := startProxyArgs(t, nil, "--config", conf)
	const svc = "com.amazonaws.vpce.us-east-1.vpce-svc-00000000000000ac"
	k := startKMSD(t, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0",
		"--xks-vpc-endpoint-services", svc+"=walled.xks.test@"+p.Addr)
	endpoint := "https://localhost:" + p.Port()

	runs := k.cliBatch(
		createArgs(storeReq("open", "PUBLIC_ENDPOINT", endpoint, "/open/kms/xks/v1", akid, secret)),
		createArgs(storeReq("walled-public", "PUBLIC_ENDPOINT", endpoint, "/walled/kms/xks/v1", akid, secret)),
		createArgs(withSvc(storeReq("walled", "VPC_ENDPOINT_SERVICE", "https://walled.xks.test", "/walled/kms/xks/v1", akid, secret), svc)))
	open, walled := runs[0].ok(t)["CustomKeyStoreId"].(string), runs[2].ok(t)["CustomKeyStoreId"].(string)
	runs[1].fails(t, "XksProxyInvalidConfigurationException")
	for _, r := range k.cliBatch(connectArgs(open), connectArgs(walled)) {
		r.ok(t)
	}
	got := k.settle(open, walled)
	if e := got[open]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("open store: %v", e)
	}
	if e := got[walled]; e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != "XKS_PROXY_ACCESS_DENIED" {
		t.Fatalf("walled store: %v %v, want FAILED XKS_PROXY_ACCESS_DENIED", e["ConnectionState"], e["ConnectionErrorCode"])
	}
	proxyLogs(t, p, `"operation":"health","outcome":"AccessDeniedException","status":403`, `"rule":"allowed_source_cidrs"`,
		`"cause":"source address 127.0.0.1:`)

	// Keys of the open store work until a rule refuses kmsd's operations.
	ctx := context.Background()
	c := k.sdk()
	xk := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", open, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: []byte("before the rule")})
	if err != nil {
		t.Fatal(err)
	}
	configure(denyKMSD, `["127.0.0.2/32", "127.0.0.1/32"]`)
	if !p.HUP(t) {
		t.Fatalf("xks-proxy rejected its configuration:\n%s", p.Log)
	}
	runs = k.cliBatch(
		[]string{"kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", open, "--xks-key-id", "k2"},
		[]string{"kms", "encrypt", "--key-id", xk, "--plaintext", "YWZ0ZXIgdGhlIHJ1bGU="})
	runs[0].fails(t, "CustomKeyStoreInvalidStateException")
	runs[1].fails(t, "KMSInvalidStateException")
	if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); apiCode(err) != "KMSInvalidStateException" {
		t.Fatalf("decrypt refused by the proxy's rule: %v", err)
	}
	for _, op := range []string{"metadata", "encrypt", "decrypt"} {
		proxyLogs(t, p, `"operation":"`+op+`","outcome":"AccessDeniedException","status":403`)
	}
	proxyLogs(t, p, `"rule":"refuse-kmsd"`)

	// The same reload widened the network rule: the walled store connects
	// (disconnect first: a FAILED store cannot be connected), and the open
	// one stays CONNECTED — health is not subject to secondary authorization.
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", walled)
	k.settle(walled)
	k.aws(connectArgs(walled)...)
	got = k.settle(open, walled)
	if got[walled]["ConnectionState"] != "CONNECTED" || got[open]["ConnectionState"] != "CONNECTED" {
		t.Fatalf("after the reload: walled %v, open %v", got[walled], got[open])
	}
}

// proxyLogs waits until p's log holds every one of want (the proxy logs a
// request just after answering it).
func proxyLogs(t *testing.T, p *proxy, want ...string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		missing := ""
		for _, w := range want {
			if !strings.Contains(p.Log.String(), w) {
				missing = w
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy's log lacks %s:\n%s", missing, p.Log)
		}
	}
}
