// Package secretfile reads files that hold secrets — secret access keys,
// passphrases, PINs, encrypted key files, TLS private keys — and refuses,
// as ssh does for a private key, one that another user may read or change:
// a secret in such a file may already have leaked, and starting with it
// would hide that.
//
// A file is accepted when group and others have no permission on it at all
// (mode 0600 or 0400) and it is owned by the user the process runs as, or
// by root (which can read it anyway). Symbolic links are followed (mounted
// Kubernetes secrets are links); what is checked is the file opened, so the
// check and the read cannot see two different files.
package secretfile

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrUnprotected is wrapped by the errors of Read for a file whose mode or
// owner lets another user read or replace it.
var ErrUnprotected = errors.New("unprotected secret file")

// Read returns the contents of the secret file at path, or an error
// wrapping ErrUnprotected if the file is not private to this user.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := check(path, fi); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// check applies the package's rule to the file described by fi.
func check(path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("secret file '%s' is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: UNPROTECTED SECRET FILE! Permissions %04o for '%s' are too open. "+
			"A secret file must not be accessible by group or others: restrict it with chmod 600 '%s', "+
			"and replace the secret if someone else may have read it", ErrUnprotected, perm, path, path)
	}
	if uid, ok := owner(fi); ok && uid != os.Geteuid() && uid != 0 {
		return fmt.Errorf("%w: secret file '%s' is owned by uid %d, not by uid %d that this process runs as "+
			"(nor by root); its owner can read and replace it: chown it to the user that runs this process",
			ErrUnprotected, path, uid, os.Geteuid())
	}
	return nil
}
