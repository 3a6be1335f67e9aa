package multinode

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	xksAKID   = "AKIDAAAAAAAAAAAAAAAAAAAA"
	xksSecret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	xksPass   = "e2e key file passphrase"
)

// startXKSProxy runs the real xks-proxy with a development CA and one
// software key, k1; it returns the proxy and the CA file kmsd must trust.
func startXKSProxy(t *testing.T) (*e2etest.Proxy, string) {
	t.Helper()
	dir := t.TempDir()
	pki := filepath.Join(dir, "pki")
	keys := filepath.Join(dir, "keys.json")
	env := append(os.Environ(), "XKS_PROXY_KEYS_PASSPHRASE="+xksPass)
	for _, args := range [][]string{
		{"dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pki},
		{"keys", "create", "--keys-file", keys, "--id", "k1", "--kdf-iterations", "2000"},
	} {
		cmd := exec.Command(proxyBin, args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("xks-proxy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sf := filepath.Join(dir, "secret")
	if err := os.WriteFile(sf, []byte(xksSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	p := e2etest.StartProxy(t, proxyBin, []string{"XKS_PROXY_KEYS_PASSPHRASE=" + xksPass}, "--access-key-id", xksAKID,
		"--secret-access-key-file", sf, "--keys-file", keys, "--tls-cert", filepath.Join(pki, "cert.pem"), "--tls-key", filepath.Join(pki, "key.pem"))
	return p, filepath.Join(pki, "ca.pem")
}

// describeStore is store id as node n describes it (nil on error).
func (c *cluster) describeStore(ctx context.Context, n *node, id string) *types.CustomKeyStoresListEntry {
	out, err := c.client(n).DescribeCustomKeyStores(ctx, &kms.DescribeCustomKeyStoresInput{CustomKeyStoreId: aws.String(id)})
	if err != nil || len(out.CustomKeyStores) != 1 {
		return nil
	}
	return &out.CustomKeyStores[0]
}

// waitAllNodes waits until every live node describes store id in state
// want, and returns when each node first did. It fails the test if the
// nodes' answers, once all are in want, differ, or if it takes longer than
// within.
func (c *cluster) waitAllNodes(ctx context.Context, id string, want types.ConnectionStateType, within time.Duration) map[string]time.Time {
	t := c.t
	t.Helper()
	seen := map[string]time.Time{}
	var last map[string]*types.CustomKeyStoresListEntry
	deadline := time.Now().Add(within)
	for {
		last = map[string]*types.CustomKeyStoresListEntry{}
		for _, n := range c.nodes {
			if !n.Alive() {
				continue
			}
			e := c.describeStore(ctx, n, id)
			last[n.id] = e
			if e != nil && e.ConnectionState == want {
				if _, ok := seen[n.id]; !ok {
					seen[n.id] = time.Now()
				}
			}
		}
		if len(seen) == len(last) {
			break
		}
		if time.Now().After(deadline) {
			states := map[string]string{}
			for id, e := range last {
				if e != nil {
					states[id] = string(e.ConnectionState) + " " + string(e.ConnectionErrorCode)
				}
			}
			t.Fatalf("store %s not %s on every node within %s: %v", id, want, within, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var first *types.CustomKeyStoresListEntry
	for nid, e := range last {
		if first == nil {
			first = e
			continue
		}
		if !reflect.DeepEqual(first, e) {
			t.Errorf("node %s describes store %s otherwise than another node:\n%+v\n%+v", nid, id, e, first)
		}
	}
	return seen
}

// spread is the time between the first and the last node's first sight.
func spread(seen map[string]time.Time) time.Duration {
	var lo, hi time.Time
	for _, s := range seen {
		if lo.IsZero() || s.Before(lo) {
			lo = s
		}
		if s.After(hi) {
			hi = s
		}
	}
	return hi.Sub(lo)
}

// controllerHolder is the node holding the controller lease now.
func (c *cluster) controllerHolder(t *testing.T) string {
	t.Helper()
	var holder string
	if err := pgScan(t, c.pg, c.db, `SELECT holder FROM kmsd_leases WHERE name = 'controller' AND expires_at > now()`, &holder); err != nil {
		t.Fatalf("controller lease: %v", err)
	}
	return holder
}

// TestKeyStoreConnectByController: three nodes, only node-0 may be the
// controller. An external key store is created and connected through
// node-1; the controller connects it (node-1 and node-2 cannot), every node
// then serves its keys — a key made through node-2 encrypts there and
// decrypts on the others — and every node answers DescribeCustomKeyStores
// alike within 1 s of the first. A disconnect through node-2 ends
// DISCONNECTED on every node; with node-2 killed while the store is
// CONNECTED, a disconnect does not wait for the dead node longer than its
// node lease.
func TestKeyStoreConnectByController(t *testing.T) {
	ctx := t.Context()
	proxy, ca := startXKSProxy(t)
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 3, extra: []string{"--xks-ca-bundle", ca, "--lease-ttl", "3s"},
		env: func(int) []string { return []string{"KMSD_KEYSTORE_CONNECT_DELAY=100ms"} },
		nodeArgs: func(i int) []string {
			if i > 0 {
				return []string{"--controller", "never"}
			}
			return nil
		}})
	a, b, cn := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitQuotaShared(t, 10*time.Second) // node-2's Encrypt below is its first
	if h := c.controllerHolder(t); h != a.id {
		t.Fatalf("controller is %q, want %s (the others run with --controller never)", h, a.id)
	}
	created, err := c.client(b).CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{
		CustomKeyStoreName:               aws.String("xks-multinode"),
		CustomKeyStoreType:               types.CustomKeyStoreTypeExternalKeyStore,
		XksProxyConnectivity:             types.XksProxyConnectivityTypePublicEndpoint,
		XksProxyUriEndpoint:              aws.String("https://localhost:" + proxy.Port()),
		XksProxyUriPath:                  aws.String("/kms/xks/v1"),
		XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: aws.String(xksAKID), RawSecretAccessKey: aws.String(xksSecret)},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(created.CustomKeyStoreId)
	t0 := time.Now()
	if _, err := c.client(b).ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	seen := c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 30*time.Second)
	t.Logf("connect through %s → CONNECTED on every node in %v; first to last node %v", b.id, time.Since(t0).Round(time.Millisecond), spread(seen))
	if d := spread(seen); d > time.Second {
		t.Errorf("nodes saw CONNECTED %v apart, want within 1s", d)
	}

	// A key of the store, made through node-2, served by every node.
	key, err := c.client(cn).CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternalKeyStore,
		CustomKeyStoreId: aws.String(id), XksKeyId: aws.String("k1")})
	if err != nil {
		t.Fatal(err)
	}
	keyID := key.KeyMetadata.KeyId
	enc, err := c.client(cn).Encrypt(ctx, &kms.EncryptInput{KeyId: keyID, Plaintext: []byte("through the proxy")})
	if err != nil {
		t.Fatalf("Encrypt on %s: %v", cn.id, err)
	}
	for _, n := range c.nodes {
		dec, err := c.client(n).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		if err != nil || string(dec.Plaintext) != "through the proxy" {
			t.Fatalf("Decrypt on %s: %v", n.id, err)
		}
	}
	// The non-controller nodes opened their own client of the store. They
	// do so once their change feed brings CONNECTED, which may come a
	// little after they first show it: DescribeCustomKeyStores reads the
	// database, not the node's copy.
	for _, n := range []*node{b, cn} {
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(n.tail(), "resumed store logged in to its backing again") {
			if time.Now().After(deadline) {
				t.Errorf("%s never logged in to the store itself", n.id)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Disconnect through node-2.
	t0 = time.Now()
	if _, err := c.client(cn).DisconnectCustomKeyStore(ctx, &kms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	seen = c.waitAllNodes(ctx, id, types.ConnectionStateTypeDisconnected, 30*time.Second)
	t.Logf("disconnect through %s → DISCONNECTED on every node in %v; first to last node %v", cn.id, time.Since(t0).Round(time.Millisecond), spread(seen))
	if d := spread(seen); d > time.Second {
		t.Errorf("nodes saw DISCONNECTED %v apart, want within 1s", d)
	}
	if _, err := c.client(a).Encrypt(ctx, &kms.EncryptInput{KeyId: keyID, Plaintext: []byte("x")}); errCode(err) != "KMSInvalidStateException" {
		t.Errorf("Encrypt with the store DISCONNECTED: %v, want KMSInvalidStateException", err)
	}

	// Connected again, node-2 killed: the disconnect waits at most for its
	// node lease to expire (3 s), not for an acknowledgement that never
	// comes.
	if _, err := c.client(b).ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	c.waitAllNodes(ctx, id, types.ConnectionStateTypeConnected, 30*time.Second)
	cn.Kill()
	t0 = time.Now()
	if _, err := c.client(b).DisconnectCustomKeyStore(ctx, &kms.DisconnectCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	c.waitAllNodes(ctx, id, types.ConnectionStateTypeDisconnected, 30*time.Second)
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("disconnect with a dead node took %v, want about its lease (3 s)", d)
	} else {
		t.Logf("disconnect with %s dead → DISCONNECTED in %v", cn.id, d.Round(time.Millisecond))
	}
}
