package hsm

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/hsmapi"
)

// CloudHSM v2 exception names.
const (
	excNotFound       = "CloudHsmResourceNotFoundException"
	excInvalid        = "CloudHsmInvalidRequestException"
	excTag            = "CloudHsmTagException"
	excLimit          = "CloudHsmResourceLimitExceededException"
	excService        = "CloudHsmServiceException"
	excInternal       = "CloudHsmInternalFailureException"
	maxHSMsPerCluster = 28
	maxTags           = 50
)

func invalid(format string, a ...any) error {
	return hsmapi.NewException(excInvalid, fmt.Sprintf(format, a...))
}

// declaredRefusal answers what would change the hardware of a declared
// cluster, which is managed outside kmsd.
func declaredRefusal(id string) error {
	return invalid("Cluster %s is declared in kmsd's HSM configuration over existing tokens; its HSMs are managed outside kmsd.", id)
}

func notFound(id string) error {
	return hsmapi.NewException(excNotFound, "The resource "+id+" was not found.")
}

// supportedHsmTypes are the HSM types CreateCluster accepts.
var supportedHsmTypes = map[string]bool{"hsm1.medium": true, "hsm2m.medium": true}

// CreateCluster creates a cluster in CREATE_IN_PROGRESS; a background step
// makes its CSR and moves it to UNINITIALIZED after Config.CreateDelay.
// Each subnet gets an Availability Zone of the caller's Region in the order
// given (a, b, c, …): kmsd has no EC2 to ask, and CloudHSM wants one subnet
// per zone.
func (s *Service) CreateCluster(ctx context.Context, c Caller, in *hsmapi.CreateClusterRequest) (*hsmapi.CreateClusterResponse, error) {
	if !supportedHsmTypes[*in.HsmType] {
		return nil, invalid("HsmType %s is not supported; use hsm1.medium or hsm2m.medium.", *in.HsmType)
	}
	if len(in.SubnetIds) > 26 {
		return nil, invalid("Too many subnets.")
	}
	seen := map[string]bool{}
	for _, sn := range in.SubnetIds {
		if seen[sn] {
			return nil, invalid("Subnet %s is given more than once; give one subnet per Availability Zone.", sn)
		}
		seen[sn] = true
	}
	days := strconv.Itoa(defaultRetentionDays)
	if p := in.BackupRetentionPolicy; p != nil {
		var err error
		if days, err = retentionDays(p); err != nil {
			return nil, err
		}
	}
	tags, err := mergeTags(nil, in.TagList)
	if err != nil {
		return nil, err
	}
	if _, err := s.tokens(); err != nil {
		return nil, hsmapi.NewException(excService, "HSM clusters are unavailable on this kmsd: "+err.Error())
	}
	netType := "IPV4"
	if in.NetworkType != nil {
		netType = *in.NetworkType
	}
	mode := ""
	if in.Mode != nil {
		mode = *in.Mode
	}
	vpc := sha256.Sum256([]byte(c.Account + "/" + c.Region))
	r := &record{
		ID: s.newID("cluster-"), Account: c.Account, Region: c.Region, Created: s.now().UTC(),
		HsmType: *in.HsmType, Mode: mode, NetworkType: netType, RetentionDays: days,
		State: ClusterCreateInProgress, Due: s.dbNow().Add(s.cfg.CreateDelay), Subnets: map[string]string{}, SubnetOrder: in.SubnetIds,
		VpcID: "vpc-" + hex.EncodeToString(vpc[:4]), SecurityGroup: s.newHex("sg-", 17), Tags: tags,
	}
	for i, sn := range in.SubnetIds {
		r.Subnets[c.Region+string(rune('a'+i))] = sn
	}
	if in.SourceBackupId != nil {
		// The backup's HSM contents and certificate lineage, in the same
		// one write as the rest of the cluster.
		if err := s.restoreInto(ctx, c, *in.SourceBackupId, r); err != nil {
			return nil, err
		}
	} else {
		so, err := s.seal(soPINPath(r.ID), []byte(hex.EncodeToString(s.randomBytes(16))))
		if err != nil {
			return nil, err
		}
		r.SOPIN = so
		if r.Masking, err = s.seal(maskingPath(r.ID), s.randomBytes(32)); err != nil {
			return nil, err
		}
	}
	if err := s.put(ctx, r, true); err != nil {
		return nil, err
	}
	s.kick()
	return &hsmapi.CreateClusterResponse{Cluster: toWire(r)}, nil
}

// finishCreate gives the cluster its key pair and CSR: UNINITIALIZED. A
// cluster restored from a backup has them already and takes the state of
// the backed-up cluster.
func (s *Service) finishCreate(ctx context.Context, id string) {
	_, err := s.update(ctx, id, func(r *record) error {
		if r.State != ClusterCreateInProgress {
			return errSkip
		}
		r.Due = time.Time{}
		if r.SourceBackup != "" {
			r.State, r.StateMessage = r.RestoredState, ""
			return nil
		}
		csr, key, err := s.newCSR(r.ID)
		if err != nil {
			return err
		}
		if r.CSRKey, err = s.seal(csrKeyPath(r.ID), key); err != nil {
			return err
		}
		clear(key)
		r.CSR, r.State, r.StateMessage = csr, ClusterUninitialized, ""
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: finish creating cluster", "cluster", id, "err", err)
	}
}

// errSkip makes update store nothing: the step found the record changed.
var errSkip = errors.New("hsm: nothing to do")

// DescribeClusters lists the caller's clusters, filtered by clusterIds,
// vpcIds and states, a page at a time.
func (s *Service) DescribeClusters(ctx context.Context, c Caller, in *hsmapi.DescribeClustersRequest) (*hsmapi.DescribeClustersResponse, error) {
	for k, vs := range in.Filters {
		switch k {
		case "clusterIds", "vpcIds":
		case "states":
			for _, v := range vs {
				if !contains(hsmapi.EnumClusterState, v) {
					return nil, invalid("Invalid value %s for filter states.", v)
				}
			}
		default:
			return nil, invalid("Invalid filter key %s; valid keys are clusterIds, vpcIds and states.", k)
		}
	}
	after, err := decodeToken(in.NextToken)
	if err != nil {
		return nil, err
	}
	limit := 0
	if in.MaxResults != nil {
		limit = int(*in.MaxResults)
	}
	rs, err := s.list(ctx, c)
	if err != nil {
		return nil, err
	}
	out := &hsmapi.DescribeClustersResponse{Clusters: []hsmapi.Cluster{}}
	for _, r := range rs {
		if r.ID <= after {
			continue
		}
		if !match(in.Filters, "clusterIds", r.ID) || !match(in.Filters, "vpcIds", r.VpcID) || !match(in.Filters, "states", r.State) {
			continue
		}
		if limit > 0 && len(out.Clusters) == limit {
			out.NextToken = encodeToken(out.Clusters[limit-1].ClusterId)
			break
		}
		out.Clusters = append(out.Clusters, *toWire(r))
	}
	return out, nil
}

func match(filters map[string][]string, key, v string) bool {
	vs, ok := filters[key]
	return !ok || contains(vs, v)
}

func contains(set []string, v string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

func encodeToken(id *string) *string {
	t := base64.RawURLEncoding.EncodeToString([]byte("after:" + *id))
	return &t
}

func decodeToken(t *string) (string, error) {
	if t == nil || *t == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(*t)
	if err != nil || !strings.HasPrefix(string(b), "after:") {
		return "", invalid("The NextToken is not valid.")
	}
	return strings.TrimPrefix(string(b), "after:"), nil
}

// InitializeCluster checks that SignedCert certifies the cluster's CSR and
// chains to TrustAnchor, stores both, and moves the cluster to
// INITIALIZE_IN_PROGRESS (then INITIALIZED after Config.InitializeDelay).
func (s *Service) InitializeCluster(ctx context.Context, c Caller, in *hsmapi.InitializeClusterRequest) (*hsmapi.InitializeClusterResponse, error) {
	if _, ok, err := s.get(ctx, c, *in.ClusterId); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound(*in.ClusterId)
	}
	r, err := s.update(ctx, *in.ClusterId, func(r *record) error {
		if r.Account != c.Account || r.Region != c.Region {
			return notFound(r.ID)
		}
		if r.State != ClusterUninitialized {
			return invalid("Cluster %s is in state %s; only an UNINITIALIZED cluster can be initialized.", r.ID, r.State)
		}
		if err := checkSignedCert(r.CSR, *in.SignedCert, *in.TrustAnchor, s.now()); err != nil {
			return invalid("The certificates do not verify: %v.", err)
		}
		r.ClusterCert, r.TrustAnchor = strings.TrimSpace(*in.SignedCert)+"\n", strings.TrimSpace(*in.TrustAnchor)+"\n"
		r.State, r.StateMessage = ClusterInitializeInProgress, "Cluster is initializing. State will change to INITIALIZED upon completion."
		r.Due = s.dbNow().Add(s.cfg.InitializeDelay)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.kick()
	return &hsmapi.InitializeClusterResponse{State: hsmapi.String(r.State), StateMessage: hsmapi.String(r.StateMessage)}, nil
}

func (s *Service) finishInitialize(ctx context.Context, id string) {
	_, err := s.update(ctx, id, func(r *record) error {
		if r.State != ClusterInitializeInProgress {
			return errSkip
		}
		r.State, r.StateMessage, r.Due = ClusterInitialized, "", time.Time{}
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: finish initializing cluster", "cluster", id, "err", err)
	}
}

// hsmStates are the cluster states in which HSMs can be added.
var hsmStates = map[string]bool{ClusterUninitialized: true, ClusterInitialized: true, ClusterActive: true, ClusterDegraded: true}

// CreateHsm adds an HSM in an Availability Zone of the cluster's subnet
// mapping: CREATE_IN_PROGRESS, then a background step creates its token,
// gives it the cluster's users and keys, and makes it ACTIVE.
func (s *Service) CreateHsm(ctx context.Context, c Caller, in *hsmapi.CreateHsmRequest) (*hsmapi.CreateHsmResponse, error) {
	if r, ok, err := s.get(ctx, c, *in.ClusterId); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound(*in.ClusterId)
	} else if r.Declared {
		return nil, declaredRefusal(r.ID)
	}
	if _, err := s.tokens(); err != nil {
		return nil, hsmapi.NewException(excService, "HSMs are unavailable on this kmsd: "+err.Error())
	}
	var h hsmRecord
	_, err := s.update(ctx, *in.ClusterId, func(r *record) error {
		if !hsmStates[r.State] {
			return invalid("Cluster %s is in state %s; HSMs cannot be created in it.", r.ID, r.State)
		}
		az := *in.AvailabilityZone
		subnet, ok := r.Subnets[az]
		if !ok {
			return invalid("Availability Zone %s is not in the subnet mapping of cluster %s.", az, r.ID)
		}
		n := 0
		for _, x := range r.HSMs {
			if x.State != HSMDeleted {
				n++
			}
		}
		if n >= maxHSMsPerCluster {
			return invalid("Cluster %s has the maximum of %d HSMs.", r.ID, maxHSMsPerCluster)
		}
		ip, err := r.pickIP(subnet, in.IpAddress)
		if err != nil {
			return err
		}
		h = hsmRecord{ID: s.newID("hsm-"), AZ: az, SubnetID: subnet, EniID: s.newHex("eni-", 17), EniIP: ip,
			State: HSMCreateInProgress, Created: s.now().UTC(), Due: s.dbNow().Add(s.cfg.CreateDelay)}
		r.HSMs = append(r.HSMs, h)
		return nil
	})
	if err != nil {
		return nil, err
	}
	clusterID := *in.ClusterId
	s.kick()
	return &hsmapi.CreateHsmResponse{Hsm: hsmWire(clusterID, h)}, nil
}

// subnetCIDR is the address range kmsd gives subnet number i of a cluster:
// 10.0.<i>.0/24.
func subnetCIDR(i int) *net.IPNet {
	return &net.IPNet{IP: net.IPv4(10, 0, byte(i), 0).To4(), Mask: net.CIDRMask(24, 32)}
}

// pickIP checks a requested ENI address, or picks a free one, in subnet.
func (r *record) pickIP(subnet string, want *string) (string, error) {
	idx := 0
	for i, sn := range r.SubnetOrder {
		if sn == subnet {
			idx = i
		}
	}
	cidr := subnetCIDR(idx)
	used := map[string]bool{}
	for _, h := range r.HSMs {
		if h.State != HSMDeleted {
			used[h.EniIP] = true
		}
	}
	if want != nil {
		ip := net.ParseIP(*want).To4()
		if ip == nil || !cidr.Contains(ip) || ip[3] < 4 || ip[3] == 255 {
			return "", invalid("IP address %s is not a usable address of subnet %s (%s).", *want, subnet, cidr)
		}
		if used[ip.String()] {
			return "", invalid("IP address %s is already in use.", ip)
		}
		return ip.String(), nil
	}
	for host := 10; host < 255; host++ {
		ip := net.IPv4(10, 0, byte(idx), byte(host)).String()
		if !used[ip] {
			return ip, nil
		}
	}
	return "", invalid("Subnet %s has no free address.", subnet)
}

// finishCreateHSM creates the HSM's token and brings it in sync with the
// cluster: SO PIN, the crypto user, the masking key and every key. It runs
// on the controller (steps.go), and again if the controller that ran it
// died before recording the result: a token already labelled as the HSM
// is found and reused.
func (s *Service) finishCreateHSM(ctx context.Context, clusterID, hsmID string) {
	var syncErr error
	_, err := s.act(ctx, clusterID, func(r *record) error {
		h := r.hsm(hsmID)
		if h == nil || h.State != HSMCreateInProgress {
			return errSkip
		}
		if syncErr = s.createToken(ctx, r, h); syncErr != nil {
			if ctx.Err() != nil {
				return ctx.Err() // this controller's term ended: the next one goes on
			}
			h.State, h.StateMessage, h.Due = HSMDegraded, "The HSM could not be created: "+syncErr.Error(), time.Time{}
			return nil
		}
		h.State, h.StateMessage, h.Due = HSMActive, "", time.Time{}
		return nil
	})
	if syncErr != nil {
		s.log.Error("hsm: create HSM", "cluster", clusterID, "hsm", hsmID, "err", syncErr)
	}
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: finish creating HSM", "cluster", clusterID, "hsm", hsmID, "err", err)
	}
}

// createToken initialises h's token and syncs it. Callers hold r's lock.
func (s *Service) createToken(ctx context.Context, r *record, h *hsmRecord) error {
	toks, err := s.tokensFor(r)
	if err != nil {
		return err
	}
	so, err := s.open(soPINPath(r.ID), r.SOPIN)
	if err != nil {
		return err
	}
	defer clear(so)
	// Refresh, not Present: a token another process made (a node that
	// died after C_InitToken, on a shared token directory) is found only
	// once this process's module has scanned its slots again.
	if toks.Refresh(ctx, h.label()) != nil {
		if err := toks.InitToken(ctx, h.label(), string(so), s.cfg.FreeSlots); err != nil {
			return err
		}
		if s.cfg.Failpoint != nil {
			s.cfg.Failpoint("hsm.after-init-token")
		}
	}
	return s.syncToken(ctx, r, h.label(), string(so))
}

// syncToken gives token label the cluster's crypto user, masking key and
// keys. Callers hold r's lock.
func (s *Service) syncToken(ctx context.Context, r *record, label, so string) error {
	u := r.cryptoUser()
	if u == nil {
		return nil
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return err
	}
	pw, err := s.open(userPath(r.ID, u.Name), u.Password)
	if err != nil {
		return err
	}
	defer clear(pw)
	if err := toks.InitUserPIN(ctx, label, so, string(pw)); err != nil {
		return err
	}
	if err := toks.Login(ctx, label, string(pw)); err != nil {
		return err
	}
	err = s.syncKeys(ctx, r, label)
	if !s.loggedIn(r.ID) {
		toks.Logout(ctx, label)
	}
	return err
}

// syncKeys imports the masking key and unwraps every key of the cluster
// into token label, which must be logged in.
func (s *Service) syncKeys(ctx context.Context, r *record, label string) error {
	toks, err := s.tokensFor(r)
	if err != nil {
		return err
	}
	mk, err := s.open(maskingPath(r.ID), r.Masking)
	if err != nil {
		return err
	}
	defer clear(mk)
	if err := toks.ImportMasking(ctx, label, mk); err != nil {
		return err
	}
	for _, k := range r.Keys {
		if err := toks.UnwrapKey(ctx, label, k.Label, k.Wrapped, mk); err != nil {
			return fmt.Errorf("key %s: %w", k.Label, err)
		}
	}
	return nil
}

// DeleteHsm deletes the HSM named by HsmId, EniId or EniIp:
// DELETE_IN_PROGRESS, then its token is deleted and it leaves the cluster.
// The cluster's last HSM (the last one not being deleted) is refused while
// a custom key store using the cluster is CONNECTED or CONNECTING (the
// StoreGuard's check and the deletion are one step for the guard).
func (s *Service) DeleteHsm(ctx context.Context, c Caller, in *hsmapi.DeleteHsmRequest) (*hsmapi.DeleteHsmResponse, error) {
	if r, ok, err := s.get(ctx, c, *in.ClusterId); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound(*in.ClusterId)
	} else if r.Declared {
		return nil, declaredRefusal(r.ID)
	}
	if in.HsmId == nil && in.EniId == nil && in.EniIp == nil {
		return nil, invalid("One of HsmId, EniId or EniIp is required.")
	}
	var hsmID string
	err := s.guarded(ctx, *in.ClusterId, func(storeID, state string) error {
		_, err := s.update(ctx, *in.ClusterId, func(r *record) error {
			for i := range r.HSMs {
				h := &r.HSMs[i]
				if in.HsmId != nil && h.ID != *in.HsmId || in.EniId != nil && h.EniID != *in.EniId || in.EniIp != nil && h.EniIP != *in.EniIp {
					continue
				}
				if h.State == HSMDeleteInProgress || h.State == HSMDeleted {
					return invalid("HSM %s is already being deleted.", h.ID)
				}
				if storeID != "" && r.remainingHSMs() == 1 {
					return storeBusy(r.ID, storeID, state, h.ID)
				}
				h.State, h.StateMessage, hsmID = HSMDeleteInProgress, "", h.ID
				h.Due = s.dbNow().Add(s.cfg.DeleteDelay)
				return nil
			}
			name := ""
			switch {
			case in.HsmId != nil:
				name = *in.HsmId
			case in.EniId != nil:
				name = *in.EniId
			default:
				name = *in.EniIp
			}
			return notFound(name)
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	s.kick()
	return &hsmapi.DeleteHsmResponse{HsmId: hsmapi.String(hsmID)}, nil
}

func (s *Service) finishDeleteHSM(ctx context.Context, clusterID, hsmID string) {
	_, err := s.act(ctx, clusterID, func(r *record) error {
		h := r.hsm(hsmID)
		if h == nil || h.State != HSMDeleteInProgress {
			return errSkip
		}
		if toks, err := s.tokensFor(r); err == nil {
			if err := toks.DeleteToken(ctx, h.label()); err != nil {
				s.log.Warn("hsm: delete token", "cluster", clusterID, "hsm", hsmID, "err", err)
			}
		}
		hs := r.HSMs[:0]
		for _, x := range r.HSMs {
			if x.ID != hsmID {
				hs = append(hs, x)
			}
		}
		r.HSMs = hs
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: finish deleting HSM", "cluster", clusterID, "hsm", hsmID, "err", err)
	}
}

// DeleteCluster deletes a cluster that has no HSMs left:
// DELETE_IN_PROGRESS, then DELETED, its secrets, users and keys erased.
// It is refused while a custom key store using the cluster is CONNECTED or
// CONNECTING; a cluster behind a DISCONNECTED store can be deleted, as in
// AWS, and the store then fails to connect with CLUSTER_NOT_FOUND.
func (s *Service) DeleteCluster(ctx context.Context, c Caller, in *hsmapi.DeleteClusterRequest) (*hsmapi.DeleteClusterResponse, error) {
	if r, ok, err := s.get(ctx, c, *in.ClusterId); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFound(*in.ClusterId)
	} else if r.Declared {
		return nil, declaredRefusal(r.ID)
	} else if len(r.HSMs) == 0 && backedUp(r) {
		// A change still waiting for its backup is backed up first (it
		// is harmless if the deletion is then refused). Not for a
		// request refused anyway, which must change nothing: the backup
		// clears the record's marker.
		s.flushBackup(ctx, *in.ClusterId)
	}
	var r *record
	err := s.guarded(ctx, *in.ClusterId, func(storeID, state string) error {
		var err error
		r, err = s.update(ctx, *in.ClusterId, func(r *record) error {
			switch r.State {
			case ClusterCreateInProgress, ClusterInitializeInProgress, ClusterDeleteInProgress, ClusterDeleted:
				return invalid("Cluster %s is in state %s and cannot be deleted.", r.ID, r.State)
			}
			// Before the HSM count: the store is what the caller must
			// act on first.
			if storeID != "" {
				return storeBusy(r.ID, storeID, state, "")
			}
			if len(r.HSMs) > 0 {
				return invalid("Cluster %s still has HSMs; delete them before deleting the cluster.", r.ID)
			}
			r.State, r.StateMessage = ClusterDeleteInProgress, ""
			r.Due = s.dbNow().Add(s.cfg.DeleteDelay)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	s.kick()
	return &hsmapi.DeleteClusterResponse{Cluster: toWire(r)}, nil
}

func (s *Service) finishDeleteCluster(ctx context.Context, id string) {
	_, err := s.update(ctx, id, func(r *record) error {
		if r.State != ClusterDeleteInProgress {
			return errSkip
		}
		r.State, r.StateMessage, r.Due = ClusterDeleted, "", time.Time{}
		r.SOPIN, r.Masking, r.CSRKey, r.Users, r.Keys = nil, nil, nil, nil, nil
		return nil
	})
	s.mu.Lock()
	delete(s.logins, id)
	s.mu.Unlock()
	if err != nil && !errors.Is(err, errSkip) {
		s.log.Error("hsm: finish deleting cluster", "cluster", id, "err", err)
	}
}

// retentionDays checks a BackupRetentionPolicy: Type DAYS, 7 to 379.
func retentionDays(p *hsmapi.BackupRetentionPolicy) (string, error) {
	if p.Type != nil && *p.Type != "DAYS" || p.Value == nil {
		return "", invalid("BackupRetentionPolicy must have Type DAYS and a Value.")
	}
	n, err := strconv.Atoi(*p.Value)
	if err != nil || n < 7 || n > 379 {
		return "", invalid("BackupRetentionPolicy Value must be between 7 and 379 days.")
	}
	return strconv.Itoa(n), nil
}

// ModifyCluster changes a cluster's backup retention policy, which the
// backup sweeper honours from then on. Changing the HSM type (a migration
// CloudHSM runs for hours) is not supported: only the current type is
// accepted.
func (s *Service) ModifyCluster(ctx context.Context, c Caller, in *hsmapi.ModifyClusterRequest) (*hsmapi.ModifyClusterResponse, error) {
	cur, ok, err := s.get(ctx, c, *in.ClusterId)
	if err != nil {
		return nil, err
	}
	if !ok || cur.State == ClusterDeleted {
		return nil, notFound(*in.ClusterId)
	}
	if in.BackupRetentionPolicy == nil && in.HsmType == nil {
		return nil, invalid("Give a BackupRetentionPolicy or an HsmType to modify.")
	}
	var days string
	if in.BackupRetentionPolicy != nil {
		var err error
		if days, err = retentionDays(in.BackupRetentionPolicy); err != nil {
			return nil, err
		}
	}
	r, err := s.update(ctx, *in.ClusterId, func(r *record) error {
		if in.HsmType != nil && *in.HsmType != r.HsmType {
			return invalid("Changing the HSM type of cluster %s from %s to %s is not supported by kmsd.", r.ID, r.HsmType, *in.HsmType)
		}
		switch r.State {
		case ClusterCreateInProgress, ClusterDeleteInProgress, ClusterDeleted:
			return invalid("Cluster %s is in state %s and cannot be modified.", r.ID, r.State)
		}
		if days != "" {
			r.RetentionDays = days
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &hsmapi.ModifyClusterResponse{Cluster: toWire(r)}, nil
}

// mergeTags adds tags to cur (replacing values of existing keys).
func mergeTags(cur []tag, in []hsmapi.Tag) ([]tag, error) {
	out := append([]tag(nil), cur...)
	seen := map[string]bool{}
	for _, t := range in {
		k := *t.Key
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return nil, hsmapi.NewException(excTag, "Tag keys starting with aws: are reserved.")
		}
		if seen[k] {
			return nil, hsmapi.NewException(excTag, "Tag key "+k+" is given more than once.")
		}
		seen[k] = true
		replaced := false
		for i := range out {
			if out[i].Key == k {
				out[i].Value, replaced = *t.Value, true
			}
		}
		if !replaced {
			out = append(out, tag{Key: k, Value: *t.Value})
		}
	}
	if len(out) > maxTags {
		return nil, hsmapi.NewException(excLimit, fmt.Sprintf("A resource can have at most %d tags.", maxTags))
	}
	return out, nil
}

// tagsOf returns the tags of cluster or backup id of c's account and
// Region.
func (s *Service) tagsOf(ctx context.Context, c Caller, id string) ([]tag, error) {
	if strings.HasPrefix(id, "backup-") {
		b, err := s.callerBackup(ctx, c, id)
		if err != nil {
			return nil, err
		}
		return b.Tags, nil
	}
	r, ok, err := s.get(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if !ok || r.State == ClusterDeleted {
		return nil, notFound(id)
	}
	return r.Tags, nil
}

// retag replaces the tags of cluster or backup id with fn's result.
func (s *Service) retag(ctx context.Context, c Caller, id string, fn func([]tag) ([]tag, error)) error {
	if strings.HasPrefix(id, "backup-") {
		_, err := s.updateBackup(ctx, c, id, func(b *backupRecord) error {
			tags, err := fn(append([]tag(nil), b.Tags...))
			b.Tags = tags
			return err
		})
		return err
	}
	if _, err := s.tagsOf(ctx, c, id); err != nil {
		return err
	}
	_, err := s.update(ctx, id, func(r *record) error {
		tags, err := fn(r.Tags)
		r.Tags = tags
		return err
	})
	return err
}

// TagResource adds or replaces tags of a cluster or backup.
func (s *Service) TagResource(ctx context.Context, c Caller, in *hsmapi.TagResourceRequest) (*hsmapi.TagResourceResponse, error) {
	err := s.retag(ctx, c, *in.ResourceId, func(cur []tag) ([]tag, error) { return mergeTags(cur, in.TagList) })
	if err != nil {
		return nil, err
	}
	return &hsmapi.TagResourceResponse{}, nil
}

// UntagResource removes tags of a cluster or backup by key; absent keys
// are ignored.
func (s *Service) UntagResource(ctx context.Context, c Caller, in *hsmapi.UntagResourceRequest) (*hsmapi.UntagResourceResponse, error) {
	err := s.retag(ctx, c, *in.ResourceId, func(cur []tag) ([]tag, error) {
		out := cur[:0]
		for _, t := range cur {
			if !contains(in.TagKeyList, t.Key) {
				out = append(out, t)
			}
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	return &hsmapi.UntagResourceResponse{}, nil
}

// ListTags lists a cluster's or backup's tags a page at a time.
func (s *Service) ListTags(ctx context.Context, c Caller, in *hsmapi.ListTagsRequest) (*hsmapi.ListTagsResponse, error) {
	tags, err := s.tagsOf(ctx, c, *in.ResourceId)
	if err != nil {
		return nil, err
	}
	r := &record{Tags: tags}
	start := 0
	if in.NextToken != nil && *in.NextToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(*in.NextToken)
		n, aerr := strconv.Atoi(strings.TrimPrefix(string(b), "tag:"))
		if err != nil || aerr != nil || !strings.HasPrefix(string(b), "tag:") || n < 0 || n > len(r.Tags) {
			return nil, invalid("The NextToken is not valid.")
		}
		start = n
	}
	end := len(r.Tags)
	if in.MaxResults != nil && start+int(*in.MaxResults) < end {
		end = start + int(*in.MaxResults)
	}
	out := &hsmapi.ListTagsResponse{TagList: []hsmapi.Tag{}}
	for _, t := range r.Tags[start:end] {
		out.TagList = append(out.TagList, hsmapi.Tag{Key: hsmapi.String(t.Key), Value: hsmapi.String(t.Value)})
	}
	if end < len(r.Tags) {
		tok := base64.RawURLEncoding.EncodeToString([]byte("tag:" + strconv.Itoa(end)))
		out.NextToken = &tok
	}
	return out, nil
}

func hsmWire(clusterID string, h hsmRecord) *hsmapi.Hsm {
	w := &hsmapi.Hsm{
		AvailabilityZone: hsmapi.String(h.AZ), ClusterId: hsmapi.String(clusterID), SubnetId: hsmapi.String(h.SubnetID),
		EniId: hsmapi.String(h.EniID), EniIp: hsmapi.String(h.EniIP), HsmId: hsmapi.String(h.ID), State: hsmapi.String(h.State),
	}
	if h.StateMessage != "" {
		w.StateMessage = hsmapi.String(h.StateMessage)
	}
	return w
}

// toWire renders a record as the Cluster shape.
func toWire(r *record) *hsmapi.Cluster {
	w := &hsmapi.Cluster{
		BackupPolicy:          hsmapi.String("DEFAULT"),
		BackupRetentionPolicy: &hsmapi.BackupRetentionPolicy{Type: hsmapi.String("DAYS"), Value: hsmapi.String(r.RetentionDays)},
		ClusterId:             hsmapi.String(r.ID),
		CreateTimestamp:       hsmapi.NewTime(r.Created),
		Hsms:                  []hsmapi.Hsm{},
		HsmType:               hsmapi.String(r.HsmType),
		SecurityGroup:         hsmapi.String(r.SecurityGroup),
		State:                 hsmapi.String(r.State),
		SubnetMapping:         r.Subnets,
		VpcId:                 hsmapi.String(r.VpcID),
		NetworkType:           hsmapi.String(r.NetworkType),
		Certificates:          &hsmapi.Certificates{},
	}
	if r.Mode != "" {
		w.Mode = hsmapi.String(r.Mode)
	}
	if r.StateMessage != "" {
		w.StateMessage = hsmapi.String(r.StateMessage)
	}
	for _, h := range r.HSMs {
		w.Hsms = append(w.Hsms, *hsmWire(r.ID, h))
	}
	if r.State == ClusterUninitialized && r.CSR != "" {
		w.Certificates.ClusterCsr = hsmapi.String(r.CSR)
	}
	if r.ClusterCert != "" {
		w.Certificates.ClusterCertificate = hsmapi.String(r.ClusterCert)
	}
	if r.SourceBackup != "" {
		w.SourceBackupId = hsmapi.String(r.SourceBackup)
	}
	for _, t := range r.Tags {
		w.TagList = append(w.TagList, hsmapi.Tag{Key: hsmapi.String(t.Key), Value: hsmapi.String(t.Value)})
	}
	return w
}
