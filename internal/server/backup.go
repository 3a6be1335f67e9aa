package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/barrier"
	"github.com/kmsd/kmsd/internal/storage"
	"github.com/kmsd/kmsd/internal/storage/sqlite"
)

// Backups of the embedded store (`kmsd backup`, `kmsd restore`).
//
// A backup file is a header of "Name: value" lines that says what the file
// is, a blank line, and then a consistent snapshot of kmsd.db (an SQLite
// database taken with VACUUM INTO from a read transaction, so it runs
// beside a serving kmsd). The snapshot holds what kmsd holds: every secret
// in it is sealed under the root key, which is not in the file. Restore
// checks the header, the snapshot's SHA-256 and SQLite's integrity check
// before it puts anything in place, and, given the root key, that the key
// opens the snapshot.

// backupMagic opens every backup file, followed by the format version.
const backupMagic = "kmsd-backup"

// backupFormat is the version of the file layout this code writes and the
// newest it reads.
const backupFormat = 1

// dbFile is the embedded database's file name in the data directory.
const dbFile = "kmsd.db"

// rootKeyNote is the backup file's Root-Key header: what a reader of the
// file, or of `head` of it, must know.
const rootKeyNote = "NOT INCLUDED. Every secret in this backup is sealed under the root key of the kmsd it was taken from " +
	"(<data-dir>/root.key, --root-key-file or KMSD_ROOT_KEY). Keep a copy of that key apart from this file: " +
	"without it nothing here can be read; with it, this file is as sensitive as the key store."

// maxHeader bounds the header a restore reads before the snapshot.
const maxHeader = 64 << 10

// backupHeader is a backup file's header.
type backupHeader struct {
	Format        int
	Created       time.Time // when the snapshot's read transaction began (at the latest)
	Source        string    // the database it was taken from
	SchemaVersion int
	Records       int64
	Size          int64 // bytes of the snapshot that follows the header
	SHA256        []byte
}

func (h *backupHeader) encode() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d\n", backupMagic, h.Format)
	fmt.Fprintf(&b, "Created: %s\n", h.Created.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "Source: %s\n", strings.ReplaceAll(h.Source, "\n", " "))
	fmt.Fprintf(&b, "Content: SQLite database (kmsd store, schema version %d)\n", h.SchemaVersion)
	fmt.Fprintf(&b, "Schema-Version: %d\n", h.SchemaVersion)
	fmt.Fprintf(&b, "Records: %d\n", h.Records)
	fmt.Fprintf(&b, "Database-Size: %d\n", h.Size)
	fmt.Fprintf(&b, "Database-SHA256: %x\n", h.SHA256)
	fmt.Fprintf(&b, "Root-Key: %s\n", rootKeyNote)
	b.WriteString("Restore: kmsd restore --from <this file> --data-dir <new directory> --root-key-file <the root key>\n\n")
	return b.Bytes()
}

// errNotBackup is wrapped by readBackupHeader's errors.
var errNotBackup = errors.New("not a kmsd backup file")

// readBackupHeader reads the header from r, leaving r at the snapshot.
func readBackupHeader(r *bufio.Reader) (*backupHeader, error) {
	var lines []string
	n := 0
	for {
		line, err := r.ReadString('\n')
		n += len(line)
		if err != nil || n > maxHeader {
			if err == nil || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: no end of header", errNotBackup)
			}
			return nil, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			break
		}
		lines = append(lines, line)
	}
	magic, version, _ := strings.Cut(lines0(lines), " ")
	if magic != backupMagic {
		return nil, fmt.Errorf("%w: it does not begin with %q", errNotBackup, backupMagic)
	}
	h := &backupHeader{}
	var err error
	if h.Format, err = strconv.Atoi(version); err != nil || h.Format < 1 {
		return nil, fmt.Errorf("%w: bad format version %q", errNotBackup, version)
	}
	if h.Format > backupFormat {
		return nil, fmt.Errorf("backup format version %d is newer than this kmsd reads (%d): restore with a newer kmsd", h.Format, backupFormat)
	}
	seen := map[string]bool{}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			return nil, fmt.Errorf("%w: bad header line %q", errNotBackup, l)
		}
		seen[k] = true
		switch k {
		case "Created":
			h.Created, err = time.Parse(time.RFC3339Nano, v)
		case "Source":
			h.Source = v
		case "Schema-Version":
			h.SchemaVersion, err = strconv.Atoi(v)
		case "Records":
			h.Records, err = strconv.ParseInt(v, 10, 64)
		case "Database-Size":
			h.Size, err = strconv.ParseInt(v, 10, 64)
			if err == nil && h.Size <= 0 {
				err = errors.New("not positive")
			}
		case "Database-SHA256":
			h.SHA256, err = hex.DecodeString(v)
			if err == nil && len(h.SHA256) != sha256.Size {
				err = errors.New("not a SHA-256")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: header %s: %v", errNotBackup, k, err)
		}
	}
	for _, k := range []string{"Created", "Schema-Version", "Records", "Database-Size", "Database-SHA256"} {
		if !seen[k] {
			return nil, fmt.Errorf("%w: no %s header", errNotBackup, k)
		}
	}
	return h, nil
}

func lines0(l []string) string {
	if len(l) == 0 {
		return ""
	}
	return l[0]
}

// BackupConfig is what `kmsd backup` needs.
type BackupConfig struct {
	DataDir string // where kmsd.db is
	Out     string // the backup file to write (replaced whole if it exists)
	// RootKeyFile and RootKey locate the root key (as for serve; default
	// <data-dir>/root.key) so that the backup can say whether that key
	// opens it. Neither is needed, and the key is never written.
	RootKeyFile string
	RootKey     string
	// MaxRate limits how fast the snapshot is written to Out, in bytes a
	// second (0: no limit), to spare a busy server's disk.
	MaxRate int64
}

// Backup writes a consistent snapshot of the data directory's database to
// c.Out, through a temporary file beside it that is renamed into place
// once whole and synced: a killed backup leaves Out as it was. It works
// while kmsd serves from the directory. Messages go to msg.
func Backup(ctx context.Context, c BackupConfig, msg io.Writer) error {
	if c.Out == "" {
		return errors.New("--out is required")
	}
	src, err := filepath.Abs(filepath.Join(c.DataDir, dbFile))
	if err != nil {
		return err
	}
	if _, err := os.Stat(src); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no kmsd database in %s (%s does not exist); is --data-dir (KMSD_DATA_DIR) right?", c.DataDir, src)
		}
		return err
	}
	out, err := filepath.Abs(c.Out)
	if err != nil {
		return err
	}
	dir, base := filepath.Dir(out), filepath.Base(out)
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return fmt.Errorf("--out %s is a directory", c.Out)
	}

	snap, err := os.CreateTemp(dir, "."+base+".snapshot-*")
	if err != nil {
		return err
	}
	snap.Close()
	defer os.Remove(snap.Name())
	created := time.Now()
	if err := sqlite.VacuumInto(ctx, src, snap.Name()); err != nil {
		return err
	}
	f, err := sqlite.OpenFile(ctx, snap.Name())
	if err != nil {
		return err
	}
	info, err := f.Check(ctx)
	var keyNote string
	if err == nil {
		keyNote = backupKeyNote(ctx, c, f)
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("the snapshot of %s fails its check: %w", src, err)
	}

	sum, size, err := hashFile(snap.Name())
	if err != nil {
		return err
	}
	h := &backupHeader{Format: backupFormat, Created: created, Source: src, SchemaVersion: info.SchemaVersion,
		Records: info.Records, Size: size, SHA256: sum}
	if err := writeBackup(ctx, out, h, snap.Name(), c.MaxRate); err != nil {
		return err
	}
	fmt.Fprintf(msg, "kmsd backup: wrote %s: a consistent snapshot of %s as of %s (%d records, schema version %d, %d bytes).\n",
		out, src, created.UTC().Format(time.RFC3339), info.Records, info.SchemaVersion, size)
	fmt.Fprintf(msg, "The root key is NOT in the backup: keep a copy of it apart from the backup; without it the backup cannot be read. %s\n", keyNote)
	return nil
}

// backupKeyNote says whether the root key kmsd would use opens the
// snapshot in f. It never fails the backup: the backup is good either way.
func backupKeyNote(ctx context.Context, c BackupConfig, f storage.Reader) string {
	file := c.RootKeyFile
	if file == "" {
		file = filepath.Join(c.DataDir, "root.key")
	}
	var key []byte
	var err error
	where := file
	if c.RootKey != "" {
		where = "KMSD_ROOT_KEY"
		key, err = barrier.ParseRootKey(c.RootKey)
	} else {
		key, err = barrier.LoadRootKey(file)
	}
	if err != nil {
		return fmt.Sprintf("(The root key could not be checked against the backup: %v.)", err)
	}
	ok, err := keyOpens(ctx, key, f)
	clear(key)
	switch {
	case err != nil:
		return fmt.Sprintf("(The root key could not be checked against the backup: %v.)", err)
	case !ok:
		return fmt.Sprintf("WARNING: the root key in %s does NOT open this backup; find the key the server runs with.", where)
	}
	return fmt.Sprintf("The root key in %s opens it.", where)
}

// keyOpens reports whether key opens the root key check value in r. A
// store without one (never started, or from before check values) is an
// error: nothing proves the key either way.
func keyOpens(ctx context.Context, key []byte, r storage.Reader) (bool, error) {
	b, err := barrier.New(key)
	if err != nil {
		return false, err
	}
	check, err := r.Get(ctx, barrier.CheckRecord)
	if errors.Is(err, storage.ErrNotFound) {
		return false, errors.New("the database holds no root key check value yet (start kmsd on it once)")
	}
	if err != nil {
		return false, err
	}
	return b.VerifyCheck(check) == nil, nil
}

func hashFile(path string) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, 0, err
	}
	return h.Sum(nil), n, nil
}

// writeBackup writes h and the snapshot to a temporary file beside out,
// syncs it, renames it to out and syncs the directory.
func writeBackup(ctx context.Context, out string, h *backupHeader, snapshot string, maxRate int64) (err error) {
	dir := filepath.Dir(out)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-*") // mode 0600
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(h.encode()); err != nil {
		return err
	}
	in, err := os.Open(snapshot)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := copyRate(ctx, tmp, in, maxRate); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	return syncDir(dir)
}

// copyRate copies src to dst at no more than rate bytes a second (0: no
// limit), stopping when ctx ends.
func copyRate(ctx context.Context, dst io.Writer, src io.Reader, rate int64) error {
	buf := make([]byte, 64<<10)
	if rate > 0 && rate < int64(len(buf)) {
		buf = buf[:max(rate/10, 512)]
	}
	start := time.Now()
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			done += int64(n)
			if rate > 0 {
				due := start.Add(time.Duration(float64(done) / float64(rate) * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-time.After(d):
					}
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// RestoreConfig is what `kmsd restore` needs.
type RestoreConfig struct {
	From    string // the backup file
	DataDir string // a data directory to make: absent or empty
	// RootKeyFile or RootKey (base64, wins) is the root key of the kmsd
	// the backup was taken from. Given, restore refuses a backup the key
	// does not open, and a key file is copied to <data-dir>/root.key
	// (mode 0600), where kmsd serve finds it. Neither is required.
	RootKeyFile string
	RootKey     string
}

// Restore makes a data directory from a backup file. It refuses a data
// directory that holds anything, and checks the whole backup (header,
// SHA-256, SQLite integrity, schema version, the root key when given)
// before it puts the database in place under its final name; on failure
// it leaves the directory as it found it.
func Restore(ctx context.Context, c RestoreConfig, msg io.Writer) (err error) {
	if c.From == "" {
		return errors.New("--from is required")
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	entries, err := os.ReadDir(c.DataDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			return err
		}
		err = nil
		defer func() {
			if err != nil {
				os.Remove(c.DataDir) // only if still empty
			}
		}()
	case err != nil:
		return err
	case len(entries) > 0:
		return fmt.Errorf("data directory %s is not empty: restore makes a new data directory and never writes into one in use", c.DataDir)
	}

	// The root key first: a wrong one stops the restore before any work.
	var key []byte
	where := ""
	switch {
	case c.RootKey != "":
		where = "KMSD_ROOT_KEY"
		key, err = barrier.ParseRootKey(c.RootKey)
	case c.RootKeyFile != "":
		where = c.RootKeyFile
		key, err = barrier.LoadRootKey(c.RootKeyFile)
	}
	if err != nil {
		return fmt.Errorf("root key: %w", err)
	}
	defer clear(key)

	in, err := os.Open(c.From)
	if err != nil {
		return err
	}
	defer in.Close()
	r := bufio.NewReader(in)
	h, err := readBackupHeader(r)
	if err != nil {
		return fmt.Errorf("%s: %w", c.From, err)
	}

	tmp, err := os.CreateTemp(c.DataDir, "."+dbFile+".restore-*")
	if err != nil {
		return err
	}
	defer func() {
		tmp.Close()
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, sum), io.LimitReader(r, h.Size))
	if err != nil {
		return err
	}
	if n < h.Size {
		return fmt.Errorf("%s is truncated: its database has %d of %d bytes", c.From, n, h.Size)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s has data after its database: not a file kmsd backup wrote", c.From)
	}
	if got := sum.Sum(nil); !bytes.Equal(got, h.SHA256) {
		return fmt.Errorf("%s is damaged: its database's SHA-256 is %x, the header says %x", c.From, got, h.SHA256)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}

	f, err := sqlite.OpenFile(ctx, tmp.Name())
	if err != nil {
		return fmt.Errorf("%s: %w", c.From, err)
	}
	info, err := f.Check(ctx)
	if err == nil && (info.Records != h.Records || info.SchemaVersion != h.SchemaVersion) {
		err = fmt.Errorf("its database holds %d records at schema version %d, the header says %d at %d", info.Records, info.SchemaVersion, h.Records, h.SchemaVersion)
	}
	keyNote := "No root key was given: start kmsd with the root key of the kmsd the backup was taken from " +
		"(copy it to " + filepath.Join(c.DataDir, "root.key") + " with mode 0600, or give --root-key-file or KMSD_ROOT_KEY); " +
		"kmsd refuses to start on this database with any other key."
	if err == nil && key != nil {
		var ok bool
		ok, err = keyOpens(ctx, key, f)
		switch {
		case err != nil:
			err = fmt.Errorf("cannot check the root key: %w", err)
		case !ok:
			err = fmt.Errorf("the root key in %s does not open this backup: it was taken from a kmsd with another root key", where)
		default:
			keyNote = "The root key in " + where + " opens it."
		}
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", c.From, err)
	}

	// In place: the root key file first, so that the database never sits
	// in the directory without the key that opens it.
	keyDst := filepath.Join(c.DataDir, "root.key")
	if key != nil && c.RootKey == "" {
		if err := barrier.WriteRootKeyFile(keyDst, key); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				os.Remove(keyDst)
			}
		}()
		keyNote += " It is copied to " + keyDst + " (mode 0600)."
	}
	dst := filepath.Join(c.DataDir, dbFile)
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	if err := syncDir(c.DataDir); err != nil {
		return err
	}
	fmt.Fprintf(msg, "kmsd restore: made %s from %s, a backup of %s as of %s (%d records, schema version %d; SHA-256 and integrity checked).\n",
		dst, c.From, h.Source, h.Created.UTC().Format(time.RFC3339), info.Records, info.SchemaVersion)
	fmt.Fprintf(msg, "%s\nThe audit log and the credentials file are not in backups; the access keys in the store work as before.\n", keyNote)
	fmt.Fprintf(msg, "Start it with: kmsd serve --data-dir %s\n", c.DataDir)
	return nil
}
