package identity

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/policy"
)

// Session tokens are self-contained: everything a node needs to accept the
// temporary credentials of a role session — the secret access key, the
// role and session it acts as, its session policy, tags, source identity
// and expiry — travels sealed inside the token itself (AES-256-GCM under a
// key derived from the root key, the access key id as additional data).
// Any kmsd process holding the same root key verifies a token another one
// issued, and a restart ends no session; no table of sessions is shared.
// The in-memory map of sessions is only a cache of opened tokens.

const (
	// tokenPrefix starts every session token, as "IQoJb3JpZ2luX2Vj"
	// starts AWS's, so tools that recognise tokens by it keep working.
	tokenPrefix = "IQoJb3JpZ2luX2Vj"
	// tokenVersion is the first byte of the sealed part: the format and
	// the derivation purpose of its key.
	tokenVersion = 1
	// tokenPurpose names the derived sealing key (barrier.Derive).
	tokenPurpose = "kmsd/sts/session-token/v1"
	// maxTokenLen bounds what is opened: a token of the largest session
	// (2048-character policy, 50 tags of 128+256 characters) is well
	// under it.
	maxTokenLen = 64 << 10
	// maxCachedSessions bounds the cache of opened tokens; past it the
	// expired entries are dropped and then arbitrary ones (they are
	// opened again when next used).
	maxCachedSessions = 10000
)

// errBadToken is every reason a token is refused; the client sees only
// "The security token included in the request is invalid."
var errBadToken = errors.New("identity: invalid session token")

// sealedSession is the content of a session token.
type sealedSession struct {
	Secret     string            `json:"s"`
	Account    string            `json:"a"`
	Role       string            `json:"r"`  // role name
	RoleID     string            `json:"ri"` // AROA…: a role re-created under the same name is another role
	Session    string            `json:"n"`
	Tags       map[string]string `json:"t,omitempty"`
	Transitive []string          `json:"tt,omitempty"`
	Source     string            `json:"si,omitempty"`
	Policy     *string           `json:"p,omitempty"` // inline session policy, as passed
	Expires    int64             `json:"e"`           // Unix seconds
}

// tokenAEAD is the AEAD that seals session tokens, from the barrier's
// derivation of tokenPurpose.
func (s *Store) tokenAEAD() (cipher.AEAD, error) {
	s.tokenOnce.Do(func() {
		k := s.barrier.Derive(tokenPurpose)
		defer clear(k)
		blk, err := aes.NewCipher(k)
		if err != nil {
			s.tokenErr = err
			return
		}
		s.tokenGCM, s.tokenErr = cipher.NewGCM(blk)
	})
	return s.tokenGCM, s.tokenErr
}

// tokenAD is the additional data of akid's token: a token moved to
// another access key id does not open.
func tokenAD(akid string) []byte { return []byte("kmsd sts session\x00" + akid) }

// sealToken makes the session token of akid.
func (s *Store) sealToken(akid string, ss *sealedSession) (string, error) {
	aead, err := s.tokenAEAD()
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(ss)
	if err != nil {
		return "", err
	}
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(plain)+aead.Overhead())
	out[0] = tokenVersion
	if _, err := io.ReadFull(s.rand, out[1:]); err != nil {
		return "", err
	}
	out = aead.Seal(out, out[1:1+aead.NonceSize()], plain, tokenAD(akid))
	clear(plain)
	return tokenPrefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// openToken opens akid's session token. It fails for a token that was
// not sealed by a kmsd with this root key for akid, or was altered; expiry
// is the caller's to check.
func (s *Store) openToken(akid, token string) (*sealedSession, error) {
	if len(token) > maxTokenLen || !strings.HasPrefix(token, tokenPrefix) {
		return nil, errBadToken
	}
	raw, err := base64.RawStdEncoding.DecodeString(token[len(tokenPrefix):])
	if err != nil {
		return nil, errBadToken
	}
	aead, err := s.tokenAEAD()
	if err != nil {
		return nil, err
	}
	if len(raw) < 1+aead.NonceSize()+aead.Overhead() || raw[0] != tokenVersion {
		return nil, errBadToken
	}
	plain, err := aead.Open(nil, raw[1:1+aead.NonceSize()], raw[1+aead.NonceSize():], tokenAD(akid))
	if err != nil {
		return nil, errBadToken
	}
	defer clear(plain)
	ss := new(sealedSession)
	if err := json.Unmarshal(plain, ss); err != nil || ss.Secret == "" || ss.Account == "" || ss.Role == "" {
		return nil, errBadToken
	}
	return ss, nil
}

// session returns the session whose access key is akid if token is its
// session token and it has not expired: from the cache, or by opening the
// token (and then caching it). The role must still exist, with the id it
// had when the session began; the session acts with the role's current
// policies.
func (s *Store) session(akid, token string) (*session, bool) {
	if token == "" || !strings.HasPrefix(akid, "ASIA") {
		return nil, false
	}
	now := s.now()
	s.mu.RLock()
	ss, ok := s.sessions[akid]
	s.mu.RUnlock()
	if ok {
		// The cached session answers only for the very token it came
		// from; comparing digests keeps the time independent of where
		// the tokens differ and of their lengths.
		a, b := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(ss.token))
		if subtle.ConstantTimeCompare(a[:], b[:]) != 1 || !now.Before(ss.expires) {
			return nil, false
		}
		return ss, true
	}
	sealed, err := s.openToken(akid, token)
	if err != nil {
		return nil, false
	}
	exp := time.Unix(sealed.Expires, 0).UTC()
	if !now.Before(exp) {
		return nil, false
	}
	var sessionPolicies []*policy.Policy
	if sealed.Policy != nil {
		p, err := policy.Parse(*sealed.Policy, policy.IdentityPolicy)
		if err != nil {
			return nil, false
		}
		sessionPolicies = []*policy.Policy{p}
	}
	s.roleFromStore(sealed.Account, sealed.Role)
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.roles[sealed.Account+"/"+sealed.Role]
	if !ok || subtle.ConstantTimeCompare([]byte(r.ID), []byte(sealed.RoleID)) != 1 {
		return nil, false
	}
	ss = &session{secret: sealed.Secret, token: token, expires: exp,
		ident: &Identity{
			AccessKeyID: akid,
			Principal: policy.Principal{Type: policy.AssumedRole, ARN: sessionARN(r, sealed.Session), Account: r.Account, Name: r.Name,
				Session: sealed.Session, UserID: r.ID + ":" + sealed.Session, RoleARN: r.ARN(),
				Tags: sealed.Tags, SourceIdentity: sealed.Source},
			Policies: r.parsed, SessionPolicies: sessionPolicies, TransitiveTagKeys: sealed.Transitive,
			SessionToken: token, Expires: exp,
		}}
	s.cacheSession(akid, ss, now)
	return ss, true
}

// cacheSession adds ss to the cache, keeping it within maxCachedSessions.
// Callers hold mu.
func (s *Store) cacheSession(akid string, ss *session, now time.Time) {
	if len(s.sessions) >= maxCachedSessions {
		for k, old := range s.sessions {
			if !now.Before(old.expires) {
				delete(s.sessions, k)
			}
		}
		for k := range s.sessions {
			if len(s.sessions) < maxCachedSessions {
				break
			}
			delete(s.sessions, k)
		}
	}
	s.sessions[akid] = ss
}

// roleFromStore reads role account/name from the database into memory
// when this process does not know it: a role created through another
// kmsd on the same database after this one started. Only a token that
// opened leads here, so the read cannot be provoked without one. (A role
// changed or deleted through another node is seen here only after a
// restart, until changes are followed across nodes.)
func (s *Store) roleFromStore(account, name string) {
	s.mu.RLock()
	_, known := s.roles[account+"/"+name]
	s.mu.RUnlock()
	if known {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := s.store.Get(ctx, rolePrefix+account+"/"+name)
	if err != nil {
		return
	}
	r := new(Role)
	if json.Unmarshal(b, r) != nil || r.compile(false) != nil {
		return
	}
	s.mu.Lock()
	if _, ok := s.roles[account+"/"+name]; !ok {
		s.roles[account+"/"+name] = r
	}
	s.mu.Unlock()
}

func sessionARN(r *Role, session string) string {
	return "arn:aws:sts::" + r.Account + ":assumed-role/" + r.Name + "/" + session
}
