package kms

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/hsm/hsmtest"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// realCluster opens an hsm.Service over SoftHSM2 and makes an ACTIVE
// cluster with HSMs in two Availability Zones and kmsuser (password
// kmspass1). It returns the service, the cluster id and its trust anchor.
func realCluster(t *testing.T) (*hsm.Service, string, string) {
	t.Helper()
	if !hsm.Available {
		t.Skip("built without cgo: PKCS#11 unavailable")
	}
	if _, err := os.Stat(hsm.DefaultModule); err != nil {
		t.Fatalf("SoftHSM2 is not installed (%s); scripts/test.sh installs it", hsm.DefaultModule)
	}
	ctx := context.Background()
	f := newFixture(t)
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "hsm.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := hsm.New(ctx, st, f.barrier, hsm.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := hsm.Caller{Account: f.caller.Account, Region: f.caller.Region}
	wait := func(id, state string) *hsmapi.Cluster {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			out, err := s.DescribeClusters(ctx, c, &hsmapi.DescribeClustersRequest{Filters: map[string][]string{"clusterIds": {id}}})
			if err != nil {
				t.Fatal(err)
			}
			cl := out.Clusters[0]
			ready := *cl.State == state
			for _, h := range cl.Hsms {
				ready = ready && *h.State == hsm.HSMActive
			}
			if ready {
				return &cl
			}
		}
		t.Fatalf("cluster %s never reached %s", id, state)
		return nil
	}
	out, err := s.CreateCluster(ctx, c, &hsmapi.CreateClusterRequest{HsmType: str("hsm2m.medium"), SubnetIds: []string{"subnet-0123456789abcdef0", "subnet-0123456789abcdef1"}})
	if err != nil {
		t.Fatal(err)
	}
	id := *out.Cluster.ClusterId
	wait(id, hsm.ClusterUninitialized)
	for _, az := range []string{"us-east-1a", "us-east-1b"} {
		if _, err := s.CreateHsm(ctx, c, &hsmapi.CreateHsmRequest{ClusterId: &id, AvailabilityZone: &az}); err != nil {
			t.Fatal(err)
		}
	}
	cl := wait(id, hsm.ClusterUninitialized)
	cert, anchor := hsmtest.SignCSR(t, *cl.Certificates.ClusterCsr)
	if _, err := s.InitializeCluster(ctx, c, &hsmapi.InitializeClusterRequest{ClusterId: &id, SignedCert: &cert, TrustAnchor: &anchor}); err != nil {
		t.Fatal(err)
	}
	wait(id, hsm.ClusterInitialized)
	if err := s.Activate(ctx, c, id, "adminpass1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, c, id, keystore.KMSUser, hsm.RoleCryptoUser, "kmspass1"); err != nil {
		t.Fatal(err)
	}
	return s, id, anchor
}

// TestHSMKeyRotationAndDeletion, over a real (SoftHSM2) cluster: rotation
// of a key in a CloudHSM key store is refused (spec §5.11), and when its
// deletion window has passed on the injectable clock the key is deleted
// and its material leaves the cluster (spec §5.10).
func TestHSMKeyRotationAndDeletion(t *testing.T) {
	ctx := context.Background()
	h, clusterID, anchor := realCluster(t)
	f := newFixture(t)
	st := f.db // the catalog's database, as in kmsd
	backing := &keystore.CloudHSM{Clusters: h}
	m, err := keystore.New(ctx, st, f.barrier, keystore.Config{Backings: map[string]keystore.Backing{keystore.TypeCloudHSM: backing}, Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	f.svc.SetKeyStores(m, backing, h)
	cs, err := f.svc.CreateCustomKeyStore(ctx, f.caller, &kmsapi.CreateCustomKeyStoreRequest{CustomKeyStoreName: str("ks"),
		CloudHsmClusterId: &clusterID, TrustAnchorCertificate: &anchor, KeyStorePassword: str("kmspass1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: cs.CustomKeyStoreId}); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if s, _ := m.Get(f.caller.Account, f.caller.Region, *cs.CustomKeyStoreId); s.State != keystore.Connected {
		t.Fatalf("store %s %s", s.State, s.ErrorCode)
	}
	origin := "AWS_CLOUDHSM"
	out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Origin: &origin, CustomKeyStoreId: cs.CustomKeyStoreId})
	if err != nil {
		t.Fatal(err)
	}
	md := out.KeyMetadata
	inCluster := func() bool {
		t.Helper()
		ks, err := h.Keys(ctx, clusterID)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(ks, func(k hsm.KeyInfo) bool { return k.Label == *md.Arn })
	}
	if !inCluster() {
		t.Fatalf("key %s is not in cluster %s", *md.Arn, clusterID)
	}
	enc, err := f.svc.Encrypt(ctx, f.caller, &kmsapi.EncryptRequest{KeyId: md.KeyId, Plaintext: []byte("in the HSM")})
	if err != nil {
		t.Fatal(err)
	}

	_, err = f.svc.EnableKeyRotation(ctx, f.caller, &kmsapi.EnableKeyRotationRequest{KeyId: md.KeyId})
	wantException(t, err, "UnsupportedOperationException")
	_, err = f.svc.RotateKeyOnDemand(ctx, f.caller, &kmsapi.RotateKeyOnDemandRequest{KeyId: md.KeyId})
	wantException(t, err, "UnsupportedOperationException")
	_, err = f.svc.DisableKeyRotation(ctx, f.caller, &kmsapi.DisableKeyRotationRequest{KeyId: md.KeyId})
	wantException(t, err, "UnsupportedOperationException")
	_, err = f.svc.GetKeyRotationStatus(ctx, f.caller, &kmsapi.GetKeyRotationStatusRequest{KeyId: md.KeyId})
	wantException(t, err, "UnsupportedOperationException")
	if dec, err := f.svc.Decrypt(ctx, f.caller, &kmsapi.DecryptRequest{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != "in the HSM" {
		t.Fatalf("decrypt after the refused rotations: %v", err)
	}

	days := int32(7)
	if _, err := f.svc.ScheduleKeyDeletion(ctx, f.caller, &kmsapi.ScheduleKeyDeletionRequest{KeyId: md.KeyId, PendingWindowInDays: &days}); err != nil {
		t.Fatal(err)
	}
	f.clock.advance(6 * 24 * time.Hour)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 0 || !inCluster() {
		t.Fatalf("sweep inside the window: %d %v, in cluster %v", n, err, inCluster())
	}
	f.clock.advance(24*time.Hour + time.Second)
	if n, err := f.svc.SweepDeletions(ctx); err != nil || n != 1 {
		t.Fatalf("sweep after the window: %d %v", n, err)
	}
	if inCluster() {
		t.Fatalf("key %s is still in cluster %s after its deletion", *md.Arn, clusterID)
	}
	_, err = f.svc.DescribeKey(ctx, f.caller, &kmsapi.DescribeKeyRequest{KeyId: md.KeyId})
	wantException(t, err, "NotFoundException")
}
