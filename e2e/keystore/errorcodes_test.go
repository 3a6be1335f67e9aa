package keystore

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readyStore makes a readyCluster and a DISCONNECTED store of it named
// name. It returns the store and cluster ids and the HSM ids.
func (k *kmsd) readyStore(name string) (id, clusterID string, hsms []string) {
	k.t.Helper()
	clusterID, anchor, hsms := k.readyCluster()
	id = k.aws("kms", "create-custom-key-store", "--custom-key-store-name", name, "--cloud-hsm-cluster-id", clusterID,
		"--trust-anchor-certificate", "file://"+anchor, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	return id, clusterID, hsms
}

// readyCluster makes an ACTIVE cluster with HSMs in two Availability Zones
// and a kmsuser whose password is kmsPswd1; it returns the cluster id, the
// trust anchor file and the HSM ids.
func (k *kmsd) readyCluster() (clusterID, anchor string, hsms []string) {
	k.t.Helper()
	dir := k.t.TempDir()
	clusterID, anchor = k.activeCluster(dir)
	k.aws("cloudhsmv2", "create-hsm", "--cluster-id", clusterID, "--availability-zone", "us-east-1b")
	c := k.waitCluster(clusterID, "ACTIVE")
	for _, h := range c["Hsms"].([]any) {
		hsms = append(hsms, h.(map[string]any)["HsmId"].(string))
	}
	k.cli(true, "user", "create", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	return clusterID, anchor, hsms
}

// connectFails connects store id, waits for FAILED with code, checks a
// FAILED store refuses another connect (spec §5.2: disconnect first) and
// disconnects it again, which clears the code.
func (k *kmsd) connectFails(id, code string) {
	k.t.Helper()
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "FAILED", code)
	k.awsFails("CustomKeyStoreInvalidStateException", "kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")
}

// deleteHSMs deletes every HSM of cluster id and waits until it has none.
func (k *kmsd) deleteHSMs(id string, hsms []string) {
	k.t.Helper()
	for _, h := range hsms {
		k.aws("cloudhsmv2", "delete-hsm", "--cluster-id", id, "--hsm-id", h)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		hs, _ := k.cluster(id)["Hsms"].([]any)
		if len(hs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("cluster %s keeps HSMs %v", id, hs)
		}
	}
}

// TestConnectionErrorCodes causes each CloudHSM ConnectionErrorCode for
// real (spec §8.2) — the cluster, its HSMs, kmsuser and the PKCS#11
// tokens are changed with the aws CLI and kmsctl, never by kmsd's hand —
// and checks the store ends FAILED with that code.
func TestConnectionErrorCodes(t *testing.T) {
	t.Parallel()
	requireTools(t)
	k := start(t)

	// Each with its own cluster, side by side.
	t.Run("clusters", func(t *testing.T) {
		t.Run("USER_LOCKED_OUT", func(t *testing.T) {
			t.Parallel()
			k := k.with(t)
			id, clusterID, _ := k.readyStore("locked")
			for range 5 {
				k.cli(false, "login", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user", "--password", "wrongPw1")
			}
			k.connectFails(id, "USER_LOCKED_OUT")
		})

		t.Run("USER_NOT_FOUND", func(t *testing.T) {
			t.Parallel()
			k := k.with(t)
			id, clusterID, _ := k.readyStore("nouser")
			k.cli(true, "user", "delete", "--cluster-id", clusterID, "--username", "kmsuser", "--role", "crypto-user")
			k.connectFails(id, "USER_NOT_FOUND")
		})

		t.Run("INSUFFICIENT_CLOUDHSM_HSMS+CLUSTER_NOT_FOUND", func(t *testing.T) {
			t.Parallel()
			k := k.with(t)
			id, clusterID, hsms := k.readyStore("nohsms")
			k.deleteHSMs(clusterID, hsms)
			k.connectFails(id, "INSUFFICIENT_CLOUDHSM_HSMS")

			k.aws("cloudhsmv2", "delete-cluster", "--cluster-id", clusterID)
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				cs, _ := k.aws("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+clusterID)["Clusters"].([]any)
				if len(cs) == 0 || cs[0].(map[string]any)["State"] == "DELETED" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("cluster %s is not deleted: %v", clusterID, cs)
				}
			}
			if s := k.store(id); s["CloudHsmClusterId"] != clusterID {
				t.Fatalf("store lost its cluster: %v", s)
			}
			k.connectFails(id, "CLUSTER_NOT_FOUND")
		})

	})

	// Last: the PKCS#11 tokens of every cluster of this kmsd go away.
	t.Run("NETWORK_ERRORS", func(t *testing.T) {
		k := k.with(t)
		id, _, _ := k.readyStore("network")
		tokens := filepath.Join(k.dataDir, "hsm", "tokens")
		if err := os.Rename(tokens, tokens+".away"); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(tokens, 0o700); err != nil {
			t.Fatal(err)
		}
		k.connectFails(id, "NETWORK_ERRORS")
		// The tokens come back: the same store connects.
		os.Remove(tokens)
		if err := os.Rename(tokens+".away", tokens); err != nil {
			t.Fatal(err)
		}
		k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
		k.waitStore(id, "CONNECTED", "")
	})

	// Every connection result is an audit event of its own.
	t.Run("audited", func(t *testing.T) {
		want := []string{"USER_LOCKED_OUT", "USER_NOT_FOUND", "INSUFFICIENT_CLOUDHSM_HSMS", "CLUSTER_NOT_FOUND", "NETWORK_ERRORS", "CONNECTED"}
		var missing []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			b, _ := os.ReadFile(filepath.Join(k.dataDir, "audit.log"))
			missing = missing[:0]
			for _, w := range want {
				found := false
				for _, line := range strings.Split(string(b), "\n") {
					var rec struct {
						EventType, EventName string
						ServiceEventDetails  map[string]any
					}
					if json.Unmarshal([]byte(line), &rec) != nil || rec.EventType != "AwsServiceEvent" || rec.EventName != "ConnectCustomKeyStore" {
						continue
					}
					d := rec.ServiceEventDetails
					if d["connectionErrorCode"] == w || (w == "CONNECTED" && d["connectionState"] == "CONNECTED") {
						found = true
					}
				}
				if !found {
					missing = append(missing, w)
				}
			}
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no AwsServiceEvent audit record for connection results %v", missing)
			}
		}
	})
}

// with is k reporting to t (a subtest).
func (k *kmsd) with(t *testing.T) *kmsd {
	c := *k
	c.t = t
	return &c
}
