package seed

import (
	"strings"
	"testing"
)

const id1, id2 = "0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b", "1c8f5b4d-3a5f-4f9b-8e7c-2d3e4f5a6b7c"

var material = strings.Repeat("ab", 32)

func TestParse(t *testing.T) {
	cases := []struct {
		name, file, content string
		keys, aliases       int
		localKMS            bool
		check               func(t *testing.T, f *File)
	}{
		{"empty", "s.yaml", "", 0, 0, false, nil},
		{"native", "s.yaml", "Keys:\n  - KeyId: " + id1 + "\n    KeyMaterial: [" + material + ", " + material + "]\n    Region: eu-west-1\n    Enabled: false\nAliases:\n  - AliasName: alias/a\n    TargetKeyId: " + id1 + "\n", 1, 1, false,
			func(t *testing.T, f *File) {
				k := f.Keys[0]
				if k.Region != "eu-west-1" || k.Account != "111122223333" || !k.Disabled || len(k.Material) != 2 || k.Where != "seed file s.yaml:2" {
					t.Fatalf("key %+v", k)
				}
				if f.Aliases[0].Region != "us-east-1" || f.Aliases[0].Where != "seed file s.yaml:7" {
					t.Fatalf("alias %+v", f.Aliases[0])
				}
			}},
		{"local-kms", "s.yaml", "Keys:\n  Symmetric:\n    Aes:\n      - Metadata:\n          KeyId: " + id1 + "\n        BackingKeys: [" + material + "]\n        NextKeyRotation: \"2019-09-12T15:19:21+00:00\"\n    Hmac:\n      - Metadata:\n          KeyId: " + id2 + "\n        BackingKeys: [" + material + ", " + strings.Repeat("cd", 32) + "]\nAliases:\n  - AliasName: alias/testing\n    TargetKeyId: " + id1 + "\n", 2, 1, true,
			func(t *testing.T, f *File) {
				a, h := f.Keys[0], f.Keys[1]
				if !a.LocalKMS || a.KeySpec != "SYMMETRIC_DEFAULT" || a.RotationPeriodInDays != 365 || a.NextRotation == nil || a.NextRotation.Year() != 2019 {
					t.Fatalf("aes %+v", a)
				}
				if h.KeySpec != "HMAC_256" || h.KeyUsage != "GENERATE_VERIFY_MAC" || h.Material[1][0] != 0xab {
					t.Fatalf("hmac %+v", h)
				}
			}},
		{"local-kms secp256k1", "s.yaml", "Keys:\n  Asymmetric:\n    Ecc:\n      - Metadata:\n          KeyId: " + id1 + "\n          KeyUsage: SIGN_VERIFY\n        PrivateKeyHex: " + material + "\n", 1, 0, true,
			func(t *testing.T, f *File) {
				if k := f.Keys[0]; k.KeySpec != "ECC_SECG_P256K1" || len(k.Material[0]) != 32 {
					t.Fatalf("ecc %+v", k)
				}
			}},
		{"grants", "s.yaml", "Grants:\n  - KeyId: " + id1 + "\n    Name: app\n    GranteePrincipal: arn:aws:iam::111122223333:role/app\n    Operations: [Decrypt]\n    Constraints:\n      EncryptionContextEquals: {a: b}\n", 0, 0, false,
			func(t *testing.T, f *File) {
				if g := f.Grants; len(g) != 1 || g[0].Name != "app" || g[0].ECEquals["a"] != "b" || g[0].Operations[0] != "Decrypt" || g[0].Region != "us-east-1" {
					t.Fatalf("grants %+v", g)
				}
			}},
		{"identities", "s.yaml", "Users:\n  - UserName: alice\n    Policies: {p: '{}'}\n    AccessKeys: [{AccessKeyId: AKIAEXAMPLE00000001, SecretAccessKey: s3cret-s3cret}]\nRoles:\n  - RoleName: app\n    AssumeRolePolicyDocument: '{}'\n    MaxSessionDuration: 7200\n", 0, 0, false,
			func(t *testing.T, f *File) {
				if u := f.Users; len(u) != 1 || u[0].Name != "alice" || u[0].Account != "111122223333" || u[0].AccessKeys[0].Secret != "s3cret-s3cret" || u[0].Where != "seed file s.yaml:2" {
					t.Fatalf("users %+v", u)
				}
				if r := f.Roles; len(r) != 1 || r[0].Name != "app" || r[0].MaxSession != 7200 || r[0].Where != "seed file s.yaml:6" {
					t.Fatalf("roles %+v", r)
				}
			}},
		{"toml", "s.toml", "[[Keys]]\nKeyId = \"" + id1 + "\"\nKeyMaterial = [\"" + material + "\"]\n[[Aliases]]\nAliasName = \"alias/a\"\nTargetKeyId = \"" + id1 + "\"\n", 1, 1, false,
			func(t *testing.T, f *File) {
				if f.Keys[0].Where != "seed file s.toml: Keys[0]" {
					t.Fatalf("where %q", f.Keys[0].Where)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse(c.file, []byte(c.content), "111122223333", "us-east-1")
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Keys) != c.keys || len(f.Aliases) != c.aliases || f.LocalKMS != c.localKMS {
				t.Fatalf("%d keys, %d aliases, local-kms %v", len(f.Keys), len(f.Aliases), f.LocalKMS)
			}
			if c.check != nil {
				c.check(t, f)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ name, file, content, want string }{
		{"syntax", "s.yaml", "Keys:\n  - KeyId: x\n    Description: \"open\n", "s.yaml:3: found unexpected end of stream"},
		{"unknown top", "s.yaml", "Keys: []\nAliasses: []\n", `s.yaml:2: unknown field "Aliasses"`},
		{"unknown key field", "s.yaml", "Keys:\n  - KeyId: x\n    Spec: RSA_2048\n", `s.yaml:3: unknown field "Spec"`},
		{"type", "s.yaml", "Keys:\n  - KeyId: x\n    RotationPeriodInDays: often\n", "s.yaml:2: line 3: cannot unmarshal"},
		{"no key id", "s.yaml", "Keys:\n  - Description: x\n", "s.yaml:2: KeyId is required"},
		{"bad hex", "s.yaml", "Keys:\n  - KeyId: x\n    KeyMaterial: [zz]\n", "s.yaml:2: key x: KeyMaterial[0] is not hex"},
		{"bad pem", "s.yaml", "Keys:\n  - KeyId: x\n    PrivateKeyPem: nope\n", "s.yaml:2: key x: PrivateKeyPem: no PEM block"},
		{"alias without target", "s.yaml", "Aliases:\n  - AliasName: alias/a\n", "s.yaml:2: an alias needs AliasName and TargetKeyId"},
		{"local-kms v2", "s.yaml", "Version: 2\nKeys: []\n", "s.yaml:1: local-kms's seed format Version 2 is not supported"},
		{"local-kms no backing key", "s.yaml", "Keys:\n  Symmetric:\n    Aes:\n      - Metadata:\n          KeyId: x\n", "s.yaml:4: key x: at least one backing key"},
		{"local-kms external", "s.yaml", "Keys:\n  Symmetric:\n    Aes:\n      - Metadata:\n          KeyId: x\n          Origin: EXTERNAL\n", "s.yaml:4: key x: Origin EXTERNAL is not supported"},
		{"local-kms unknown group", "s.yaml", "Keys:\n  Symmetric:\n    Des: []\n", `s.yaml:3: unknown field "Des"`},
		{"grant without grantee", "s.yaml", "Grants:\n  - KeyId: x\n", "s.yaml:2: a grant needs KeyId and GranteePrincipal"},
		{"grant constraint field", "s.yaml", "Grants:\n  - KeyId: x\n    Constraints: {Equals: {}}\n", `s.yaml:3: unknown field "Equals"`},
		{"access key field", "s.yaml", "Users:\n  - UserName: a\n    AccessKeys: [{Id: x}]\n", `s.yaml:3: unknown field "Id"`},
		{"cluster module", "s.yaml", "Clusters:\n  - Name: c\n    Module: lib.so\n", "s.yaml:2: cluster cluster-"},
		{"cluster hsm field", "s.yaml", "Clusters:\n  - Name: c\n    Hsms: [{Label: x}]\n", `s.yaml:3: unknown field "Label"`},
		{"store without cluster", "s.yaml", "CustomKeyStores:\n  - CustomKeyStoreName: s\n", "s.yaml:2: custom key store s: give CloudHsmClusterId or ClusterName"},
		{"store cluster name", "s.yaml", "CustomKeyStores:\n  - CustomKeyStoreName: s\n    ClusterName: nope\n", `s.yaml:2: custom key store s: ClusterName "nope" is no cluster`},
		{"store inline password", "s.yaml", "CustomKeyStores:\n  - CustomKeyStoreName: s\n    CloudHsmClusterId: cluster-234567abcdefg\n    TrustAnchorCertificate: seed_test.go\n    KeyStorePassword: hunter2hunter2\n", "KeyStorePassword: want file:/path or env:NAME"},
		{"toml syntax", "s.toml", "[[Keys]]\nKeyId = \n", "s.toml:2"},
		{"toml unknown", "s.toml", "[[Keys]]\nKeyId = \"x\"\nSpec = \"y\"\n", "unknown field Keys.Spec"},
		// The YAML and TOML libraries quote the input they stopped at; an
		// anchor or bare key may be key material in the wrong place.
		{"yaml unknown anchor", "s.yaml", "Keys: *" + material + "\n", "s.yaml: unknown anchor a value referenced"},
		{"yaml unknown anchor unquoted", "s.yaml", "Keys:\n  - KeyId: x\n    KeyMaterial: [*" + material + "00]\n", "s.yaml: unknown anchor a value"},
		{"toml bare key", "s.toml", "[[Keys]]\n" + material + "~ = 1\n", "s.toml:2"},
		{"toml value", "s.toml", "[[Keys]]\nKeyId = " + material + "\n", "s.toml:2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.file, []byte(c.content), "111122223333", "us-east-1")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), material) {
				t.Fatalf("material in an error: %v", err)
			}
		})
	}
}

// FuzzParse: no seed file, however broken, panics the parser, and no
// error names key material.
func FuzzParse(f *testing.F) {
	f.Add("s.yaml", []byte("Keys:\n  - KeyId: "+id1+"\n    KeyMaterial: ["+material+"]\n"))
	f.Add("s.yaml", []byte("Keys:\n  Symmetric:\n    Aes:\n      - Metadata: {KeyId: "+id1+"}\n        BackingKeys: ["+material+"]\n"))
	f.Add("s.toml", []byte("[[Keys]]\nKeyId = \""+id1+"\"\n"))
	f.Add("s.yaml", []byte("Keys: [*"+material+"00]\n"))
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		_, err := Parse(name, b, "111122223333", "us-east-1")
		if err != nil && strings.Contains(err.Error(), material) {
			t.Fatalf("material in an error: %v", err)
		}
	})
}

// TestParseExternalKeyStore: an external key store entry and a key in it
// are read with the secret resolved from its reference; wrong entries are
// refused naming their line, never echoing the secret.
func TestParseExternalKeyStore(t *testing.T) {
	const secret = "PleaseReplaceThisWithSomeSecretOfLength43To64"
	t.Setenv("SEED_XKS_SECRET", secret)
	store := "CustomKeyStores:\n  - CustomKeyStoreName: x\n    CustomKeyStoreType: EXTERNAL_KEY_STORE\n    XksProxyUriEndpoint: https://127.0.0.1:8443\n    XksProxyUriPath: /kms/xks/v1\n    XksProxyConnectivity: PUBLIC_ENDPOINT\n    XksProxyAuthenticationCredential:\n      AccessKeyId: AKIDAAAAAAAAAAAAAAAAAAAA\n      RawSecretAccessKey: env:SEED_XKS_SECRET\n    Connect: true\n"
	key := "Keys:\n  - KeyId: " + id1 + "\n    Origin: EXTERNAL_KEY_STORE\n    CustomKeyStoreName: x\n    XksKeyId: k1\n"
	f, err := Parse("s.yaml", []byte(key+store), "111122223333", "us-east-1")
	if err != nil {
		t.Fatal(err)
	}
	st, k := f.KeyStores[0], f.Keys[0]
	if st.Type != "EXTERNAL_KEY_STORE" || st.XKS.Secret != secret || st.XKS.AccessKeyID != "AKIDAAAAAAAAAAAAAAAAAAAA" || st.XKS.Path != "/kms/xks/v1" || !st.Connect || st.Where != "seed file s.yaml:7" {
		t.Fatalf("store %+v", st)
	}
	if k.Origin != "EXTERNAL_KEY_STORE" || k.StoreName != "x" || k.XksKeyID != "k1" {
		t.Fatalf("key %+v", k)
	}
	for _, c := range []struct{ content, want string }{
		{key + strings.Replace(store, "env:SEED_XKS_SECRET", secret, 1), "s.yaml:7: custom key store x: XksProxyAuthenticationCredential.RawSecretAccessKey: want file:/path or env:NAME"},
		{key + strings.Replace(store, "      AccessKeyId:", "      SecretKey: "+secret+"\n      AccessKeyId:", 1), `s.yaml:13: unknown field "SecretKey"`},
		{key + strings.Replace(store, "    Connect: true\n", "", 1), "s.yaml:2: key " + id1 + ": custom key store x needs Connect: true"},
		{strings.Replace(key, "EXTERNAL_KEY_STORE", "AWS_CLOUDHSM", 1) + store, "s.yaml:2: key " + id1 + ": Origin AWS_CLOUDHSM does not go with custom key store x"},
		{key + strings.Replace(store, "    XksProxyUriPath: /kms/xks/v1\n", "", 1), "s.yaml:7: custom key store x: an external key store needs XksProxyUriEndpoint"},
	} {
		_, err := Parse("s.yaml", []byte(c.content), "111122223333", "us-east-1")
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), secret) {
			t.Errorf("%v, want %q", err, c.want)
		}
	}
}
