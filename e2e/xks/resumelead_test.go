package xks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestResumeRefusedBeforeLead: kmsd's resume of a CONNECTED external key
// store at start runs before it holds the controller lease — forced here:
// the process killed before it (node n1) left its lease to run out, and
// kmsd starts again on the data directory as node n2 — while the store's
// proxy now refuses it (its network rule no longer allows 127.0.0.1:
// XKS_PROXY_ACCESS_DENIED). The refused node is not the controller and
// leaves the store CONNECTED; once n1's lease has run out and n2 leads, it
// must decide the store's state: FAILED with XKS_PROXY_ACCESS_DENIED, as a
// connect would have it. Without commit 1ade0d6 the store stayed CONNECTED.
func TestResumeRefusedBeforeLead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	conf := filepath.Join(dir, "xks-proxy.toml")
	configure := func(walled string) {
		t.Helper()
		body := strings.NewReplacer("PKI", pk, "KEYS", keyFile, "AKID", akid, "SECRET", writeFile(t, filepath.Join(dir, "secret"), secret),
			"RULES", "", "WALLED", walled).Replace(accessConfig)
		tmp := writeFile(t, conf+".tmp", body) // renamed: a SIGHUP never reads half a file
		if err := os.Rename(tmp, conf); err != nil {
			t.Fatal(err)
		}
	}
	configure(`["127.0.0.1/32"]`)
	p := startProxyArgs(t, nil, "--config", conf)

	// Long enough that n1's lease outlives n2's start (its resume runs
	// in it) even on a loaded machine.
	const ttl = 12 * time.Second
	args := func(node string) []string {
		return []string{"--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0",
			"--node-id", node, "--lease-ttl", ttl.String()}
	}
	data := filepath.Join(dir, "data")
	k := startKMSDAt(t, data, args("n1")...)
	id, errs, code := k.createStore(storeReq("walled", "PUBLIC_ENDPOINT", "https://localhost:"+p.Port(), "/walled/kms/xks/v1", akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}

	// n1 dies holding the controller lease; the proxy stops allowing kmsd.
	k.kill()
	configure(`["127.0.0.2/32"]`)
	if !p.HUP(t) {
		t.Fatalf("xks-proxy rejected its configuration:\n%s", p.Log)
	}
	k = startKMSDAt(t, data, args("n2")...)
	logText := func() string {
		b, err := os.ReadFile(k.log)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	const (
		refused = `msg="keystore: resumed store refused by its backing" store=`
		leads   = `msg="controller lease acquired" node=n2`
	)
	waitFor(t, "the resume's refused login", func() bool {
		return strings.Contains(logText(), refused+id+" code=XKS_PROXY_ACCESS_DENIED")
	})
	// Until n2 leads the store is left to the controller: CONNECTED.
	e := k.store(id)
	if !strings.Contains(logText(), leads) && (e["ConnectionState"] != "CONNECTED" || e["ConnectionErrorCode"] != nil) {
		t.Fatalf("store before n2 leads: %v %v, want CONNECTED", e["ConnectionState"], e["ConnectionErrorCode"])
	}

	// n1's lease runs out, n2 leads and fails the store.
	for deadline := time.Now().Add(2*ttl + 10*time.Second); ; time.Sleep(200 * time.Millisecond) {
		e = k.store(id)
		if e["ConnectionState"] != "CONNECTED" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still CONNECTED %v after n2's start (n2 leads: %v)", 2*ttl+10*time.Second, strings.Contains(logText(), leads))
		}
	}
	if e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != "XKS_PROXY_ACCESS_DENIED" {
		t.Fatalf("store once n2 leads: %v %v, want FAILED XKS_PROXY_ACCESS_DENIED", e["ConnectionState"], e["ConnectionErrorCode"])
	}
	// The race was forced: the refusal came before n2 held the lease.
	l := logText()
	if i, j := strings.Index(l, refused+id), strings.Index(l, leads); i < 0 || j < 0 || i > j {
		t.Fatalf("race not forced: kmsd's log does not show the refusal (at %d) before n2 led (at %d):\n%s", i, j, l)
	}
	proxyLogs(t, p, `"operation":"health","outcome":"AccessDeniedException","status":403`, `"rule":"allowed_source_cidrs"`)
}
