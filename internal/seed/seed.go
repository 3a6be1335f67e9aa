// Package seed reads kmsd's seed file (--seed), which declares resources
// kmsd makes sure exist at every start: keys with fixed key ids and, for
// tests, fixed key material, and aliases. Two layouts are read, in YAML
// or (kmsd's own only) TOML:
//
// kmsd's own, a list of keys and a list of aliases:
//
//	Keys:
//	  - KeyId: 0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b
//	    Description: orders
//	    KeySpec: SYMMETRIC_DEFAULT        # default
//	    KeyUsage: ENCRYPT_DECRYPT         # default for symmetric keys
//	    KeyMaterial: [<64 hex digits>, …] # optional; oldest first
//	    PrivateKeyPem: |                  # asymmetric keys, optional
//	    Policy: '{…}'                     # optional
//	    Tags: [{TagKey: team, TagValue: payments}]
//	    RotationPeriodInDays: 365         # optional: enables rotation
//	    Enabled: false                    # default true
//	    Account: "111122223333"           # default: --account-id
//	    Region: eu-west-1                 # default: --default-region
//	    Origin: EXTERNAL_KEY_STORE        # or AWS_CLOUDHSM: a key in a custom
//	    CustomKeyStoreName: ledger        # key store (or CustomKeyStoreId),
//	    XksKeyId: k1                      # made once the store is CONNECTED
//	CustomKeyStores:                      # see hsm(); external stores:
//	  - CustomKeyStoreName: ledger
//	    CustomKeyStoreType: EXTERNAL_KEY_STORE
//	    XksProxyUriEndpoint: https://xks.example.com
//	    XksProxyUriPath: /kms/xks/v1
//	    XksProxyConnectivity: PUBLIC_ENDPOINT
//	    XksProxyAuthenticationCredential: {AccessKeyId: AKID…, RawSecretAccessKey: env:NAME}
//	    Connect: true
//	Aliases:
//	  - AliasName: alias/orders
//	    TargetKeyId: 0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b
//	Grants:
//	  - KeyId: 0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b
//	    GranteePrincipal: arn:aws:iam::111122223333:role/app
//	    Operations: [Encrypt, Decrypt]
//	    Name: app                         # optional; also RetiringPrincipal,
//	    Constraints: {EncryptionContextSubset: {app: orders}}  # optional
//	Users:                                # IAM identities (verify mode)
//	  - UserName: alice
//	    Policies: {kms: '{"Version":"2012-10-17","Statement":[…]}'}
//	    AccessKeys: [{AccessKeyId: AKIA…, SecretAccessKey: …}]  # for tests
//	Roles:
//	  - RoleName: app
//	    AssumeRolePolicyDocument: '{…}'
//	    Policies: {…}
//
// and local-kms's (github.com/nsmithuk/local-kms, its README's "Seeding
// file format"), read as is: Keys: {Symmetric: {Aes, Hmac}, Asymmetric:
// {Rsa, Ecc}}, each entry with Metadata {KeyId, Description, KeyUsage,
// KeySpec} and BackingKeys (hex), PrivateKeyPem or PrivateKeyHex, plus
// Aliases. Keys from a local-kms file also decrypt ciphertexts local-kms
// made with their backing keys (kms.SeedKey.LocalKMS).
//
// Load checks the file's syntax and fields and decodes the material;
// kms.Service.Seed checks the rest and applies it all or nothing. Errors
// name the file and line.
package seed

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"go.yaml.in/yaml/v3"
)

// File is a seed file read and checked.
type File struct {
	Keys    []kms.SeedKey
	Aliases []kms.SeedAlias
	Grants  []kms.SeedGrant
	// Users and Roles are IAM identities, used in verify mode.
	Users []identity.SeedUser
	Roles []identity.SeedRole
	// Clusters are HSM clusters over existing PKCS#11 tokens, declared
	// as --hsm-config declares them; KeyStores CloudHSM key stores.
	Clusters  []hsm.Declaration
	KeyStores []kms.SeedKeyStore
	// LocalKMS says the file is in local-kms's layout.
	LocalKMS bool
}

// Load reads the seed file at path (TOML if it ends in .toml, else
// YAML); account and region are those of resources that name none.
func Load(path, account, region string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seed file: %w", err)
	}
	return Parse(path, b, account, region)
}

// Parse reads the seed file named name (for messages and its extension)
// whose content is b.
func Parse(name string, b []byte, account, region string) (*File, error) {
	l := &loader{file: name, account: account, region: region}
	var err error
	if strings.EqualFold(filepath.Ext(name), ".toml") {
		err = l.toml(b)
	} else {
		err = l.yaml(b)
	}
	if err != nil {
		return nil, err
	}
	return &l.out, nil
}

type loader struct {
	file            string
	account, region string
	out             File
}

func (l *loader) errorf(line int, format string, args ...any) error {
	if line > 0 {
		return fmt.Errorf("seed file %s:%d: %s", l.file, line, fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("seed file %s: %s", l.file, fmt.Sprintf(format, args...))
}

func (l *loader) where(line int) string { return fmt.Sprintf("seed file %s:%d", l.file, line) }

// nativeKey is a key of kmsd's own layout.
type nativeKey struct {
	KeyId                string   `yaml:"KeyId" toml:"KeyId"`
	Account              string   `yaml:"Account" toml:"Account"`
	Region               string   `yaml:"Region" toml:"Region"`
	Description          string   `yaml:"Description" toml:"Description"`
	KeySpec              string   `yaml:"KeySpec" toml:"KeySpec"`
	KeyUsage             string   `yaml:"KeyUsage" toml:"KeyUsage"`
	Policy               string   `yaml:"Policy" toml:"Policy"`
	Tags                 []tag    `yaml:"Tags" toml:"Tags"`
	Enabled              *bool    `yaml:"Enabled" toml:"Enabled"`
	RotationPeriodInDays int32    `yaml:"RotationPeriodInDays" toml:"RotationPeriodInDays"`
	KeyMaterial          []string `yaml:"KeyMaterial" toml:"KeyMaterial"`
	PrivateKeyPem        string   `yaml:"PrivateKeyPem" toml:"PrivateKeyPem"`
	Origin               string   `yaml:"Origin" toml:"Origin"`
	CustomKeyStoreName   string   `yaml:"CustomKeyStoreName" toml:"CustomKeyStoreName"`
	CustomKeyStoreId     string   `yaml:"CustomKeyStoreId" toml:"CustomKeyStoreId"`
	XksKeyId             string   `yaml:"XksKeyId" toml:"XksKeyId"`
}

type tag struct {
	TagKey   string `yaml:"TagKey" toml:"TagKey"`
	TagValue string `yaml:"TagValue" toml:"TagValue"`
}

type grant struct {
	KeyId             string   `yaml:"KeyId" toml:"KeyId"`
	Name              string   `yaml:"Name" toml:"Name"`
	GranteePrincipal  string   `yaml:"GranteePrincipal" toml:"GranteePrincipal"`
	RetiringPrincipal string   `yaml:"RetiringPrincipal" toml:"RetiringPrincipal"`
	Operations        []string `yaml:"Operations" toml:"Operations"`
	Constraints       *struct {
		EncryptionContextEquals map[string]string `yaml:"EncryptionContextEquals" toml:"EncryptionContextEquals"`
		EncryptionContextSubset map[string]string `yaml:"EncryptionContextSubset" toml:"EncryptionContextSubset"`
	} `yaml:"Constraints" toml:"Constraints"`
	Account string `yaml:"Account" toml:"Account"`
	Region  string `yaml:"Region" toml:"Region"`
}

type user struct {
	UserName   string            `yaml:"UserName" toml:"UserName"`
	Path       string            `yaml:"Path" toml:"Path"`
	Policies   map[string]string `yaml:"Policies" toml:"Policies"`
	AccessKeys []struct {
		AccessKeyId     string `yaml:"AccessKeyId" toml:"AccessKeyId"`
		SecretAccessKey string `yaml:"SecretAccessKey" toml:"SecretAccessKey"`
	} `yaml:"AccessKeys" toml:"AccessKeys"`
	Account string `yaml:"Account" toml:"Account"`
}

type role struct {
	RoleName                 string            `yaml:"RoleName" toml:"RoleName"`
	Path                     string            `yaml:"Path" toml:"Path"`
	AssumeRolePolicyDocument string            `yaml:"AssumeRolePolicyDocument" toml:"AssumeRolePolicyDocument"`
	Description              string            `yaml:"Description" toml:"Description"`
	MaxSessionDuration       int32             `yaml:"MaxSessionDuration" toml:"MaxSessionDuration"`
	Policies                 map[string]string `yaml:"Policies" toml:"Policies"`
	Account                  string            `yaml:"Account" toml:"Account"`
}

type cluster struct {
	ClusterId     string `yaml:"ClusterId" toml:"ClusterId"`
	Name          string `yaml:"Name" toml:"Name"`
	Account       string `yaml:"Account" toml:"Account"`
	Region        string `yaml:"Region" toml:"Region"`
	HsmType       string `yaml:"HsmType" toml:"HsmType"`
	Module        string `yaml:"Module" toml:"Module"`
	SoPin         string `yaml:"SoPin" toml:"SoPin"`
	CryptoUser    string `yaml:"CryptoUser" toml:"CryptoUser"`
	CryptoUserPin string `yaml:"CryptoUserPin" toml:"CryptoUserPin"`
	TrustAnchor   string `yaml:"TrustAnchor" toml:"TrustAnchor"`
	Hsms          []struct {
		Token            string `yaml:"Token" toml:"Token"`
		AvailabilityZone string `yaml:"AvailabilityZone" toml:"AvailabilityZone"`
	} `yaml:"Hsms" toml:"Hsms"`
}

type keyStore struct {
	CustomKeyStoreName     string `yaml:"CustomKeyStoreName" toml:"CustomKeyStoreName"`
	CloudHsmClusterId      string `yaml:"CloudHsmClusterId" toml:"CloudHsmClusterId"`
	ClusterName            string `yaml:"ClusterName" toml:"ClusterName"`
	TrustAnchorCertificate string `yaml:"TrustAnchorCertificate" toml:"TrustAnchorCertificate"`
	KeyStorePassword       string `yaml:"KeyStorePassword" toml:"KeyStorePassword"`
	CustomKeyStoreType     string `yaml:"CustomKeyStoreType" toml:"CustomKeyStoreType"`
	XksProxyUriEndpoint    string `yaml:"XksProxyUriEndpoint" toml:"XksProxyUriEndpoint"`
	XksProxyUriPath        string `yaml:"XksProxyUriPath" toml:"XksProxyUriPath"`
	XksProxyConnectivity   string `yaml:"XksProxyConnectivity" toml:"XksProxyConnectivity"`
	// XksProxyVpcEndpointServiceName is named as --xks-vpc-endpoint-services
	// maps it.
	XksProxyVpcEndpointServiceName   string `yaml:"XksProxyVpcEndpointServiceName" toml:"XksProxyVpcEndpointServiceName"`
	XksProxyAuthenticationCredential *struct {
		AccessKeyId        string `yaml:"AccessKeyId" toml:"AccessKeyId"`
		RawSecretAccessKey string `yaml:"RawSecretAccessKey" toml:"RawSecretAccessKey"`
	} `yaml:"XksProxyAuthenticationCredential" toml:"XksProxyAuthenticationCredential"`
	Connect bool   `yaml:"Connect" toml:"Connect"`
	Account string `yaml:"Account" toml:"Account"`
	Region  string `yaml:"Region" toml:"Region"`
}

type alias struct {
	AliasName   string `yaml:"AliasName" toml:"AliasName"`
	TargetKeyId string `yaml:"TargetKeyId" toml:"TargetKeyId"`
	Account     string `yaml:"Account" toml:"Account"`
	Region      string `yaml:"Region" toml:"Region"`
}

// localKey is a key of local-kms's layout (its cmk.AesKey, RsaKey, …).
type localKey struct {
	Metadata struct {
		KeyId       string `yaml:"KeyId"`
		Description string `yaml:"Description"`
		KeyUsage    string `yaml:"KeyUsage"`
		KeySpec     string `yaml:"KeySpec"`
		Origin      string `yaml:"Origin"`
		Enabled     *bool  `yaml:"Enabled"`
	} `yaml:"Metadata"`
	BackingKeys     []string   `yaml:"BackingKeys"`
	NextKeyRotation *time.Time `yaml:"NextKeyRotation"`
	PrivateKeyPem   string     `yaml:"PrivateKeyPem"`
	PrivateKeyHex   string     `yaml:"PrivateKeyHex"`
}

var (
	nativeTop     = []string{"Keys", "Aliases", "Grants", "Users", "Roles", "Clusters", "CustomKeyStores"}
	clusterFields = []string{"ClusterId", "Name", "Account", "Region", "HsmType", "Module", "SoPin", "CryptoUser", "CryptoUserPin", "TrustAnchor", "Hsms"}
	hsmFields     = []string{"Token", "AvailabilityZone"}
	storeFields   = []string{"CustomKeyStoreName", "CustomKeyStoreType", "CloudHsmClusterId", "ClusterName", "TrustAnchorCertificate", "KeyStorePassword",
		"XksProxyUriEndpoint", "XksProxyUriPath", "XksProxyConnectivity", "XksProxyVpcEndpointServiceName", "XksProxyAuthenticationCredential", "Connect", "Account", "Region"}
	credFields   = []string{"AccessKeyId", "RawSecretAccessKey"}
	userFields   = []string{"UserName", "Path", "Policies", "AccessKeys", "Account"}
	keyFields    = []string{"AccessKeyId", "SecretAccessKey"}
	roleFields   = []string{"RoleName", "Path", "AssumeRolePolicyDocument", "Description", "MaxSessionDuration", "Policies", "Account"}
	grantFields  = []string{"KeyId", "Name", "GranteePrincipal", "RetiringPrincipal", "Operations", "Constraints", "Account", "Region"}
	constraints  = []string{"EncryptionContextEquals", "EncryptionContextSubset"}
	nativeFields = []string{"KeyId", "Account", "Region", "Description", "KeySpec", "KeyUsage", "Policy", "Tags", "Enabled", "RotationPeriodInDays", "KeyMaterial", "PrivateKeyPem",
		"Origin", "CustomKeyStoreName", "CustomKeyStoreId", "XksKeyId"}
	tagFields    = []string{"TagKey", "TagValue"}
	aliasFields  = []string{"AliasName", "TargetKeyId", "Account", "Region"}
	localGroups  = map[string][]string{"Symmetric": {"Aes", "Hmac"}, "Asymmetric": {"Rsa", "Ecc"}}
	localFields  = []string{"Metadata", "BackingKeys", "NextKeyRotation", "PrivateKeyPem", "PrivateKeyHex"}
	localMeta    = []string{"KeyId", "Description", "KeyUsage", "KeySpec", "Origin", "Enabled"}
	localAliases = []string{"AliasName", "TargetKeyId"}
)

func (l *loader) yaml(b []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		var line int
		if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
			return l.errorf(line, "%s", sanitize(strings.TrimSpace(msg[strings.Index(msg, ":")+1:])))
		}
		return l.errorf(0, "%s", sanitize(msg))
	}
	if len(doc.Content) == 0 {
		return nil // an empty file declares nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return l.errorf(root.Line, "want a mapping with Keys and Aliases")
	}
	if err := l.fields(root, append(nativeTop, "Version")); err != nil {
		return err
	}
	if v := value(root, "Version"); v != nil {
		return l.errorf(v.Line, "local-kms's seed format Version %s is not supported; use its documented layout (Keys: Symmetric/Asymmetric)", strings.Trim(fieldName(v.Value), `"`))
	}
	keysNode := value(root, "Keys")
	l.out.LocalKMS = keysNode != nil && keysNode.Kind == yaml.MappingNode
	if keysNode != nil && keysNode.Kind != yaml.MappingNode && !isNull(keysNode) {
		if keysNode.Kind != yaml.SequenceNode {
			return l.errorf(keysNode.Line, "Keys: want a list of keys (or local-kms's Symmetric/Asymmetric mapping)")
		}
		for _, n := range keysNode.Content {
			if err := l.nativeYAML(n); err != nil {
				return err
			}
		}
	}
	if l.out.LocalKMS {
		if err := l.localYAML(keysNode); err != nil {
			return err
		}
	}
	if gn := value(root, "Grants"); gn != nil && !isNull(gn) {
		if gn.Kind != yaml.SequenceNode {
			return l.errorf(gn.Line, "Grants: want a list of grants")
		}
		for _, n := range gn.Content {
			if err := l.fields(n, grantFields); err != nil {
				return err
			}
			if c := value(n, "Constraints"); c != nil {
				if err := l.fields(c, constraints); err != nil {
					return err
				}
			}
			var g grant
			if err := n.Decode(&g); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			if err := l.grant(g, n.Line); err != nil {
				return err
			}
		}
	}
	if un := value(root, "Users"); un != nil && !isNull(un) {
		if un.Kind != yaml.SequenceNode {
			return l.errorf(un.Line, "Users: want a list of users")
		}
		for _, n := range un.Content {
			if err := l.fields(n, userFields); err != nil {
				return err
			}
			if ks := value(n, "AccessKeys"); ks != nil && ks.Kind == yaml.SequenceNode {
				for _, k := range ks.Content {
					if err := l.fields(k, keyFields); err != nil {
						return err
					}
				}
			}
			var u user
			if err := n.Decode(&u); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			l.user(u, n.Line)
		}
	}
	if rn := value(root, "Roles"); rn != nil && !isNull(rn) {
		if rn.Kind != yaml.SequenceNode {
			return l.errorf(rn.Line, "Roles: want a list of roles")
		}
		for _, n := range rn.Content {
			if err := l.fields(n, roleFields); err != nil {
				return err
			}
			var r role
			if err := n.Decode(&r); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			l.role(r, n.Line)
		}
	}
	var clusters []cluster
	var clusterLines []int
	if cn := value(root, "Clusters"); cn != nil && !isNull(cn) {
		if cn.Kind != yaml.SequenceNode {
			return l.errorf(cn.Line, "Clusters: want a list of clusters")
		}
		for _, n := range cn.Content {
			if err := l.fields(n, clusterFields); err != nil {
				return err
			}
			if hs := value(n, "Hsms"); hs != nil && hs.Kind == yaml.SequenceNode {
				for _, h := range hs.Content {
					if err := l.fields(h, hsmFields); err != nil {
						return err
					}
				}
			}
			var c cluster
			if err := n.Decode(&c); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			clusters, clusterLines = append(clusters, c), append(clusterLines, n.Line)
		}
	}
	var stores []keyStore
	var storeLines []int
	if sn := value(root, "CustomKeyStores"); sn != nil && !isNull(sn) {
		if sn.Kind != yaml.SequenceNode {
			return l.errorf(sn.Line, "CustomKeyStores: want a list of custom key stores")
		}
		for _, n := range sn.Content {
			if err := l.fields(n, storeFields); err != nil {
				return err
			}
			if c := value(n, "XksProxyAuthenticationCredential"); c != nil {
				if err := l.fields(c, credFields); err != nil {
					return err
				}
			}
			var ks keyStore
			if err := n.Decode(&ks); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			stores, storeLines = append(stores, ks), append(storeLines, n.Line)
		}
	}
	if err := l.hsm(clusters, clusterLines, stores, storeLines); err != nil {
		return err
	}
	if err := l.storeKeys(); err != nil {
		return err
	}
	if an := value(root, "Aliases"); an != nil && !isNull(an) {
		if an.Kind != yaml.SequenceNode {
			return l.errorf(an.Line, "Aliases: want a list of aliases")
		}
		allowed := aliasFields
		if l.out.LocalKMS {
			allowed = localAliases
		}
		for _, n := range an.Content {
			if err := l.fields(n, allowed); err != nil {
				return err
			}
			var a alias
			if err := n.Decode(&a); err != nil {
				return l.errorf(n.Line, "%s", decodeMessage(err))
			}
			if err := l.alias(a, n.Line); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *loader) nativeYAML(n *yaml.Node) error {
	if err := l.fields(n, nativeFields); err != nil {
		return err
	}
	if t := value(n, "Tags"); t != nil && t.Kind == yaml.SequenceNode {
		for _, e := range t.Content {
			if err := l.fields(e, tagFields); err != nil {
				return err
			}
		}
	}
	var k nativeKey
	if err := n.Decode(&k); err != nil {
		return l.errorf(n.Line, "%s", decodeMessage(err))
	}
	return l.native(k, n.Line)
}

func (l *loader) native(k nativeKey, line int) error {
	sk := kms.SeedKey{
		Where: l.where(line), Account: or(k.Account, l.account), Region: or(k.Region, l.region),
		ID: k.KeyId, Description: k.Description, KeySpec: k.KeySpec, KeyUsage: k.KeyUsage,
		Policy: k.Policy, Disabled: k.Enabled != nil && !*k.Enabled, RotationPeriodInDays: k.RotationPeriodInDays,
		Origin: k.Origin, StoreName: k.CustomKeyStoreName, StoreID: k.CustomKeyStoreId, XksKeyID: k.XksKeyId,
	}
	if k.KeyId == "" {
		return l.errorf(line, "KeyId is required")
	}
	for _, t := range k.Tags {
		sk.Tags = append(sk.Tags, catalog.Tag{Key: t.TagKey, Value: t.TagValue})
	}
	if len(k.KeyMaterial) > 0 && k.PrivateKeyPem != "" {
		return l.errorf(line, "key %s: KeyMaterial and PrivateKeyPem do not go together", k.KeyId)
	}
	for i, m := range k.KeyMaterial {
		b, err := hex.DecodeString(m)
		if err != nil {
			return l.errorf(line, "key %s: KeyMaterial[%d] is not hex", k.KeyId, i)
		}
		sk.Material = append(sk.Material, b)
	}
	if k.PrivateKeyPem != "" {
		der, spec, err := privateKey(k.PrivateKeyPem)
		if err != nil {
			return l.errorf(line, "key %s: PrivateKeyPem: %v", k.KeyId, err)
		}
		if sk.KeySpec == "" {
			sk.KeySpec = spec
		}
		sk.Material = [][]byte{der}
	}
	l.out.Keys = append(l.out.Keys, sk)
	return nil
}

func (l *loader) grant(g grant, line int) error {
	if g.KeyId == "" || g.GranteePrincipal == "" {
		return l.errorf(line, "a grant needs KeyId and GranteePrincipal")
	}
	sg := kms.SeedGrant{
		Where: l.where(line), Account: or(g.Account, l.account), Region: or(g.Region, l.region),
		KeyID: g.KeyId, Name: g.Name, GranteePrincipal: g.GranteePrincipal, RetiringPrincipal: g.RetiringPrincipal,
		Operations: g.Operations,
	}
	if g.Constraints != nil {
		sg.ECEquals, sg.ECSubset = g.Constraints.EncryptionContextEquals, g.Constraints.EncryptionContextSubset
	}
	l.out.Grants = append(l.out.Grants, sg)
	return nil
}

// hsm reads the declared clusters (checked as --hsm-config's are) and
// key stores, whose cluster is one of them by name or any by id, and
// resolves the stores' passwords from their references.
func (l *loader) hsm(cs []cluster, cLines []int, ks []keyStore, kLines []int) error {
	for i, c := range cs {
		d := hsm.Declaration{ID: c.ClusterId, Name: c.Name, Account: or(c.Account, l.account), Region: or(c.Region, l.region),
			HsmType: c.HsmType, Module: c.Module, CryptoUser: c.CryptoUser, SOPIN: hsm.Secret(c.SoPin), UserPIN: hsm.Secret(c.CryptoUserPin)}
		for _, h := range c.Hsms {
			d.HSMs = append(d.HSMs, hsm.DeclaredHSM{Token: h.Token, AvailabilityZone: h.AvailabilityZone})
		}
		if c.TrustAnchor != "" {
			b, err := os.ReadFile(c.TrustAnchor)
			if err != nil {
				return l.errorf(cLines[i], "cluster %s: TrustAnchor: %v", or(c.Name, c.ClusterId), err)
			}
			d.TrustAnchor = string(b)
		}
		ds := []hsm.Declaration{d} // ValidateDeclarations fills defaults in place
		if err := hsm.ValidateDeclarations(ds); err != nil {
			return l.errorf(cLines[i], "%v", err)
		}
		l.out.Clusters = append(l.out.Clusters, ds[0])
	}
	if err := hsm.ValidateDeclarations(slices.Clone(l.out.Clusters)); err != nil {
		return l.errorf(0, "Clusters: %v", err)
	}
	for i, k := range ks {
		st := kms.SeedKeyStore{Where: l.where(kLines[i]), Account: or(k.Account, l.account), Region: or(k.Region, l.region),
			Name: k.CustomKeyStoreName, ClusterID: k.CloudHsmClusterId, Connect: k.Connect}
		if st.Name == "" {
			return l.errorf(kLines[i], "a custom key store needs CustomKeyStoreName")
		}
		switch k.CustomKeyStoreType {
		case "", "AWS_CLOUDHSM":
			if k.XksProxyUriEndpoint != "" || k.XksProxyUriPath != "" || k.XksProxyConnectivity != "" || k.XksProxyVpcEndpointServiceName != "" || k.XksProxyAuthenticationCredential != nil {
				return l.errorf(kLines[i], "custom key store %s: XksProxy* parameters are not valid for a custom key store of type AWS_CLOUDHSM", st.Name)
			}
		case "EXTERNAL_KEY_STORE":
			if err := l.external(&st, k); err != nil {
				return l.errorf(kLines[i], "custom key store %s: %v", st.Name, err)
			}
			l.out.KeyStores = append(l.out.KeyStores, st)
			continue
		default:
			return l.errorf(kLines[i], "custom key store %s: CustomKeyStoreType must be AWS_CLOUDHSM or EXTERNAL_KEY_STORE", st.Name)
		}
		if k.ClusterName != "" {
			for _, d := range l.out.Clusters {
				if d.Name == k.ClusterName {
					st.ClusterID, st.TrustAnchor = d.ID, d.TrustAnchor
				}
			}
			if st.ClusterID == "" {
				return l.errorf(kLines[i], "custom key store %s: ClusterName %q is no cluster of the seed file", st.Name, k.ClusterName)
			}
		}
		if st.ClusterID == "" {
			return l.errorf(kLines[i], "custom key store %s: give CloudHsmClusterId or ClusterName", st.Name)
		}
		if k.TrustAnchorCertificate != "" {
			b, err := os.ReadFile(k.TrustAnchorCertificate)
			if err != nil {
				return l.errorf(kLines[i], "custom key store %s: TrustAnchorCertificate: %v", st.Name, err)
			}
			st.TrustAnchor = string(b)
		}
		if st.TrustAnchor == "" {
			return l.errorf(kLines[i], "custom key store %s: TrustAnchorCertificate is required (or the cluster's TrustAnchor)", st.Name)
		}
		pw, err := hsm.Secret(k.KeyStorePassword).Resolve()
		if err != nil {
			return l.errorf(kLines[i], "custom key store %s: KeyStorePassword: %v", st.Name, err)
		}
		st.Password = pw
		l.out.KeyStores = append(l.out.KeyStores, st)
	}
	return nil
}

// external reads an external key store's proxy parameters, its
// credential's secret from its reference (file:/path or env:NAME).
// CreateCustomKeyStore's rules are applied by kms.CheckSeedKeyStores.
func (l *loader) external(st *kms.SeedKeyStore, k keyStore) error {
	if k.CloudHsmClusterId != "" || k.ClusterName != "" || k.TrustAnchorCertificate != "" || k.KeyStorePassword != "" {
		return errors.New("CloudHsmClusterId, ClusterName, TrustAnchorCertificate and KeyStorePassword are not valid for a custom key store of type EXTERNAL_KEY_STORE")
	}
	if k.XksProxyUriEndpoint == "" || k.XksProxyUriPath == "" || k.XksProxyConnectivity == "" || k.XksProxyAuthenticationCredential == nil {
		return errors.New("an external key store needs XksProxyUriEndpoint, XksProxyUriPath, XksProxyConnectivity and XksProxyAuthenticationCredential")
	}
	cr := k.XksProxyAuthenticationCredential
	if cr.AccessKeyId == "" || cr.RawSecretAccessKey == "" {
		return errors.New("XksProxyAuthenticationCredential needs AccessKeyId and RawSecretAccessKey")
	}
	secret, err := hsm.Secret(cr.RawSecretAccessKey).Resolve()
	if err != nil {
		return fmt.Errorf("XksProxyAuthenticationCredential.RawSecretAccessKey: %v", err)
	}
	st.Type = "EXTERNAL_KEY_STORE"
	st.XKS = kms.SeedXKS{Endpoint: k.XksProxyUriEndpoint, Path: k.XksProxyUriPath, Connectivity: k.XksProxyConnectivity,
		VpcServiceName: k.XksProxyVpcEndpointServiceName, AccessKeyID: cr.AccessKeyId, Secret: secret}
	return nil
}

// storeKeys checks that a key in a custom key store the file declares is
// in one marked Connect (CreateKey needs it CONNECTED) and, for an
// external store's key, that the store is external.
func (l *loader) storeKeys() error {
	for _, k := range l.out.Keys {
		if k.StoreName == "" {
			continue
		}
		for _, st := range l.out.KeyStores {
			if st.Name != k.StoreName || st.Account != k.Account || st.Region != k.Region {
				continue
			}
			if !st.Connect {
				return fmt.Errorf("%s: key %s: custom key store %s needs Connect: true (keys are made in a CONNECTED store)", k.Where, k.ID, st.Name)
			}
			if ext := st.Type == "EXTERNAL_KEY_STORE"; ext != (k.Origin == "EXTERNAL_KEY_STORE") {
				return fmt.Errorf("%s: key %s: Origin %s does not go with custom key store %s", k.Where, k.ID, or(k.Origin, "AWS_KMS"), st.Name)
			}
		}
	}
	return nil
}

func (l *loader) user(u user, line int) {
	su := identity.SeedUser{Where: l.where(line), Account: or(u.Account, l.account), Name: u.UserName, Path: u.Path, Policies: u.Policies}
	for _, k := range u.AccessKeys {
		su.AccessKeys = append(su.AccessKeys, identity.SeedAccessKey{ID: k.AccessKeyId, Secret: k.SecretAccessKey})
	}
	l.out.Users = append(l.out.Users, su)
}

func (l *loader) role(r role, line int) {
	l.out.Roles = append(l.out.Roles, identity.SeedRole{
		Where: l.where(line), Account: or(r.Account, l.account), Name: r.RoleName, Path: r.Path,
		AssumeRolePolicy: r.AssumeRolePolicyDocument, Description: r.Description, MaxSession: r.MaxSessionDuration, Policies: r.Policies,
	})
}

func (l *loader) alias(a alias, line int) error {
	if a.AliasName == "" || a.TargetKeyId == "" {
		return l.errorf(line, "an alias needs AliasName and TargetKeyId")
	}
	l.out.Aliases = append(l.out.Aliases, kms.SeedAlias{
		Where: l.where(line), Account: or(a.Account, l.account), Region: or(a.Region, l.region),
		Name: a.AliasName, TargetKeyID: a.TargetKeyId,
	})
	return nil
}

// localYAML reads local-kms's Keys mapping.
func (l *loader) localYAML(keysNode *yaml.Node) error {
	if err := l.fields(keysNode, []string{"Symmetric", "Asymmetric"}); err != nil {
		return err
	}
	for _, group := range []string{"Symmetric", "Asymmetric"} {
		g := value(keysNode, group)
		if g == nil || isNull(g) {
			continue
		}
		if err := l.fields(g, localGroups[group]); err != nil {
			return err
		}
		for _, kind := range localGroups[group] {
			list := value(g, kind)
			if list == nil || isNull(list) {
				continue
			}
			if list.Kind != yaml.SequenceNode {
				return l.errorf(list.Line, "%s: want a list of keys", kind)
			}
			for _, n := range list.Content {
				if err := l.fields(n, localFields); err != nil {
					return err
				}
				if m := value(n, "Metadata"); m != nil {
					if err := l.fields(m, localMeta); err != nil {
						return err
					}
				}
				var k localKey
				if err := n.Decode(&k); err != nil {
					return l.errorf(n.Line, "%s", decodeMessage(err))
				}
				if err := l.local(kind, k, n.Line); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// local turns one local-kms key into a SeedKey as local-kms would make
// it: AES keys are SYMMETRIC_DEFAULT with their BackingKeys as versions
// (the last current), NextKeyRotation enables yearly rotation, RSA and
// ECC keys take their spec from the private key.
func (l *loader) local(kind string, k localKey, line int) error {
	md := k.Metadata
	if md.KeyId == "" {
		return l.errorf(line, "Metadata.KeyId is required")
	}
	if md.Origin != "" && md.Origin != "AWS_KMS" {
		return l.errorf(line, "key %s: Origin %s is not supported in kmsd's seed files", md.KeyId, md.Origin)
	}
	sk := kms.SeedKey{
		Where: l.where(line), Account: l.account, Region: l.region, ID: md.KeyId,
		Description: md.Description, KeyUsage: md.KeyUsage, KeySpec: md.KeySpec, LocalKMS: true,
	}
	switch kind {
	case "Aes", "Hmac":
		if len(k.BackingKeys) == 0 {
			return l.errorf(line, "key %s: at least one backing key must be supplied", md.KeyId)
		}
		for i, s := range k.BackingKeys {
			b, err := hex.DecodeString(s)
			if err != nil {
				return l.errorf(line, "key %s: BackingKeys[%d] is not hex", md.KeyId, i)
			}
			sk.Material = append(sk.Material, b)
		}
		if kind == "Aes" {
			if sk.KeySpec == "" {
				sk.KeySpec = "SYMMETRIC_DEFAULT"
			}
			if k.NextKeyRotation != nil {
				sk.RotationPeriodInDays, sk.NextRotation = 365, k.NextKeyRotation
			}
		} else {
			// local-kms makes MACs with an HMAC key's first backing key
			// (its src/cmk/hmac_key.go), so that one is current here.
			slices.Reverse(sk.Material)
			if sk.KeySpec == "" {
				sk.KeySpec = "HMAC_256" // local-kms's default size
			}
			if sk.KeyUsage == "" {
				sk.KeyUsage = "GENERATE_VERIFY_MAC"
			}
		}
	case "Rsa", "Ecc":
		switch {
		case k.PrivateKeyPem != "":
			der, spec, err := privateKey(k.PrivateKeyPem)
			if err != nil {
				return l.errorf(line, "key %s: PrivateKeyPem: %v", md.KeyId, err)
			}
			sk.KeySpec, sk.Material = spec, [][]byte{der}
		case k.PrivateKeyHex != "" && kind == "Ecc":
			b, err := hex.DecodeString(strings.TrimPrefix(k.PrivateKeyHex, "0x"))
			if err != nil || len(b) != 32 {
				return l.errorf(line, "key %s: PrivateKeyHex: want the 32-byte secp256k1 private key in hex", md.KeyId)
			}
			sk.KeySpec, sk.Material = "ECC_SECG_P256K1", [][]byte{b}
		default:
			return l.errorf(line, "key %s: PrivateKeyPem is required", md.KeyId)
		}
		if sk.KeyUsage == "" {
			sk.KeyUsage = "SIGN_VERIFY"
		}
	}
	l.out.Keys = append(l.out.Keys, sk)
	return nil
}

// tomlFile is kmsd's own layout in TOML: [[Keys]] and [[Aliases]] tables.
type tomlFile struct {
	Keys    []nativeKey `toml:"Keys"`
	Aliases []alias     `toml:"Aliases"`
	Grants  []grant     `toml:"Grants"`
	Users   []user      `toml:"Users"`
	Roles   []role      `toml:"Roles"`
}

func (l *loader) toml(b []byte) error {
	var f tomlFile
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return l.errorf(pe.Position.Line, "%s", sanitize(pe.Message))
		}
		return l.errorf(0, "%s", sanitize(err.Error()))
	}
	if u := md.Undecoded(); len(u) > 0 {
		return l.errorf(0, "unknown field %s", strings.Trim(fieldName(u[0].String()), `"`))
	}
	// TOML's decoder keeps no positions past parsing: resources are named
	// by their place in the file.
	for i, k := range f.Keys {
		if err := l.native(k, 0); err != nil {
			return err
		}
		l.out.Keys[len(l.out.Keys)-1].Where = fmt.Sprintf("seed file %s: Keys[%d]", l.file, i)
	}
	for i, a := range f.Aliases {
		if err := l.alias(a, 0); err != nil {
			return err
		}
		l.out.Aliases[len(l.out.Aliases)-1].Where = fmt.Sprintf("seed file %s: Aliases[%d]", l.file, i)
	}
	for i, u := range f.Users {
		l.user(u, 0)
		l.out.Users[i].Where = fmt.Sprintf("seed file %s: Users[%d]", l.file, i)
	}
	for i, r := range f.Roles {
		l.role(r, 0)
		l.out.Roles[i].Where = fmt.Sprintf("seed file %s: Roles[%d]", l.file, i)
	}
	for i, g := range f.Grants {
		if err := l.grant(g, 0); err != nil {
			return err
		}
		l.out.Grants[len(l.out.Grants)-1].Where = fmt.Sprintf("seed file %s: Grants[%d]", l.file, i)
	}
	return nil
}

// fields refuses a mapping key of n not in allowed, naming its line.
func (l *loader) fields(n *yaml.Node, allowed []string) error {
	if n.Kind != yaml.MappingNode {
		return l.errorf(n.Line, "want a mapping of %s", strings.Join(allowed, ", "))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		ok := false
		for _, a := range allowed {
			ok = ok || k.Value == a
		}
		if !ok {
			return l.errorf(k.Line, "unknown field %s (known: %s)", fieldName(k.Value), strings.Join(allowed, ", "))
		}
	}
	return nil
}

func value(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// decodeMessage drops yaml's prefixes (its messages name the line) and
// the values it quotes, which may be key material in the wrong field.
func decodeMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = strings.Join(te.Errors, "; ")
	}
	return sanitize(msg)
}

// sanitize removes from a yaml message the values and tags it quotes.
// sanitize makes a YAML or TOML library's message safe to show: the
// libraries quote the input they stopped at (a value, an anchor's name, a
// bare key), which may be key material or a password in the wrong place,
// so every quoted part and every long token is replaced.
func sanitize(msg string) string {
	msg = unmarshalled.ReplaceAllString(msg, "cannot unmarshal this value into")
	msg = quoted.ReplaceAllString(msg, "a value")
	return longToken.ReplaceAllString(msg, "(a value)")
}

var (
	quoted       = regexp.MustCompile("`[^`]*`|'[^']*'|\"(?:[^\"\\\\]|\\\\.)*\"")
	unmarshalled = regexp.MustCompile(`cannot unmarshal .*? into`)
	longToken    = regexp.MustCompile(`[A-Za-z0-9+/=_.:-]{17,}`)
)

// fieldName is how an unknown field is named in an error: long names are
// not repeated, as they may be key material in the wrong place.
func fieldName(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("of %d characters", len(s))
	}
	return fmt.Sprintf("%q", s)
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// privateKey reads a PEM private key — PKCS #8, SEC 1 EC or PKCS #1 RSA —
// and returns it as DER PKCS #8 with the key spec it is of.
func privateKey(p string) (der []byte, spec string, err error) {
	blk, _ := pem.Decode([]byte(p))
	if blk == nil {
		return nil, "", errors.New("no PEM block")
	}
	var key any
	switch blk.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		return nil, "", fmt.Errorf("PEM block %q is not a private key", blk.Type)
	}
	if err != nil {
		return nil, "", errors.New("the private key does not parse")
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		spec = fmt.Sprintf("RSA_%d", k.N.BitLen())
	case *ecdsa.PrivateKey:
		spec = map[elliptic.Curve]string{elliptic.P256(): "ECC_NIST_P256", elliptic.P384(): "ECC_NIST_P384", elliptic.P521(): "ECC_NIST_P521"}[k.Curve]
	case ed25519.PrivateKey:
		spec = "ECC_NIST_EDWARDS25519"
	}
	if spec == "" {
		return nil, "", errors.New("unsupported kind of private key")
	}
	der, err = x509.MarshalPKCS8PrivateKey(key)
	return der, spec, err
}
