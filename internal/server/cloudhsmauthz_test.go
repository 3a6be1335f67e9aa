package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

const (
	hsmTestAccount = "111122223333"
	hsmTestRegion  = "us-east-1"
	hsmTestCluster = "cluster-abcdefghijk"
	clusterARN     = "arn:aws:cloudhsm:us-east-1:111122223333:cluster/" + hsmTestCluster
	hsmTestBackup  = "backup-abcdefghijk"
	backupARN      = "arn:aws:cloudhsm:us-east-1:111122223333:backup/" + hsmTestBackup
)

// hsmBodies holds a valid input of every CloudHSM v2 operation kmsd
// serves, acting on hsmTestCluster where the operation names a resource.
var hsmBodies = map[string]string{
	"CreateCluster":          `{"HsmType":"hsm2m.medium","SubnetIds":["subnet-0123456789abcdef0"],"TagList":[{"Key":"team","Value":"crypto"}]}`,
	"CreateHsm":              `{"ClusterId":"` + hsmTestCluster + `","AvailabilityZone":"us-east-1a"}`,
	"DeleteCluster":          `{"ClusterId":"` + hsmTestCluster + `"}`,
	"DeleteHsm":              `{"ClusterId":"` + hsmTestCluster + `","HsmId":"hsm-abcdefghijk"}`,
	"DescribeClusters":       `{}`,
	"DescribeBackups":        `{}`,
	"InitializeCluster":      `{"ClusterId":"` + hsmTestCluster + `","SignedCert":"x","TrustAnchor":"y"}`,
	"ListTags":               `{"ResourceId":"` + hsmTestCluster + `"}`,
	"TagResource":            `{"ResourceId":"` + hsmTestCluster + `","TagList":[{"Key":"team","Value":"crypto"}]}`,
	"UntagResource":          `{"ResourceId":"` + hsmTestCluster + `","TagKeyList":["team"]}`,
	"ModifyCluster":          `{"ClusterId":"` + hsmTestCluster + `","BackupRetentionPolicy":{"Type":"DAYS","Value":"30"}}`,
	"DeleteBackup":           `{"BackupId":"` + hsmTestBackup + `"}`,
	"RestoreBackup":          `{"BackupId":"` + hsmTestBackup + `"}`,
	"ModifyBackupAttributes": `{"BackupId":"` + hsmTestBackup + `","NeverExpires":true}`,
	"CopyBackupToRegion":     `{"BackupId":"` + hsmTestBackup + `","DestinationRegion":"eu-west-3"}`,
}

// hsmResources is the resource each operation of hsmBodies is decided on.
var hsmResources = map[string]string{
	"CreateCluster": "*", "DescribeClusters": "*", "DescribeBackups": "*",
	"CreateHsm": clusterARN, "DeleteCluster": clusterARN, "DeleteHsm": clusterARN, "InitializeCluster": clusterARN,
	"ListTags": clusterARN, "TagResource": clusterARN, "UntagResource": clusterARN, "ModifyCluster": clusterARN,
	"DeleteBackup": backupARN, "RestoreBackup": backupARN, "ModifyBackupAttributes": backupARN, "CopyBackupToRegion": backupARN,
}

func decodeHSM(t *testing.T, op, body string) any {
	t.Helper()
	h, ok := hsmHandlers[op]
	if !ok {
		t.Fatalf("no handler for %s", op)
	}
	in, err := h.decode([]byte(body))
	if err != nil {
		t.Fatalf("%s %s: %v", op, body, err)
	}
	return in
}

func hsmUser(t *testing.T, name string, docs ...string) *kms.Caller {
	t.Helper()
	p, err := policy.PrincipalFromARN("arn:aws:iam::" + hsmTestAccount + ":user/" + name)
	if err != nil {
		t.Fatal(err)
	}
	c := &kms.Caller{Account: hsmTestAccount, Region: hsmTestRegion, ARN: p.ARN, Principal: p}
	for _, d := range docs {
		pol, err := policy.Parse(d, policy.IdentityPolicy)
		if err != nil {
			t.Fatal(err)
		}
		c.Policies = append(c.Policies, pol)
	}
	return c
}

func statement(effect, action, extra string) string {
	return `{"Version":"2012-10-17","Statement":[{"Effect":"` + effect + `","Action":"` + action + `","Resource":"*"` + extra + `}]}`
}

func ops() []string {
	var out []string
	for op := range hsmHandlers {
		out = append(out, op)
	}
	sort.Strings(out)
	return out
}

// TestCloudHSMOpsComplete: every served operation has an authorization
// entry, a test input and an expected resource.
func TestCloudHSMOpsComplete(t *testing.T) {
	for _, op := range ops() {
		if a, ok := kms.Authorizations["cloudhsm:"+op]; !ok || a.Scope != kms.StoreScope || a.Action != "cloudhsm:"+op {
			t.Errorf("%s: authorization entry %+v", op, a)
		}
		if hsmBodies[op] == "" || hsmResources[op] == "" {
			t.Errorf("%s: no test input or resource", op)
		}
	}
}

// TestCloudHSMModelAuthorized: every operation of the CloudHSM v2 model,
// served or not, has an authorization entry, so that a caller without
// permission hears AccessDeniedException before kmsd says it lacks one.
func TestCloudHSMModelAuthorized(t *testing.T) {
	for op := range hsmapi.Operations {
		if a, ok := kms.Authorizations["cloudhsm:"+op]; !ok || a.Action != "cloudhsm:"+op {
			t.Errorf("%s: no authorization entry", op)
		}
	}
}

// TestCloudHSMAuthorization: every served operation under each kind of
// caller, decided by the KMS policy engine.
func TestCloudHSMAuthorization(t *testing.T) {
	svc := kms.New(nil)
	callers := []struct {
		name   string
		caller *kms.Caller
		want   string // "" allowed, else a substring of the denial after the action
	}{
		{"no policy", hsmUser(t, "bob"), "because no identity-based policy allows the cloudhsm:"},
		{"deny everything", hsmUser(t, "bob", statement("Deny", "*", "")), "with an explicit deny in an identity-based policy"},
		{"allow all but deny everything", hsmUser(t, "bob", statement("Allow", "*", ""), statement("Deny", "*", "")), "with an explicit deny in an identity-based policy"},
		{"allow kms only", hsmUser(t, "bob", statement("Allow", "kms:*", "")), "because no identity-based policy allows the cloudhsm:"},
		{"allow cloudhsm:*", hsmUser(t, "bob", statement("Allow", "cloudhsm:*", "")), ""},
		{"root", &kms.Caller{Account: hsmTestAccount, Region: hsmTestRegion, ARN: "arn:aws:iam::" + hsmTestAccount + ":root"}, ""},
		{"emulator (trusted root)", &kms.Caller{Account: hsmTestAccount, Region: hsmTestRegion, ARN: "arn:aws:iam::" + hsmTestAccount + ":root", Trusted: true}, ""},
	}
	for _, op := range ops() {
		in := decodeHSM(t, op, hsmBodies[op])
		for _, c := range callers {
			t.Run(op+"/"+c.name, func(t *testing.T) {
				r := cloudHSMRequest(op, in, hsmCaller(c.caller), nil)
				err := svc.AuthorizeCloudHSM(c.caller, r)
				if c.want == "" {
					if err != nil {
						t.Fatalf("denied: %v", err)
					}
					return
				}
				var e *kmsapi.Exception
				if !errors.As(err, &e) || e.Name != "AccessDeniedException" {
					t.Fatalf("err %v, want AccessDeniedException", err)
				}
				head := "User: " + c.caller.ARN + " is not authorized to perform: cloudhsm:" + op + " on resource: " + hsmResources[op] + " "
				if !strings.HasPrefix(e.Message, head) || !strings.Contains(e.Message, c.want) {
					t.Fatalf("message %q, want %q … %q", e.Message, head, c.want)
				}
			})
		}
	}
}

// TestCloudHSMResource: the ARN each input is decided on.
func TestCloudHSMResource(t *testing.T) {
	c := hsm.Caller{Account: hsmTestAccount, Region: "eu-west-3"}
	tests := []struct {
		name, op, body, want string
	}{
		{"cluster", "DeleteCluster", `{"ClusterId":"cluster-abcdefghijk"}`, "arn:aws:cloudhsm:eu-west-3:111122223333:cluster/cluster-abcdefghijk"},
		{"hsm's cluster", "DeleteHsm", `{"ClusterId":"cluster-abcdefghijk","EniIp":"10.0.0.1"}`, "arn:aws:cloudhsm:eu-west-3:111122223333:cluster/cluster-abcdefghijk"},
		{"tags of a backup", "ListTags", `{"ResourceId":"backup-abcdefghijk"}`, "arn:aws:cloudhsm:eu-west-3:111122223333:backup/backup-abcdefghijk"},
		{"restore from a backup ARN", "CreateCluster", `{"HsmType":"hsm1.medium","SubnetIds":["subnet-0123456789abcdef0"],"SourceBackupId":"arn:aws:cloudhsm:eu-west-3:111122223333:backup/backup-abcdefghijk"}`, "arn:aws:cloudhsm:eu-west-3:111122223333:backup/backup-abcdefghijk"},
		{"restore from a backup", "CreateCluster", `{"HsmType":"hsm1.medium","SubnetIds":["subnet-0123456789abcdef0"],"SourceBackupId":"backup-abcdefghijk"}`, "arn:aws:cloudhsm:eu-west-3:111122223333:backup/backup-abcdefghijk"},
		{"new cluster", "CreateCluster", `{"HsmType":"hsm1.medium","SubnetIds":["subnet-0123456789abcdef0"]}`, "*"},
		{"list", "DescribeClusters", `{"Filters":{"clusterIds":["cluster-abcdefghijk"]}}`, "*"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := cloudHSMRequest(tc.op, decodeHSM(t, tc.op, tc.body), c, nil)
			if r.Resource != tc.want {
				t.Fatalf("resource %s, want %s", r.Resource, tc.want)
			}
			if wantAcct := map[bool]string{true: "", false: hsmTestAccount}[tc.want == "*"]; r.ResourceAccount != wantAcct {
				t.Fatalf("resource account %q, want %q", r.ResourceAccount, wantAcct)
			}
		})
	}
}

// TestCloudHSMTagConditions: aws:ResourceTag is the existing cluster's
// tags; aws:RequestTag and aws:TagKeys the tags a call sets or removes.
func TestCloudHSMTagConditions(t *testing.T) {
	svc := kms.New(nil)
	tagsOf := func(tags map[string]string) hsmResourceTags {
		return func(c hsm.Caller, id string) map[string]string {
			if c.Account != hsmTestAccount || id != hsmTestCluster {
				return nil
			}
			return tags
		}
	}
	resourceEnvTest := statement("Allow", "cloudhsm:*", `,"Condition":{"StringEquals":{"aws:ResourceTag/env":"test"}}`)
	requestTeam := statement("Allow", "cloudhsm:*", `,"Condition":{"StringEquals":{"aws:RequestTag/team":"crypto"},"ForAllValues:StringEquals":{"aws:TagKeys":["team"]}}`)
	onlyTeamKeys := statement("Allow", "cloudhsm:*", `,"Condition":{"ForAllValues:StringEquals":{"aws:TagKeys":["team"]}}`)
	allowButProdDeletes := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},` +
		`{"Effect":"Deny","Action":"cloudhsm:Delete*","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/env":"prod"}}}]}`
	tests := []struct {
		name, op, body, policy string
		tags                   map[string]string
		allowed                bool
	}{
		{"DeleteCluster, resource tag matches", "DeleteCluster", hsmBodies["DeleteCluster"], resourceEnvTest, map[string]string{"env": "test"}, true},
		{"DeleteCluster, resource tag differs", "DeleteCluster", hsmBodies["DeleteCluster"], resourceEnvTest, map[string]string{"env": "prod"}, false},
		{"DeleteCluster, untagged cluster", "DeleteCluster", hsmBodies["DeleteCluster"], resourceEnvTest, nil, false},
		{"DeleteCluster, unknown cluster", "DeleteCluster", `{"ClusterId":"cluster-zzzzzzzzzzz"}`, resourceEnvTest, map[string]string{"env": "test"}, false},
		{"DeleteHsm, resource tag matches", "DeleteHsm", hsmBodies["DeleteHsm"], resourceEnvTest, map[string]string{"env": "test"}, true},
		{"explicit deny on a prod cluster", "DeleteHsm", hsmBodies["DeleteHsm"], allowButProdDeletes, map[string]string{"env": "prod"}, false},
		{"explicit deny on prod, test cluster", "DeleteHsm", hsmBodies["DeleteHsm"], allowButProdDeletes, map[string]string{"env": "test"}, true},
		{"CreateCluster, request tag matches", "CreateCluster", hsmBodies["CreateCluster"], requestTeam, nil, true},
		{"CreateCluster, request tag differs", "CreateCluster", `{"HsmType":"hsm2m.medium","SubnetIds":["subnet-0123456789abcdef0"],"TagList":[{"Key":"team","Value":"web"}]}`, requestTeam, nil, false},
		{"CreateCluster, extra tag key", "CreateCluster", `{"HsmType":"hsm2m.medium","SubnetIds":["subnet-0123456789abcdef0"],"TagList":[{"Key":"team","Value":"crypto"},{"Key":"owner","Value":"x"}]}`, requestTeam, nil, false},
		{"CreateCluster, no tags", "CreateCluster", `{"HsmType":"hsm2m.medium","SubnetIds":["subnet-0123456789abcdef0"]}`, requestTeam, nil, false},
		{"TagResource, request tag matches", "TagResource", hsmBodies["TagResource"], requestTeam, nil, true},
		{"TagResource, other key", "TagResource", `{"ResourceId":"` + hsmTestCluster + `","TagList":[{"Key":"env","Value":"crypto"}]}`, requestTeam, nil, false},
		{"UntagResource, allowed key", "UntagResource", hsmBodies["UntagResource"], onlyTeamKeys, nil, true},
		{"UntagResource, other key", "UntagResource", `{"ResourceId":"` + hsmTestCluster + `","TagKeyList":["team","env"]}`, onlyTeamKeys, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := hsmUser(t, "bob", tc.policy)
			r := cloudHSMRequest(tc.op, decodeHSM(t, tc.op, tc.body), hsmCaller(c), tagsOf(tc.tags))
			err := svc.AuthorizeCloudHSM(c, r)
			if (err == nil) != tc.allowed {
				t.Fatalf("allowed %v, want %v (err %v)", err == nil, tc.allowed, err)
			}
		})
	}
}

// TestCloudHSMCrossAccount: a resource of another account is refused
// whatever the policies (it cannot arise from ids, which are always the
// caller's account's, but the rule holds).
func TestCloudHSMCrossAccount(t *testing.T) {
	svc := kms.New(nil)
	for _, c := range []*kms.Caller{
		hsmUser(t, "bob", statement("Allow", "*", "")),
		{Account: hsmTestAccount, Region: hsmTestRegion, ARN: "arn:aws:iam::" + hsmTestAccount + ":root", Trusted: true},
	} {
		err := svc.AuthorizeCloudHSM(c, kms.CloudHSMRequest{Op: "DeleteCluster",
			Resource: "arn:aws:cloudhsm:us-east-1:444455556666:cluster/" + hsmTestCluster, ResourceAccount: "444455556666"})
		if err == nil {
			t.Errorf("%s deleted another account's cluster", c.ARN)
		}
	}
}

// fakePrincipals resolves access keys to identities.
type fakePrincipals map[string]*identity.Identity

func (f fakePrincipals) IdentityFor(akid, _ string) (*identity.Identity, bool) {
	id, ok := f[akid]
	return id, ok
}

// newTestHSMServer is an hsmServer over a fresh store, deciding with the
// KMS policy engine, with two users: bob (Deny *) and carol (allowed
// cloudhsm:DescribeClusters and cloudhsm:DeleteCluster). It needs no
// PKCS#11 module: the operations used touch no token.
func newTestHSMServer(t *testing.T) *hsmServer {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b, err := barrier.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := hsm.New(ctx, st, b, hsm.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	ids := fakePrincipals{}
	for akid, u := range map[string]*kms.Caller{
		"AKIABOB":   hsmUser(t, "bob", statement("Deny", "*", "")),
		"AKIACAROL": hsmUser(t, "carol", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["cloudhsm:DescribeClusters","cloudhsm:DeleteCluster","cloudhsm:GetResourcePolicy"],"Resource":"*"}]}`),
	} {
		ids[akid] = &identity.Identity{AccessKeyID: akid, Principal: u.Principal, Policies: u.Policies}
	}
	return &hsmServer{svc: svc, verifier: &sigv4.Verifier{Service: "cloudhsm"}, ids: ids, authz: kms.New(nil),
		account: hsmTestAccount, log: slog.New(slog.DiscardHandler)}
}

// TestServeCloudHSMAuthorization drives serveCloudHSM with signed
// requests: a denial is AccessDeniedException, HTTP 400, in AWS's words,
// whether or not the cluster exists, and is audited; an allowed call runs.
func TestServeCloudHSMAuthorization(t *testing.T) {
	h := newTestHSMServer(t)
	m := newMetrics()
	const missing = `{"ClusterId":"cluster-zzzzzzzzzzz"}`
	tests := []struct {
		name, akid, op, body string
		status               int
		code, message        string
	}{
		{"denied describe", "AKIABOB", "DescribeClusters", `{}`, 400, "AccessDeniedException",
			"User: arn:aws:iam::111122223333:user/bob is not authorized to perform: cloudhsm:DescribeClusters on resource: * with an explicit deny in an identity-based policy"},
		{"denied delete of a cluster that does not exist", "AKIABOB", "DeleteCluster", missing, 400, "AccessDeniedException",
			"User: arn:aws:iam::111122223333:user/bob is not authorized to perform: cloudhsm:DeleteCluster on resource: arn:aws:cloudhsm:us-east-1:111122223333:cluster/cluster-zzzzzzzzzzz with an explicit deny in an identity-based policy"},
		{"denied create", "AKIABOB", "CreateCluster", hsmBodies["CreateCluster"], 400, "AccessDeniedException", "cloudhsm:CreateCluster on resource: *"},
		{"not allowed", "AKIACAROL", "DeleteHsm", `{"ClusterId":"cluster-zzzzzzzzzzz","HsmId":"hsm-abcdefghijk"}`, 400, "AccessDeniedException",
			"User: arn:aws:iam::111122223333:user/carol is not authorized to perform: cloudhsm:DeleteHsm on resource: arn:aws:cloudhsm:us-east-1:111122223333:cluster/cluster-zzzzzzzzzzz because no identity-based policy allows the cloudhsm:DeleteHsm action"},
		{"allowed describe", "AKIACAROL", "DescribeClusters", `{}`, 200, "", ""},
		{"allowed delete reaches the service", "AKIACAROL", "DeleteCluster", missing, 400, "CloudHsmResourceNotFoundException", "The resource cluster-zzzzzzzzzzz was not found."},
		{"validation before authorization", "AKIABOB", "DeleteCluster", `{}`, 400, "ValidationException", ""},
		{"denied modify", "AKIABOB", "ModifyCluster", `{"ClusterId":"` + hsmTestCluster + `"}`, 400, "AccessDeniedException", "cloudhsm:ModifyCluster on resource: " + clusterARN + " with an explicit deny"},
		{"backup not allowed", "AKIACAROL", "RestoreBackup", `{"BackupId":"backup-abcdefghijk"}`, 400, "AccessDeniedException", "cloudhsm:RestoreBackup on resource: " + backupARN + " because no identity-based policy allows the cloudhsm:RestoreBackup action"},
		{"unsupported resource-policy op, denied", "AKIABOB", "GetResourcePolicy", `{}`, 400, "AccessDeniedException", "cloudhsm:GetResourcePolicy on resource: * with an explicit deny"},
		{"unsupported op, allowed", "AKIACAROL", "GetResourcePolicy", `{}`, 400, "CloudHsmServiceException", "kmsd does not support GetResourcePolicy."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "http://kmsd.test/", bytes.NewReader([]byte(tc.body)))
			r.Header.Set("Content-Type", "application/x-amz-json-1.1")
			r.Header.Set("X-Amz-Target", hsmapi.TargetPrefix+"."+tc.op)
			sigv4.Sign(r, []byte(tc.body), tc.akid, "secret", "", hsmTestRegion, "cloudhsm", time.Now())
			rec := &audit.Record{RequestID: "req-1"}
			w := httptest.NewRecorder()
			h.serveCloudHSM(w, r, []byte(tc.body), rec, m)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.code == "" {
				if rec.ErrorCode != "" {
					t.Fatalf("audit error code %q", rec.ErrorCode)
				}
				return
			}
			var body struct {
				Type    string `json:"__type"`
				Message string
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if body.Type != tc.code || !strings.Contains(body.Message, tc.message) {
				t.Fatalf("answer %s %q, want %s %q", body.Type, body.Message, tc.code, tc.message)
			}
			if rec.ErrorCode != tc.code || rec.ErrorMessage != body.Message || rec.EventName != tc.op {
				t.Fatalf("audit record %s %s %q", rec.EventName, rec.ErrorCode, rec.ErrorMessage)
			}
		})
	}
}

// TestAdminGate: only the account's administrator identity may use the
// admin API, whatever IAM policies others have.
func TestAdminGate(t *testing.T) {
	tests := []struct {
		name string
		p    identity.Principal
		want bool
	}{
		{"root", identity.Root(hsmTestAccount), true},
		{"kmsd-admin", identity.Principal{Account: hsmTestAccount, ARN: "arn:aws:iam::" + hsmTestAccount + ":user/kmsd-admin"}, true},
		{"another user", identity.Principal{Account: hsmTestAccount, ARN: "arn:aws:iam::" + hsmTestAccount + ":user/bob"}, false},
		{"a role session", identity.Principal{Account: hsmTestAccount, ARN: "arn:aws:sts::" + hsmTestAccount + ":assumed-role/kmsd-admin/s"}, false},
		{"another account's kmsd-admin for this account", identity.Principal{Account: hsmTestAccount, ARN: "arn:aws:iam::444455556666:user/kmsd-admin"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := isAdmin(tc.p); got != tc.want {
				t.Fatalf("isAdmin = %v, want %v", got, tc.want)
			}
		})
	}
}
