package barrier

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxKeyFileSize bounds what LoadOrCreateRootKey reads: the base64 of a
// root key with a trailing newline is 45 bytes.
const maxKeyFileSize = 1024

// ParseRootKey decodes a root key given as standard base64 of KeySize bytes,
// as in the KMSD_ROOT_KEY environment variable. Surrounding white space is
// ignored. Errors never repeat the input.
func ParseRootKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		// The decoder's error holds an offset only, never key bytes.
		return nil, fmt.Errorf("barrier: root key is not standard base64: %w", err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("barrier: root key must be %d bytes, got %d", KeySize, len(key))
	}
	return key, nil
}

// LoadOrCreateRootKey reads the root key from the file at path, which holds
// it in standard base64. If the file does not exist, it creates it with
// mode 0600 holding a new key of KeySize bytes from rand (crypto/rand.Reader
// outside tests), and reports created.
//
// It refuses a key file that group or others may access, rather than use a
// key that may have leaked, and one that is not a regular file or holds
// anything but a key of the right length.
func LoadOrCreateRootKey(path string, rand io.Reader) (key []byte, created bool, err error) {
	key, err = loadRootKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	if rand == nil {
		return nil, false, errors.New("barrier: nil random source")
	}
	key = make([]byte, KeySize)
	if _, err := io.ReadFull(rand, key); err != nil {
		return nil, false, fmt.Errorf("barrier: generating root key: %w", err)
	}
	err = createKeyFile(path, key)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it between our read and our create.
		key, err = loadRootKey(path)
		return key, false, err
	}
	if err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// LoadRootKey reads the root key from the file at path, like
// LoadOrCreateRootKey, but never creates one: a missing file is an error
// wrapping fs.ErrNotExist. kmsd uses it when a database already exists,
// since a new key could not open it.
func LoadRootKey(path string) ([]byte, error) {
	key, err := loadRootKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("barrier: root key file %s: %w", path, err)
	}
	return key, err
}

func loadRootKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("barrier: root key file: %w", err)
	}
	defer f.Close()
	// Checked on the open file, so that what is checked is what is read.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("barrier: root key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("barrier: root key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("barrier: root key file %s has mode %04o, which lets group or others access it; "+
			"if the key has not leaked, restrict it with chmod 600", path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("barrier: root key file: %w", err)
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("barrier: root key file %s is too large to hold a root key", path)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, fmt.Errorf("barrier: root key file %s is empty", path)
	}
	key, err := ParseRootKey(string(data))
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return key, nil
}

// WriteRootKeyFile writes key, in standard base64, to a new file at path
// with mode 0600, as LoadOrCreateRootKey creates one: whole or not at all.
// It fails with an error wrapping fs.ErrExist if there is a file at path.
// kmsd restore uses it to put a backup's root key beside the database.
func WriteRootKeyFile(path string, key []byte) error {
	if len(key) != KeySize {
		return fmt.Errorf("barrier: root key must be %d bytes, got %d", KeySize, len(key))
	}
	if err := createKeyFile(path, key); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("barrier: root key file %s: %w", path, err)
		}
		return err
	}
	return nil
}

// createKeyFile writes key to a new file at path, failing with fs.ErrExist
// if there is one. The key is written and synced under a temporary name
// (created O_EXCL, mode 0600) and then hard-linked to path, which never
// replaces an existing file: so the file at path, once it exists, always
// holds a whole key, even if this process crashes or another one starts
// at the same moment.
func createKeyFile(path string, key []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("barrier: creating root key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	text := base64.StdEncoding.AppendEncode(nil, key)
	_, err = tmp.Write(append(text, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("barrier: writing root key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fs.ErrExist
		}
		return fmt.Errorf("barrier: creating root key file: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("barrier: syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("barrier: syncing %s: %w", dir, err)
	}
	return nil
}
