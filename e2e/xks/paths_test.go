package xks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
)

// Message gists kmsd gives each proxy outcome (xksclient's table, spec
// §5.9 "one stable text per cause").
const (
	msgInvalidResponse = "KMS cannot interpret the response from the external key store proxy."
	msgTimeout         = "The external key store proxy did not respond to KMS in the time allotted. Retry the request."
	msgUnreachable     = "KMS cannot communicate with the external key store proxy."
	msgURIPath         = "The external key store proxy rejected the request because of an invalid URI path. Verify XksProxyUriPath."
)

// TestProxyMisbehavesWhileConnected: a store CONNECTED through a proxy
// that then misbehaves (a test HTTPS server in front of the real
// xks-proxy, switched between modes) stays CONNECTED (spec §6.2: no
// automatic transition), while its keys' cryptographic operations answer
// KMSInvalidStateException with the cause's message and CreateKey answers
// CustomKeyStoreInvalidStateException (spec §5.9, §10.7), through the aws
// CLI, aws-sdk-go-v2 and boto3; when the proxy behaves again, the keys work
// without a reconnect. boto3 then connects the store through each
// misbehaviour: FAILED with XKS_PROXY_INVALID_RESPONSE, XKS_PROXY_TIMED_OUT
// and NETWORK_ERRORS (spec §8.3, §10.7).
func TestProxyMisbehavesWhileConnected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	for _, id := range []string{"k1", "k2"} {
		proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", id, "--kdf-iterations", "2000")
	}
	p := startProxy(t, pk, keyFile)
	sw := newSwitchProxy(t, pk, p.Addr)
	k := startKMSD(t, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0")
	id, errs, code := k.createStore(storeReq("switched", "PUBLIC_ENDPOINT", "https://localhost:"+sw.port(), "/kms/xks/v1", akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect through the switch in pass mode: %v", e)
	}
	xk := k.aws("kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	ctx := context.Background()
	c := k.sdk()
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: []byte("made while the proxy behaved")})
	if err != nil {
		t.Fatal(err)
	}
	py := startBoto3(t, k)

	cases := []struct{ mode, cause, msg string }{
		{"garbage", "200 with an HTML page", msgInvalidResponse},
		{"html500", "500 with an HTML page", msgInvalidResponse},
		{"slow", "no answer within 250 ms", msgTimeout},
		{"drop", "connection closed after the request", msgUnreachable},
	}
	for _, tc := range cases {
		t.Run("crypto/"+tc.mode, func(t *testing.T) {
			sw.set(tc.mode)
			defer sw.set("pass")
			runs := k.cliBatch([]string{"kms", "encrypt", "--key-id", xk, "--plaintext", "bWlzYmVoYXZpbmc="},
				[]string{"kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k2"})
			runs[0].fails(t, "KMSInvalidStateException")
			if !strings.Contains(runs[0].errs, "Encrypt operation: "+tc.msg) {
				t.Errorf("aws kms encrypt: %q, want the message %q", runs[0].errs, tc.msg)
			}
			runs[1].fails(t, "CustomKeyStoreInvalidStateException")
			_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			wantAPIError(t, "sdk Decrypt", err, "KMSInvalidStateException", tc.msg)
			_, err = c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: &xk, NumberOfBytes: aws.Int32(32)})
			wantAPIError(t, "sdk GenerateDataKey", err, "KMSInvalidStateException", tc.msg)
			if r := py.do(t, map[string]any{"op": "encrypt", "key": xk}); r["error"] != "KMSInvalidStateException" || r["message"] != tc.msg || r["status"] != 400.0 {
				t.Errorf("boto3 encrypt: %v, want KMSInvalidStateException (400) %q", r, tc.msg)
			}
			if e := k.store(id); e["ConnectionState"] != "CONNECTED" {
				t.Fatalf("store after the proxy's %s: %v", tc.cause, e)
			}
			t.Logf("%s → KMSInvalidStateException %q; store CONNECTED", tc.cause, tc.msg)
		})
	}
	// Behaving again: the keys work, no reconnect needed.
	if _, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil {
		t.Fatalf("decrypt once the proxy behaves: %v", err)
	}
	if r := py.do(t, map[string]any{"op": "encrypt", "key": xk}); r["ok"] != true {
		t.Fatalf("boto3 encrypt once the proxy behaves: %v", r)
	}

	// Connecting through each misbehaviour, with boto3.
	for _, tc := range []struct{ mode, code string }{
		{"garbage", "XKS_PROXY_INVALID_RESPONSE"},
		{"html500", "XKS_PROXY_INVALID_RESPONSE"},
		{"slow", "XKS_PROXY_TIMED_OUT"},
		{"drop", "NETWORK_ERRORS"},
	} {
		t.Run("connect/"+tc.mode, func(t *testing.T) {
			if r := py.do(t, map[string]any{"op": "disconnect", "store": id}); r["state"] != "DISCONNECTED" {
				t.Fatalf("boto3 disconnect: %v", r)
			}
			sw.set(tc.mode)
			defer sw.set("pass")
			if r := py.do(t, map[string]any{"op": "connect", "store": id}); r["state"] != "FAILED" || r["code"] != tc.code {
				t.Fatalf("boto3 connect: %v, want FAILED %s", r, tc.code)
			}
			if r := py.do(t, map[string]any{"op": "encrypt", "key": xk}); r["error"] != "KMSInvalidStateException" {
				t.Fatalf("boto3 encrypt with the store FAILED: %v", r)
			}
			if r := py.do(t, map[string]any{"op": "connect", "store": id}); r["error"] != "CustomKeyStoreInvalidStateException" {
				t.Fatalf("boto3 connect of a FAILED store: %v", r)
			}
			t.Logf("boto3 connect through the proxy's %s → FAILED %s", tc.mode, tc.code)
		})
	}
	py.do(t, map[string]any{"op": "disconnect", "store": id})
	if r := py.do(t, map[string]any{"op": "connect", "store": id}); r["state"] != "CONNECTED" {
		t.Fatalf("boto3 connect once the proxy behaves: %v", r)
	}
	if r := py.do(t, map[string]any{"op": "decrypt", "blob": enc.CiphertextBlob}); r["ok"] != true {
		t.Fatalf("boto3 decrypt after the reconnect: %v", r)
	}
}

// wantAPIError checks err is the API error code with message msg.
func wantAPIError(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code || ae.ErrorMessage() != msg {
		t.Errorf("%s: %v, want %s %q", what, err, code, msg)
	}
}

// apiMessage is the message of API error err ("" for another error).
func apiMessage(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorMessage()
	}
	return ""
}

// boto3 is a running testdata/boto3_paths.py: one Python process, one
// JSON command and answer a line, so that the test can change the proxy
// between boto3 calls without paying Python's start-up for each.
type boto3 struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startBoto3(t *testing.T, k *kmsd) *boto3 {
	t.Helper()
	if out, err := exec.Command(hsmPython, "-c", "import boto3").CombinedOutput(); err != nil {
		t.Fatalf("boto3 (Debian package python3-boto3) is required: %v\n%s", err, out)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "boto3_paths.py"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(hsmPython, script, "--endpoint", k.endpoint)
	cmd.Env = append(k.env, "PYTHONDONTWRITEBYTECODE=1", "AWS_EC2_METADATA_DISABLED=true")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	return &boto3{in: in, out: sc}
}

// do sends one command and returns boto3's answer.
func (b *boto3) do(t *testing.T, cmd map[string]any) map[string]any {
	t.Helper()
	line, _ := json.Marshal(cmd)
	if _, err := b.in.Write(append(line, '\n')); err != nil {
		t.Fatalf("boto3 %s: %v", line, err)
	}
	if !b.out.Scan() {
		t.Fatalf("boto3 %s: no answer (%v)", line, b.out.Err())
	}
	var r map[string]any
	if err := json.Unmarshal(b.out.Bytes(), &r); err != nil {
		t.Fatalf("boto3 %s: %v: %s", line, err, b.out.Bytes())
	}
	return r
}
