package hsm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/hsm/hsmtest"
)

const (
	account   = "111122223333"
	bobKey    = "AKIABOBEXAMPLE000001"
	bobSecret = "bob-secret-0123456789abcdefghijklmnopqrst"
	readerKey = "AKIAREADEREXAMPLE001"
	readerSec = "reader-secret-0123456789abcdefghijklmnop"
	bobARN    = "arn:aws:iam::" + account + ":user/bob"
	readerARN = "arn:aws:iam::" + account + ":user/reader"
)

// authzIAMConfig declares bob, whose only policy denies everything, and
// reader, allowed cloudhsm:DescribeClusters only.
const authzIAMConfig = `
[[accounts]]
id = "` + account + `"

  [[accounts.users]]
  name = "bob"
  [accounts.users.policies]
  deny-all = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}'
    [[accounts.users.access_keys]]
    id = "` + bobKey + `"
    secret = "` + bobSecret + `"

  [[accounts.users]]
  name = "reader"
  [accounts.users.policies]
  describe = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"cloudhsm:DescribeClusters","Resource":"*"}]}'
    [[accounts.users.access_keys]]
    id = "` + readerKey + `"
    secret = "` + readerSec + `"
`

// as is k driven with another user's access key, and nothing from the
// host's or kmsd's AWS configuration.
func (k *kmsd) as(akid, secret string) *kmsd {
	c := *k
	c.env = nil
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			c.env = append(c.env, kv)
		}
	}
	c.env = append(c.env, "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_DEFAULT_REGION="+region,
		"AWS_PAGER=", "AWS_ACCESS_KEY_ID="+akid, "AWS_SECRET_ACCESS_KEY="+secret)
	return &c
}

// denied runs a cloudhsmv2 command that must fail with AWS's
// AccessDeniedException for principal, action and resource.
func (k *kmsd) denied(t *testing.T, principal, action, resource, reason string, args ...string) {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "cloudhsmv2"}, args...)
	_, errs, rc := run(t, k.env, awsCLI, args...)
	want := "(AccessDeniedException) when calling the " + strings.TrimPrefix(action, "cloudhsm:") + " operation: User: " + principal +
		" is not authorized to perform: " + action + " on resource: " + resource + " " + reason
	if rc != 254 || !strings.Contains(errs, want) {
		t.Fatalf("aws %s: exit %d, stderr %q; want exit 254 and %q", strings.Join(args, " "), rc, errs, want)
	}
}

// refused runs a cloudhsmv2 command that must fail with
// CloudHsmInvalidRequestException and message.
func (k *kmsd) refused(t *testing.T, message string, args ...string) {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "cloudhsmv2"}, args...)
	_, errs, rc := run(t, k.env, awsCLI, args...)
	if rc == 0 || !strings.Contains(errs, "(CloudHsmInvalidRequestException)") || !strings.Contains(errs, message) {
		t.Fatalf("aws %s: exit %d, stderr %q; want CloudHsmInvalidRequestException %q", strings.Join(args, " "), rc, errs, message)
	}
}

// kms runs an aws kms command as k's user.
func (k *kmsd) kms(t *testing.T, args ...string) map[string]any {
	t.Helper()
	args = append([]string{"--endpoint-url", k.endpoint, "--output", "json", "kms"}, args...)
	out, errs, code := run(t, k.env, awsCLI, args...)
	if code != 0 {
		t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	var v map[string]any
	if strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return v
}

// waitStore polls until custom key store id leaves CONNECTING and
// DISCONNECTING and checks its state and error code.
func (k *kmsd) waitStore(t *testing.T, id, state, code string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ss, _ := k.kms(t, "describe-custom-key-stores", "--custom-key-store-id", id)["CustomKeyStores"].([]any)
		s := ss[0].(map[string]any)
		if cs := s["ConnectionState"]; cs == "CONNECTING" || cs == "DISCONNECTING" {
			continue
		}
		if got, _ := s["ConnectionErrorCode"].(string); s["ConnectionState"] != state || got != code {
			t.Fatalf("store %s: %v %q, want %s %q", id, s["ConnectionState"], got, state, code)
		}
		return
	}
	t.Fatalf("store %s stays in a transient state", id)
}

// waitNoHSMs polls until cluster id has no HSMs left.
func waitNoHSMs(t *testing.T, k *kmsd, id string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); len(hsmIDs(cluster(t, k, id))) > 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("HSMs of %s not deleted", id)
		}
	}
}

// TestCloudHSMAuthorization is the repro with the real aws CLI
// v2: a user whose only policy is Deny * may do nothing to the clusters,
// a user allowed DescribeClusters only may only describe, the
// administrator may do everything; the denials are audited. Then the
// guard: the cluster of a CONNECTED key store, and its last HSM, cannot be
// deleted until the store is disconnected, after which the store fails to
// connect with CLUSTER_NOT_FOUND.
func TestCloudHSMAuthorization(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	cfg := write(t, filepath.Join(dir, "iam.toml"), authzIAMConfig)
	admin := startWith(t, kmsdBin, []string{"KMSD_KEYSTORE_CONNECT_DELAY=300ms"}, "--iam-config", cfg)
	bob, reader := admin.as(bobKey, bobSecret), admin.as(readerKey, readerSec)

	// The administrator builds an ACTIVE cluster with two HSMs and kmsuser.
	id := admin.aws(t, "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002",
		"--tag-list", "Key=env,Value=test")["Cluster"].(map[string]any)["ClusterId"].(string)
	waitCluster(t, admin, id, "UNINITIALIZED")
	admin.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
	admin.aws(t, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1b")
	c := waitCluster(t, admin, id, "UNINITIALIZED")
	hsms := hsmIDs(c)
	cert, anchor := hsmtest.SignCSR(t, c["Certificates"].(map[string]any)["ClusterCsr"].(string))
	certFile, anchorFile := write(t, filepath.Join(dir, "cluster.crt"), cert), write(t, filepath.Join(dir, "anchor.crt"), anchor)
	admin.aws(t, "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+certFile, "--trust-anchor", "file://"+anchorFile)
	waitCluster(t, admin, id, "INITIALIZED")
	admin.cliOK(t, "cluster", "activate", "--cluster-id", id, "--password", "adminPswd1")
	waitCluster(t, admin, id, "ACTIVE")
	admin.cliOK(t, "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user", "--password", "kmsPswd1")
	admin.aws(t, "tag-resource", "--resource-id", id, "--tag-list", "Key=team,Value=crypto")
	if tags := list(admin.aws(t, "list-tags", "--resource-id", id)["TagList"]); len(tags) != 2 {
		t.Fatalf("list-tags: %v", tags)
	}
	before := fmt.Sprint(admin.aws(t, "describe-clusters"))

	clusterARN := "arn:aws:cloudhsm:" + region + ":" + account + ":cluster/" + id
	const explicit = "with an explicit deny in an identity-based policy"
	t.Run("Deny * denies everything", func(t *testing.T) {
		bob.denied(t, bobARN, "cloudhsm:DescribeClusters", "*", explicit, "describe-clusters")
		bob.denied(t, bobARN, "cloudhsm:CreateCluster", "*", explicit, "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60003")
		bob.denied(t, bobARN, "cloudhsm:CreateHsm", clusterARN, explicit, "create-hsm", "--cluster-id", id, "--availability-zone", "us-east-1a")
		bob.denied(t, bobARN, "cloudhsm:DeleteHsm", clusterARN, explicit, "delete-hsm", "--cluster-id", id, "--hsm-id", hsms[0])
		bob.denied(t, bobARN, "cloudhsm:DeleteCluster", clusterARN, explicit, "delete-cluster", "--cluster-id", id)
		bob.denied(t, bobARN, "cloudhsm:InitializeCluster", clusterARN, explicit, "initialize-cluster", "--cluster-id", id,
			"--signed-cert", "file://"+certFile, "--trust-anchor", "file://"+anchorFile)
		bob.denied(t, bobARN, "cloudhsm:TagResource", clusterARN, explicit, "tag-resource", "--resource-id", id, "--tag-list", "Key=env,Value=prod")
		bob.denied(t, bobARN, "cloudhsm:UntagResource", clusterARN, explicit, "untag-resource", "--resource-id", id, "--tag-key-list", "env")
		bob.denied(t, bobARN, "cloudhsm:ListTags", clusterARN, explicit, "list-tags", "--resource-id", id)
		bob.denied(t, bobARN, "cloudhsm:DescribeBackups", "*", explicit, "describe-backups")
		// A cluster that does not exist: the same answer, nothing leaks.
		missing := "cluster-aaaaaaaaaaa"
		bob.denied(t, bobARN, "cloudhsm:DeleteCluster", "arn:aws:cloudhsm:"+region+":"+account+":cluster/"+missing, explicit, "delete-cluster", "--cluster-id", missing)
		// Nor through the admin API (the CloudHSM CLI's side).
		bob.cliFails(t, "AccessDeniedException", "user", "list", "--cluster-id", id)
	})

	const noAllow = "because no identity-based policy allows the "
	t.Run("DescribeClusters only", func(t *testing.T) {
		if got := list(reader.aws(t, "describe-clusters")["Clusters"]); len(got) != 1 {
			t.Fatalf("reader describe-clusters: %v", got)
		}
		reader.denied(t, readerARN, "cloudhsm:DeleteHsm", clusterARN, noAllow+"cloudhsm:DeleteHsm action", "delete-hsm", "--cluster-id", id, "--hsm-id", hsms[0])
		reader.denied(t, readerARN, "cloudhsm:DeleteCluster", clusterARN, noAllow+"cloudhsm:DeleteCluster action", "delete-cluster", "--cluster-id", id)
		reader.denied(t, readerARN, "cloudhsm:CreateCluster", "*", noAllow+"cloudhsm:CreateCluster action",
			"create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids", "subnet-0a1b2c3d4e5f60003")
	})

	if after := fmt.Sprint(admin.aws(t, "describe-clusters")); after != before {
		t.Fatalf("denied requests changed the clusters:\n%s\n%s", before, after)
	}
	if got := hsmIDs(cluster(t, admin, id)); len(got) != 2 {
		t.Fatalf("HSMs after the denied requests: %v", got)
	}

	// The guard: a CONNECTED CloudHSM key store on the cluster.
	store := admin.kms(t, "create-custom-key-store", "--custom-key-store-name", "guarded", "--cloud-hsm-cluster-id", id,
		"--trust-anchor-certificate", "file://"+anchorFile, "--key-store-password", "kmsPswd1")["CustomKeyStoreId"].(string)
	admin.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	admin.waitStore(t, store, "CONNECTED", "")
	admin.refused(t, "Cluster "+id+" is the backing cluster of custom key store "+store+", which is CONNECTED. "+
		"Disconnect the custom key store before deleting the cluster.", "delete-cluster", "--cluster-id", id)
	// Not the last HSM: it may go (the store keeps the other).
	admin.aws(t, "delete-hsm", "--cluster-id", id, "--hsm-id", hsms[0])
	admin.refused(t, "HSM "+hsms[1]+" is the last HSM of cluster "+id+", the backing cluster of custom key store "+store+", which is CONNECTED.",
		"delete-hsm", "--cluster-id", id, "--hsm-id", hsms[1])
	if got := hsmIDs(cluster(t, admin, id)); len(got) == 0 || got[len(got)-1] != hsms[1] {
		t.Fatalf("HSMs after the refused delete: %v", got)
	}

	// Disconnected, the cluster can go; the store then cannot connect.
	admin.kms(t, "disconnect-custom-key-store", "--custom-key-store-id", store)
	admin.waitStore(t, store, "DISCONNECTED", "")
	admin.aws(t, "delete-hsm", "--cluster-id", id, "--hsm-id", hsms[1])
	waitNoHSMs(t, admin, id)
	admin.aws(t, "delete-cluster", "--cluster-id", id)
	waitCluster(t, admin, id, "DELETED")
	admin.kms(t, "connect-custom-key-store", "--custom-key-store-id", store)
	admin.waitStore(t, store, "FAILED", "CLUSTER_NOT_FOUND")

	// The audit log records the CloudHSM denials like KMS ones.
	admin.proc.Stop()
	b, err := os.ReadFile(filepath.Join(admin.dataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r struct {
			EventSource  string `json:"eventSource"`
			EventName    string `json:"eventName"`
			ErrorCode    string `json:"errorCode"`
			ErrorMessage string `json:"errorMessage"`
			UserIdentity struct {
				ARN string `json:"arn"`
			} `json:"userIdentity"`
			Resources []struct {
				ARN string `json:"ARN"`
			} `json:"resources"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r.EventSource == "cloudhsm.amazonaws.com" && r.EventName == "DeleteCluster" && r.ErrorCode == "AccessDeniedException" &&
			r.UserIdentity.ARN == bobARN && len(r.Resources) == 1 && r.Resources[0].ARN == clusterARN &&
			strings.Contains(r.ErrorMessage, "cloudhsm:DeleteCluster on resource: "+clusterARN+" "+explicit) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no audit record of bob's denied DeleteCluster on %s", clusterARN)
	}
}
