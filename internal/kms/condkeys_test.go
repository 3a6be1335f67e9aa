package kms

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

const (
	matrixAccount = "111122223333"
	aliceARN      = "arn:aws:iam::111122223333:user/alice"
	granteeARN    = "arn:aws:iam::111122223333:role/Grantee"
)

// opArgs are the request parameters a matrix case may change; an op
// builds its request from them.
type opArgs struct {
	keyID    func(f *matrixFixture) string // how the request names the key
	ec       map[string]string
	alg      *string
	tags     []kmsapi.Tag
	tagKeys  []string
	bypass   *bool
	period   *int32
	window   *int32
	grant    *kmsapi.GrantConstraints
	otherDst bool // ReEncrypt to another key than the source
	caller   func(c *Caller)
	// multiRegion: CreateKey makes a multi-Region key.
	multiRegion bool
	// GetParametersForImport and ImportKeyMaterial: the wrapping
	// algorithm (default RSAES_OAEP_SHA_256) and the expiration.
	wrapAlg  string
	expModel *string
	validTo  *time.Time
}

// matrixKey is a key the matrix acts on. "tagged" has aliases alias/k1
// and alias/k1-second and tag env=prod; "plain" and "other" have neither.
type matrixKey struct {
	id, arn string
}

type matrixFixture struct {
	*fixture
	tagged, plain, other matrixKey
	mrk                  matrixKey // a multi-Region primary key, no alias, no tags
}

// matrixOps runs one operation as caller c; it succeeds when authorised.
var matrixOps = map[string]func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error{
	"Encrypt": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &id, Plaintext: []byte("x"), EncryptionContext: a.ec, EncryptionAlgorithm: a.alg})
		return err
	},
	"Decrypt": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		blob, err := f.rootEncrypt(ctx, a.ec)
		if err != nil {
			return err
		}
		id := a.keyID(f)
		_, err = f.svc.Decrypt(ctx, c, &kmsapi.DecryptRequest{KeyId: &id, CiphertextBlob: blob, EncryptionContext: a.ec, EncryptionAlgorithm: a.alg})
		return err
	},
	"ReEncrypt": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		blob, err := f.rootEncrypt(ctx, a.ec)
		if err != nil {
			return err
		}
		id, dst := a.keyID(f), a.keyID(f)
		if a.otherDst {
			dst = f.other.id
		}
		_, err = f.svc.ReEncrypt(ctx, c, &kmsapi.ReEncryptRequest{CiphertextBlob: blob, SourceKeyId: &id, DestinationKeyId: &dst,
			SourceEncryptionContext: a.ec, DestinationEncryptionContext: a.ec, SourceEncryptionAlgorithm: a.alg, DestinationEncryptionAlgorithm: a.alg})
		return err
	},
	"GenerateDataKey": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.GenerateDataKey(ctx, c, &kmsapi.GenerateDataKeyRequest{KeyId: &id, KeySpec: kmsapi.String("AES_256"), EncryptionContext: a.ec})
		return err
	},
	"GenerateDataKeyWithoutPlaintext": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.GenerateDataKeyWithoutPlaintext(ctx, c, &kmsapi.GenerateDataKeyWithoutPlaintextRequest{KeyId: &id, KeySpec: kmsapi.String("AES_256"), EncryptionContext: a.ec})
		return err
	},
	"DescribeKey": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.DescribeKey(ctx, c, &kmsapi.DescribeKeyRequest{KeyId: &id})
		return err
	},
	"CreateKey": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		in := &kmsapi.CreateKeyRequest{Tags: a.tags, BypassPolicyLockoutSafetyCheck: a.bypass}
		if a.multiRegion {
			in.MultiRegion = boolp(true)
		}
		_, err := f.svc.CreateKey(ctx, c, in)
		return err
	},
	"ReplicateKey": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.ReplicateKey(ctx, c, &kmsapi.ReplicateKeyRequest{KeyId: &id, ReplicaRegion: kmsapi.String("eu-west-1")})
		return err
	},
	"UpdatePrimaryRegion": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		// The account root replicates; the replica (default key
		// policy) is Enabled at once (no replica delay).
		if _, err := f.svc.ReplicateKey(ctx, f.caller, &kmsapi.ReplicateKeyRequest{KeyId: &f.mrk.id, ReplicaRegion: kmsapi.String("eu-west-1")}); err != nil {
			return err
		}
		id := a.keyID(f)
		_, err := f.svc.UpdatePrimaryRegion(ctx, c, &kmsapi.UpdatePrimaryRegionRequest{KeyId: &id, PrimaryRegion: kmsapi.String("eu-west-1")})
		return err
	},
	"TagResource": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.TagResource(ctx, c, &kmsapi.TagResourceRequest{KeyId: &id, Tags: a.tags})
		return err
	},
	"UntagResource": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.UntagResource(ctx, c, &kmsapi.UntagResourceRequest{KeyId: &id, TagKeys: a.tagKeys})
		return err
	},
	"CreateGrant": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.CreateGrant(ctx, c, &kmsapi.CreateGrantRequest{KeyId: &id, GranteePrincipal: kmsapi.String(granteeARN),
			RetiringPrincipal: kmsapi.String(granteeARN), Operations: []string{"Decrypt"}, Constraints: a.grant})
		return err
	},
	"ListGrants": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.ListGrants(ctx, c, &kmsapi.ListGrantsRequest{KeyId: &id})
		return err
	},
	"RevokeGrant": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		g, err := f.svc.CreateGrant(ctx, f.caller, &kmsapi.CreateGrantRequest{KeyId: &f.tagged.id, GranteePrincipal: kmsapi.String(granteeARN), Operations: []string{"Decrypt"}})
		if err != nil {
			return err
		}
		_, err = f.svc.RevokeGrant(ctx, c, &kmsapi.RevokeGrantRequest{KeyId: &id, GrantId: g.GrantId})
		return err
	},
	"PutKeyPolicy": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		got, err := f.svc.GetKeyPolicy(ctx, f.caller, &kmsapi.GetKeyPolicyRequest{KeyId: &f.tagged.id})
		if err != nil {
			return err
		}
		_, err = f.svc.PutKeyPolicy(ctx, c, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: got.Policy, BypassPolicyLockoutSafetyCheck: a.bypass})
		return err
	},
	"EnableKeyRotation": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.EnableKeyRotation(ctx, c, &kmsapi.EnableKeyRotationRequest{KeyId: &id, RotationPeriodInDays: a.period})
		return err
	},
	"GetParametersForImport": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id, err := f.externalKey(ctx)
		if err != nil {
			return err
		}
		_, err = f.svc.GetParametersForImport(ctx, c, &kmsapi.GetParametersForImportRequest{KeyId: &id,
			WrappingAlgorithm: kmsapi.String(a.wrapping()), WrappingKeySpec: kmsapi.String("RSA_2048")})
		return err
	},
	"ImportKeyMaterial": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id, err := f.externalKey(ctx)
		if err != nil {
			return err
		}
		p, err := f.svc.GetParametersForImport(ctx, f.caller, &kmsapi.GetParametersForImportRequest{KeyId: &id,
			WrappingAlgorithm: kmsapi.String("RSAES_OAEP_SHA_256"), WrappingKeySpec: kmsapi.String("RSA_2048")})
		if err != nil {
			return err
		}
		pub, err := x509.ParsePKIXPublicKey(p.PublicKey)
		if err != nil {
			return err
		}
		wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.(*rsa.PublicKey), make([]byte, 32), nil)
		if err != nil {
			return err
		}
		in := &kmsapi.ImportKeyMaterialRequest{KeyId: &id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapped, ExpirationModel: a.expModel}
		if a.validTo != nil {
			in.ValidTo = kmsapi.NewTime(*a.validTo)
		}
		_, err = f.svc.ImportKeyMaterial(ctx, c, in)
		return err
	},
	"ScheduleKeyDeletion": func(ctx context.Context, f *matrixFixture, c *Caller, a *opArgs) error {
		id := a.keyID(f)
		_, err := f.svc.ScheduleKeyDeletion(ctx, c, &kmsapi.ScheduleKeyDeletionRequest{KeyId: &id, PendingWindowInDays: a.window})
		return err
	},
}

func (a *opArgs) wrapping() string {
	if a.wrapAlg == "" {
		return "RSAES_OAEP_SHA_256"
	}
	return a.wrapAlg
}

// externalKey makes a key of origin EXTERNAL, by the account root, with
// the key policy of the fixture's keys.
func (f *matrixFixture) externalKey(ctx context.Context) (string, error) {
	kp, err := f.svc.GetKeyPolicy(ctx, f.caller, &kmsapi.GetKeyPolicyRequest{KeyId: &f.tagged.id})
	if err != nil {
		return "", err
	}
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: kmsapi.String("EXTERNAL"), Policy: kp.Policy, BypassPolicyLockoutSafetyCheck: boolp(true)})
	if err != nil {
		return "", err
	}
	return *out.KeyMetadata.KeyId, nil
}

// importValidTo is a ValidTo a day after the fixture's clock
// (2026-01-02T03:04:05Z), 1767409445 in epoch seconds.
var importValidTo = time.Date(2026, 1, 3, 3, 4, 5, 0, time.UTC)

// matrixCase is one condition key: a condition on it that the request
// built by args satisfies with right and not with wrong; absent, when
// set, changes the request so that the key is not in it.
type matrixCase struct {
	key          string // as the policy names it (a prefixed key with its suffix)
	op           string // condition operator
	right, wrong string
	args         func(a *opArgs)
	absent       func(a *opArgs)
	ops          []string // overrides the table's operations
}

func byID(f *matrixFixture) string     { return f.tagged.id }
func byPlain(f *matrixFixture) string  { return f.plain.id } // no alias, no tags
func byMRK(f *matrixFixture) string    { return f.mrk.id }
func byAlias(*matrixFixture) string    { return "alias/k1" }
func byAliasARN(*matrixFixture) string { return "arn:aws:kms:us-east-1:111122223333:alias/k1" }
func i32(v int32) *int32               { return &v }
func boolp(v bool) *bool               { return &v }
func tag(k, v string) []kmsapi.Tag     { return []kmsapi.Tag{{TagKey: &k, TagValue: &v}} }
func withEC(a *opArgs)                 { a.ec = map[string]string{"tenant": "t1"} }
func noEC(a *opArgs)                   { a.ec = nil }

// matrixCases covers every Filled key of policy.ConditionKeys (checked by
// TestPolicyMatrixCoversTable). Operations come from the table: a key
// set on every request is tried with Encrypt and CreateKey, a key of
// every key operation with Encrypt, DescribeKey and TagResource.
var matrixCases = []matrixCase{
	{key: "aws:PrincipalArn", op: "StringEquals", right: aliceARN, wrong: "arn:aws:iam::111122223333:user/bob"},
	{key: "aws:PrincipalAccount", op: "StringEquals", right: matrixAccount, wrong: "444455556666"},
	{key: "aws:PrincipalType", op: "StringEquals", right: "User", wrong: "AssumedRole"},
	{key: "aws:userid", op: "StringEquals", right: "AIDAALICE", wrong: "AIDABOB",
		absent: func(a *opArgs) { a.caller = func(c *Caller) { c.Principal.UserID = "" } }},
	{key: "aws:username", op: "StringEquals", right: "alice", wrong: "bob"},
	{key: "aws:PrincipalTag/team", op: "StringEquals", right: "blue", wrong: "red",
		absent: func(a *opArgs) { a.caller = func(c *Caller) { c.Principal.Tags = nil } }},
	{key: "aws:PrincipalIsAWSService", op: "Bool", right: "false", wrong: "true"},
	{key: "aws:ViaAWSService", op: "Bool", right: "false", wrong: "true"},
	{key: "aws:MultiFactorAuthPresent", op: "Bool", right: "false", wrong: "true",
		args: func(a *opArgs) {
			a.caller = func(c *Caller) {
				c.Principal = policy.Principal{Type: policy.AssumedRole, ARN: "arn:aws:sts::111122223333:assumed-role/App/s1",
					Account: matrixAccount, Name: "App", Session: "s1", UserID: "AROAAPP:s1"}
			}
		},
		absent: func(a *opArgs) { a.caller = nil }}, // long-term access keys: absent, as AWS
	{key: "aws:SourceIp", op: "IpAddress", right: "192.0.2.0/24", wrong: "198.51.100.0/24",
		absent: func(a *opArgs) { a.caller = func(c *Caller) { c.SourceIP = "" } }},
	{key: "aws:SecureTransport", op: "Bool", right: "true", wrong: "false"},
	{key: "aws:CurrentTime", op: "DateEquals", right: "2026-01-02T03:04:05Z", wrong: "2025-01-02T03:04:05Z"},
	{key: "aws:EpochTime", op: "NumericEquals", right: "1767323045", wrong: "1767323046"},
	{key: "aws:RequestedRegion", op: "StringEquals", right: "us-east-1", wrong: "eu-west-1"},
	{key: "aws:ResourceAccount", op: "StringEquals", right: matrixAccount, wrong: "444455556666"},
	{key: "aws:ResourceTag/env", op: "StringEquals", right: "prod", wrong: "dev",
		absent: func(a *opArgs) { a.keyID = byPlain }},
	{key: "aws:RequestTag/env", op: "StringEquals", right: "prod", wrong: "dev",
		args:   func(a *opArgs) { a.tags = tag("env", "prod") },
		absent: func(a *opArgs) { a.tags = tag("owner", "me") }},
	{key: "aws:TagKeys", op: "ForAnyValue:StringEquals", right: "env", wrong: "owner",
		args:   func(a *opArgs) { a.tags, a.tagKeys = tag("env", "prod"), []string{"env"} },
		absent: func(a *opArgs) { a.tags, a.tagKeys = nil, nil }},
	{key: "kms:CallerAccount", op: "StringEquals", right: matrixAccount, wrong: "444455556666"},
	{key: "kms:KeySpec", op: "StringEquals", right: "SYMMETRIC_DEFAULT", wrong: "RSA_2048"},
	{key: "kms:KeyUsage", op: "StringEquals", right: "ENCRYPT_DECRYPT", wrong: "SIGN_VERIFY"},
	{key: "kms:KeyOrigin", op: "StringEquals", right: "AWS_KMS", wrong: "EXTERNAL"},
	{key: "kms:CustomerMasterKeySpec", op: "StringEquals", right: "SYMMETRIC_DEFAULT", wrong: "RSA_2048"},
	{key: "kms:CustomerMasterKeyUsage", op: "StringEquals", right: "ENCRYPT_DECRYPT", wrong: "SIGN_VERIFY"},
	{key: "kms:MultiRegion", op: "Bool", right: "false", wrong: "true"},
	{key: "kms:MultiRegion", op: "Bool", right: "true", wrong: "false",
		args: func(a *opArgs) { a.keyID, a.multiRegion = byMRK, true }},
	// Absent for single-Region keys.
	{key: "kms:MultiRegionKeyType", op: "StringEquals", right: "PRIMARY", wrong: "REPLICA",
		args:   func(a *opArgs) { a.keyID, a.multiRegion = byMRK, true },
		absent: func(a *opArgs) { a.keyID, a.multiRegion = byID, false }},
	// ReplicateKey also needs kms:CreateKey from IAM in the replica
	// Region, which allowCreateKey gives.
	{key: "kms:ReplicaRegion", op: "StringEquals", right: "eu-west-1", wrong: "ap-southeast-2",
		args: func(a *opArgs) { a.keyID, a.caller = byMRK, allowCreateKey }},
	{key: "kms:PrimaryRegion", op: "StringEquals", right: "eu-west-1", wrong: "us-west-2",
		args: func(a *opArgs) { a.keyID = byMRK }},
	{key: "kms:ResourceAliases", op: "ForAnyValue:StringEquals", right: "alias/k1", wrong: "alias/k2",
		absent: func(a *opArgs) { a.keyID = byPlain }},
	// Every alias of the key is a value: one that does not match fails
	// ForAllValues.
	{key: "kms:ResourceAliases", op: "ForAllValues:StringLike", right: "alias/k1*", wrong: "alias/k1"},
	{key: "kms:RequestAlias", op: "StringEquals", right: "alias/k1", wrong: "alias/other",
		args:   func(a *opArgs) { a.keyID = byAlias },
		absent: func(a *opArgs) { a.keyID = byID }},
	{key: "kms:RequestAlias", op: "StringEquals", right: "alias/k1", wrong: "alias/other", // named by alias ARN
		args: func(a *opArgs) { a.keyID = byAliasARN }, ops: []string{"Encrypt", "DescribeKey"}},
	{key: "kms:EncryptionAlgorithm", op: "StringEquals", right: "SYMMETRIC_DEFAULT", wrong: "RSAES_OAEP_SHA_256"},
	{key: "kms:EncryptionAlgorithm", op: "StringEquals", right: "SYMMETRIC_DEFAULT", wrong: "RSAES_OAEP_SHA_1", // named
		args: func(a *opArgs) { a.alg = kmsapi.String("SYMMETRIC_DEFAULT") }, ops: []string{"Encrypt", "Decrypt", "ReEncrypt"}},
	{key: "kms:EncryptionContext:tenant", op: "StringEquals", right: "t1", wrong: "t2",
		args: func(a *opArgs) {
			withEC(a)
			a.grant = &kmsapi.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "t1"}}
		},
		absent: func(a *opArgs) { noEC(a); a.grant = nil }},
	{key: "kms:EncryptionContextKeys", op: "ForAnyValue:StringEquals", right: "tenant", wrong: "owner",
		args: func(a *opArgs) {
			withEC(a)
			a.grant = &kmsapi.GrantConstraints{EncryptionContextEquals: map[string]string{"tenant": "t1"}}
		},
		absent: func(a *opArgs) { noEC(a); a.grant = nil }},
	{key: "kms:ReEncryptOnSameKey", op: "Bool", right: "true", wrong: "false"},
	{key: "kms:ReEncryptOnSameKey", op: "Bool", right: "false", wrong: "true",
		args: func(a *opArgs) { a.otherDst = true }},
	{key: "kms:GrantOperations", op: "ForAnyValue:StringEquals", right: "Decrypt", wrong: "Encrypt"},
	{key: "kms:GrantConstraintType", op: "StringEquals", right: "EncryptionContextSubset", wrong: "EncryptionContextEquals",
		args: func(a *opArgs) {
			a.grant = &kmsapi.GrantConstraints{EncryptionContextSubset: map[string]string{"tenant": "t1"}}
		},
		absent: func(a *opArgs) { a.grant = nil }},
	{key: "kms:GranteePrincipal", op: "StringEquals", right: granteeARN, wrong: aliceARN},
	{key: "kms:RetiringPrincipal", op: "StringEquals", right: granteeARN, wrong: aliceARN},
	{key: "kms:GrantIsForAWSResource", op: "Bool", right: "false", wrong: "true"},
	{key: "kms:BypassPolicyLockoutSafetyCheck", op: "Bool", right: "true", wrong: "false",
		args: func(a *opArgs) { a.bypass = boolp(true) }},
	{key: "kms:BypassPolicyLockoutSafetyCheck", op: "Bool", right: "false", wrong: "true", ops: []string{"CreateKey"}}, // default
	{key: "kms:RotationPeriodInDays", op: "NumericEquals", right: "180", wrong: "365",
		args: func(a *opArgs) { a.period = i32(180) }},
	{key: "kms:RotationPeriodInDays", op: "NumericEquals", right: "365", wrong: "180"}, // default
	{key: "kms:ScheduleKeyDeletionPendingWindowInDays", op: "NumericEquals", right: "7", wrong: "30",
		args: func(a *opArgs) { a.window = i32(7) }},
	{key: "kms:ScheduleKeyDeletionPendingWindowInDays", op: "NumericEquals", right: "30", wrong: "7"}, // default
	{key: "kms:KeyOrigin", op: "StringEquals", right: "EXTERNAL", wrong: "AWS_KMS", ops: []string{"GetParametersForImport", "ImportKeyMaterial"},
		args: func(a *opArgs) { a.expModel = kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE") }},
	{key: "kms:WrappingAlgorithm", op: "StringEquals", right: "RSAES_OAEP_SHA_256", wrong: "RSAES_OAEP_SHA_1"},
	{key: "kms:WrappingAlgorithm", op: "StringEquals", right: "RSA_AES_KEY_WRAP_SHA_1", wrong: "RSA_AES_KEY_WRAP_SHA_256",
		args: func(a *opArgs) { a.wrapAlg = "RSA_AES_KEY_WRAP_SHA_1" }},
	{key: "kms:WrappingKeySpec", op: "StringEquals", right: "RSA_2048", wrong: "RSA_4096"},
	{key: "kms:ExpirationModel", op: "StringEquals", right: "KEY_MATERIAL_DOES_NOT_EXPIRE", wrong: "KEY_MATERIAL_EXPIRES",
		args: func(a *opArgs) { a.expModel = kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE") }},
	{key: "kms:ExpirationModel", op: "StringEquals", right: "KEY_MATERIAL_EXPIRES", wrong: "KEY_MATERIAL_DOES_NOT_EXPIRE", // default
		args: func(a *opArgs) { a.validTo = &importValidTo }},
	{key: "kms:ValidTo", op: "NumericEquals", right: "1767409445", wrong: "1767409446",
		args:   func(a *opArgs) { a.validTo = &importValidTo },
		absent: func(a *opArgs) { a.validTo, a.expModel = nil, kmsapi.String("KEY_MATERIAL_DOES_NOT_EXPIRE") }},
}

// allowCreateKey adds an identity policy allowing kms:CreateKey.
func allowCreateKey(c *Caller) {
	p, err := policy.Parse(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:CreateKey","Resource":"*"}]}`, policy.IdentityPolicy)
	if err != nil {
		panic(err)
	}
	c.Policies = append(c.Policies, p)
}

// opsOf expands a table entry's operations into implemented operations.
func opsOf(k *policy.ConditionKey) []string {
	var out []string
	for _, op := range k.Ops {
		switch op {
		case policy.EveryRequest:
			out = append(out, "Encrypt", "CreateKey")
		case policy.KeyOperations:
			out = append(out, "Encrypt", "DescribeKey", "TagResource")
		default:
			if _, ok := matrixOps[op]; ok {
				out = append(out, op)
			}
		}
	}
	return out
}

func newMatrixFixture(t *testing.T, keyPolicy string) *matrixFixture {
	t.Helper()
	ctx := context.Background()
	f := &matrixFixture{fixture: newFixture(t)}
	mk := func(tags []kmsapi.Tag) matrixKey {
		out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Policy: &keyPolicy, Tags: tags, BypassPolicyLockoutSafetyCheck: boolp(true)})
		if err != nil {
			t.Fatal(err)
		}
		return matrixKey{id: *out.KeyMetadata.KeyId, arn: *out.KeyMetadata.Arn}
	}
	f.tagged, f.plain, f.other = mk(tag("env", "prod")), mk(nil), mk(nil)
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Policy: &keyPolicy, MultiRegion: boolp(true), BypassPolicyLockoutSafetyCheck: boolp(true)})
	if err != nil {
		t.Fatal(err)
	}
	f.mrk = matrixKey{id: *out.KeyMetadata.KeyId, arn: *out.KeyMetadata.Arn}
	for _, a := range []string{"alias/k1", "alias/k1-second"} {
		if _, err := f.svc.CreateAlias(ctx, f.caller, &kmsapi.CreateAliasRequest{AliasName: kmsapi.String(a), TargetKeyId: &f.tagged.id}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// matrixCaller is alice, an IAM user with a tag, calling over TLS from
// 192.0.2.10.
func matrixCaller(t *testing.T, docs ...string) *Caller {
	c := userCaller(t, matrixAccount, "alice", docs...)
	c.Principal.UserID = "AIDAALICE"
	c.Principal.Tags = map[string]string{"team": "blue"}
	c.SourceIP, c.SecureTransport = "192.0.2.10", true
	return c
}

// conditionJSON is a Condition element with one operator and key.
func conditionJSON(op, key, value string) string {
	b, _ := json.Marshal(map[string]map[string]string{op: {key: value}})
	return string(b)
}

func rootAllowStatement() string {
	return `{"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}`
}

// TestPolicyMatrix proves, for every condition key kmsd fills and every
// implemented operation that sets it, that an Allow conditioned on the
// key's value allows and a Deny conditioned on it denies, and that with
// another value (or the key absent) the Allow does not allow and the Deny
// does not deny. Allows are tested in an identity policy (the key policy
// defers to IAM); denies in the key policy and in an identity policy.
func TestPolicyMatrix(t *testing.T) {
	for _, mc := range matrixCases {
		entry, ok := policy.LookupConditionKey(mc.key)
		if !ok || entry.Avail != policy.Filled {
			t.Fatalf("%s: not a Filled key of the table", mc.key)
		}
		ops := mc.ops
		if ops == nil {
			ops = opsOf(entry)
		}
		for _, op := range ops {
			name := mc.key + "/" + op + "/" + mc.right
			t.Run(name, func(t *testing.T) { runMatrixCase(t, mc, op) })
		}
	}
}

func runMatrixCase(t *testing.T, mc matrixCase, op string) {
	call := matrixOps[op]
	if call == nil {
		t.Fatalf("no matrix op %s", op)
	}
	action := "kms:" + op
	if op == "ReEncrypt" {
		action = "kms:ReEncrypt*"
	}
	keyScope := Authorizations[op].Scope == KeyScope
	type variant struct {
		name    string
		value   string
		present bool // the request carries the key
		allowed bool // want the call to succeed
	}
	for _, mode := range []string{"allow-identity", "deny-key-policy", "deny-identity"} {
		if mode == "deny-key-policy" && !keyScope {
			continue
		}
		variants := []variant{{"right", mc.right, true, true}, {"wrong", mc.wrong, true, false}}
		if mc.absent != nil {
			variants = append(variants, variant{"absent", mc.right, false, false})
		}
		for _, v := range variants {
			t.Run(mode+"/"+v.name, func(t *testing.T) {
				cond := conditionJSON(mc.op, mc.key, v.value)
				keyPolicy := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() + `]}`
				identity := allowAll
				want := v.allowed
				switch mode {
				case "allow-identity":
					identity = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"` + action + `","Resource":"*","Condition":` + cond + `}]}`
				case "deny-key-policy":
					// Principal "*": some cases call as a role session.
					// The account root, which sets the matrix up, never
					// calls the denied action.
					keyPolicy = `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() +
						`,{"Sid":"deny","Effect":"Deny","Principal":"*","Action":"` + action + `","Resource":"*","Condition":` + cond + `}]}`
					want = !v.allowed
				case "deny-identity":
					identity = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},` +
						`{"Effect":"Deny","Action":"` + action + `","Resource":"*","Condition":` + cond + `}]}`
					want = !v.allowed
				}
				if !v.present && mode != "allow-identity" {
					want = true // a Deny on an absent key does not deny
				}
				f := newMatrixFixture(t, keyPolicy)
				c := matrixCaller(t, identity)
				a := &opArgs{keyID: byID}
				if mc.args != nil {
					mc.args(a)
				}
				if !v.present {
					mc.absent(a)
				}
				if a.caller != nil {
					a.caller(c)
				}
				err := call(context.Background(), f, c, a)
				var e *kmsapi.Exception
				denied := errors.As(err, &e) && e.Name == "AccessDeniedException"
				switch {
				case want && err != nil:
					t.Fatalf("%s %s: %v, want success", op, cond, err)
				case !want && !denied:
					t.Fatalf("%s %s: %v, want AccessDeniedException", op, cond, err)
				}
				if denied && mode != "allow-identity" && !strings.Contains(e.Message, "explicit deny") {
					t.Errorf("message %q does not say explicit deny", e.Message)
				}
			})
		}
	}
}

// TestPolicyMatrixCoversTable: every Filled key of the table that an
// implemented operation sets has a matrix case for each such operation.
func TestPolicyMatrixCoversTable(t *testing.T) {
	covered := map[string]bool{}
	for _, mc := range matrixCases {
		entry, _ := policy.LookupConditionKey(mc.key)
		ops := mc.ops
		if ops == nil {
			ops = opsOf(entry)
		}
		for _, op := range ops {
			covered[entry.Name+" "+op] = true
		}
	}
	for i := range policy.ConditionKeys {
		k := &policy.ConditionKeys[i]
		if k.Avail != policy.Filled {
			continue
		}
		ops := opsOf(k)
		if len(ops) == 0 {
			t.Errorf("%s: Filled, but no implemented operation sets it", k.Name)
		}
		for _, op := range ops {
			if !covered[k.Name+" "+op] {
				t.Errorf("%s set by %s: no matrix case", k.Name, op)
			}
		}
	}
}

// TestPendingKeysAccepted: keys of operations kmsd lacks, and keys AWS
// never sets for kmsd's callers, may be named in key and identity policies.
func TestPendingKeysAccepted(t *testing.T) {
	ctx := context.Background()
	for i := range policy.ConditionKeys {
		k := &policy.ConditionKeys[i]
		if k.Avail != policy.Pending && k.Avail != policy.NeverSet {
			continue
		}
		name := k.Name
		if k.Prefix() {
			name += "x"
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t)
			cond := conditionJSON("StringEquals", name, "v")
			doc := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() +
				`,{"Effect":"Deny","Principal":"*","Action":"kms:Sign","Resource":"*","Condition":` + cond + `}]}`
			if _, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Policy: &doc}); err != nil {
				t.Fatalf("CreateKey: %v", err)
			}
		})
	}
}

// TestUnfillableKeysRefused: CreateKey and PutKeyPolicy refuse a key policy
// naming a key kmsd cannot fill, or no key of AWS's, with
// MalformedPolicyDocumentException naming the key.
func TestUnfillableKeysRefused(t *testing.T) {
	ctx := context.Background()
	for _, key := range []string{"aws:PrincipalOrgID", "aws:ResourceOrgPaths", "aws:TokenIssueTime", "aws:UserAgent", "kms:KeyColour", "kms:CustomKeyStoreId", "aws:NoSuchKey"} {
		t.Run(key, func(t *testing.T) {
			f := newFixture(t)
			doc := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() +
				`,{"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*","Condition":` + conditionJSON("StringEquals", key, "v") + `}]}`
			_, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Policy: &doc})
			wantRefusal(t, err, key)
			id := f.createKey(t)
			_, err = f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: &id, Policy: &doc})
			wantRefusal(t, err, key)
		})
	}
}

func wantRefusal(t *testing.T, err error, key string) {
	t.Helper()
	var e *kmsapi.Exception
	if !errors.As(err, &e) || e.Name != "MalformedPolicyDocumentException" {
		t.Fatalf("err = %v, want MalformedPolicyDocumentException", err)
	}
	if !strings.Contains(e.Message, key) {
		t.Errorf("message %q does not name %s", e.Message, key)
	}
}

// TestReproABAC is the reproduction: a key policy that denies
// Encrypt by alias, Decrypt by tag and GenerateDataKey by requested alias.
func TestReproABAC(t *testing.T) {
	ctx := context.Background()
	doc := `{"Version":"2012-10-17","Statement":[` + rootAllowStatement() + `,
	  {"Effect":"Deny","Principal":"*","Action":"kms:Encrypt","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/k1"}}},
	  {"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"aws:ResourceTag/env":"prod"}}},
	  {"Effect":"Deny","Principal":"*","Action":"kms:GenerateDataKey","Resource":"*","Condition":{"StringEquals":{"kms:RequestAlias":"alias/k1"}}}]}`
	f := newMatrixFixture(t, `{"Version":"2012-10-17","Statement":[`+rootAllowStatement()+`]}`)
	tagged := f.encrypt(t, f.tagged.id, []byte("x"), nil)
	plain := f.encrypt(t, f.plain.id, []byte("x"), nil)
	for _, id := range []string{f.tagged.id, f.plain.id} {
		if _, err := f.svc.PutKeyPolicy(ctx, f.caller, &kmsapi.PutKeyPolicyRequest{KeyId: kmsapi.String(id), Policy: &doc}); err != nil {
			t.Fatal(err)
		}
	}
	c := matrixCaller(t, allowAll)
	alias := "alias/k1"
	for _, d := range []struct {
		name string
		call func() error
		deny bool
	}{
		{"encrypt-aliased-key", func() error {
			_, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &f.tagged.id, Plaintext: []byte("x")})
			return err
		}, true},
		{"decrypt-tagged-key", func() error {
			_, err := f.svc.Decrypt(ctx, c, &kmsapi.DecryptRequest{CiphertextBlob: tagged})
			return err
		}, true},
		{"generate-data-key-by-alias", func() error {
			_, err := f.svc.GenerateDataKey(ctx, c, &kmsapi.GenerateDataKeyRequest{KeyId: &alias, KeySpec: kmsapi.String("AES_256")})
			return err
		}, true},
		{"encrypt-key-without-alias", func() error {
			_, err := f.svc.Encrypt(ctx, c, &kmsapi.EncryptRequest{KeyId: &f.plain.id, Plaintext: []byte("x")})
			return err
		}, false},
		{"decrypt-untagged-key", func() error {
			_, err := f.svc.Decrypt(ctx, c, &kmsapi.DecryptRequest{CiphertextBlob: plain})
			return err
		}, false},
		{"generate-data-key-by-id", func() error {
			_, err := f.svc.GenerateDataKey(ctx, c, &kmsapi.GenerateDataKeyRequest{KeyId: &f.tagged.id, KeySpec: kmsapi.String("AES_256")})
			return err
		}, false},
	} {
		t.Run(d.name, func(t *testing.T) {
			err := d.call()
			if !d.deny {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantException(t, err, "AccessDeniedException")
			if msg := Exception(err).Message; !strings.Contains(msg, "with an explicit deny in a resource-based policy") {
				t.Errorf("message %q", msg)
			}
		})
	}
}

// rootEncrypt encrypts under the tagged key as the account root, whom no
// matrix policy denies Encrypt.
func (f *matrixFixture) rootEncrypt(ctx context.Context, ec map[string]string) ([]byte, error) {
	out, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: &f.tagged.id, Plaintext: []byte("x"), EncryptionContext: ec})
	if err != nil {
		return nil, err
	}
	return out.CiphertextBlob, nil
}
