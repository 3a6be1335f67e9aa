package hsm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/hsm/hsmtest"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// The SoftHSM2 module reads its configuration once per process, so every
// test of the package shares one HSM directory (tokens are told apart by
// label) and opens its own Service over it.
var hsmDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hsmtest")
	if err != nil {
		panic(err)
	}
	hsmDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newService opens a Service over a fresh store. With PKCS#11 (cgo) the
// SoftHSM2 module must be installed; tests that need tokens skip only in a
// !cgo build, where PKCS#11 is absent by design (TestUnavailable covers it).
func newService(t *testing.T, opts ...func(*Config)) *Service {
	t.Helper()
	return openService(t, true, opts...)
}

func openService(t *testing.T, needTokens bool, opts ...func(*Config)) *Service {
	t.Helper()
	return openServiceOn(t, needTokens, func(st storage.Store) storage.Store { return st }, opts...)
}

// openServiceOn opens a Service over a fresh store as wrap returns it (a
// test's fault-injecting wrapper, say).
func openServiceOn(t *testing.T, needTokens bool, wrap func(storage.Store) storage.Store, opts ...func(*Config)) *Service {
	t.Helper()
	if needTokens && !Available {
		t.Skip("built without cgo: PKCS#11 unavailable")
	}
	if Available {
		if _, err := os.Stat(DefaultModule); err != nil {
			t.Fatalf("SoftHSM2 is not installed (%s); scripts/test.sh installs it", DefaultModule)
		}
	}
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
	cfg := Config{Dir: hsmDir}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := New(ctx, wrap(st), b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var caller = Caller{Account: "111122223333", Region: "us-east-1"}

func waitState(t *testing.T, s *Service, id, state string) *hsmapi.Cluster {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		out, err := s.DescribeClusters(context.Background(), caller, &hsmapi.DescribeClustersRequest{Filters: map[string][]string{"clusterIds": {id}}})
		if err != nil {
			t.Fatal(err)
		}
		c := out.Clusters[0]
		ready := *c.State == state
		for _, h := range c.Hsms {
			if *h.State == HSMCreateInProgress || *h.State == HSMDeleteInProgress {
				ready = false
			}
		}
		if ready {
			return &c
		}
	}
	t.Fatalf("cluster %s never reached %s", id, state)
	return nil
}

func str(s string) *string { return &s }

// activeCluster makes an ACTIVE cluster with n HSMs and kmsuser.
func activeCluster(t *testing.T, s *Service, n int) string {
	t.Helper()
	ctx := context.Background()
	out, err := s.CreateCluster(ctx, caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef0", "subnet-0123456789abcdef1"}})
	if err != nil {
		t.Fatal(err)
	}
	id := *out.Cluster.ClusterId
	waitState(t, s, id, ClusterUninitialized)
	for i := 0; i < n; i++ {
		az := []string{"us-east-1a", "us-east-1b"}[i%2]
		if _, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &id, AvailabilityZone: &az}); err != nil {
			t.Fatal(err)
		}
	}
	c := waitState(t, s, id, ClusterUninitialized)
	cert, anchor := hsmtest.SignCSR(t, *c.Certificates.ClusterCsr)
	if _, err := s.InitializeCluster(ctx, caller, &hsmapi.InitializeClusterRequest{ClusterId: &id, SignedCert: &cert, TrustAnchor: &anchor}); err != nil {
		t.Fatal(err)
	}
	waitState(t, s, id, ClusterInitialized)
	if err := s.Activate(ctx, caller, id, "adminpass1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1"); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestClusterKeysAndUsers(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	id := activeCluster(t, s, 2)

	if err := s.CreateKey(ctx, id, "k1"); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("CreateKey before login: %v, want ErrNotLoggedIn", err)
	}
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, id, "k1"); err != nil {
		t.Fatal(err)
	}
	iv, ct, err := s.Encrypt(ctx, id, "k1", []byte("hello"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ { // round-robin over both HSMs
		pt, err := s.Decrypt(ctx, id, "k1", iv, ct, []byte("aad"))
		if err != nil || string(pt) != "hello" {
			t.Fatalf("Decrypt = %q, %v", pt, err)
		}
	}
	if _, err := s.Decrypt(ctx, id, "k1", iv, ct, []byte("other")); err == nil {
		t.Fatal("Decrypt with other AAD succeeded")
	}
	if _, _, err := s.Encrypt(ctx, id, "nope", []byte("x"), nil); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Encrypt with unknown key: %v", err)
	}
	if r, err := s.GenerateRandom(ctx, id, 32); err != nil || len(r) != 32 {
		t.Fatalf("GenerateRandom: %d, %v", len(r), err)
	}

	// A new HSM receives the key.
	az := "us-east-1b"
	h, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &id, AvailabilityZone: &az})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, s, id, ClusterActive)
	keys, err := s.Keys(ctx, id)
	if err != nil || len(keys) != 1 || len(keys[0].HSMs) != 3 {
		t.Fatalf("Keys = %+v, %v; want k1 on 3 HSMs", keys, err)
	}
	// Decrypt on every HSM, the new one included.
	toks, _ := s.tokens()
	for _, hs := range []string{*h.Hsm.HsmId} {
		pt, err := toks.Decrypt(ctx, hs, "k1", iv, ct, []byte("aad"))
		if err != nil || string(pt) != "hello" {
			t.Fatalf("new HSM decrypt = %q, %v", pt, err)
		}
	}

	// Lockout: five bad passwords lock kmsuser; the admin's reset unlocks.
	if err := s.Logout(ctx, caller, id, "kmsuser", RoleCryptoUser, "kms"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxFailedLogins; i++ {
		if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "wrongpass", "kms"); !errors.Is(err, ErrInvalidCredentials) {
			t.Fatalf("bad login %d: %v", i, err)
		}
	}
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); !errors.Is(err, ErrPINLocked) {
		t.Fatalf("login when locked: %v", err)
	}
	if err := s.ChangePassword(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); !errors.Is(err, ErrInvalidCredentials) {
		t.Fatalf("old password after change: %v", err)
	}
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass2", "kms"); err != nil {
		t.Fatal(err)
	}
	// A rotation whose guard refuses changes no PIN: the old password
	// still rotates after it.
	errGone := errors.New("lease gone")
	if err := s.RotatePassword(WithActGuard(ctx, func() error { return errGone }), caller, id, "kmsuser", "kmspass2", "kmspass9"); !errors.Is(err, errGone) {
		t.Fatalf("RotatePassword with a refusing guard: %v", err)
	}
	if err := s.RotatePassword(WithActGuard(ctx, func() error { return nil }), caller, id, "kmsuser", "kmspass2", "kmspass3"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteKey(ctx, id, "k1"); err != nil {
		t.Fatal(err)
	}
	if keys, _ := s.Keys(ctx, id); len(keys) != 0 {
		t.Fatalf("keys after delete: %+v", keys)
	}
}

func TestInvalidRequestsChangeNothing(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	id := activeCluster(t, s, 1)
	missing := "cluster-aaaaaaaaaaa"
	az := "us-east-1c"
	cases := []struct {
		name string
		call func() error
		want string
	}{
		{"CreateHsm unknown cluster", func() error {
			_, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &missing, AvailabilityZone: &az})
			return err
		}, excNotFound},
		{"CreateHsm AZ outside mapping", func() error {
			_, err := s.CreateHsm(ctx, caller, &hsmapi.CreateHsmRequest{ClusterId: &id, AvailabilityZone: &az})
			return err
		}, excInvalid},
		{"DeleteCluster with HSMs", func() error {
			_, err := s.DeleteCluster(ctx, caller, &hsmapi.DeleteClusterRequest{ClusterId: &id})
			return err
		}, excInvalid},
		{"DescribeClusters bad filter", func() error {
			_, err := s.DescribeClusters(ctx, caller, &hsmapi.DescribeClustersRequest{Filters: map[string][]string{"color": {"x"}}})
			return err
		}, excInvalid},
		{"Initialize twice", func() error {
			_, err := s.InitializeCluster(ctx, caller, &hsmapi.InitializeClusterRequest{ClusterId: &id, SignedCert: str("x"), TrustAnchor: str("y")})
			return err
		}, excInvalid},
		{"DeleteHsm unknown", func() error {
			_, err := s.DeleteHsm(ctx, caller, &hsmapi.DeleteHsmRequest{ClusterId: &id, HsmId: str("hsm-aaaaaaaaaaa")})
			return err
		}, excNotFound},
		{"Tag reserved", func() error {
			_, err := s.TagResource(ctx, caller, &hsmapi.TagResourceRequest{ResourceId: &id, TagList: []hsmapi.Tag{{Key: str("aws:x"), Value: str("")}}})
			return err
		}, excTag},
	}
	// The record as stored: a failed request writes nothing (no new Rev).
	stored := func() string {
		b, err := s.store.Get(ctx, recordPath(id))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	before := stored()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var e *hsmapi.Exception
			if err := tc.call(); !errors.As(err, &e) || e.Name != tc.want {
				t.Fatalf("err = %v, want %s", err, tc.want)
			}
		})
	}
	if after := stored(); after != before {
		t.Fatalf("a failed request changed the cluster:\n%s\n%s", before, after)
	}
}

// TestUnavailable: a !cgo build reports PKCS#11 as unavailable, as a
// CloudHsmServiceException for the API and ErrUnavailable for the rest.
func TestUnavailable(t *testing.T) {
	if Available {
		t.Skip("PKCS#11 is available in this build")
	}
	s := openService(t, false)
	_, err := s.CreateCluster(context.Background(), caller, &hsmapi.CreateClusterRequest{HsmType: str("hsm1.medium"), SubnetIds: []string{"subnet-0123456789abcdef0"}})
	var e *hsmapi.Exception
	if !errors.As(err, &e) || e.Name != excService {
		t.Fatalf("CreateCluster without cgo: %v", err)
	}
	if _, err := s.tokens(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("tokens without cgo: %v", err)
	}
}
