package policy

import (
	"testing"
	"time"
)

// benchRequest is an Encrypt call as it reaches the hot path: a role
// session in the key's account with a two-pair encryption context.
func benchRequest() *Request {
	r := NewRequest(principals["app"], "kms:Encrypt", keyK)
	r.SetEncryptionContext(map[string]string{"purpose": "backup", "tenant": "t-42"})
	r.Set(KeySourceIP, "203.0.113.7")
	r.Set(KeyCurrentTime, "2024-06-01T12:00:00Z")
	r.Set(KeySecureTransport, "true")
	r.Set(KeyKeySpec, "SYMMETRIC_DEFAULT")
	r.Set(KeyKeyUsage, "ENCRYPT_DECRYPT")
	r.Set(KeyKeyOrigin, "AWS_KMS")
	return r
}

// BenchmarkEvaluate evaluates the five-statement key policy of
// testdata/policies.json ("ec-bench": root, administrators, an
// encryption-context-conditioned use statement, a kms:ViaService statement
// and a Null deny) for an allowed Encrypt.
func BenchmarkEvaluate(b *testing.B) {
	p := mustParse(b, string(library["ec-bench"]), KeyPolicy)
	r := benchRequest()
	if d := p.Evaluate(r); d != Allow {
		b.Fatalf("decision %v", d)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p.Evaluate(r)
	}
}

// BenchmarkDecide is the full KMS decision for the same call, with one
// identity policy attached to the role.
func BenchmarkDecide(b *testing.B) {
	kp := mustParse(b, string(library["ec-bench"]), KeyPolicy)
	ids := Identity{Policies: []*Policy{mustParse(b, string(library["iam-deny-outside-office"]), IdentityPolicy)}}
	r := benchRequest()
	if ok, reason := Decide(kp, ids, NoGrant, r); !ok {
		b.Fatalf("denied: %v", reason)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Decide(kp, ids, NoGrant, r)
	}
}

// BenchmarkParse compiles the same key policy (PutKeyPolicy, cache misses).
func BenchmarkParse(b *testing.B) {
	doc := string(library["ec-bench"])
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Parse(doc, KeyPolicy); err != nil {
			b.Fatal(err)
		}
	}
}

// TestEvaluateDoesNotAllocate guards the hot-path promise for every
// operator family but BinaryEquals (which decodes base64 per request).
func TestEvaluateDoesNotAllocate(t *testing.T) {
	p := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:role/App"},
		"Action":["kms:Decrypt","kms:Encrypt*"],"Resource":"arn:aws:kms:*:${aws:PrincipalAccount}:key/*","Condition":{
		"StringEquals":{"kms:EncryptionContext:purpose":"backup","kms:callerACCOUNT":"111122223333"},
		"StringEqualsIgnoreCase":{"kms:KeySpec":"symmetric_default"},
		"StringLike":{"kms:EncryptionContext:tenant":"t-*"},
		"StringNotEquals":{"kms:EncryptionContext:owner":"${aws:username}"},
		"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["purpose","tenant"]},
		"ForAnyValue:StringLike":{"kms:EncryptionContextKeys":"p*"},
		"NumericLessThan":{"kms:RotationPeriodInDays":"400"},
		"DateLessThan":{"aws:CurrentTime":"2030-01-01T00:00:00Z"},
		"DateGreaterThan":{"aws:EpochTime":"1700000000"},
		"Bool":{"aws:SecureTransport":"true"},
		"IpAddress":{"aws:SourceIp":["198.51.100.0/24","203.0.113.0/24"]},
		"ArnLike":{"aws:PrincipalArn":"arn:aws:iam::${aws:PrincipalAccount}:role/*"},
		"Null":{"kms:GranteePrincipal":"true"},
		"StringEqualsIfExists":{"kms:ViaService":"s3.us-east-1.amazonaws.com"}}}]}`, KeyPolicy)
	r := benchRequest()
	r.SetTime(time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC))
	r.SetInt(KeyRotationPeriodInDays, 365)
	if d := p.Evaluate(r); d != Allow {
		t.Fatalf("decision %v", d)
	}
	if n := testing.AllocsPerRun(100, func() { p.Evaluate(r) }); n != 0 {
		t.Errorf("Evaluate allocates %v times per run", n)
	}
}
