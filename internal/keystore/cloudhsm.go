package keystore

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"

	"github.com/kmsd/kmsd/internal/hsm"
)

// KMSUser is the crypto user a CloudHSM key store logs in as.
const KMSUser = "kmsuser"

// Clusters is what a CloudHSM key store needs of the HSM clusters;
// *hsm.Service implements it.
type Clusters interface {
	Describe(c hsm.Caller, id string) (hsm.ClusterInfo, error)
	Login(ctx context.Context, c hsm.Caller, clusterID, username, role, password, client string) error
	Logout(ctx context.Context, c hsm.Caller, clusterID, username, role, client string) error
	RotatePassword(ctx context.Context, c hsm.Caller, clusterID, username, old, password string) error
	LoggedIn(clusterID string) []string
}

var _ Clusters = (*hsm.Service)(nil)

// prober is what Clusters may also do: probe a cluster's HSMs at once
// (hsm.Service does).
type prober interface {
	ProbeCluster(ctx context.Context, id string)
}

var _ prober = (*hsm.Service)(nil)

// CloudHSM is the Backing of AWS_CLOUDHSM stores: connecting logs in to
// the cluster as kmsuser (the store's id is the login client), rotates
// kmsuser's password to one only kmsd knows, and stays logged in.
type CloudHSM struct {
	Clusters Clusters
}

var (
	_ Backing = (*CloudHSM)(nil)
	_ Checker = (*CloudHSM)(nil)
)

func caller(st *Store) hsm.Caller { return hsm.Caller{Account: st.Account, Region: st.Region} }

// CheckCluster checks that cluster id of account and region may back a
// key store (spec §5.1): it exists (ErrClusterNotFound), is ACTIVE
// (ErrClusterNotActive), has ACTIVE HSMs in at least two Availability Zones
// (ErrClusterInvalidConfig) and, when trustAnchor is not empty, was
// initialized with it (ErrIncorrectTrustAnchor). It returns the cluster's
// certificate, which identifies its backup lineage.
func (b *CloudHSM) CheckCluster(account, region, id, trustAnchor string) (clusterCert string, err error) {
	ci, err := b.checkCluster(account, region, id, trustAnchor)
	return ci.ClusterCert, err
}

func (b *CloudHSM) checkCluster(account, region, id, trustAnchor string) (hsm.ClusterInfo, error) {
	ci, err := b.Clusters.Describe(hsm.Caller{Account: account, Region: region}, id)
	if errors.Is(err, hsm.ErrClusterNotFound) {
		return ci, fmt.Errorf("%w: %s", ErrClusterNotFound, id)
	}
	if err != nil {
		return ci, err
	}
	if ci.State != hsm.ClusterActive {
		return ci, fmt.Errorf("%w: cluster %s is %s", ErrClusterNotActive, id, ci.State)
	}
	var zones []string
	for _, h := range ci.HSMs {
		if h.State == hsm.HSMActive && !slices.Contains(zones, h.AvailabilityZone) {
			zones = append(zones, h.AvailabilityZone)
		}
	}
	if len(zones) < 2 {
		return ci, fmt.Errorf("%w: cluster %s has active HSMs in %d Availability Zones; a key store needs at least two", ErrClusterInvalidConfig, id, len(zones))
	}
	if trustAnchor != "" && !sameCert(trustAnchor, ci.TrustAnchor) {
		return ci, fmt.Errorf("%w: cluster %s", ErrIncorrectTrustAnchor, id)
	}
	return ci, nil
}

// sameCert reports whether two PEM texts hold the same first certificate.
func sameCert(a, b string) bool {
	da, db := certDER(a), certDER(b)
	return da != nil && bytes.Equal(da, db)
}

func certDER(s string) []byte {
	for rest := []byte(s); ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil
		}
		if blk.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
				return nil
			}
			return blk.Bytes
		}
	}
}

// CheckConnect is the synchronous part of a connect: a cluster that
// exists but is not ACTIVE fails the call. A missing cluster or one
// without active HSMs is left to the connector (CLUSTER_NOT_FOUND,
// INSUFFICIENT_CLOUDHSM_HSMS).
func (b *CloudHSM) CheckConnect(ctx context.Context, st *Store) error {
	ci, err := b.Clusters.Describe(caller(st), st.ClusterID)
	if err != nil {
		return nil
	}
	if ci.State != hsm.ClusterActive && ci.State != hsm.ClusterDegraded {
		return fmt.Errorf("%w: cluster %s is %s", ErrClusterNotActive, st.ClusterID, ci.State)
	}
	return nil
}

// Connect logs in as kmsuser with secret and, when next is not nil,
// rotates kmsuser's password to next.
func (b *CloudHSM) Connect(ctx context.Context, st *Store, secret, next []byte) (bool, error) {
	c := caller(st)
	ci, err := b.Clusters.Describe(c, st.ClusterID)
	if err != nil {
		return false, connectErr(err)
	}
	active, degraded := 0, 0
	for _, h := range ci.HSMs {
		switch h.State {
		case hsm.HSMActive:
			active++
		case hsm.HSMDegraded:
			degraded++
		}
	}
	if p, ok := b.Clusters.(prober); ok && active == 0 && degraded > 0 {
		// The HSMs were last seen DEGRADED: look again now rather than
		// fail on a state up to a probe interval old.
		p.ProbeCluster(ctx, st.ClusterID)
		if ci, err = b.Clusters.Describe(c, st.ClusterID); err != nil {
			return false, connectErr(err)
		}
		for _, h := range ci.HSMs {
			if h.State == hsm.HSMActive {
				active++
			}
		}
	}
	if active == 0 {
		return false, &ConnectError{Code: CodeInsufficientCloudHSMHSMs, Err: hsm.ErrNoActiveHSM}
	}
	if ci.CryptoUser != KMSUser {
		return false, &ConnectError{Code: CodeUserNotFound, Err: fmt.Errorf("cluster %s has no %s", st.ClusterID, KMSUser)}
	}
	if ci.Locked {
		return false, &ConnectError{Code: CodeUserLockedOut, Err: hsm.ErrPINLocked}
	}
	for _, client := range b.Clusters.LoggedIn(st.ClusterID) {
		if client != st.ID {
			return false, &ConnectError{Code: CodeUserLoggedIn, Err: fmt.Errorf("%w: %s is logged in as %s", hsm.ErrUserLoggedIn, client, KMSUser)}
		}
	}
	if err := b.Clusters.Login(ctx, c, st.ClusterID, KMSUser, hsm.RoleCryptoUser, string(secret), st.ID); err != nil {
		return false, connectErr(err)
	}
	if next == nil {
		return false, nil
	}
	if err := b.Clusters.RotatePassword(ctx, c, st.ClusterID, KMSUser, string(secret), string(next)); err != nil {
		b.Clusters.Logout(ctx, c, st.ClusterID, KMSUser, hsm.RoleCryptoUser, st.ID)
		return false, connectErr(err)
	}
	return true, nil
}

// Disconnect logs the store's kmsuser session out.
func (b *CloudHSM) Disconnect(ctx context.Context, st *Store) error {
	err := b.Clusters.Logout(ctx, caller(st), st.ClusterID, KMSUser, hsm.RoleCryptoUser, st.ID)
	if errors.Is(err, hsm.ErrNotLoggedIn) || errors.Is(err, hsm.ErrClusterNotFound) || errors.Is(err, hsm.ErrUserNotFound) {
		return nil
	}
	return err
}

// connectErr maps an hsm error to its ConnectionErrorCode (spec §8.2).
func connectErr(err error) error {
	c := CodeInternalError
	switch {
	case errors.Is(err, hsm.ErrClusterNotFound):
		c = CodeClusterNotFound
	case errors.Is(err, hsm.ErrNoActiveHSM), errors.Is(err, hsm.ErrClusterNotActive):
		c = CodeInsufficientCloudHSMHSMs
	case errors.Is(err, hsm.ErrInvalidCredentials):
		c = CodeInvalidCredentials
	case errors.Is(err, hsm.ErrPINLocked):
		c = CodeUserLockedOut
	case errors.Is(err, hsm.ErrUserNotFound):
		c = CodeUserNotFound
	case errors.Is(err, hsm.ErrUserLoggedIn):
		c = CodeUserLoggedIn
	case errors.Is(err, hsm.ErrUnreachable), errors.Is(err, hsm.ErrUnavailable):
		c = CodeNetworkErrors
	}
	return &ConnectError{Code: c, Err: err}
}
