package console

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	xksAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	xksPass   = "e2e key file passphrase"
)

// TestConsoleKeyStores: with the key store page open, Connect turns a
// CloudHSM key store DISCONNECTED → CONNECTING → CONNECTED without a
// reload; a key is created in it; an external key store whose proxy was
// stopped fails to connect and shows FAILED, XKS_PROXY_NOT_REACHABLE and
// AWS's hint without a reload; the audit log is searched for the connect;
// the cluster and overview pages show the cluster and the traffic. Every
// page is saved as a screenshot.
func TestConsoleKeyStores(t *testing.T) {
	requireTools(t, module, "/usr/bin/openssl")
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pki)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	proxy := startProxy(t, pki, keyFile)

	// Connecting takes at least 2s, so the page (polling every second)
	// sees CONNECTING.
	k := startKMSD(t, []string{"KMSD_HSM_CREATE_DELAY=100ms", "KMSD_HSM_INITIALIZE_DELAY=100ms", "KMSD_HSM_DELETE_DELAY=100ms",
		"KMSD_KEYSTORE_CONNECT_DELAY=2s"}, "--xks-ca-bundle", filepath.Join(pki, "ca.pem"))
	clusterID, anchor := k.readyCluster(dir)
	hsmStore := k.aws("kms", "create-custom-key-store", "--custom-key-store-name", "hsm-store", "--cloud-hsm-cluster-id", clusterID,
		"--trust-anchor-certificate", "file://"+anchor, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	xksStore := k.aws("kms", "create-custom-key-store", "--custom-key-store-name", "xks-store", "--custom-key-store-type", "EXTERNAL_KEY_STORE",
		"--xks-proxy-connectivity", "PUBLIC_ENDPOINT", "--xks-proxy-uri-endpoint", "https://localhost:"+proxy.Port(),
		"--xks-proxy-uri-path", "/kms/xks/v1", "--xks-proxy-authentication-credential", "AccessKeyId="+xksAKID+",RawSecretAccessKey="+xksSecret)["CustomKeyStoreId"].(string)

	b := newBrowser(t, artifacts(t))
	b.signIn(k.p.Endpoint, k.akid, k.skey)
	b.run("stores page", chromedp.Navigate(k.p.Endpoint+"/console/stores"), chromedp.WaitVisible(chromedp.ID("stores")))
	row := func(id string) string { return `#stores tr[data-store="` + id + `"]` }
	if got := b.text(row(hsmStore) + " td.state"); got != "DISCONNECTED" {
		t.Fatalf("HSM store shown %q", got)
	}
	// Record every state each row shows from now on, and mark the
	// document: a reload would lose the mark.
	eval[bool](b, `(() => {
		window.__noReload = true;
		window.__seen = {};
		for (const tr of document.querySelectorAll("#stores tr[data-store]")) {
			const id = tr.dataset.store, cell = tr.querySelector("td.state");
			window.__seen[id] = [cell.textContent];
			new MutationObserver(() => {
				const s = window.__seen[id];
				if (s[s.length-1] !== cell.textContent) { s.push(cell.textContent); }
			}).observe(cell, {childList: true, characterData: true, subtree: true});
		}
		return true;
	})()`)
	seen := func(id string) []string {
		return eval[[]string](b, `window.__seen[`+jsString(id)+`]`)
	}
	waitState := func(id, state string) {
		t.Helper()
		b.waitText(id+" "+state, row(id)+" td.state", func(s string) bool { return s == state })
		if !eval[bool](b, `window.__noReload === true`) {
			t.Fatal("the stores page was reloaded")
		}
	}

	// CloudHSM: Connect (with the keyboard), watched live.
	b.run("connect HSM store", chromedp.Focus(chromedp.CSS(row(hsmStore)+" button.connect")), chromedp.KeyEvent("\r"))
	waitState(hsmStore, "CONNECTED")
	if got := seen(hsmStore); strings.Join(got, " → ") != "DISCONNECTED → CONNECTING → CONNECTED" {
		t.Fatalf("HSM store went %v", got)
	}
	if got := b.text("#action-status"); got != "Connecting "+hsmStore+"." {
		t.Fatalf("connect outcome %q", got)
	}
	if s := k.store(hsmStore); s["ConnectionState"] != "CONNECTED" {
		t.Fatalf("aws says the HSM store is %v", s["ConnectionState"])
	}

	// External: connected while the proxy runs; then the proxy stops,
	// and a reconnect fails with the code and AWS's hint.
	b.run("connect XKS store", chromedp.Click(chromedp.CSS(row(xksStore)+" button.connect")))
	waitState(xksStore, "CONNECTED")
	proxy.Stop()
	b.run("disconnect XKS store", chromedp.Click(chromedp.CSS(row(xksStore)+" button.disconnect")))
	waitState(xksStore, "DISCONNECTED")
	b.run("reconnect XKS store", chromedp.Click(chromedp.CSS(row(xksStore)+" button.connect")))
	waitState(xksStore, "FAILED")
	if got := seen(xksStore); strings.Join(got, " → ") != "DISCONNECTED → CONNECTING → CONNECTED → DISCONNECTING → DISCONNECTED → CONNECTING → FAILED" &&
		strings.Join(got, " → ") != "DISCONNECTED → CONNECTING → CONNECTED → DISCONNECTED → CONNECTING → FAILED" {
		t.Fatalf("external store went %v", got)
	}
	if got := b.text(row(xksStore) + " .code"); got != "XKS_PROXY_NOT_REACHABLE" {
		t.Fatalf("external store's error code %q", got)
	}
	if got := b.text(row(xksStore) + " .hint"); !strings.HasPrefix(got, "AWS KMS cannot communicate with the external key store proxy.") {
		t.Fatalf("external store's hint %q", got)
	}
	if s := k.store(xksStore); s["ConnectionState"] != "FAILED" || s["ConnectionErrorCode"] != "XKS_PROXY_NOT_REACHABLE" {
		t.Fatalf("aws says the external store is %v %v", s["ConnectionState"], s["ConnectionErrorCode"])
	}
	b.screenshot("stores")

	// Update: the failed external store is disconnected and renamed.
	b.run("disconnect failed store", chromedp.Click(chromedp.CSS(row(xksStore)+" button.disconnect")))
	waitState(xksStore, "DISCONNECTED")
	b.run("rename", chromedp.Click(chromedp.CSS(row(xksStore)+" summary")),
		chromedp.SendKeys(chromedp.CSS(row(xksStore)+` input[name="name"]`), "xks-renamed"),
		chromedp.Submit(chromedp.CSS(row(xksStore)+` input[name="name"]`)), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#flash"); got != "Key store "+xksStore+" updated." {
		t.Fatalf("update: %q", got)
	}
	if s := k.store(xksStore); s["CustomKeyStoreName"] != "xks-renamed" {
		t.Fatalf("aws says the store is named %v", s["CustomKeyStoreName"])
	}

	// A key in the CloudHSM key store, made in the console.
	b.run("keys page", chromedp.Navigate(k.p.Endpoint+"/console/keys"), chromedp.WaitVisible(chromedp.ID("create-key")),
		chromedp.SendKeys(chromedp.ID("new-alias"), "in-the-hsm"))
	eval[bool](b, `(() => {
		document.getElementById("new-origin").value = "AWS_CLOUDHSM";
		document.getElementById("new-store").value = `+jsString(hsmStore)+`;
		return true;
	})()`)
	b.run("create HSM key", chromedp.Click(chromedp.ID("create-key")), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#flash"); !strings.Contains(got, "created with alias alias/in-the-hsm") {
		t.Fatalf("create HSM key: %q", got)
	}
	md := k.aws("kms", "describe-key", "--key-id", "alias/in-the-hsm")["KeyMetadata"].(map[string]any)
	if md["Origin"] != "AWS_CLOUDHSM" || md["CustomKeyStoreId"] != hsmStore || md["KeyState"] != "Enabled" {
		t.Fatalf("the HSM key: %v", md)
	}

	// The audit log: search (keyboard: type, Enter) for the connects.
	b.run("audit search", chromedp.Navigate(k.p.Endpoint+"/console/audit"), chromedp.WaitVisible(chromedp.ID("audit-operation")),
		chromedp.Focus(chromedp.ID("audit-operation")), chromedp.KeyEvent("ConnectCustomKeyStore"), chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.ID("audit-count")))
	table := b.text("#audit tbody")
	if !strings.Contains(table, hsmStore) || !strings.Contains(table, xksStore) || !strings.Contains(table, "arn:aws:iam::111122223333:user/kmsd-admin") ||
		strings.Contains(table, "DescribeCustomKeyStores") {
		t.Fatalf("audit search for ConnectCustomKeyStore:\n%s", table)
	}
	// Three ConnectCustomKeyStore calls, and the three outcomes kmsd
	// records as service events (CloudTrail's AwsServiceEvent).
	if got := b.text("#audit-count"); !strings.HasPrefix(got, "6 records") || !strings.Contains(table, "FAILED XKS_PROXY_NOT_REACHABLE") {
		t.Fatalf("audit search: %q (want the 3 connects and their 3 outcomes)\n%s", got, table)
	}
	b.screenshot("audit")
	b.run("audit failures", chromedp.Navigate(k.p.Endpoint+"/console/audit?operation=ConnectCustomKeyStore&outcome=failure"),
		chromedp.WaitVisible(chromedp.ID("audit-count")))
	if got, table := b.text("#audit-count"), b.text("#audit tbody"); !strings.HasPrefix(got, "1 records") || !strings.Contains(table, xksStore) {
		t.Fatalf("audit search for failed connects: %q\n%s", got, table)
	}
	// By principal (the user name) and by time.
	hour := func(d time.Duration) string { return url.QueryEscape(time.Now().UTC().Add(d).Format(time.RFC3339)) }
	for _, c := range []struct{ query, want string }{
		{"operation=ConnectCustomKeyStore&principal=kmsd-admin", "3 records"},
		{"operation=ConnectCustomKeyStore&start=" + hour(-time.Hour) + "&end=" + hour(time.Hour), "6 records"},
		{"operation=ConnectCustomKeyStore&start=" + hour(time.Hour), "0 records"},
		{"operation=CreateKey&key=" + md["KeyId"].(string), "1 records"},
		{"operation=CreateKey&key=alias/in-the-hsm", "0 records"}, // the key's alias is not in CreateKey's record
	} {
		b.run("audit "+c.query, chromedp.Navigate(k.p.Endpoint+"/console/audit?"+c.query), chromedp.WaitVisible(chromedp.ID("audit-count")))
		if got := b.text("#audit-count"); !strings.HasPrefix(got, c.want) {
			t.Fatalf("audit search %s: %q, want %s\n%s", c.query, got, c.want, b.text("#audit tbody"))
		}
	}
	b.run("audit search again", chromedp.Navigate(k.p.Endpoint+"/console/audit?operation=ConnectCustomKeyStore"),
		chromedp.WaitVisible(chromedp.ID("audit-count")))
	// The HSM store's connect, in full.
	b.run("audit record", chromedp.Click(chromedp.JSPath(`[...document.querySelectorAll("#audit tbody tr")].find(tr => tr.textContent.includes(`+jsString(hsmStore)+`) && tr.textContent.includes("user/kmsd-admin")).querySelector("a")`)),
		chromedp.WaitVisible(chromedp.ID("record")))
	rec := b.text("#record")
	for _, want := range []string{`"eventName": "ConnectCustomKeyStore"`, `"customKeyStoreId": "` + hsmStore + `"`, `"userAgent": "kmsd-console (`, `"eventSource": "kms.amazonaws.com"`} {
		if !strings.Contains(rec, want) {
			t.Fatalf("audit record lacks %s:\n%s", want, rec)
		}
	}
	b.screenshot("audit-record")

	// HSM clusters.
	b.run("clusters", chromedp.Navigate(k.p.Endpoint+"/console/clusters"), chromedp.WaitVisible(chromedp.ID("clusters")))
	if got := b.text("#clusters"); !strings.Contains(got, clusterID) || !strings.Contains(got, "ACTIVE") || strings.Count(got, "hsm-") < 2 {
		t.Fatalf("clusters page:\n%s", got)
	}
	b.screenshot("clusters")

	// The overview: rates and latencies per operation.
	b.run("overview", chromedp.Navigate(k.p.Endpoint+"/console/"), chromedp.WaitVisible(chromedp.ID("overview")))
	b.waitText("overview charts", "#overview", func(s string) bool {
		return strings.Contains(s, "Requests per second") && strings.Contains(s, "ConnectCustomKeyStore")
	})
	b.screenshot("overview")
}

// readyCluster makes an ACTIVE cluster with HSMs in two Availability Zones,
// initialized with a CSR signed by a fresh CA, and a kmsuser whose
// password is kmsPswd1 (as e2e/keystore does); it returns the cluster id
// and the trust anchor file.
func (k *kmsd) readyCluster(dir string) (id, anchor string) {
	t := k.t
	t.Helper()
	id = k.aws("cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002")["Cluster"].(map[string]any)["ClusterId"].(string)
	k.waitCluster(id, "UNINITIALIZED")
	k.aws("cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	c := k.waitCluster(id, "UNINITIALIZED")
	csr := filepath.Join(dir, "cluster.csr")
	if err := os.WriteFile(csr, []byte(c["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}
	anchor, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if o, e, code := run(t, os.Environ(), "", "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", caKey, "-out", anchor,
		"-days", "3", "-subj", "/CN=customerCA"); code != 0 {
		t.Fatalf("openssl req: %s %s", o, e)
	}
	signed := filepath.Join(dir, "cluster.crt")
	if o, e, code := run(t, os.Environ(), "", "openssl", "x509", "-req", "-days", "3", "-in", csr, "-CA", anchor, "-CAkey", caKey,
		"-CAcreateserial", "-out", signed); code != 0 {
		t.Fatalf("openssl x509 -req: %s %s", o, e)
	}
	k.aws("cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+signed, "--trust-anchor", "file://"+anchor)
	k.waitCluster(id, "INITIALIZED")
	k.cli("cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	k.waitCluster(id, "ACTIVE")
	k.aws("cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b")
	k.waitCluster(id, "ACTIVE")
	k.cli("user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	return id, anchor
}

// waitCluster polls until the cluster is in state with every HSM ACTIVE.
func (k *kmsd) waitCluster(id, state string) map[string]any {
	k.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cs, _ := k.aws("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)["Clusters"].([]any)
		if len(cs) != 1 {
			k.t.Fatalf("describe-clusters %s: %d clusters", id, len(cs))
		}
		c := cs[0].(map[string]any)
		ready := c["State"] == state
		hs, _ := c["Hsms"].([]any)
		for _, h := range hs {
			if h.(map[string]any)["State"] != "ACTIVE" {
				ready = false
			}
		}
		if ready {
			return c
		}
	}
	k.t.Fatalf("cluster %s never reached %s", id, state)
	return nil
}

// store is the DescribeCustomKeyStores entry of store id.
func (k *kmsd) store(id string) map[string]any {
	k.t.Helper()
	ss, _ := k.aws("kms", "describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)
	if len(ss) != 1 {
		k.t.Fatalf("describe-custom-key-stores %s: %d stores", id, len(ss))
	}
	return ss[0].(map[string]any)
}

// proxyRun runs an xks-proxy subcommand to completion.
func proxyRun(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(proxyBin, args...)
	cmd.Env = append(os.Environ(), "XKS_PROXY_KEYS_PASSPHRASE="+xksPass)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startProxy serves the keys of keyFile over HTTPS with the dev
// certificate in pki and the test's credential; it is stopped (by pid)
// when the test ends.
func startProxy(t *testing.T, pki, keyFile string) *e2etest.Proxy {
	t.Helper()
	sf := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(sf, []byte(xksSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	return e2etest.StartProxy(t, proxyBin, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + xksPass},
		"--access-key-id", xksAKID, "--secret-access-key-file", sf, "--keys-file", keyFile,
		"--tls-cert", filepath.Join(pki, "cert.pem"), "--tls-key", filepath.Join(pki, "key.pem"))
}
