package xks

import (
	"path/filepath"
	"testing"
	"time"
)

// TestVPCEndpointServices: the VPC endpoint service checks of spec §10.2
// and §10.4 through the aws CLI. kmsd knows a service from
// --xks-vpc-endpoint-services name=private.dns.name@host:port; a store on
// it must have https://private.dns.name as its endpoint. Created fine, a
// store fails to connect once kmsd restarts with another private DNS name
// for its service (XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION) or
// without its service (XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND).
func TestVPCEndpointServices(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1,a.xks.test,b.xks.test", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	p := startProxy(t, pk, keyFile)
	const (
		svcA = "com.amazonaws.vpce.us-east-1.vpce-svc-00000000000000ba" // private DNS name a.xks.test
		svcB = "com.amazonaws.vpce.us-east-1.vpce-svc-00000000000000bb" // private DNS name b.xks.test
		svcC = "com.amazonaws.vpce.us-east-1.vpce-svc-00000000000000bc" // no private DNS name known
		path = "/kms/xks/v1"
	)
	ca := filepath.Join(pk, "ca.pem")
	data := filepath.Join(dir, "data")
	k := startKMSDAt(t, data, "--xks-ca-bundle", ca, "--xks-health-interval", "0", "--xks-vpc-endpoint-services",
		svcA+"=a.xks.test@"+p.Addr+","+svcB+"=b.xks.test@"+p.Addr+","+svcC+"="+p.Addr)
	vpcReq := func(name, host, svc string) map[string]any {
		return withSvc(storeReq(name, "VPC_ENDPOINT_SERVICE", "https://"+host, path, akid, secret), svc)
	}

	runs := k.cliBatch(createArgs(vpcReq("a", "a.xks.test", svcA)), createArgs(vpcReq("b", "b.xks.test", svcB)),
		createArgs(vpcReq("not-the-dns-name", "c.xks.test", svcA)))
	a, b := runs[0].ok(t)["CustomKeyStoreId"].(string), runs[1].ok(t)["CustomKeyStoreId"].(string)
	runs[2].fails(t, "XksProxyVpcEndpointServiceInvalidConfigurationException")
	runs = k.cliBatch(
		createArgs(vpcReq("same-service", "a.xks.test", svcA)),                                                // §10.2: one store per endpoint service
		createArgs(vpcReq("same-endpoint", "a.xks.test", svcC)),                                               // §10.2: one VPC store per private DNS name
		createArgs(storeReq("public", "PUBLIC_ENDPOINT", "https://a.xks.test", "/public"+path, akid, secret)), // nor a public store on it
		[]string{"kms", "update-custom-key-store", "--custom-key-store-id", b, "--xks-proxy-uri-endpoint", "https://c.xks.test"},
		connectArgs(a))
	runs[0].fails(t, "XksProxyVpcEndpointServiceInUseException")
	runs[1].fails(t, "XksProxyUriEndpointInUseException")
	runs[2].fails(t, "XksProxyUriEndpointInUseException")
	runs[3].fails(t, "XksProxyVpcEndpointServiceInvalidConfigurationException")
	runs[4].ok(t)
	if e := k.settle(a)[a]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("store a through its endpoint service: %v", e)
	}

	// Restart with svcA's private DNS name changed and svcB gone. Store a,
	// CONNECTED at the stop, is reconnected at start and fails; connected
	// again through the CLI, it fails the same way; b cannot find its service.
	k.stop()
	k = startKMSDAt(t, data, "--xks-ca-bundle", ca, "--xks-health-interval", "0", "--xks-vpc-endpoint-services",
		svcA+"=a2.xks.test@"+p.Addr+","+svcC+"="+p.Addr)
	// The store stays CONNECTED, as it was at the stop, until kmsd's
	// resume has asked its proxy (at once, in the background), then FAILED.
	var got map[string]map[string]any
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		got = k.settle(a)
		e := got[a]
		if e["ConnectionState"] == "FAILED" && e["ConnectionErrorCode"] == "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION" {
			break
		}
		if e["ConnectionState"] != "CONNECTED" || time.Now().After(deadline) {
			t.Fatalf("store a resumed after the restart: %v %v", e["ConnectionState"], e["ConnectionErrorCode"])
		}
	}
	for _, r := range k.cliBatch([]string{"kms", "disconnect-custom-key-store", "--custom-key-store-id", a}, connectArgs(b)) {
		r.ok(t)
	}
	k.settle(a, b)
	k.aws(connectArgs(a)...)
	got = k.settle(a, b)
	for id, want := range map[string]string{a: "XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION", b: "XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND"} {
		if e := got[id]; e["ConnectionState"] != "FAILED" || e["ConnectionErrorCode"] != want {
			t.Errorf("connect %s: %v %v, want FAILED %s", e["CustomKeyStoreName"], e["ConnectionState"], e["ConnectionErrorCode"], want)
		}
	}
}
