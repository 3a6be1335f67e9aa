package hsm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
)

// Declared clusters: clusters over tokens that exist already — a real HSM's
// partitions, or SoftHSM2 tokens an operator prepared — in any PKCS#11
// module. The operator initialises each token (SO PIN) and its user PIN
// (the crypto user's password) beforehand and declares them in a TOML file
// (LoadDeclarations); kmsd registers the cluster as ACTIVE with one HSM per
// token, and runs logins and key operations through the same code as its
// SoftHSM2 provider. The hardware is the operator's: CreateHsm, DeleteHsm,
// DeleteCluster and user creation and deletion are refused.

// Declaration declares one cluster over existing tokens.
type Declaration struct {
	// ID is the cluster id (cluster-…); when empty it is derived from Name,
	// the same on every start.
	ID, Name string
	// Account and Region own the cluster; kmsd's default account and
	// Region when empty (LoadDeclarations fills them).
	Account, Region string
	HsmType         string // hsm2m.medium when empty
	Module          string // the PKCS#11 module (a shared library path)
	HSMs            []DeclaredHSM
	// CryptoUser is the name of the tokens' user (kmsuser when empty);
	// UserPIN its password and SOPIN the tokens' SO PIN (the cluster
	// admin's password), by reference.
	CryptoUser     string
	SOPIN, UserPIN Secret
	// TrustAnchor is the PEM certificate of the CA the operator's cluster
	// certificate chains to (trust_anchor, a file): a custom key store
	// over the cluster names it, as AWS's CreateCustomKeyStore requires.
	// Without it the cluster cannot back a key store.
	TrustAnchor string
}

// DeclaredHSM is one HSM of a declared cluster: a token, by label, in an
// Availability Zone of the cluster's Region.
type DeclaredHSM struct {
	Token            string `toml:"token"`
	AvailabilityZone string `toml:"availability_zone"`
}

// Secret is a secret given by reference, never inline: "file:/path" (the
// file's content, a final newline dropped) or "env:NAME".
type Secret string

// String shows the reference only.
func (s Secret) String() string { return string(s) }

// Resolve reads the secret.
func (s Secret) Resolve() (string, error) {
	kind, ref, _ := strings.Cut(string(s), ":")
	var v string
	switch kind {
	case "file":
		b, err := os.ReadFile(ref)
		if err != nil {
			return "", fmt.Errorf("secret %s: %w", s, err)
		}
		v = strings.TrimRight(string(b), "\r\n")
	case "env":
		var ok bool
		if v, ok = os.LookupEnv(ref); !ok {
			return "", fmt.Errorf("secret %s: the variable is not set", s)
		}
	default:
		// Not echoed: it may be the secret itself, given inline.
		return "", errors.New("want file:/path or env:NAME (secrets are never given inline)")
	}
	if v == "" {
		return "", fmt.Errorf("secret %s is empty", s)
	}
	return v, nil
}

// declFile is the TOML form of the declarations file.
type declFile struct {
	Cluster []struct {
		ID            string        `toml:"id"`
		Name          string        `toml:"name"`
		Account       string        `toml:"account"`
		Region        string        `toml:"region"`
		HsmType       string        `toml:"hsm_type"`
		Module        string        `toml:"module"`
		SOPIN         string        `toml:"so_pin"`
		CryptoUser    string        `toml:"crypto_user"`
		CryptoUserPIN string        `toml:"crypto_user_pin"`
		TrustAnchor   string        `toml:"trust_anchor"`
		HSM           []DeclaredHSM `toml:"hsm"`
	} `toml:"cluster"`
}

// LoadDeclarations reads and validates a declarations file:
//
//	[[cluster]]
//	name = "payments"                 # or id = "cluster-…"
//	module = "/usr/lib/vendor/libpkcs11.so"
//	so_pin = "file:/etc/kmsd/payments.so-pin"
//	crypto_user_pin = "env:PAYMENTS_KMSUSER_PIN"
//	trust_anchor = "/etc/kmsd/payments-ca.crt"  # for a custom key store
//	# account, region, hsm_type, crypto_user, trust_anchor: optional
//	[[cluster.hsm]]
//	token = "payments-a"
//	availability_zone = "us-east-1a"
//
// account and region are the defaults for clusters that name none.
func LoadDeclarations(path, account, region string) ([]Declaration, error) {
	var f declFile
	md, err := toml.DecodeFile(path, &f)
	if err != nil {
		return nil, fmt.Errorf("hsm config %s: %w", path, err)
	}
	if keys := md.Undecoded(); len(keys) > 0 {
		return nil, fmt.Errorf("hsm config %s: unknown keys %v", path, keys)
	}
	var out []Declaration
	for _, c := range f.Cluster {
		d := Declaration{ID: c.ID, Name: c.Name, Account: c.Account, Region: c.Region, HsmType: c.HsmType, Module: c.Module,
			HSMs: c.HSM, CryptoUser: c.CryptoUser, SOPIN: Secret(c.SOPIN), UserPIN: Secret(c.CryptoUserPIN)}
		if d.Account == "" {
			d.Account = account
		}
		if d.Region == "" {
			d.Region = region
		}
		if c.TrustAnchor != "" {
			b, err := os.ReadFile(c.TrustAnchor)
			if err != nil {
				return nil, fmt.Errorf("hsm config %s: trust_anchor: %w", path, err)
			}
			d.TrustAnchor = string(b)
		}
		out = append(out, d)
	}
	if err := validateDeclarations(out); err != nil {
		return nil, fmt.Errorf("hsm config %s: %w", path, err)
	}
	return out, nil
}

var (
	clusterIDPattern = regexp.MustCompile(`^cluster-[2-7a-zA-Z]{11,16}$`)
	accountPattern   = regexp.MustCompile(`^[0-9]{12}$`)
)

// validateDeclarations fills defaults (ID from Name, HsmType, CryptoUser)
// and checks every declaration, its secrets included.
func validateDeclarations(ds []Declaration) error {
	ids := map[string]bool{}
	for i := range ds {
		d := &ds[i]
		if d.ID == "" {
			if d.Name == "" {
				return fmt.Errorf("cluster %d: give an id or a name", i+1)
			}
			d.ID = derive("cluster-", "declared/"+d.Name, 11)
		}
		if !clusterIDPattern.MatchString(d.ID) {
			return fmt.Errorf("cluster %s: an id is cluster- and 11 to 16 of [2-7a-zA-Z]", d.ID)
		}
		if ids[d.ID] {
			return fmt.Errorf("cluster %s is declared twice", d.ID)
		}
		ids[d.ID] = true
		if !accountPattern.MatchString(d.Account) || d.Region == "" {
			return fmt.Errorf("cluster %s: account %q and region %q: want 12 digits and a Region", d.ID, d.Account, d.Region)
		}
		if d.HsmType == "" {
			d.HsmType = "hsm2m.medium"
		}
		if !supportedHsmTypes[d.HsmType] {
			return fmt.Errorf("cluster %s: hsm_type %s: want hsm1.medium or hsm2m.medium", d.ID, d.HsmType)
		}
		if !filepath.IsAbs(d.Module) {
			return fmt.Errorf("cluster %s: module %q: want the absolute path of a PKCS#11 library", d.ID, d.Module)
		}
		if _, err := os.Stat(d.Module); err != nil {
			return fmt.Errorf("cluster %s: module: %w", d.ID, err)
		}
		if d.CryptoUser == "" {
			d.CryptoUser = "kmsuser"
		}
		if !usernamePattern.MatchString(d.CryptoUser) {
			return fmt.Errorf("cluster %s: crypto_user %q: 1 to 31 letters, digits or underscores", d.ID, d.CryptoUser)
		}
		for name, sec := range map[string]Secret{"so_pin": d.SOPIN, "crypto_user_pin": d.UserPIN} {
			if _, err := sec.Resolve(); err != nil {
				return fmt.Errorf("cluster %s: %s: %w", d.ID, name, err)
			}
		}
		if d.TrustAnchor != "" {
			if certs, err := parseCerts(d.TrustAnchor); err != nil || len(certs) != 1 || !certs[0].IsCA {
				return fmt.Errorf("cluster %s: trust_anchor: want one PEM CA certificate", d.ID)
			}
		}
		if len(d.HSMs) == 0 {
			return fmt.Errorf("cluster %s: declare at least one [[cluster.hsm]]", d.ID)
		}
		tokens := map[string]bool{}
		for _, h := range d.HSMs {
			if h.Token == "" || len(h.Token) > 32 || tokens[h.Token] {
				return fmt.Errorf("cluster %s: token %q: want distinct labels of 1 to 32 bytes", d.ID, h.Token)
			}
			tokens[h.Token] = true
			if az := h.AvailabilityZone; len(az) != len(d.Region)+1 || !strings.HasPrefix(az, d.Region) || az[len(az)-1] < 'a' || az[len(az)-1] > 'z' {
				return fmt.Errorf("cluster %s: token %s: availability_zone %q is not a zone of %s", d.ID, h.Token, az, d.Region)
			}
		}
	}
	return nil
}

// derive makes an id of prefix and n characters of [a-z2-7] from seed, the
// same on every start.
func derive(prefix, seed string, n int) string {
	sum := sha256.Sum256([]byte(seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = idAlphabet[int(sum[i])%len(idAlphabet)]
	}
	return prefix + string(b)
}

func deriveHex(prefix, seed string, n int) string {
	sum := sha256.Sum256([]byte(seed))
	return prefix + hex.EncodeToString(sum[:])[:n]
}

// declare registers the declared clusters, or brings their records up to
// date with the declarations; the probe (health.go) follows their tokens.
func (s *Service) declare(ctx context.Context, ds []Declaration) error {
	if len(ds) == 0 {
		return nil
	}
	if err := validateDeclarations(ds); err != nil {
		return fmt.Errorf("hsm: %w", err)
	}
	for _, d := range ds {
		err := s.declareOne(ctx, d)
		if errors.Is(err, storage.ErrExists) {
			// Another node, started at the same moment on the same
			// database, declared the cluster first: its record is taken
			// in, and declared over like one found at start.
			if err = s.adopt(ctx, d.ID); err == nil {
				err = s.declareOne(ctx, d)
			}
		}
		if err != nil {
			return fmt.Errorf("hsm: declared cluster %s: %w", d.ID, err)
		}
	}
	return nil
}

// adopt reads cluster id's record from the store into the service.
func (s *Service) adopt(ctx context.Context, id string) error {
	b, err := s.store.Get(ctx, recordPath(id))
	if err != nil {
		return err
	}
	r := new(record)
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("hsm: decode cluster %s: %w", id, err)
	}
	s.mu.Lock()
	if _, ok := s.clusters[id]; !ok {
		s.clusters[id] = r
	}
	s.mu.Unlock()
	return nil
}

func (s *Service) declareOne(ctx context.Context, d Declaration) error {
	so, err := d.SOPIN.Resolve()
	if err != nil {
		return err
	}
	pin, err := d.UserPIN.Resolve()
	if err != nil {
		return err
	}
	toks, err := s.tokensFor(&record{Module: d.Module})
	if err != nil {
		return err
	}
	defer s.lock(d.ID)()
	cur, exists := s.byID(d.ID)
	if exists && !cur.Declared {
		return fmt.Errorf("%w: a cluster made through the CloudHSM API has this id", ErrInvalidRequest)
	}
	var r *record
	if exists {
		r = clone(cur)
	} else {
		r = &record{ID: d.ID, Created: s.now().UTC(), NetworkType: "IPV4", RetentionDays: "90"}
		if r.Masking, err = s.seal(maskingPath(r.ID), s.randomBytes(32)); err != nil {
			return err
		}
	}
	vpc := sha256.Sum256([]byte(d.Account + "/" + d.Region))
	r.Declared, r.Module, r.Account, r.Region, r.HsmType = true, d.Module, d.Account, d.Region, d.HsmType
	r.VpcID, r.SecurityGroup = "vpc-"+hex.EncodeToString(vpc[:4]), deriveHex("sg-", r.ID, 17)
	r.State, r.StateMessage = ClusterActive, ""
	if d.TrustAnchor != "" {
		r.TrustAnchor = strings.TrimSpace(d.TrustAnchor) + "\n"
	}
	r.Subnets, r.SubnetOrder = map[string]string{}, nil
	azIndex := map[string]int{}
	var hsms []hsmRecord
	for i, h := range d.HSMs {
		az := h.AvailabilityZone
		if _, ok := r.Subnets[az]; !ok {
			azIndex[az] = len(r.SubnetOrder)
			sn := deriveHex("subnet-", r.ID+"/"+az, 17)
			r.Subnets[az] = sn
			r.SubnetOrder = append(r.SubnetOrder, sn)
		}
		id := derive("hsm-", r.ID+"/"+h.Token, 11)
		nh := hsmRecord{ID: id, AZ: az, SubnetID: r.Subnets[az], EniID: deriveHex("eni-", id, 17),
			EniIP: fmt.Sprintf("10.0.%d.%d", azIndex[az], 10+i), State: HSMActive, Created: s.now().UTC(), Token: h.Token}
		if old := r.hsm(id); old != nil {
			nh.Created, nh.State = old.Created, old.State
		}
		hsms = append(hsms, nh)
	}
	r.HSMs = hsms
	if r.SOPIN, err = s.seal(soPINPath(r.ID), []byte(so)); err != nil {
		return err
	}
	// The declared password seeds the crypto user; after that kmsd's record
	// follows the password changes made through kmsd.
	if u := r.cryptoUser(); u == nil || u.Name != d.CryptoUser {
		sealed, err := s.seal(userPath(r.ID, d.CryptoUser), []byte(pin))
		if err != nil {
			return err
		}
		r.Users = []userRecord{{Name: d.CryptoUser, Role: RoleCryptoUser, Password: sealed, Created: s.now().UTC()}}
	}
	if d.Name != "" {
		r.Tags, _ = mergeTags(r.Tags, []hsmapi.Tag{{Key: hsmapi.String("Name"), Value: hsmapi.String(d.Name)}})
	}
	s.probe(ctx, r, toks)
	for _, h := range r.HSMs {
		if h.State != HSMActive {
			s.log.Warn("hsm: declared HSM is not usable", "cluster", r.ID, "hsm", h.ID, "token", h.Token, "reason", h.StateMessage)
		}
	}
	s.log.Info("hsm: declared cluster", "cluster", r.ID, "module", r.Module, "hsms", len(r.HSMs), "state", r.State)
	return s.put(ctx, r, !exists)
}

// ValidateDeclarations checks declarations made elsewhere than in a
// declarations file (a seed file: package seed) as LoadDeclarations
// checks its own, filling the same defaults (ID from Name, …).
func ValidateDeclarations(ds []Declaration) error { return validateDeclarations(ds) }
