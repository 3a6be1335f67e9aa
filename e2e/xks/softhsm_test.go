package xks

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// The external keys of TestExternalKeyStoreSoftHSM live in a SoftHSM2
// token served by `xks-proxy serve --config` (a pkcs11 key manager), with
// one logical key store per client: /cli for the aws CLI, /boto3 for boto3.
const (
	hsmPython      = "/usr/bin/python3" // Debian's, with python3-boto3
	hsmToken       = "kmsd-xks-e2e"
	hsmPIN         = "20261128"
	hsmCLIKey      = "cli-key"      // made with pkcs11-tool, as operators do
	hsmBoto3Key    = "boto3-key"    // likewise
	hsmBadUsageKey = "encrypt-only" // CKA_DECRYPT false: unusable for KMS
)

// TestExternalKeyStoreSoftHSM runs the external key store flow of issue #7
// over real HTTPS (the `xks-proxy dev-cert` test CA) with the keys in
// SoftHSM2, once with the aws CLI v2 and once with boto3, against one kmsd
// and one proxy: create-custom-key-store → connect → CONNECTED → create-key
// with an XksKeyId → encrypt/decrypt/generate-data-key/re-encrypt between
// the external key and a normal key → the external key disabled by the
// proxy operator (disabled_keys + SIGHUP) → KMSInvalidStateException →
// enabled → works → disconnect → Unavailable → reconnect → old ciphertexts
// decrypt. Then each client decrypts the other's ciphertexts.
func TestExternalKeyStoreSoftHSM(t *testing.T) {
	for _, f := range []string{awsCLI, hsmPython} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages awscli, python3-boto3)", f)
		}
	}
	if out, err := exec.Command(hsmPython, "-c", "import boto3").CombinedOutput(); err != nil {
		t.Fatalf("boto3 (Debian package python3-boto3) is required: %v\n%s", err, out)
	}
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	conf := pkcs11test.NewConf(t, filepath.Join(dir, "softhsm")) // skips only without cgo
	tk := pkcs11test.NewToken(t, conf, hsmToken, hsmPIN)
	tk.KeygenWithTool(t, hsmCLIKey)
	tk.KeygenWithTool(t, hsmBoto3Key)
	tk.AddKey(t, hsmBadUsageKey, true, false, nil)
	p := startHSMProxy(t, tk, pk)
	k := startKMSD(t, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"))
	endpoint := "https://localhost:" + p.Port()

	var fromCLI, fromBoto3 []hsmCiphertext
	t.Run("aws CLI", func(t *testing.T) { fromCLI = hsmCLIFlow(t, hsmKMSD(k, t), p, endpoint) })
	t.Run("boto3", func(t *testing.T) { fromBoto3 = hsmBoto3Flow(t, hsmKMSD(k, t), p, endpoint) })
	t.Run("cross-client", func(t *testing.T) {
		if len(fromCLI) == 0 || len(fromBoto3) == 0 {
			t.Fatal("a client flow above failed; nothing to exchange")
		}
		k := hsmKMSD(k, t)
		// boto3 decrypts what the aws CLI encrypted …
		in := filepath.Join(t.TempDir(), "cli-ciphertexts.json")
		b, _ := json.Marshal(fromCLI)
		if err := os.WriteFile(in, b, 0o600); err != nil {
			t.Fatal(err)
		}
		hsmBoto3(t, k, "decrypt", "--in", in)
		// … and the aws CLI what boto3 encrypted.
		var calls [][]string
		for _, c := range fromBoto3 {
			calls = append(calls, c.decryptArgs(t))
		}
		for i, r := range hsmAWS(t, k, calls...) {
			fromBoto3[i].check(t, r.ok(t))
		}
		t.Logf("boto3 decrypted %d aws CLI ciphertexts, the aws CLI %d boto3 ones", len(fromCLI), len(fromBoto3))
	})
}

// hsmCLIFlow is the flow with /usr/bin/aws on the proxy's /cli key store;
// it returns ciphertexts for boto3 to decrypt. Independent calls run in
// batches (hsmAWS) to keep the test short.
func hsmCLIFlow(t *testing.T, k *kmsd, p *hsmProxy, endpoint string) []hsmCiphertext {
	const path = "/cli/kms/xks/v1"
	dir := t.TempDir()
	ec := map[string]string{"purpose": "e2e-cli"}
	ecJSON, _ := json.Marshal(ec)
	msg := []byte("external key in SoftHSM2, driven by the aws CLI")
	pf := filepath.Join(dir, "pt")
	if err := os.WriteFile(pf, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	// --- create-custom-key-store: DISCONNECTED, the configuration without the secret.
	id, errs, code := k.createStore(storeReq("softhsm-cli", "PUBLIC_ENDPOINT", endpoint, path, akid, secret))
	if code != 0 {
		t.Fatalf("create-custom-key-store: exit %d\n%s", code, errs)
	}
	createXKS := func(xksKey string) []string {
		return []string{"kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", xksKey}
	}
	r := hsmAWS(t, k, []string{"kms", "describe-custom-key-stores", "--custom-key-store-id", id}, createXKS(hsmCLIKey))
	if strings.Contains(r[0].out, secret) {
		t.Fatal("describe-custom-key-stores shows the proxy secret")
	}
	e := r[0].ok(t)["CustomKeyStores"].([]any)[0].(map[string]any)
	x, _ := e["XksProxyConfiguration"].(map[string]any)
	if e["ConnectionState"] != "DISCONNECTED" || e["CustomKeyStoreType"] != "EXTERNAL_KEY_STORE" || x == nil || len(x) != 4 ||
		x["AccessKeyId"] != akid || x["UriEndpoint"] != endpoint || x["UriPath"] != path || x["Connectivity"] != "PUBLIC_ENDPOINT" {
		t.Fatalf("describe-custom-key-stores: %v", e)
	}
	r[1].fails(t, "CustomKeyStoreInvalidStateException") // no keys while DISCONNECTED

	// --- connect → CONNECTED; create-key with an XksKeyId, and a normal key.
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if e := k.waitState(id); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	r = hsmAWS(t, k, createXKS(hsmCLIKey), []string{"kms", "create-key", "--description", "normal key"})
	md := r[0].ok(t)["KeyMetadata"].(map[string]any)
	xk, nk := md["Arn"].(string), r[1].ok(t)["KeyMetadata"].(map[string]any)["Arn"].(string)
	if md["Origin"] != "EXTERNAL_KEY_STORE" || md["CustomKeyStoreId"] != id || md["KeyState"] != "Enabled" ||
		md["XksKeyConfiguration"].(map[string]any)["Id"] != hsmCLIKey {
		t.Fatalf("create-key: %v", md)
	}

	// --- create-key errors; encrypt, generate-data-key (external), encrypt (normal).
	r = hsmAWS(t, k,
		createXKS(hsmCLIKey),
		createXKS("no-such-key"),
		createXKS(hsmBadUsageKey),
		[]string{"kms", "encrypt", "--key-id", xk, "--plaintext", "fileb://" + pf, "--encryption-context", string(ecJSON)},
		[]string{"kms", "generate-data-key", "--key-id", xk, "--key-spec", "AES_256"},
		[]string{"kms", "encrypt", "--key-id", nk, "--plaintext", "fileb://" + pf},
	)
	r[0].fails(t, "XksKeyAlreadyInUseException")
	r[1].fails(t, "XksKeyNotFoundException")
	r[2].fails(t, "XksKeyInvalidConfigurationException")
	ct := hsmCiphertext{Name: "aws CLI encrypt", Blob: r[3].ok(t)["CiphertextBlob"].(string), Context: ec, Plaintext: hsmB64(msg), Key: xk}
	gdk := r[4].ok(t)
	dk := hsmCiphertext{Name: "aws CLI generate-data-key", Blob: gdk["CiphertextBlob"].(string), Context: map[string]string{},
		Plaintext: gdk["Plaintext"].(string), Key: xk}
	if raw, _ := base64.StdEncoding.DecodeString(dk.Plaintext); len(raw) != 32 || gdk["KeyId"] != xk {
		t.Fatalf("generate-data-key: %v", gdk)
	}
	normal := r[5].ok(t)["CiphertextBlob"].(string)

	// --- decrypt; re-encrypt external → normal and normal → external.
	r = hsmAWS(t, k,
		ct.decryptArgs(t),
		dk.decryptArgs(t),
		[]string{"kms", "re-encrypt", "--ciphertext-blob", "fileb://" + hsmBlobFile(t, dir, ct.Blob), "--source-encryption-context", string(ecJSON),
			"--destination-key-id", nk},
		[]string{"kms", "re-encrypt", "--ciphertext-blob", "fileb://" + hsmBlobFile(t, dir, normal), "--destination-key-id", xk,
			"--destination-encryption-context", string(ecJSON)},
	)
	ct.check(t, r[0].ok(t))
	dk.check(t, r[1].ok(t))
	toNormal, toExternal := r[2].ok(t), r[3].ok(t)
	if toNormal["SourceKeyId"] != xk || toNormal["KeyId"] != nk || toExternal["SourceKeyId"] != nk || toExternal["KeyId"] != xk {
		t.Fatalf("re-encrypt: %v, %v", toNormal, toExternal)
	}
	reNormal := hsmCiphertext{Name: "aws CLI re-encrypt to normal", Blob: toNormal["CiphertextBlob"].(string), Context: map[string]string{}, Plaintext: hsmB64(msg), Key: nk}
	reExternal := hsmCiphertext{Name: "aws CLI re-encrypt to external", Blob: toExternal["CiphertextBlob"].(string), Context: ec, Plaintext: hsmB64(msg), Key: xk}
	reNormal.check(t, k.aws(reNormal.decryptArgs(t)...))

	// --- The operator disables the external key in the proxy:
	// KMSInvalidStateException, while the key state stays Enabled.
	p.setDisabled(t, "/cli", hsmCLIKey)
	r = hsmAWS(t, k,
		[]string{"kms", "encrypt", "--key-id", xk, "--plaintext", "fileb://" + pf},
		ct.decryptArgs(t),
		[]string{"kms", "describe-key", "--key-id", xk},
	)
	r[0].fails(t, "KMSInvalidStateException")
	r[1].fails(t, "KMSInvalidStateException")
	if s := r[2].ok(t)["KeyMetadata"].(map[string]any)["KeyState"]; s != "Enabled" {
		t.Fatalf("KeyState %v while the external key is disabled in the proxy, want Enabled", s)
	}
	// … and enables it again: it works.
	p.setDisabled(t, "/cli")
	r = hsmAWS(t, k,
		[]string{"kms", "encrypt", "--key-id", xk, "--plaintext", "fileb://" + pf, "--encryption-context", string(ecJSON)},
		reExternal.decryptArgs(t),
	)
	again := hsmCiphertext{Name: "aws CLI encrypt after enabling", Blob: r[0].ok(t)["CiphertextBlob"].(string), Context: ec, Plaintext: hsmB64(msg), Key: xk}
	reExternal.check(t, r[1].ok(t))

	// --- disconnect → Unavailable, KMSInvalidStateException.
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	if e := k.waitState(id); e["ConnectionState"] != "DISCONNECTED" {
		t.Fatalf("disconnect: %v", e)
	}
	r = hsmAWS(t, k, []string{"kms", "describe-key", "--key-id", xk}, ct.decryptArgs(t))
	if d := r[0].ok(t)["KeyMetadata"].(map[string]any); d["KeyState"] != "Unavailable" || d["Enabled"] != false {
		t.Fatalf("while disconnected: KeyState %v, Enabled %v; want Unavailable, false", d["KeyState"], d["Enabled"])
	}
	r[1].fails(t, "KMSInvalidStateException")

	// --- reconnect: the old ciphertexts decrypt.
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	if e := k.waitState(id); e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("reconnect: %v", e)
	}
	all := []hsmCiphertext{ct, dk, reExternal, again}
	var calls [][]string
	for _, c := range all {
		calls = append(calls, c.decryptArgs(t))
	}
	for i, r := range hsmAWS(t, k, calls...) {
		all[i].check(t, r.ok(t))
	}
	return all
}

// hsmBoto3Flow is the flow with boto3 (testdata/boto3_xks.py) on the
// proxy's /boto3 key store, one script run per phase; the test changes the
// proxy between the phases. It returns boto3's ciphertexts.
func hsmBoto3Flow(t *testing.T, k *kmsd, p *hsmProxy, endpoint string) []hsmCiphertext {
	state := filepath.Join(t.TempDir(), "state.json")
	hsmBoto3(t, k, "setup", "--state", state, "--proxy-uri", endpoint, "--proxy-path", "/boto3/kms/xks/v1",
		"--access-key-id", akid, "--secret-file", p.secretFile, "--xks-key", hsmBoto3Key, "--bad-usage-key", hsmBadUsageKey)
	p.setDisabled(t, "/boto3", hsmBoto3Key)
	hsmBoto3(t, k, "disabled", "--state", state)
	p.setDisabled(t, "/boto3")
	hsmBoto3(t, k, "reenabled", "--state", state)
	var st struct{ Ciphertexts []hsmCiphertext }
	b, err := os.ReadFile(state)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || len(st.Ciphertexts) == 0 {
		t.Fatalf("%s: %v %+v", state, err, st)
	}
	return st.Ciphertexts
}

// hsmBoto3 runs one phase of testdata/boto3_xks.py, which must succeed.
func hsmBoto3(t *testing.T, k *kmsd, phase string, args ...string) {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_xks.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(hsmPython, append([]string{script, phase, "--endpoint", k.endpoint}, args...)...)
	cmd.Env = append(k.env, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if err != nil || lines[len(lines)-1] != fmt.Sprintf(`{"phase": "%s", "done": true}`, phase) {
		t.Fatalf("boto3_xks.py %s: %v\nstdout:\n%s\nstderr:\n%s", phase, err, &out, &errb)
	}
	for _, l := range lines {
		t.Log(l)
	}
}

// hsmCiphertext is a ciphertext with what it must decrypt to; the aws CLI
// side and boto3_xks.py exchange them as JSON.
type hsmCiphertext struct {
	Name      string            `json:"name"`
	Blob      string            `json:"blob"` // Base64
	Context   map[string]string `json:"context"`
	Plaintext string            `json:"plaintext"` // Base64
	Key       string            `json:"key"`       // ARN of the KMS key
}

func (c hsmCiphertext) decryptArgs(t *testing.T) []string {
	args := []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + hsmBlobFile(t, t.TempDir(), c.Blob)}
	if len(c.Context) > 0 {
		b, _ := json.Marshal(c.Context)
		args = append(args, "--encryption-context", string(b))
	}
	return args
}

// check checks the output of aws kms decrypt.
func (c hsmCiphertext) check(t *testing.T, out map[string]any) {
	t.Helper()
	if out["Plaintext"] != c.Plaintext || out["KeyId"] != c.Key {
		t.Fatalf("decrypt %s: plaintext %v key %v; want %s by %s", c.Name, out["Plaintext"], out["KeyId"], c.Plaintext, c.Key)
	}
}

func hsmB64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// hsmBlobFile writes Base64 blob raw to a new file in dir (for fileb://).
func hsmBlobFile(t *testing.T, dir, blob string) string {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(blob)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.CreateTemp(dir, "blob-")
	if err == nil {
		_, err = f.Write(raw)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// hsmKMSD is k reporting its failures to t (a subtest).
func hsmKMSD(k *kmsd, t *testing.T) *kmsd {
	c := *k
	c.t = t
	return &c
}

// hsmAWSRun is one aws CLI run of a batch.
type hsmAWSRun struct {
	args      []string
	out, errs string
	code      int
}

// hsmAWS runs independent aws CLI calls two at a time (each costs about a
// second of Python start-up) and returns them in order.
func hsmAWS(t *testing.T, k *kmsd, calls ...[]string) []*hsmAWSRun {
	t.Helper()
	rs := make([]*hsmAWSRun, len(calls))
	errs := make([]error, len(calls))
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, args := range calls {
		rs[i] = &hsmAWSRun{args: args}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(awsCLI, append([]string{"--endpoint-url", k.endpoint, "--output", "json"}, args...)...)
			cmd.Env = k.env
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); ok {
				rs[i].code, err = ee.ExitCode(), nil
			}
			rs[i].out, rs[i].errs, errs[i] = out.String(), errb.String(), err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("aws %s: %v", strings.Join(calls[i], " "), err)
		}
	}
	return rs
}

// ok checks the run succeeded and decodes its JSON output.
func (r *hsmAWSRun) ok(t *testing.T) map[string]any {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("aws %s: exit %d\n%s", strings.Join(r.args, " "), r.code, r.errs)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(r.out), &v); err != nil {
		t.Fatalf("aws %s: %v\n%s", strings.Join(r.args, " "), err, r.out)
	}
	return v
}

// fails checks the run failed with exception code.
func (r *hsmAWSRun) fails(t *testing.T, code string) {
	t.Helper()
	if r.code == 0 || !strings.Contains(r.errs, "("+code+")") {
		t.Fatalf("aws %s: exit %d, stdout %q, stderr %q; want %s", strings.Join(r.args, " "), r.code, r.out, r.errs, code)
	}
}

// hsmProxy is a running `xks-proxy serve --config` whose key manager is a
// SoftHSM2 token, with the key stores /cli and /boto3 (same credential).
type hsmProxy struct {
	*e2etest.Proxy
	config, secretFile string
	tls                string // directory of cert.pem, key.pem
	token              *pkcs11test.Token
	pinFile            string
	disabled           map[string][]string // disabled_keys by key store
}

// startHSMProxy serves the keys of token tk with the certificate in dir
// pki; it is stopped (by pid) when the test ends.
func startHSMProxy(t *testing.T, tk *pkcs11test.Token, pki string) *hsmProxy {
	t.Helper()
	dir := t.TempDir()
	p := &hsmProxy{config: filepath.Join(dir, "xks-proxy.toml"), secretFile: filepath.Join(dir, "secret"),
		tls: pki, token: tk, pinFile: filepath.Join(dir, "pin"), disabled: map[string][]string{}}
	for f, s := range map[string]string{p.secretFile: secret + "\n", p.pinFile: tk.PIN + "\n"} {
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p.writeConfig(t)
	p.Proxy = e2etest.StartProxy(t, proxyBin, []string{"SOFTHSM2_CONF=" + tk.Conf}, "--config", p.config)
	return p
}

// writeConfig writes the proxy configuration (atomically: a SIGHUP never
// reads half a file).
func (p *hsmProxy) writeConfig(t *testing.T) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "region = %q\nlog_level = \"debug\"\n\n[tls]\ncert_file = %q\nkey_file = %q\n\n", region,
		filepath.Join(p.tls, "cert.pem"), filepath.Join(p.tls, "key.pem"))
	fmt.Fprintf(&b, "[key_managers.hsm]\ntype = \"pkcs11\"\nmodule = %q\ntoken_label = %q\npin_file = %q\n",
		p.token.Module, p.token.Label, p.pinFile)
	for _, prefix := range []string{"/cli", "/boto3"} {
		disabled, _ := json.Marshal(append([]string{}, p.disabled[prefix]...)) // a TOML array too
		fmt.Fprintf(&b, "\n[[key_stores]]\nuri_path_prefix = %q\nkey_manager = \"hsm\"\ndisabled_keys = %s\n", prefix, disabled)
		fmt.Fprintf(&b, "  [[key_stores.credentials]]\n  access_key_id = %q\n  secret_access_key_file = %q\n", akid, p.secretFile)
	}
	tmp := p.config + ".new"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.config); err != nil {
		t.Fatal(err)
	}
}

// setDisabled is what the proxy's operator does to disable external keys
// of a key store (a PKCS#11 token has no disabled state of its own): list
// them in disabled_keys and send SIGHUP. It returns once the proxy has
// applied the new configuration.
func (p *hsmProxy) setDisabled(t *testing.T, store string, keys ...string) {
	t.Helper()
	p.disabled[store] = keys
	p.writeConfig(t)
	if !p.HUP(t) {
		t.Fatalf("xks-proxy rejected its configuration:\n%s", p.Log)
	}
	t.Logf("xks-proxy %s: disabled_keys = %v (SIGHUP)", store, keys)
}
