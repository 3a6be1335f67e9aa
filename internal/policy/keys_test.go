package policy

import (
	"errors"
	"strings"
	"testing"
)

// withCondition is an identity policy with one condition block.
func withCondition(cond string) string {
	return `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:*","Resource":"*","Condition":` + cond + `}]}`
}

func TestReferences(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[
	  {"Effect":"Allow","Action":"kms:*","Resource":"arn:aws:kms:*:${aws:PrincipalAccount}:key/*",
	   "Condition":{"StringEquals":{"aws:ResourceTag/Env":"prod","kms:EncryptionContext:tenant":"${aws:PrincipalTag/tenant}"},
	                "ForAnyValue:StringLike":{"KMS:RESOURCEALIASES":"alias/app-*"},
	                "Null":{"kms:RequestAlias":"false"}}}]}`
	p, err := Parse(doc, IdentityPolicy)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		key  string
		want bool
	}{
		{"aws:ResourceTag/", true},
		{"aws:ResourceTag/Env", true},
		{"aws:resourcetag/env", true},
		{"aws:ResourceTag/other", false},
		{"aws:RequestTag/", false},
		{"kms:EncryptionContext:", true},
		{"kms:EncryptionContextKeys", false},
		{"aws:PrincipalTag/", true},
		{"aws:PrincipalAccount", true}, // a policy variable in Resource
		{"kms:ResourceAliases", true},
		{"kms:RequestAlias", true}, // Null reads the key too
		{"kms:KeySpec", false},
		{"aws:TagKeys", false},
	} {
		t.Run(c.key, func(t *testing.T) {
			if got := p.References(c.key); got != c.want {
				t.Errorf("References(%q) = %v, want %v", c.key, got, c.want)
			}
		})
	}
	t.Run("default-key-policy", func(t *testing.T) {
		p, err := Parse(DefaultKeyPolicy("111122223333"), KeyPolicy)
		if err != nil {
			t.Fatal(err)
		}
		if refs := p.ConditionKeyRefs(); len(refs) != 0 {
			t.Errorf("refs = %v, want none", refs)
		}
	})
	t.Run("nil-policy", func(t *testing.T) {
		if (*Policy)(nil).References("aws:ResourceTag/") {
			t.Error("a nil policy refers to a key")
		}
	})
}

func TestCheckConditionKeys(t *testing.T) {
	for _, c := range []struct {
		name, cond string
		bad        string // the key the error must name; "" when accepted
	}{
		{"resource-aliases", `{"ForAnyValue:StringEquals":{"kms:ResourceAliases":"alias/k1"}}`, ""},
		{"resource-tag", `{"StringEquals":{"aws:ResourceTag/env":"prod"}}`, ""},
		{"request-tag-case", `{"StringEquals":{"AWS:REQUESTTAG/env":"prod"}}`, ""},
		{"encryption-context", `{"StringEquals":{"kms:EncryptionContext:a:b":"c"}}`, ""},
		{"via-service", `{"StringEquals":{"kms:ViaService":"ec2.us-east-1.amazonaws.com"}}`, ""},
		{"pending-signing", `{"StringEquals":{"kms:SigningAlgorithm":"ECDSA_SHA_256"}}`, ""},
		{"pending-wrapping", `{"StringEquals":{"kms:WrappingKeySpec":"RSA_4096"}}`, ""},
		{"pending-attestation", `{"StringEquals":{"kms:RecipientAttestation:ImageSha384":"abc"}}`, ""},
		{"other-service", `{"StringEquals":{"s3:prefix":"home/"}}`, ""},
		{"never-set", `{"StringEquals":{"aws:SourceVpc":"vpc-1"}}`, ""},
		{"unknown-kms", `{"StringEquals":{"kms:KeyColour":"blue"}}`, "kms:KeyColour"},
		{"unknown-kms-variable", `{"StringEquals":{"kms:EncryptionContext:x":"${kms:Nope}"}}`, "kms:Nope"},
		{"unknown-aws", `{"Bool":{"aws:IsItFriday":"true"}}`, "aws:IsItFriday"},
		{"org-id", `{"StringEquals":{"aws:PrincipalOrgID":"o-123"}}`, "aws:PrincipalOrgID"},
		{"token-issue-time", `{"DateGreaterThan":{"aws:TokenIssueTime":"2024-01-01T00:00:00Z"}}`, "aws:TokenIssueTime"},
		{"bare-prefix", `{"StringEquals":{"aws:ResourceTag/":"x"}}`, "aws:ResourceTag/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, kind := range []Kind{IdentityPolicy, KeyPolicy} {
				doc := withCondition(c.cond)
				if kind == KeyPolicy {
					doc = strings.Replace(doc, `"Effect":"Deny",`, `"Effect":"Deny","Principal":"*",`, 1)
				}
				p, err := Parse(doc, kind)
				if err != nil {
					t.Fatalf("%v: Parse: %v", kind, err)
				}
				err = CheckConditionKeys(p)
				if c.bad == "" {
					if err != nil {
						t.Fatalf("%v: CheckConditionKeys: %v", kind, err)
					}
					continue
				}
				var pe *Error
				if !errors.As(err, &pe) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("%v: CheckConditionKeys = %v, want a malformed-policy error", kind, err)
				}
				if !strings.Contains(pe.Message, c.bad) {
					t.Errorf("%v: message %q does not name %s", kind, pe.Message, c.bad)
				}
			}
		})
	}
}

// TestConditionKeyTable keeps the table well-formed: unique names, and
// operations for every key kmsd sets.
func TestConditionKeyTable(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range ConditionKeys {
		lower := lowerASCII(k.Name)
		if seen[lower] {
			t.Errorf("%s listed twice", k.Name)
		}
		seen[lower] = true
		if (k.Avail == Filled || k.Avail == Pending) && len(k.Ops) == 0 {
			t.Errorf("%s: no operations", k.Name)
		}
		if got, ok := LookupConditionKey(k.Name + map[bool]string{true: "x", false: ""}[k.Prefix()]); !ok || got.Name != k.Name {
			t.Errorf("LookupConditionKey(%s) = %v, %v", k.Name, got, ok)
		}
	}
}
