package xks

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConnectionErrorCodes causes, for real, the connection error codes of
// external key stores that need a proxy misbehaving in a way xks-proxy
// never does, and the matching CreateCustomKeyStore exceptions: each case
// is one proxy, reached by a PUBLIC_ENDPOINT create (the proxy is probed at
// once: the exception) and by a VPC_ENDPOINT_SERVICE store (not probed at
// create) that is connected with the aws CLI and polled with
// describe-custom-key-stores until FAILED with its code. The codes that
// xks-proxy itself causes are in TestExternalKeyStore and
// TestProxyRefusesKMS.
func TestConnectionErrorCodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cases := []struct {
		name   string // also the VPC store's host, <name>.xks.test
		cause  string
		code   string // ConnectionErrorCode at connect
		create string // CreateCustomKeyStore exception ("": not caused through a create)
		why    string // the cause as kmsd logs it: its XKS client's classification
	}{
		{"garbage", "an HTTPS server answering 200 with an HTML page", "XKS_PROXY_INVALID_RESPONSE", "XksProxyInvalidResponseException", "xks health: invalid-response"},
		{"slow", "an HTTPS server giving a valid health answer after 1s (KMS allows 250 ms)", "XKS_PROXY_TIMED_OUT", "XksProxyUriUnreachableException", "xks health: timeout"},
		{"drop", "a TLS server that reads the request and closes the connection", "NETWORK_ERRORS", "XksProxyUriUnreachableException", "xks health: network"},
		{"wronghost", "xks-proxy with a certificate from a trusted CA for elsewhere.xks.test only", "XKS_PROXY_INVALID_TLS_CONFIGURATION", "XksProxyUriUnreachableException", "xks health: tls"},
		{"ekmdown", "xks-proxy whose only key manager (SoftHSM2, health key missing) is UNAVAILABLE", "XKS_PROXY_NOT_REACHABLE", "XksProxyUriUnreachableException", "xks health: ekm-unavailable"},
		// INTERNAL_ERROR is kmsd's own failure, which nothing outside kmsd can
		// cause: fault injection (--fault-injection, kmsctl kmsd
		// inject-connect-fault) makes the store's next connect fail with it.
		{"fault", "an injected fault (kmsctl kmsd inject-connect-fault)", "INTERNAL_ERROR", "", "keystore: injected fault"},
	}
	var hosts []string
	for _, c := range cases {
		hosts = append(hosts, c.name+".xks.test")
	}
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1,"+strings.Join(hosts, ","), "--out-dir", pk)
	// A second CA, also trusted by kmsd, whose certificate names another host.
	elsewhere := filepath.Join(dir, "elsewhere")
	proxyRun(t, "dev-cert", "--hostname", "elsewhere.xks.test", "--out-dir", elsewhere)
	bundle := writeFile(t, filepath.Join(dir, "ca-bundle.pem"),
		string(mustRead(t, filepath.Join(pk, "ca.pem")))+string(mustRead(t, filepath.Join(elsewhere, "ca.pem"))))
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")

	addrs := map[string]string{
		"garbage":   garbageProxy(t, pk),
		"slow":      slowProxy(t, pk, time.Second),
		"drop":      dropProxy(t, pk),
		"wronghost": startProxy(t, elsewhere, keyFile).Addr,
		"ekmdown":   unavailableProxy(t, filepath.Join(dir, "softhsm"), pk).Addr,
	}
	addrs["fault"] = addrs["garbage"] // never dialled: the fault replaces the connect
	var svcs []string
	for i, c := range cases {
		svcs = append(svcs, svcName(i)+"="+addrs[c.name])
	}
	k := startKMSD(t, "--fault-injection", "--xks-ca-bundle", bundle, "--xks-health-interval", "0",
		"--xks-vpc-endpoint-services", strings.Join(svcs, ","))
	const path = "/kms/xks/v1"

	// Create: public stores are probed at once; VPC stores are not.
	var calls [][]string
	for i, c := range cases {
		calls = append(calls, createArgs(withSvc(storeReq("vpc-"+c.name, "VPC_ENDPOINT_SERVICE", "https://"+c.name+".xks.test", path, akid, secret), svcName(i))))
		if c.create != "" {
			_, port, _ := strings.Cut(addrs[c.name], ":")
			calls = append(calls, createArgs(storeReq("pub-"+c.name, "PUBLIC_ENDPOINT", "https://localhost:"+port, path, akid, secret)))
		}
	}
	ids := map[string]string{} // case → VPC store id
	var all []string
	runs := k.cliBatch(calls...)
	for _, r := range runs {
		req := r.args[len(r.args)-1]
		for _, c := range cases {
			switch {
			case strings.Contains(req, `"pub-`+c.name+`"`):
				t.Run("create/"+c.name, func(t *testing.T) {
					r.fails(t, c.create)
					t.Logf("%s → %s", c.cause, c.create)
				})
			case strings.Contains(req, `"vpc-`+c.name+`"`):
				ids[c.name] = r.ok(t)["CustomKeyStoreId"].(string)
				all = append(all, ids[c.name])
			}
		}
	}
	// Each create failed for its own reason, not for one they share.
	logged := string(mustRead(t, k.log))
	for _, c := range cases {
		if c.create != "" && !strings.Contains(logged, "exception="+c.create+` err="`+c.why) {
			t.Errorf("create %s: kmsd's log has no %s failure %q", c.name, c.create, c.why)
		}
	}
	if out, errs, code := k.kmsctl("kmsd", "inject-connect-fault", "--custom-key-store-id", ids["fault"],
		"--connection-error-code", "INTERNAL_ERROR"); code != 0 {
		t.Fatalf("inject-connect-fault: exit %d\n%s%s", code, out, errs)
	}

	// Connect every VPC store, then wait for all of them at once.
	calls = nil
	for _, id := range all {
		calls = append(calls, connectArgs(id))
	}
	for _, r := range k.cliBatch(calls...) {
		r.ok(t)
	}
	got := k.settle(all...)
	for _, c := range cases {
		t.Run("connect/"+c.name, func(t *testing.T) {
			if e := got[ids[c.name]]; e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != c.code {
				t.Fatalf("%s: %v %v, want FAILED %s", c.cause, e["ConnectionState"], e["ConnectionErrorCode"], c.code)
			}
			t.Logf("%s → FAILED %s", c.cause, c.code)
		})
	}
	// Each connect failed for its own reason; the TLS failure is the host
	// name, not the issuer (both CAs are trusted).
	logged = string(mustRead(t, k.log))
	for _, c := range cases {
		if !strings.Contains(logged, `msg="keystore: connect failed" store=`+ids[c.name]+` code=`+c.code+` err="keystore: connect: `+c.code+`: `+c.why) {
			t.Errorf("connect %s: kmsd's log has no connect failure %s %q", c.name, c.code, c.why)
		}
	}
	if !strings.Contains(logged, "certificate is valid for elsewhere.xks.test, not wronghost.xks.test") {
		t.Errorf("kmsd's log does not show a host name mismatch for wronghost.xks.test")
	}
}

// svcName is the i-th VPC endpoint service name of a test.
func svcName(i int) string {
	return "com.amazonaws.vpce.us-east-1.vpce-svc-" + strings.Repeat("0", 14) + string(rune('a'+i/26)) + string(rune('a'+i%26))
}
