package seed

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// post sends a plain, unsigned request, as moto users' suites do
// (requests.post(endpoint + "/moto-api/reset")).
func post(t *testing.T, method, url string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: %d %q is not JSON", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

// tokens lists the SoftHSM2 token directories of kmsd's HSM clusters.
func tokens(t *testing.T, dataDir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dataDir, "hsm", "tokens"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestReset: in emulator mode, both reset paths bring kmsd back to its
// freshly started state — what the tests made (keys, aliases, grants, an
// HSM cluster with its HSM's token) is gone, and what they changed of the
// seed file's resources is as the file says again.
func TestReset(t *testing.T) {
	const region = "us-east-1"
	data := filepath.Join(t.TempDir(), "data")
	file := write(t, "seed.yaml", nativeSeed)
	e := startEnv(t, data, region, []string{"KMSD_HSM_CREATE_DELAY=100ms"}, "--auth", "emulator", "--seed", file)
	fresh := e.keyIDs()

	for _, path := range []string{"/moto-api/reset", "/_kmsd/reset"} {
		t.Run(path, func(t *testing.T) {
			e.t = t
			// What a test does: its own key, alias and grant, a change
			// to a seeded key, a seeded alias gone, an HSM cluster.
			id := e.ok("kms", "create-key", "--description", "made by a test")["KeyMetadata"].(map[string]any)["KeyId"].(string)
			ct := b64(t, e.ok("kms", "encrypt", "--key-id", id, "--plaintext", fileb(t, []byte("x"))), "CiphertextBlob")
			e.ok("kms", "create-alias", "--alias-name", "alias/mine", "--target-key-id", id)
			e.ok("kms", "create-grant", "--key-id", symID, "--grantee-principal", "arn:aws:iam::"+account+":role/test", "--operations", "Decrypt", "--name", "test")
			e.ok("kms", "update-key-description", "--key-id", symID, "--description", "changed")
			e.ok("kms", "delete-alias", "--alias-name", "alias/orders")
			hsm := path == "/moto-api/reset" // once is enough for the slow part
			if hsm {
				cluster := e.ok("cloudhsmv2", "create-cluster", "--hsm-type", "hsm1.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001")["Cluster"].(map[string]any)["ClusterId"].(string)
				waitState(t, e, cluster, "UNINITIALIZED")
				e.ok("cloudhsmv2", "create-hsm", "--cluster-id", cluster, "--availability-zone", "us-east-1a")
				waitHSM(t, e, cluster)
				if len(tokens(t, data)) == 0 {
					t.Fatal("the HSM has no token")
				}
			}

			code, body := post(t, http.MethodPost, e.k.Endpoint+path)
			if code != 200 || body["status"] != "ok" {
				t.Fatalf("reset: %d %v", code, body)
			}

			if got := e.keyIDs(); !sameSet(got, fresh) {
				t.Fatalf("keys after reset %v, want the seeded %v", got, fresh)
			}
			if got := e.aliases(); len(got) != 1 || got["alias/orders"] != symID {
				t.Fatalf("aliases after reset %v", got)
			}
			md := e.ok("kms", "describe-key", "--key-id", symID)["KeyMetadata"].(map[string]any)
			if md["Description"] != "orders" {
				t.Fatalf("seeded key after reset: %v", md)
			}
			if gs := e.grants(symID); len(gs) != 1 || gs["app"] == "" {
				t.Fatalf("grants after reset: %v, want only the seeded one", gs)
			}
			e.fails("NotFoundException", "kms", "describe-key", "--key-id", id)
			e.fails("InvalidCiphertextException", "kms", "decrypt", "--ciphertext-blob", fileb(t, ct))
			if hsm {
				if cs := e.ok("cloudhsmv2", "describe-clusters")["Clusters"].([]any); len(cs) != 0 {
					t.Fatalf("clusters after reset: %v", cs)
				}
				if ts := tokens(t, data); len(ts) != 0 {
					t.Fatalf("tokens left after reset: %v", ts)
				}
			}
			// The seeded material is the file's again.
			mac := b64(t, e.ok("kms", "generate-mac", "--key-id", hmacID, "--mac-algorithm", "HMAC_SHA_256", "--message", fileb(t, []byte("m"))), "Mac")
			if len(mac) != 32 {
				t.Fatalf("MAC %x", mac)
			}
		})
	}
	e.t = t
	if code, body := post(t, http.MethodGet, e.k.Endpoint+"/moto-api/reset"); code != 400 || !strings.Contains(body["Error"].(string), "POST") {
		t.Fatalf("GET reset: %d %v", code, body)
	}
}

// TestResetVerifyMode: with signatures verified, both reset paths are
// refused with 403 and change nothing.
func TestResetVerifyMode(t *testing.T) {
	e := start(t, "", "us-east-1")
	id := e.ok("kms", "create-key")["KeyMetadata"].(map[string]any)["KeyId"].(string)
	for _, path := range []string{"/_kmsd/reset", "/moto-api/reset"} {
		code, body := post(t, http.MethodPost, e.k.Endpoint+path)
		if code != http.StatusForbidden || body["__type"] != "AccessDeniedException" || !strings.Contains(body["message"].(string), "emulator mode") {
			t.Fatalf("%s: %d %v", path, code, body)
		}
	}
	if ids := e.keyIDs(); len(ids) != 1 || ids[0] != id {
		t.Fatalf("keys after refused resets: %v", ids)
	}
	// Each refusal is in the audit log.
	e.k.Stop()
	b, err := os.ReadFile(filepath.Join(e.k.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"eventName":"Reset"`) && strings.Contains(line, `"errorCode":"AccessDeniedException"`) {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d refused resets in the audit log, want 2:\n%s", n, b)
	}
}

func waitState(t *testing.T, e *env, cluster, state string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		cs := e.ok("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+cluster)["Clusters"].([]any)
		if len(cs) == 1 && cs[0].(map[string]any)["State"] == state {
			return
		}
	}
	t.Fatalf("cluster %s never %s", cluster, state)
}

func waitHSM(t *testing.T, e *env, cluster string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		cs := e.ok("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+cluster)["Clusters"].([]any)
		if hs, _ := cs[0].(map[string]any)["Hsms"].([]any); len(hs) == 1 && hs[0].(map[string]any)["State"] == "ACTIVE" {
			return
		}
	}
	t.Fatalf("cluster %s's HSM never ACTIVE", cluster)
}
