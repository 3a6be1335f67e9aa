// Package hsm runs kmsd's HSM clusters, the backing store of CloudHSM key
// stores. A cluster is a set of HSMs; an HSM is a PKCS#11 token. With the
// built-in SoftHSM2 provider kmsd creates a token per HSM itself (under its
// data directory), assigns it the Availability Zone of its subnet, and keeps
// the cluster's crypto user and keys in sync across its HSMs, so that a new
// HSM receives the cluster's keys as a CloudHSM HSM does.
//
// The package serves three audiences:
//
//   - the CloudHSM v2 API subset (CreateCluster, DescribeClusters,
//     InitializeCluster, CreateHsm, DeleteHsm, DeleteCluster, ModifyCluster,
//     the backup operations, tags), whose
//     methods take and return hsmapi wire shapes, with the cluster and HSM
//     states of the real service and small, configurable delays for the
//     asynchronous steps (the caller authorizes them; a StoreGuard keeps a
//     cluster, and its last HSM, while a key store using it is connected);
//   - the CloudHSM CLI side (cluster activation, crypto users, login and
//     logout, key list and delete), reached through kmsd's admin API;
//   - the key store layer above, which creates non-extractable AES-256 keys
//     in a cluster, encrypts and decrypts with CKM_AES_GCM, draws random
//     bytes and deletes keys, and gets typed errors (ErrUnreachable,
//     ErrNoActiveHSM, ErrKeyNotFound, ErrNotLoggedIn, ErrPINLocked, …) to map
//     to connection error codes and exceptions.
//
// Users map onto the token roles: the cluster's admin ("cluster activate
// --password") is the token's Security Officer, and the one crypto user
// (kmsuser) is the token's user, whose PIN is really checked with C_Login and
// changed with C_SetPIN on every HSM. SoftHSM2 keeps no failed-login counter,
// so kmsd keeps one per crypto user (persisted) and refuses logins after
// five failures until the admin resets the password.
//
// Key material never leaves the HSMs in clear. Each cluster has a masking
// key (sealed by the barrier in kmsd's store and imported, non-extractable,
// into every HSM); a new key is generated inside one HSM, wrapped under the
// masking key, made non-extractable, and unwrapped (non-extractable) into
// every other HSM. The wrapped copy stays in kmsd's store, which is how a
// new HSM receives the cluster's keys — the part CloudHSM does with its own
// HSM-to-HSM synchronisation. Every key kmsd leaves in a token is checked
// to be CKA_SENSITIVE and not CKA_EXTRACTABLE.
//
// A module whose C_UnwrapKey ignores the template's CKA_SENSITIVE and
// CKA_EXTRACTABLE (openCryptoki 3.8's software token: its copies come out
// readable by the crypto user, and setting the two afterwards is not
// something kmsd relies on) gets its copies another way, decided once per
// module (mech.go, unwrapProtected): kmsd unwraps the wrapped form in its
// own memory with the masking key's material, creates the key in the
// token with C_CreateObject and the protected template, and clears the
// plaintext. This does not widen who can reach key material. kmsd holds
// the masking key already — sealed in its store, opened in its memory to
// import it into every HSM — and anyone who has it and a wrapped key from
// the store has the key; unwrapping in kmsd's memory only makes kmsd use
// what it already holds, for the moment of one C_CreateObject. What does
// change on such a module is that a key's plaintext passes through kmsd's
// memory (and the module's C buffers of the call, which the binding frees
// without clearing) once per copy, as the masking key itself does once
// per HSM; a memory dump of kmsd at that moment would show it, as it would
// show the masking key at an import. On a module that honours the
// template nothing changes: copies are unwrapped inside the token.
//
// Backups (backup.go) are taken at initialization, every
// Config.BackupInterval and shortly after each change of keys or users,
// and restored by CreateCluster with a SourceBackupId. What a backup holds
// of the tokens is decided per module behind the snapshotter interface, so
// that an HSM with a backup facility of its own can use it. For SoftHSM2
// the keys cannot be exported through PKCS#11 (they are non-extractable),
// and copying its token directories would tie a backup to one module's
// file format and to the token labels of the original HSMs; so a backup
// holds the token objects in the form kmsd already synchronises HSMs
// with: each key as an HSM wrapped it under the cluster's masking key, the
// masking key and the PINs — all sealed by the barrier, taken under the
// cluster's lock so that no half-applied change is caught. A restored
// cluster also keeps the original's CSR key, cluster certificate and
// trust anchor: the same certificate lineage, which is what makes it
// "related" for UpdateCustomKeyStore.
//
// Several nodes. With kmsd nodes sharing one PostgreSQL database, cluster
// and backup records are read and changed in the database (records.go),
// the asynchronous steps are finished by the controller (steps.go), and
// the HSMs CreateHsm makes are SoftHSM2 tokens in Config.TokenDir, which
// every node names (--hsm-token-dir). This departs from MULTINODE.md
// §4.7, which kept token creation a single-host feature because SoftHSM2
// shows a process no token created after its C_Initialize (PR#192) and
// heavy parallel use has failed token integrity checks (issue #757). kmsd
// meets the first: a token not found is looked for again after the module
// is re-initialised (pkcs11.go, live/reinit), at most every reinitEvery,
// and the controller finishing a dead node's CreateHsm finds that node's
// token with Refresh and reuses it. One form of the second kmsd meets as
// well: SoftHSM2 2.6.1 rewrites a token's token.object at every C_Login
// (its flags) without holding its lock while it writes, and a
// C_Initialize in another process at that moment leaves the token out
// until the next one; a re-initialisation that misses a token the last
// one listed is therefore repeated after a pause of a millisecond or more
// (pkcs11.go, initLocked), and a C_GetTokenInfo that fails
// CKR_GENERAL_ERROR in that window is asked again a millisecond later, at
// most twice (tokenInfo). The rest stays a risk of SoftHSM2 itself:
// SoftHSM2 is a development HSM; a production deployment declares
// clusters over a network HSM's module (--hsm-config). The per-process
// login registry (who is logged in as kmsuser, USER_LOGGED_IN) is not yet
// shared between nodes.
package hsm

import (
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/kmsd/kmsd/internal/dbclock"
	"github.com/kmsd/kmsd/internal/storage"
)

// Errors of the key, user and token operations, for the layer above to map
// to ConnectionErrorCodes and exceptions. Test with errors.Is.
var (
	// ErrUnavailable: this build has no PKCS#11 (built without cgo), or the
	// module cannot be loaded.
	ErrUnavailable = errors.New("hsm: PKCS#11 is unavailable")
	// ErrClusterNotFound: no cluster with that id in the account and Region.
	ErrClusterNotFound = errors.New("hsm: cluster not found")
	// ErrClusterNotActive: the cluster is not ACTIVE (not yet activated).
	ErrClusterNotActive = errors.New("hsm: cluster not active")
	// ErrNoActiveHSM: the cluster has no HSM in state ACTIVE.
	ErrNoActiveHSM = errors.New("hsm: no active HSM in the cluster")
	// ErrUnreachable: an HSM (its token) cannot be reached.
	ErrUnreachable = errors.New("hsm: HSM unreachable")
	// ErrKeyNotFound: no key with that label in the cluster.
	ErrKeyNotFound = errors.New("hsm: key not found")
	// ErrKeyExists: a key with that label exists already.
	ErrKeyExists = errors.New("hsm: key already exists")
	// ErrUserNotFound: no such user in the cluster.
	ErrUserNotFound = errors.New("hsm: user not found")
	// ErrUserExists: the user exists already, or the provider's one
	// crypto-user slot is taken.
	ErrUserExists = errors.New("hsm: user already exists")
	// ErrInvalidCredentials: wrong password.
	ErrInvalidCredentials = errors.New("hsm: invalid credentials")
	// ErrPINLocked: the user is locked out after too many failed logins.
	ErrPINLocked = errors.New("hsm: user locked out")
	// ErrNotLoggedIn: the operation needs the crypto user logged in.
	ErrNotLoggedIn = errors.New("hsm: user not logged in")
	// ErrUserLoggedIn: the user is logged in, which the operation forbids.
	ErrUserLoggedIn = errors.New("hsm: user logged in")
	// ErrInvalidRequest: the request does not fit the cluster's state or
	// the operation's rules; the wrapping error says why.
	ErrInvalidRequest = errors.New("hsm: invalid request")
)

// MaxFailedLogins is how many consecutive failed logins lock a user out,
// as CloudHSM does.
const MaxFailedLogins = 5

// DefaultModule is where Debian's softhsm2 package installs SoftHSM2.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// Config configures a Service.
type Config struct {
	// Dir is the HSM directory, normally <data-dir>/hsm: the SoftHSM2
	// configuration (softhsm2.conf) and token directory live there.
	Dir string
	// TokenDir, when set, is the SoftHSM2 token directory instead of
	// Dir/tokens: with several kmsd nodes on one database, every node
	// names the same directory (a shared file system), so that an HSM
	// created through one node is a token every node reaches.
	TokenDir string
	// Module is the SoftHSM2 PKCS#11 module; DefaultModule when empty.
	Module string
	// FreeSlots says which slots of Module the HSMs kmsd creates take
	// (any free one when empty).
	FreeSlots FreeSlots
	// SoftHSMConf, when set, is the SoftHSM2 configuration to load the
	// module with (normally SOFTHSM2_CONF from kmsd's environment) instead
	// of the one kmsd writes under Dir: tokens prepared by the operator for
	// declared clusters then share the module with kmsd's own.
	SoftHSMConf string
	// Declared are the clusters over existing tokens (Declaration), each
	// registered, or brought up to date, at New.
	Declared []Declaration
	// ProbeInterval is how often the tokens of every cluster's HSMs are
	// checked, the HSMs marked DEGRADED when gone and ACTIVE again when
	// back (health.go); DefaultProbeInterval when zero.
	ProbeInterval time.Duration
	// CreateDelay is how long a new cluster stays CREATE_IN_PROGRESS and a
	// new HSM at least CREATE_IN_PROGRESS; InitializeDelay how long a
	// cluster stays INITIALIZE_IN_PROGRESS; DeleteDelay how long a
	// cluster or HSM stays DELETE_IN_PROGRESS. Zero means immediately
	// (still asynchronously).
	CreateDelay, InitializeDelay, DeleteDelay time.Duration
	// BackupInterval is how often every initialized cluster is backed up
	// (DefaultBackupInterval when zero); BackupDelay how long after a
	// change of a cluster's keys or users its backup starts, one backup
	// for the changes of that time (DefaultBackupDelay when zero);
	// SweepInterval how often due backups and expired ones are looked
	// for (DefaultSweepInterval when zero). A backup stays
	// CREATE_IN_PROGRESS for CreateDelay.
	BackupInterval, BackupDelay, SweepInterval time.Duration
	// Controlled leaves the probe and backup loops to RunBackground,
	// which kmsd runs on its controller node only; otherwise New starts
	// them.
	Controlled bool
	// Failpoint, when set, is called at named points of the asynchronous
	// steps (test-only: kmsd's KMSD_FAILPOINT kills the process there, to
	// test that another node finishes the step).
	Failpoint func(name string)
	Rand      io.Reader        // crypto/rand when nil
	Now       func() time.Time // time.Now when nil
	// Clock, when set, is the database's clock as this node estimates it,
	// on which the times the controller schedules by are taken (clock.go):
	// kmsd gives the one it gives kms, made from the store's
	// (storage.Clock), so that nodes whose clocks differ agree on when a
	// step or backup is due. When nil, one is made from DBClock and Now.
	Clock *dbclock.Clock
	// DBClock is the database's clock when Clock is nil; with neither the
	// controller schedules by Now.
	DBClock storage.Clock
	Logger  *slog.Logger
}

// Caller is who calls a CloudHSM v2 operation: resources belong to an
// account and Region.
type Caller struct {
	Account string
	Region  string
}

// Cluster states (spec §13.3).
const (
	ClusterCreateInProgress     = "CREATE_IN_PROGRESS"
	ClusterUninitialized        = "UNINITIALIZED"
	ClusterInitializeInProgress = "INITIALIZE_IN_PROGRESS"
	ClusterInitialized          = "INITIALIZED"
	ClusterActive               = "ACTIVE"
	ClusterDegraded             = "DEGRADED"
	ClusterDeleteInProgress     = "DELETE_IN_PROGRESS"
	ClusterDeleted              = "DELETED"
)

// HSM states (spec §13.3).
const (
	HSMCreateInProgress = "CREATE_IN_PROGRESS"
	HSMActive           = "ACTIVE"
	HSMDegraded         = "DEGRADED"
	HSMDeleteInProgress = "DELETE_IN_PROGRESS"
	HSMDeleted          = "DELETED"
)

// User roles, named as the CloudHSM CLI names them.
const (
	RoleAdmin      = "admin"
	RoleCryptoUser = "crypto-user"
)

// record is the stored form of a cluster: one storage record per cluster
// holds its HSMs, users, keys and tags, so that every change to a cluster
// is one atomic write. Secrets are sealed by the barrier with their own
// record path as associated data.
type record struct {
	ID            string            `json:"id"`
	Account       string            `json:"account"`
	Region        string            `json:"region"`
	Created       time.Time         `json:"created"`
	HsmType       string            `json:"hsmType"`
	Mode          string            `json:"mode,omitempty"`
	NetworkType   string            `json:"networkType"`
	RetentionDays string            `json:"retentionDays"`
	State         string            `json:"state"`
	StateMessage  string            `json:"stateMessage,omitempty"`
	Subnets       map[string]string `json:"subnets"` // AZ -> subnet id
	SubnetOrder   []string          `json:"subnetOrder"`
	VpcID         string            `json:"vpcId"`
	SecurityGroup string            `json:"securityGroup"`
	HSMs          []hsmRecord       `json:"hsms,omitempty"`
	Tags          []tag             `json:"tags,omitempty"`
	CSR           string            `json:"csr,omitempty"`
	CSRKey        []byte            `json:"csrKey,omitempty"` // sealed PKCS#8
	ClusterCert   string            `json:"clusterCert,omitempty"`
	TrustAnchor   string            `json:"trustAnchor,omitempty"`
	SOPIN         []byte            `json:"soPin,omitempty"`   // sealed; random until activation, then the admin password
	Masking       []byte            `json:"masking,omitempty"` // sealed masking key
	Users         []userRecord      `json:"users,omitempty"`
	Keys          []keyRecord       `json:"keys,omitempty"`
	NextIP        int               `json:"nextIp,omitempty"`
	// Declared marks a cluster over existing tokens (Declaration), whose
	// HSMs are managed outside kmsd; Module is its PKCS#11 module.
	Declared bool   `json:"declared,omitempty"`
	Module   string `json:"module,omitempty"`
	// SourceBackup is the backup a restored cluster was created from;
	// RestoredState the state it takes once created (INITIALIZED or
	// ACTIVE, the state of the backed-up cluster).
	SourceBackup  string `json:"sourceBackup,omitempty"`
	RestoredState string `json:"restoredState,omitempty"`
	// Due is when the cluster's asynchronous step (its *_IN_PROGRESS
	// state) is to be finished: the step's intent is the state, and
	// whichever node is the controller then finishes it (steps.go).
	Due time.Time `json:"due,omitzero"`
	// BackupDue, when set, is when a backup of the cluster falls due
	// because its keys or users changed (or it was initialized): written
	// in the transaction of the change, by whichever node made it, and
	// cleared by the backup that covers the change, which the controller
	// takes (backup.go). Durable, so a node that dies after a change does
	// not take the change's backup with it.
	BackupDue *time.Time `json:"backupDue,omitempty"`
	// Rev counts the record's writes: a cache never replaces a record
	// with an older one.
	Rev int64 `json:"rev,omitempty"`
}

type hsmRecord struct {
	ID           string    `json:"id"`
	AZ           string    `json:"az"`
	SubnetID     string    `json:"subnetId"`
	EniID        string    `json:"eniId"`
	EniIP        string    `json:"eniIp"`
	State        string    `json:"state"`
	StateMessage string    `json:"stateMessage,omitempty"`
	Created      time.Time `json:"created"`
	Token        string    `json:"token,omitempty"` // declared token label
	// Due is when the HSM's CREATE_IN_PROGRESS or DELETE_IN_PROGRESS is
	// to be finished (steps.go).
	Due time.Time `json:"due,omitzero"`
}

// label is the PKCS#11 token label of the HSM: the declared token's, else
// its id, which is unique and fits the 32 bytes of CK_TOKEN_INFO.label.
func (h *hsmRecord) label() string {
	if h.Token != "" {
		return h.Token
	}
	return h.ID
}

type tag struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

type userRecord struct {
	Name         string    `json:"name"`
	Role         string    `json:"role"`
	Password     []byte    `json:"password"` // sealed
	FailedLogins int       `json:"failedLogins,omitempty"`
	Created      time.Time `json:"created"`
}

type keyRecord struct {
	Label   string    `json:"label"`
	Wrapped []byte    `json:"wrapped"` // wrapped by the masking key (CKM_AES_KEY_WRAP_PAD)
	Created time.Time `json:"created"`
}

func (r *record) hsm(id string) *hsmRecord {
	for i := range r.HSMs {
		if r.HSMs[i].ID == id {
			return &r.HSMs[i]
		}
	}
	return nil
}

// remainingHSMs counts the HSMs that are not being deleted.
func (r *record) remainingHSMs() int {
	n := 0
	for _, h := range r.HSMs {
		if h.State != HSMDeleteInProgress && h.State != HSMDeleted {
			n++
		}
	}
	return n
}

func (r *record) activeHSMs() []hsmRecord {
	var out []hsmRecord
	for _, h := range r.HSMs {
		if h.State == HSMActive {
			out = append(out, h)
		}
	}
	return out
}

func (r *record) user(name string) *userRecord {
	for i := range r.Users {
		if r.Users[i].Name == name {
			return &r.Users[i]
		}
	}
	return nil
}

func (r *record) cryptoUser() *userRecord {
	for i := range r.Users {
		if r.Users[i].Role == RoleCryptoUser {
			return &r.Users[i]
		}
	}
	return nil
}

func (r *record) key(label string) *keyRecord {
	for i := range r.Keys {
		if r.Keys[i].Label == label {
			return &r.Keys[i]
		}
	}
	return nil
}

// Secret record paths: the associated data each sealed value is bound to.
func recordPath(id string) string     { return "hsm/cluster/" + id }
func soPINPath(id string) string      { return recordPath(id) + "/so-pin" }
func maskingPath(id string) string    { return recordPath(id) + "/masking-key" }
func csrKeyPath(id string) string     { return recordPath(id) + "/csr-key" }
func userPath(id, name string) string { return recordPath(id) + "/user/" + name }
