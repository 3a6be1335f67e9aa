package keystore

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/kmsd/kmsd/internal/hsm"
)

// fakeClusters is one cluster whose answers the test sets.
type fakeClusters struct {
	info      hsm.ClusterInfo
	infoErr   error
	loginErr  error
	rotateErr error
	loggedIn  []string
	logins    []string // passwords tried
	rotated   string
}

func (f *fakeClusters) Describe(c hsm.Caller, id string) (hsm.ClusterInfo, error) {
	return f.info, f.infoErr
}
func (f *fakeClusters) Login(ctx context.Context, c hsm.Caller, clusterID, username, role, password, client string) error {
	f.logins = append(f.logins, password)
	return f.loginErr
}
func (f *fakeClusters) Logout(ctx context.Context, c hsm.Caller, clusterID, username, role, client string) error {
	return nil
}
func (f *fakeClusters) RotatePassword(ctx context.Context, c hsm.Caller, clusterID, username, old, password string) error {
	if f.rotateErr == nil {
		f.rotated = password
	}
	return f.rotateErr
}
func (f *fakeClusters) LoggedIn(clusterID string) []string { return f.loggedIn }

func healthy() hsm.ClusterInfo {
	return hsm.ClusterInfo{ID: "cluster-aaaaaaaaaaa", State: hsm.ClusterActive, TrustAnchor: "", CryptoUser: KMSUser,
		HSMs: []hsm.HSM{{ID: "hsm-1", AvailabilityZone: "us-east-1a", State: hsm.HSMActive}, {ID: "hsm-2", AvailabilityZone: "us-east-1b", State: hsm.HSMActive}}}
}

// TestCloudHSMConnectCodes: each cluster problem gives its
// ConnectionErrorCode (spec §8.2).
func TestCloudHSMConnectCodes(t *testing.T) {
	noHSM := healthy()
	noHSM.HSMs[0].State, noHSM.HSMs[1].State = hsm.HSMDegraded, hsm.HSMDeleted
	noUser := healthy()
	noUser.CryptoUser = ""
	locked := healthy()
	locked.Locked = true
	wrap := func(e error) error { return fmt.Errorf("HSM hsm-1: %w", e) }
	for _, tc := range []struct {
		name string
		f    fakeClusters
		want string
	}{
		{"connected", fakeClusters{info: healthy()}, ""},
		{"cluster gone", fakeClusters{infoErr: hsm.ErrClusterNotFound}, CodeClusterNotFound},
		{"no active HSM", fakeClusters{info: noHSM}, CodeInsufficientCloudHSMHSMs},
		{"no kmsuser", fakeClusters{info: noUser}, CodeUserNotFound},
		{"locked out", fakeClusters{info: locked}, CodeUserLockedOut},
		{"logged in elsewhere", fakeClusters{info: healthy(), loggedIn: []string{hsm.ClientCLI}}, CodeUserLoggedIn},
		{"wrong password", fakeClusters{info: healthy(), loginErr: wrap(hsm.ErrInvalidCredentials)}, CodeInvalidCredentials},
		{"locked at login", fakeClusters{info: healthy(), loginErr: wrap(hsm.ErrPINLocked)}, CodeUserLockedOut},
		{"token away", fakeClusters{info: healthy(), loginErr: wrap(hsm.ErrUnreachable)}, CodeNetworkErrors},
		{"no module", fakeClusters{info: healthy(), loginErr: hsm.ErrUnavailable}, CodeNetworkErrors},
		{"rotation fails", fakeClusters{info: healthy(), rotateErr: errors.New("boom")}, CodeInternalError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &CloudHSM{Clusters: &tc.f}
			st := &Store{ID: "cks-1", ClusterID: "cluster-aaaaaaaaaaa"}
			rotated, err := b.Connect(context.Background(), st, []byte("kmsPswd1"), []byte("next-password"))
			if tc.want == "" {
				if err != nil || !rotated || tc.f.rotated != "next-password" {
					t.Fatalf("connect: %v rotated %v", err, rotated)
				}
				return
			}
			if got := code(err); err == nil || got != tc.want {
				t.Fatalf("connect: %v (code %s), want %s", err, got, tc.want)
			}
		})
	}
}

func TestCheckCluster(t *testing.T) {
	oneZone := healthy()
	oneZone.HSMs[1].AvailabilityZone = "us-east-1a"
	inactive := healthy()
	inactive.State = hsm.ClusterInitialized
	for _, tc := range []struct {
		name   string
		f      fakeClusters
		anchor string
		want   error
	}{
		{"not found", fakeClusters{infoErr: hsm.ErrClusterNotFound}, "", ErrClusterNotFound},
		{"not active", fakeClusters{info: inactive}, "", ErrClusterNotActive},
		{"one zone", fakeClusters{info: oneZone}, "", ErrClusterInvalidConfig},
		{"wrong anchor", fakeClusters{info: healthy()}, "not a certificate", ErrIncorrectTrustAnchor},
		{"fine", fakeClusters{info: healthy()}, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &CloudHSM{Clusters: &tc.f}
			if _, err := b.CheckCluster("111122223333", "us-east-1", "cluster-aaaaaaaaaaa", tc.anchor); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}
