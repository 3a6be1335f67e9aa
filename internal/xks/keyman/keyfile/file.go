// Package keyfile is the proxy's software key manager: AES-256 keys kept in a file of
// its own, for environments without an HSM.
//
// File format (JSON, mode 0600):
//
//	{"format":"kmsd-xks-keyfile","version":1,
//	 "kdf":{"name":"pbkdf2-sha256","iterations":600000,"salt":"<b64 16 bytes>"},
//	 "nonce":"<b64 12 bytes>","ciphertext":"<b64>"}
//
// The key-encryption key is PBKDF2-HMAC-SHA256(passphrase, salt, iterations), 32
// bytes. The ciphertext is AES-256-GCM under it of the JSON list of keys (id, usage,
// enabled, created, material), with the header fields (format, version, KDF name,
// iterations, salt) as the GCM additional data, so tampering with any of them fails
// to open. Every write draws a fresh nonce and replaces the file atomically (temporary
// file, fsync, rename, fsync of the directory) under an exclusive lock on F.lock.
package keyfile

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/secretfile"
	"github.com/kmsd/kmsd/internal/xks"
)

const (
	formatName = "kmsd-xks-keyfile"
	kdfName    = "pbkdf2-sha256"
	// DefaultIterations follows OWASP's 2023 guidance for PBKDF2-HMAC-SHA256.
	DefaultIterations = 600_000
	// MinIterations keeps test files fast without allowing a trivially weak KDF.
	MinIterations = 1000
)

// Errors of the file layer.
var (
	ErrBadPassphrase = errors.New("keyfile: wrong passphrase or corrupted key file")
	ErrKeyExists     = errors.New("keyfile: a key with this id already exists")
	ErrNoKey         = errors.New("keyfile: no key with this id")
	ErrBadFormat     = errors.New("keyfile: not a kmsd XKS key file")
)

// Entry is one key in the file.
type Entry struct {
	ID       string    `json:"id"`
	Usage    []string  `json:"usage"`
	Enabled  bool      `json:"enabled"`
	Created  time.Time `json:"created"`
	Material []byte    `json:"material"` // 32 bytes of AES-256 key
}

type kdfParams struct {
	Name       string `json:"name"`
	Iterations int    `json:"iterations"`
	Salt       []byte `json:"salt"`
}

type envelope struct {
	Format     string    `json:"format"`
	Version    int       `json:"version"`
	KDF        kdfParams `json:"kdf"`
	Nonce      []byte    `json:"nonce"`
	Ciphertext []byte    `json:"ciphertext"`
}

// aad binds the header fields into the GCM tag, each length-prefixed.
func (e *envelope) aad() []byte {
	var b []byte
	for _, f := range [][]byte{[]byte(e.Format), []byte(fmt.Sprint(e.Version)), []byte(e.KDF.Name),
		[]byte(fmt.Sprint(e.KDF.Iterations)), e.KDF.Salt} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

// kek derives the key-encryption key.
func kek(passphrase []byte, p kdfParams) ([]byte, error) {
	if p.Name != kdfName || p.Iterations < MinIterations || len(p.Salt) < 16 {
		return nil, ErrBadFormat
	}
	return pbkdf2.Key(sha256.New, string(passphrase), p.Salt, p.Iterations, 32)
}

// Contents is a decrypted key file together with the derived key needed to write it
// back.
type Contents struct {
	Keys []Entry
	env  envelope
	kek  []byte
}

// parse decodes and decrypts raw file bytes. derive caches KEK derivation.
func parse(raw, passphrase []byte, derive func(kdfParams) ([]byte, error)) (*Contents, error) {
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil || env.Format != formatName {
		return nil, ErrBadFormat
	}
	if env.Version != 1 {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrBadFormat, env.Version)
	}
	if derive == nil {
		derive = func(p kdfParams) ([]byte, error) { return kek(passphrase, p) }
	}
	k, err := derive(env.KDF)
	if err != nil {
		return nil, err
	}
	gcm := newGCM(k, 12)
	if len(env.Nonce) != gcm.NonceSize() {
		return nil, ErrBadFormat
	}
	pt, err := gcm.Open(nil, env.Nonce, env.Ciphertext, env.aad())
	if err != nil {
		return nil, ErrBadPassphrase
	}
	c := &Contents{env: env, kek: k}
	if err := json.Unmarshal(pt, &c.Keys); err != nil {
		return nil, fmt.Errorf("%w: key list: %v", ErrBadFormat, err)
	}
	for _, e := range c.Keys {
		if len(e.Material) != 32 || !xks.ValidKeyID(e.ID) {
			return nil, fmt.Errorf("%w: key %q is malformed", ErrBadFormat, e.ID)
		}
	}
	return c, nil
}

// Load reads and decrypts the key file at path, which must be private to
// this user (see package secretfile).
func Load(path string, passphrase []byte) (*Contents, error) {
	raw, err := secretfile.Read(path)
	if err != nil {
		return nil, err
	}
	return parse(raw, passphrase, nil)
}

func newGCM(key []byte, nonceSize int) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // keys are always 32 bytes here
	}
	var gcm cipher.AEAD
	if nonceSize == 12 {
		gcm, err = cipher.NewGCM(block)
	} else {
		gcm, err = cipher.NewGCMWithNonceSize(block, nonceSize)
	}
	if err != nil {
		panic(err)
	}
	return gcm
}

// save encrypts c with a fresh nonce and atomically replaces path.
func (c *Contents) save(path string) error {
	pt, err := json.Marshal(c.Keys)
	if err != nil {
		return err
	}
	c.env.Nonce = make([]byte, 12)
	if _, err := rand.Read(c.env.Nonce); err != nil {
		return err
	}
	c.env.Ciphertext = newGCM(c.kek, 12).Seal(nil, c.env.Nonce, pt, c.env.aad())
	clear(pt)
	raw, err := json.MarshalIndent(&c.env, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(raw, '\n'))
}

func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Update runs fn on the decrypted keys of path under an exclusive lock and writes
// the result back. A missing file is created with the given KDF iterations (0 means
// DefaultIterations).
func Update(path string, passphrase []byte, iterations int, fn func(keys *[]Entry) error) error {
	if len(passphrase) == 0 {
		return errors.New("keyfile: empty passphrase")
	}
	unlock, err := lock(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	c, err := Load(path, passphrase)
	if errors.Is(err, fs.ErrNotExist) {
		if iterations == 0 {
			iterations = DefaultIterations
		}
		if iterations < MinIterations {
			return fmt.Errorf("keyfile: at least %d KDF iterations are required", MinIterations)
		}
		c = &Contents{env: envelope{Format: formatName, Version: 1,
			KDF: kdfParams{Name: kdfName, Iterations: iterations, Salt: make([]byte, 16)}}}
		if _, err := rand.Read(c.env.KDF.Salt); err != nil {
			return err
		}
		if c.kek, err = kek(passphrase, c.env.KDF); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := fn(&c.Keys); err != nil {
		return err
	}
	return c.save(path)
}

// ParseUsage parses a comma-separated usage list: ENCRYPT, DECRYPT, both, or none
// (empty or "NONE").
func ParseUsage(s string) ([]string, error) {
	usage := []string{}
	s = strings.TrimSpace(s)
	if s == "" || strings.EqualFold(s, "NONE") {
		return usage, nil
	}
	for _, u := range strings.Split(s, ",") {
		u = strings.ToUpper(strings.TrimSpace(u))
		if u != xks.UsageEncrypt && u != xks.UsageDecrypt {
			return nil, fmt.Errorf("keyfile: unknown usage %q (want ENCRYPT, DECRYPT or NONE)", u)
		}
		if !slices.Contains(usage, u) {
			usage = append(usage, u)
		}
	}
	slices.Sort(usage)
	return usage, nil
}

// CreateKey adds a key to the file at path. material may be nil for a fresh random
// key.
func CreateKey(path string, passphrase []byte, iterations int, id string, usage []string, material []byte, now time.Time) error {
	if !xks.ValidKeyID(id) {
		return fmt.Errorf("keyfile: invalid key id %q: 1-128 characters of A-Z a-z 0-9 . _ -", id)
	}
	if material == nil {
		material = make([]byte, 32)
		if _, err := rand.Read(material); err != nil {
			return err
		}
	}
	if len(material) != 32 {
		return errors.New("keyfile: key material must be 32 bytes")
	}
	return Update(path, passphrase, iterations, func(keys *[]Entry) error {
		for _, e := range *keys {
			if e.ID == id {
				return ErrKeyExists
			}
		}
		*keys = append(*keys, Entry{ID: id, Usage: usage, Enabled: true, Created: now.UTC(),
			Material: bytes.Clone(material)})
		return nil
	})
}

// SetEnabled enables or disables a key in the file at path.
func SetEnabled(path string, passphrase []byte, id string, enabled bool) error {
	return Update(path, passphrase, 0, func(keys *[]Entry) error {
		for i := range *keys {
			if (*keys)[i].ID == id {
				(*keys)[i].Enabled = enabled
				return nil
			}
		}
		return ErrNoKey
	})
}
