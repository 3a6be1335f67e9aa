package server

// HSM clusters on kmsd's listener: the CloudHSM v2 API subset
// (X-Amz-Target: BaldrApiService.*, SigV4 signing name "cloudhsm") and
// kmsd's admin API for kmsctl's cloudhsm-cli commands (KmsdAdmin.*, signing
// name "kms", admin.go). api.ServeHTTP hands these targets to serveHSM
// before its KMS verification.
//
// Who may do what: every CloudHSM v2 operation is authorized through the
// KMS policy engine, from the caller's IAM identity policies
// (cloudhsmauthz.go). The admin API stands for the CloudHSM CLI, which
// talks to the HSMs with HSM-user credentials rather than IAM: its gate is
// the account's administrator identity (root, or kmsd's kmsd-admin user;
// isAdmin) plus the HSM user's password where the CLI asks for one. No
// other IAM principal may call it whatever its policies allow, so a user
// the policies deny cannot reach the clusters through it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/controller"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/storage"
)

// hsmPrincipals resolves a verified access key to its identity, as the
// KMS path does; nil in emulator mode, where every caller is the
// account's root.
type hsmPrincipals interface {
	IdentityFor(akid, token string) (*identity.Identity, bool)
}

// hsmServer serves the HSM cluster APIs.
type hsmServer struct {
	svc         *hsm.Service
	verifier    *sigv4.Verifier // service "cloudhsm"
	kmsVerifier *sigv4.Verifier // service "kms", for the admin API
	ids         hsmPrincipals
	authz       hsmAuthorizer // decides CloudHSM v2 calls (the KMS service)
	account     string
	log         *slog.Logger
	faults      *keystore.Faults  // fault injection (fault.go); nil when off
	stores      *keystore.Manager // for fault injection
}

// hsmConfigFromEnv reads the HSM settings: KMSD_HSM_MODULE (the SoftHSM2
// module), KMSD_HSM_CREATE_DELAY, KMSD_HSM_INITIALIZE_DELAY and
// KMSD_HSM_DELETE_DELAY (Go durations; how long clusters and HSMs stay in
// their *_IN_PROGRESS states, 2s by default), KMSD_HSM_PROBE_INTERVAL (how
// often every HSM's token is checked, 10s by default; cfg.HSMProbeInterval,
// from --hsm-probe-interval, wins), KMSD_HSM_BACKUP_DELAY (how long after
// a change of a cluster's keys or users its backup starts, 30s by
// default), KMSD_HSM_SWEEP_INTERVAL (how often due and expired backups
// are looked for, 10m by default), KMSD_HSM_SLOTS (comma-separated slot
// ids: the only slots of KMSD_HSM_MODULE whose free tokens CreateHsm takes,
// for a module such as openCryptoki whose slots its own configuration
// fixes), KMSD_HSM_FACTORY_SO_PIN (the SO PIN the module's uninitialised
// tokens take at C_InitToken, e.g. openCryptoki's 87654321; changed to
// the cluster's at once), KMSD_FAILPOINT (tests only: hsm.after-init-token
// kills kmsd with SIGKILL right after it made an HSM's token), and
// SOFTHSM2_CONF, which kmsd's SoftHSM2 module then uses instead of the
// configuration it writes under the data directory. The clusters declared
// in cfg.HSMConfig belong to kmsd's account and default Region unless they
// name others.
func hsmConfigFromEnv(cfg Config, log *slog.Logger) (hsm.Config, error) {
	hcfg := hsm.Config{Dir: filepath.Join(cfg.DataDir, "hsm"), TokenDir: cfg.HSMTokenDir, Module: os.Getenv("KMSD_HSM_MODULE"), Logger: log,
		SoftHSMConf: os.Getenv("SOFTHSM2_CONF"),
		CreateDelay: 2 * time.Second, InitializeDelay: 2 * time.Second, DeleteDelay: 2 * time.Second, ProbeInterval: 10 * time.Second}
	if cfg.HSMConfig != "" {
		ds, err := hsm.LoadDeclarations(cfg.HSMConfig, cfg.AccountID, cfg.DefaultRegion)
		if err != nil {
			return hcfg, err
		}
		hcfg.Declared = ds
	}
	if len(cfg.seedClusters) > 0 {
		// The seed file's clusters join --hsm-config's, checked together
		// (an id declared in both is refused).
		hcfg.Declared = append(hcfg.Declared, cfg.seedClusters...)
		if err := hsm.ValidateDeclarations(hcfg.Declared); err != nil {
			return hcfg, fmt.Errorf("seed file and hsm config: %w", err)
		}
	}
	for env, d := range map[string]*time.Duration{
		"KMSD_HSM_CREATE_DELAY": &hcfg.CreateDelay, "KMSD_HSM_INITIALIZE_DELAY": &hcfg.InitializeDelay, "KMSD_HSM_DELETE_DELAY": &hcfg.DeleteDelay,
		"KMSD_HSM_PROBE_INTERVAL": &hcfg.ProbeInterval,
		"KMSD_HSM_BACKUP_DELAY":   &hcfg.BackupDelay, "KMSD_HSM_SWEEP_INTERVAL": &hcfg.SweepInterval,
	} {
		if v := os.Getenv(env); v != "" {
			p, err := time.ParseDuration(v)
			if err != nil || p < 0 {
				return hcfg, errors.New(env + ": want a duration such as 500ms")
			}
			*d = p
		}
	}
	if cfg.HSMProbeInterval > 0 {
		hcfg.ProbeInterval = cfg.HSMProbeInterval
	}
	if v := os.Getenv("KMSD_HSM_SLOTS"); v != "" {
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
			if err != nil {
				return hcfg, fmt.Errorf("KMSD_HSM_SLOTS %q: want slot ids such as 4,5", v)
			}
			hcfg.FreeSlots.Slots = append(hcfg.FreeSlots.Slots, uint(n))
		}
	}
	hcfg.FreeSlots.FactorySOPIN = os.Getenv("KMSD_HSM_FACTORY_SO_PIN")
	if fp := os.Getenv("KMSD_FAILPOINT"); fp != "" {
		// Test-only: the process dies at that point, as kill -9 would.
		hcfg.Failpoint = func(name string) {
			if name == fp {
				log.Warn("failpoint reached: killing this process", "failpoint", name)
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	hcfg.BackupInterval = cfg.HSMBackupInterval
	// The probe and backup loops are controller duties (server.go).
	hcfg.Controlled = true
	return hcfg, nil
}

// newHSMServer opens the HSM clusters kept in store. kmsVerifier is the
// KMS listener's verifier; the cloudhsm one shares its access keys.
func newHSMServer(ctx context.Context, cfg Config, store storage.Store, b *barrier.Barrier, kmsVerifier *sigv4.Verifier, ids hsmPrincipals, log *slog.Logger) (*hsmServer, error) {
	hcfg, err := hsmConfigFromEnv(cfg, log)
	if err != nil {
		return nil, err
	}
	// Steps and backups fall due on the database's clock, which every
	// node agrees on, not on the clock of the node that scheduled them:
	// the one the core's kms Service takes its times on (openCore).
	hcfg.Clock = cfg.clock
	// Writes of the probe and backup loops, controller duties, are
	// fenced by its lease (controller.Fence); API requests' are not.
	svc, err := hsm.New(ctx, controller.Fence(store), b, hcfg)
	if err != nil {
		return nil, err
	}
	v := &sigv4.Verifier{Service: "cloudhsm", Lookup: kmsVerifier.Lookup, Now: kmsVerifier.Now, MaxSkew: kmsVerifier.MaxSkew,
		ProtocolContentType: kmsVerifier.ProtocolContentType}
	return &hsmServer{svc: svc, verifier: v, kmsVerifier: kmsVerifier, ids: ids, account: cfg.AccountID, log: log}, nil
}

// Close stops the HSM service.
func (h *hsmServer) Close() error { return h.svc.Close() }

// serveHSM serves the request if its target belongs to the HSM APIs, and
// reports whether it did.
func (a *api) serveHSM(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record) bool {
	if a.hsm == nil {
		return false
	}
	target := r.Header.Get("X-Amz-Target")
	switch {
	case strings.HasPrefix(target, hsmapi.TargetPrefix+"."):
		a.hsm.serveCloudHSM(w, r, body, rec, a.metrics)
	case target == adminPrefix+"."+injectConnectFault:
		a.hsm.serveInjectFault(w, r, body, rec, a.metrics)
	case strings.HasPrefix(target, adminPrefix+"."):
		a.hsm.serveAdmin(w, r, body, rec, a.metrics)
	default:
		return false
	}
	return true
}

// caller verifies the request with v and returns who signed it, resolved
// and built as the KMS path builds its kms.Caller (handler.go): the
// principal and its identity policies, temporary credentials with their
// session token; in emulator mode the account's root, trusted. It records
// the caller in rec.
func (h *hsmServer) caller(r *http.Request, body []byte, v *sigv4.Verifier, rec *audit.Record) (kms.Caller, *hsmapi.Exception) {
	res, err := verify(v, r, body)
	if err != nil {
		var se *sigv4.Error
		if errors.As(err, &se) {
			return kms.Caller{}, hsmapi.NewException(se.Code, se.Message)
		}
		return kms.Caller{}, hsmapi.NewException("InternalFailure", "")
	}
	rec.AWSRegion = res.Region
	c := kms.Caller{Account: h.account, Region: res.Region, RequestID: rec.RequestID, SourceIP: rec.SourceIPAddress, SecureTransport: r.TLS != nil}
	if h.ids == nil {
		c.ARN, c.Trusted = identity.Root(h.account).ARN, true
		setRoot(rec, h.account, res.AccessKeyID)
		return c, nil
	}
	id, ok := h.ids.IdentityFor(res.AccessKeyID, res.SessionToken)
	if !ok || !tokenMatches(id, res.SessionToken) {
		return kms.Caller{}, hsmapi.NewException("UnrecognizedClientException", "The security token included in the request is invalid.")
	}
	actAs(&c, id)
	setIdentity(rec, id)
	return c, nil
}

// hsmCaller is the hsm package's view of a caller: whose clusters.
func hsmCaller(c *kms.Caller) hsm.Caller { return hsm.Caller{Account: c.Account, Region: c.Region} }

// hsmHandler decodes, validates and runs one CloudHSM v2 operation.
type hsmHandler struct {
	decode func(body []byte) (any, error)
	call   func(ctx context.Context, s *hsm.Service, c hsm.Caller, in any) (any, error)
}

func hsmOp[I any, O any, PI interface {
	*I
	hsmapi.Validator
}](f func(*hsm.Service, context.Context, hsm.Caller, PI) (*O, error)) hsmHandler {
	return hsmHandler{
		decode: func(body []byte) (any, error) {
			in := PI(new(I))
			if err := awsjson.Decode(body, in); err != nil {
				return nil, hsmapi.NewException(err.Code, err.Message)
			}
			if msg := hsmapi.Validate(in); msg != "" {
				return nil, hsmapi.NewException("ValidationException", msg)
			}
			return in, nil
		},
		call: func(ctx context.Context, s *hsm.Service, c hsm.Caller, in any) (any, error) {
			return f(s, ctx, c, in.(PI))
		},
	}
}

// hsmHandlers are the CloudHSM v2 operations kmsd serves.
var hsmHandlers = map[string]hsmHandler{
	"CopyBackupToRegion":     hsmOp((*hsm.Service).CopyBackupToRegion),
	"CreateCluster":          hsmOp((*hsm.Service).CreateCluster),
	"CreateHsm":              hsmOp((*hsm.Service).CreateHsm),
	"DeleteBackup":           hsmOp((*hsm.Service).DeleteBackup),
	"DeleteCluster":          hsmOp((*hsm.Service).DeleteCluster),
	"DeleteHsm":              hsmOp((*hsm.Service).DeleteHsm),
	"DescribeBackups":        hsmOp((*hsm.Service).DescribeBackups),
	"DescribeClusters":       hsmOp((*hsm.Service).DescribeClusters),
	"InitializeCluster":      hsmOp((*hsm.Service).InitializeCluster),
	"ListTags":               hsmOp((*hsm.Service).ListTags),
	"ModifyBackupAttributes": hsmOp((*hsm.Service).ModifyBackupAttributes),
	"ModifyCluster":          hsmOp((*hsm.Service).ModifyCluster),
	"RestoreBackup":          hsmOp((*hsm.Service).RestoreBackup),
	"TagResource":            hsmOp((*hsm.Service).TagResource),
	"UntagResource":          hsmOp((*hsm.Service).UntagResource),
}

func (h *hsmServer) serveCloudHSM(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record, m *metrics) {
	reqID := rec.RequestID
	opName, _ := awsjson.Target(r.Header.Get("X-Amz-Target"), hsmapi.TargetPrefix)
	rec.EventSource = "cloudhsm.amazonaws.com"
	if hsmapi.Operations[opName] != nil {
		rec.EventName = opName
		rec.ReadOnly = strings.HasPrefix(opName, "Describe") || strings.HasPrefix(opName, "List")
	}
	fail := func(e *hsmapi.Exception) {
		label := opName
		if hsmapi.Operations[opName] == nil {
			label = "unknown"
		}
		m.fail("cloudhsm:"+label, e.Name)
		rec.ErrorCode, rec.ErrorMessage = e.Name, e.Message
		writeHSMError(w, reqID, e)
	}
	kc, exc := h.caller(r, body, h.verifier, rec)
	if exc != nil {
		fail(exc)
		return
	}
	if hsmapi.Operations[opName] == nil {
		fail(hsmapi.NewException("UnknownOperationException", ""))
		return
	}
	op, ok := hsmHandlers[opName]
	if !ok {
		// As on the KMS path, a caller without permission hears so before
		// hearing that kmsd lacks the operation (decided on "*": the
		// input is not decoded).
		if _, known := kms.Authorizations["cloudhsm:"+opName]; known {
			if exc := h.authorize(&kc, opName, nil, rec); exc != nil {
				fail(exc)
				return
			}
		}
		fail(hsmapi.NewException("CloudHsmServiceException", "kmsd does not support "+opName+"."))
		return
	}
	in, err := op.decode(body)
	if err == nil {
		rec.RequestParameters = in // CloudHSM v2 inputs carry no secrets
		if exc := h.authorize(&kc, opName, in, rec); exc != nil {
			fail(exc)
			return
		}
		var out any
		if out, err = op.call(r.Context(), h.svc, hsmCaller(&kc), in); err == nil {
			m.requests.WithLabelValues("cloudhsm:"+opName, "OK").Inc()
			awsjson.WriteJSON(w, reqID, out)
			return
		}
	}
	var e *hsmapi.Exception
	if !errors.As(err, &e) {
		h.log.Error("cloudhsm internal error", "op", opName, "requestId", reqID, "err", err)
		e = hsmapi.NewException("CloudHsmInternalFailureException", "The request was rejected because of an internal failure of kmsd.")
	}
	fail(e)
}

// writeHSMError writes CloudHSM's error envelope, which spells the message
// member "Message" (spec §13).
func writeHSMError(w http.ResponseWriter, reqID string, e *hsmapi.Exception) {
	b, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"Message,omitempty"`
	}{e.Name, e.Message})
	hd := w.Header()
	hd["Content-Type"] = []string{awsjson.ContentType}
	hd["X-Amzn-Requestid"] = []string{reqID}
	hd["X-Amzn-Errortype"] = []string{e.Name}
	status := hsmapi.Status(e.Name)
	if e.Name == "MissingAuthenticationTokenException" {
		status = http.StatusForbidden
	}
	w.WriteHeader(status)
	w.Write(b)
}

// startHSM opens the HSM clusters and the custom key stores they back
// (KMSD_KEYSTORE_CONNECT_DELAY: how long a store at least stays CONNECTING
// or DISCONNECTING, 500ms by default) and attaches them to a; the returned
// function stops them. It runs after a's verifier and identities are set.
func (a *api) startHSM(ctx context.Context, cfg Config, store storage.Store, b *barrier.Barrier, log *slog.Logger) (func(), error) {
	var ids hsmPrincipals
	if a.ids != nil {
		ids = a.ids
	}
	h, err := newHSMServer(ctx, cfg, store, b, a.verifier, ids, log)
	if err != nil {
		return nil, err
	}
	h.authz = a.svc // before a.hsm: no request runs undecided
	a.hsm = h
	a.mustRegister(hsmCollector{h.svc})
	// [keystore] Custom key stores, backed by these clusters.
	delay := 500 * time.Millisecond
	if v := os.Getenv("KMSD_KEYSTORE_CONNECT_DELAY"); v != "" {
		if delay, err = time.ParseDuration(v); err != nil || delay < 0 {
			h.Close()
			return nil, errors.New("KMSD_KEYSTORE_CONNECT_DELAY: want a duration such as 500ms")
		}
	}
	backing := &keystore.CloudHSM{Clusters: h.svc}
	ext, xksInterval, err := xksBacking(cfg)
	if err != nil {
		h.Close()
		return nil, err
	}
	kcfg := keystore.Config{
		Backings:     h.faulty(map[string]keystore.Backing{keystore.TypeCloudHSM: backing, keystore.TypeExternal: ext}),
		ConnectDelay: delay, Connectors: cfg.Connectors, Logger: log,
		// A store resumed while its HSMs are down logs in at most a probe
		// interval after the probe finds them back.
		ResumeRetry:     h.svc.ProbeInterval(),
		OnConnectResult: a.auditConnectResult,
	}
	ksStore := store
	if a.ctl != nil {
		// Connects and disconnects are the controller's (MULTINODE.md
		// §4.7): they run under its lease, their writes fenced by it.
		ctl := a.ctl
		ksStore = controller.Fence(store)
		kcfg.NodeID = ctl.NodeID()
		kcfg.Serve = func(ctx context.Context, fn func(ctx context.Context)) { ctl.Serve(ctx, fn) }
		kcfg.ActUntil = func(ctx context.Context) (time.Time, bool) {
			l, ok := controller.LeaseFrom(ctx)
			if !ok {
				return time.Time{}, false
			}
			if d, ok := ctl.Deadline(l.Epoch); ok {
				return d, true
			}
			return time.Now(), true // no longer held: do not act
		}
		if ls, ok := store.(storage.Leaser); ok {
			kcfg.LiveNodes = func(ctx context.Context) ([]string, error) { return liveNodes(ctx, ls) }
		}
	}
	kcfg.Failpoint = failpoint(log)
	ks, err := keystore.New(ctx, ksStore, b, kcfg)
	if err != nil {
		h.Close()
		return nil, err
	}
	h.stores = ks
	a.mustRegister(rotationsCollector{ks})
	// No cluster, nor its last HSM, goes while a store using it is
	// connected or connecting.
	h.svc.SetStoreGuard(ks.GuardCluster)
	a.svc.SetKeyStores(ks, backing, h.svc)
	a.startXKS(ks, ext, xksInterval, log)
	return func() { ks.Close(); h.Close() }, nil
}
