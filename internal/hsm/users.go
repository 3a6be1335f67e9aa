package hsm

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
)

// The CloudHSM CLI side: cluster activation, the crypto user, login and
// logout. kmsd's admin API calls these for the account's administrator;
// the key store layer calls Login, Logout and RotatePassword.

// ClientCLI is the login client of kmsctl's cloudhsm-cli commands: kmsctl
// is stateless, so its login session lives in kmsd.
const ClientCLI = "cloudhsm-cli"

var usernamePattern = regexp.MustCompile(`^[a-zA-Z0-9_]{1,31}$`)

func checkPassword(pw string) error {
	if n := len(pw); n < 7 || n > 32 {
		return fmt.Errorf("%w: a password has 7 to 32 characters", ErrInvalidRequest)
	}
	return nil
}

// cluster returns c's cluster id, or ErrClusterNotFound.
func (s *Service) cluster(ctx context.Context, c Caller, id string) (*record, error) {
	r, ok, err := s.get(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if !ok || r.State == ClusterDeleted {
		return nil, fmt.Errorf("%w: %s", ErrClusterNotFound, id)
	}
	return r, nil
}

// activeCluster is cluster plus: it is ACTIVE and has an ACTIVE HSM.
func (s *Service) activeCluster(ctx context.Context, c Caller, id string) (*record, error) {
	r, err := s.cluster(ctx, c, id)
	if err != nil {
		return nil, err
	}
	if r.State != ClusterActive {
		return nil, fmt.Errorf("%w: cluster %s is %s", ErrClusterNotActive, id, r.State)
	}
	if len(r.activeHSMs()) == 0 {
		return nil, fmt.Errorf("%w: cluster %s", ErrNoActiveHSM, id)
	}
	return r, nil
}

// Activate sets the cluster admin's password — the SO PIN of every HSM,
// changed with C_SetPIN — and makes an INITIALIZED cluster ACTIVE, as the
// CloudHSM CLI's "cluster activate" does.
func (s *Service) Activate(ctx context.Context, c Caller, clusterID, password string) error {
	r, err := s.cluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return err
	}
	if r.State != ClusterInitialized {
		return fmt.Errorf("%w: cluster %s is %s; only an INITIALIZED cluster can be activated", ErrInvalidRequest, clusterID, r.State)
	}
	toks, err := s.tokensFor(r)
	if err != nil {
		return err
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		if r.State != ClusterInitialized {
			return fmt.Errorf("%w: cluster %s is %s", ErrInvalidRequest, clusterID, r.State)
		}
		hs := r.activeHSMs()
		if len(hs) == 0 {
			return fmt.Errorf("%w: cluster %s", ErrNoActiveHSM, clusterID)
		}
		old, err := s.open(soPINPath(r.ID), r.SOPIN)
		if err != nil {
			return err
		}
		defer clear(old)
		for i, h := range hs {
			if err := toks.SetSOPIN(ctx, h.label(), string(old), password); err != nil {
				for _, done := range hs[:i] { // put the HSMs back as they were
					toks.SetSOPIN(ctx, done.label(), password, string(old))
				}
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		if r.SOPIN, err = s.seal(soPINPath(r.ID), []byte(password)); err != nil {
			return err
		}
		r.State, r.StateMessage = ClusterActive, ""
		return nil
	})
	return err
}

// CreateUser creates the cluster's crypto user on every HSM (C_InitPIN as
// the SO). The SoftHSM2 provider has one user PIN per token, so a cluster
// has one crypto user (kmsuser); the admin is the cluster's SO.
func (s *Service) CreateUser(ctx context.Context, c Caller, clusterID, username, role, password string) error {
	ar, err := s.activeCluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if ar.Declared {
		return fmt.Errorf("%w: the crypto user of declared cluster %s is declared with it", ErrInvalidRequest, clusterID)
	}
	if err := checkUser(username, role); err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return err
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		if u := r.cryptoUser(); u != nil {
			if u.Name == username {
				return fmt.Errorf("%w: %s", ErrUserExists, username)
			}
			return fmt.Errorf("%w: cluster %s has the crypto user %s already, and this HSM provider holds one crypto user per cluster", ErrUserExists, clusterID, u.Name)
		}
		sealed, err := s.seal(userPath(r.ID, username), []byte(password))
		if err != nil {
			return err
		}
		r.Users = append(r.Users, userRecord{Name: username, Role: RoleCryptoUser, Password: sealed, Created: s.now().UTC()})
		so, err := s.open(soPINPath(r.ID), r.SOPIN)
		if err != nil {
			return err
		}
		defer clear(so)
		for _, h := range r.activeHSMs() {
			if err := s.syncToken(ctx, r, h.label(), string(so)); err != nil {
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		return nil
	})
	return err
}

func checkUser(username, role string) error {
	if !usernamePattern.MatchString(username) {
		return fmt.Errorf("%w: a username has 1 to 31 letters, digits or underscores", ErrInvalidRequest)
	}
	switch role {
	case RoleCryptoUser:
		return nil
	case RoleAdmin:
		return fmt.Errorf("%w: the cluster's admin is its Security Officer, set by cluster activate; this HSM provider has no other admin users", ErrInvalidRequest)
	}
	return fmt.Errorf("%w: role must be crypto-user or admin", ErrInvalidRequest)
}

// DeleteUser deletes the crypto user: its PIN on every HSM is reset to a
// random value nobody knows (SoftHSM2 cannot remove a token's user). A user
// who is logged in, or owns keys, cannot be deleted.
func (s *Service) DeleteUser(ctx context.Context, c Caller, clusterID, username, role string) error {
	ar, err := s.activeCluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if ar.Declared {
		return fmt.Errorf("%w: the crypto user of declared cluster %s is managed on its HSMs", ErrInvalidRequest, clusterID)
	}
	if err := checkUser(username, role); err != nil {
		return err
	}
	toks, err := s.tokensFor(ar)
	if err != nil {
		return err
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		u := r.user(username)
		if u == nil || u.Role != role {
			return fmt.Errorf("%w: %s", ErrUserNotFound, username)
		}
		if s.loggedIn(r.ID) {
			return fmt.Errorf("%w: %s is logged in", ErrUserLoggedIn, username)
		}
		if len(r.Keys) > 0 {
			return fmt.Errorf("%w: %s owns %d keys; delete them first", ErrInvalidRequest, username, len(r.Keys))
		}
		so, err := s.open(soPINPath(r.ID), r.SOPIN)
		if err != nil {
			return err
		}
		defer clear(so)
		for _, h := range r.activeHSMs() {
			if err := toks.InitUserPIN(ctx, h.label(), string(so), hex.EncodeToString(s.randomBytes(16))); err != nil {
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		users := r.Users[:0]
		for _, x := range r.Users {
			if x.Name != username {
				users = append(users, x)
			}
		}
		r.Users = users
		return nil
	})
	return err
}

// ChangePassword sets the user's password on every HSM as the admin does:
// C_SetPIN from the current password where the token still has it, else a
// reset through the SO (C_InitPIN). It also clears the failed-login
// counter, which is how the admin unlocks a locked-out user.
func (s *Service) ChangePassword(ctx context.Context, c Caller, clusterID, username, role, password string) error {
	ar, err := s.activeCluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if err := checkUser(username, role); err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return err
	}
	toks, err := s.tokensFor(ar)
	if err != nil {
		return err
	}
	_, err = s.act(ctx, clusterID, func(r *record) error {
		u := r.user(username)
		if u == nil || u.Role != role {
			return fmt.Errorf("%w: %s", ErrUserNotFound, username)
		}
		old, err := s.open(userPath(r.ID, u.Name), u.Password)
		if err != nil {
			return err
		}
		defer clear(old)
		so, err := s.open(soPINPath(r.ID), r.SOPIN)
		if err != nil {
			return err
		}
		defer clear(so)
		for _, h := range r.activeHSMs() {
			err := toks.SetUserPIN(ctx, h.label(), string(old), password)
			if errors.Is(err, ErrInvalidCredentials) || errors.Is(err, ErrPINLocked) {
				err = toks.InitUserPIN(ctx, h.label(), string(so), password)
			}
			if err != nil {
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		if u.Password, err = s.seal(userPath(r.ID, u.Name), []byte(password)); err != nil {
			return err
		}
		u.FailedLogins = 0
		return nil
	})
	return err
}

// RotatePassword changes the crypto user's password from old to new with
// C_SetPIN on every HSM, as a key store does at connect. A wrong old
// password counts as a failed login. The check ctx carries
// (WithActGuard) runs immediately before each C_SetPIN; its error stops
// the rotation there (the HSMs already changed are set back).
func (s *Service) RotatePassword(ctx context.Context, c Caller, clusterID, username, old, password string) error {
	ar, err := s.activeCluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if err := checkPassword(password); err != nil {
		return err
	}
	toks, err := s.tokensFor(ar)
	if err != nil {
		return err
	}
	var failed bool
	_, err = s.act(ctx, clusterID, func(r *record) error {
		u := r.user(username)
		if u == nil || u.Role != RoleCryptoUser {
			return fmt.Errorf("%w: %s", ErrUserNotFound, username)
		}
		if u.FailedLogins >= MaxFailedLogins {
			return fmt.Errorf("%w: %s", ErrPINLocked, username)
		}
		hs := r.activeHSMs()
		for i, h := range hs {
			// The caller's last word, immediately before the irreversible
			// step (a controller whose lease ended meanwhile: A7).
			err := ActGuard(ctx)
			if err == nil {
				err = toks.SetUserPIN(ctx, h.label(), old, password)
			}
			if err != nil {
				for _, done := range hs[:i] {
					toks.SetUserPIN(ctx, done.label(), password, old)
				}
				if errors.Is(err, ErrInvalidCredentials) {
					u.FailedLogins++
					failed = true
					return nil // store the counter
				}
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		var err error
		if u.Password, err = s.seal(userPath(r.ID, u.Name), []byte(password)); err != nil {
			return err
		}
		u.FailedLogins = 0
		return nil
	})
	if err == nil && failed {
		return fmt.Errorf("%w: wrong password for %s", ErrInvalidCredentials, username)
	}
	return err
}

// reloader is what tokens may also do: read the tokens anew at once
// (module.Reload), when the library keeps PINs as it first read them.
type reloader interface {
	Reload(ctx context.Context) error
	CachesPINs() bool
}

// Login logs the crypto user in on every active HSM with a real C_Login,
// for client (ClientCLI, or a key store's id). A wrong password counts
// against the user; after MaxFailedLogins the user is locked out
// (ErrPINLocked) until the admin changes the password.
func (s *Service) Login(ctx context.Context, c Caller, clusterID, username, role, password, client string) error {
	ar, err := s.activeCluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if role != RoleCryptoUser {
		return checkUser(username, role)
	}
	toks, err := s.tokensFor(ar)
	if err != nil {
		return err
	}
	var failed bool
	_, err = s.act(ctx, clusterID, func(r *record) error {
		u := r.user(username)
		if u == nil || u.Role != role {
			return fmt.Errorf("%w: %s", ErrUserNotFound, username)
		}
		if u.FailedLogins >= MaxFailedLogins {
			return fmt.Errorf("%w: %s has %d failed logins; the admin must reset the password", ErrPINLocked, username, u.FailedLogins)
		}
		hs := r.activeHSMs()
		for _, h := range hs {
			err := toks.Login(ctx, h.label(), password)
			if rl, ok := toks.(reloader); ok && rl.CachesPINs() && r.Declared && errors.Is(err, ErrInvalidCredentials) && !s.loggedIn(r.ID) {
				// The library may still hold the PIN as it was before
				// another kmsd node rotated it, freshPINs' rate limit
				// notwithstanding: read the tokens anew and try once more;
				// a wrong password still counts once.
				if rerr := rl.Reload(ctx); rerr == nil {
					err = toks.Login(ctx, h.label(), password)
				}
			}
			if err != nil {
				if !s.loggedIn(r.ID) {
					for _, x := range hs {
						toks.Logout(ctx, x.label())
					}
				}
				if errors.Is(err, ErrInvalidCredentials) {
					u.FailedLogins++
					failed = true
					return nil // store the counter
				}
				return fmt.Errorf("HSM %s: %w", h.ID, err)
			}
		}
		if r.Declared {
			// The tokens of a declared cluster may have been away, or
			// replaced, while keys were made: bring them in sync.
			for _, h := range hs {
				if err := s.syncKeys(ctx, r, h.label()); err != nil {
					s.log.Warn("hsm: sync keys at login", "cluster", r.ID, "hsm", h.ID, "err", err)
				}
			}
		}
		if u.FailedLogins == 0 {
			return errSkip
		}
		u.FailedLogins = 0
		return nil
	})
	if errors.Is(err, errSkip) {
		err = nil
	}
	if err != nil {
		return err
	}
	if failed {
		return fmt.Errorf("%w: wrong password for %s", ErrInvalidCredentials, username)
	}
	s.mu.Lock()
	if s.logins[clusterID] == nil {
		s.logins[clusterID] = map[string]bool{}
	}
	s.logins[clusterID][client] = true
	s.mu.Unlock()
	return nil
}

// Logout ends client's login; the HSMs are logged out (C_Logout) when no
// client remains logged in.
func (s *Service) Logout(ctx context.Context, c Caller, clusterID, username, role, client string) error {
	r, err := s.cluster(ctx, c, clusterID)
	if err != nil {
		return err
	}
	if u := r.user(username); u == nil || u.Role != role {
		return fmt.Errorf("%w: %s", ErrUserNotFound, username)
	}
	defer s.lock(clusterID)()
	s.mu.Lock()
	if !s.logins[clusterID][client] {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotLoggedIn, username)
	}
	delete(s.logins[clusterID], client)
	last := len(s.logins[clusterID]) == 0
	s.mu.Unlock()
	if last {
		if toks, err := s.tokensFor(r); err == nil {
			for _, h := range r.HSMs {
				toks.Logout(ctx, h.label())
			}
		}
	}
	return nil
}

// loggedIn reports whether any client is logged in as the cluster's
// crypto user.
func (s *Service) loggedIn(clusterID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.logins[clusterID]) > 0
}

// LoggedIn lists the clients logged in as the cluster's crypto user, for
// the key store layer's USER_LOGGED_IN check.
func (s *Service) LoggedIn(clusterID string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for c := range s.logins[clusterID] {
		out = append(out, c)
	}
	return out
}

// User describes a cluster user.
type User struct {
	Name         string
	Role         string
	FailedLogins int
	Locked       bool
	LoggedIn     bool
}

// Users lists the cluster's users: the admin and the crypto user.
func (s *Service) Users(ctx context.Context, c Caller, clusterID string) ([]User, error) {
	r, err := s.cluster(ctx, c, clusterID)
	if err != nil {
		return nil, err
	}
	out := []User{{Name: "admin", Role: RoleAdmin}}
	for _, u := range r.Users {
		out = append(out, User{Name: u.Name, Role: u.Role, FailedLogins: u.FailedLogins,
			Locked: u.FailedLogins >= MaxFailedLogins, LoggedIn: s.loggedIn(r.ID)})
	}
	return out, nil
}

type actGuardKey struct{}

// WithActGuard returns ctx carrying check, which RotatePassword calls
// immediately before each C_SetPIN: a key store's controller passes "my
// lease still lets me act", so that a controller paused between deciding
// to rotate and rotating (past its lease, while the next controller took
// over) changes no PIN once it runs again. The database fences its
// writes; an HSM's PIN has no such fence.
func WithActGuard(ctx context.Context, check func() error) context.Context {
	return context.WithValue(ctx, actGuardKey{}, check)
}

// ActGuard runs the check ctx carries (WithActGuard), if any: what a
// cluster implementation calls immediately before changing a PIN.
func ActGuard(ctx context.Context) error {
	if check, ok := ctx.Value(actGuardKey{}).(func() error); ok {
		return check()
	}
	return nil
}
