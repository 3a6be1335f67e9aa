package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeIDFile keeps the node id made on first start, in the data directory.
const nodeIDFile = "node-id"

// nodeID is the id of this kmsd among the nodes of one database: cfg.NodeID
// (--node-id) when given, else the id kept in <data-dir>/node-id, made on
// first start from the host name and random bytes and kept, so that it
// stays the same across restarts and differs between data directories
// (two nodes on one host).
func nodeID(cfg Config) (string, error) {
	if cfg.NodeID != "" {
		return cfg.NodeID, nil
	}
	path := filepath.Join(cfg.DataDir, nodeIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !validNodeID(id) {
			return "", fmt.Errorf("node id in %s: %q is not a node id; remove the file or give --node-id", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	id := newNodeID()
	// Written whole to a file of its own, then linked into place, which
	// fails if the id exists: of processes starting at once on one data
	// directory, all end with the one id that was kept, and none reads a
	// half-written one.
	tmp, err := os.CreateTemp(cfg.DataDir, ".node-id-*")
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(id + "\n")
	if serr := tmp.Sync(); err == nil {
		err = serr
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return nodeID(cfg)
	}
	if err != nil {
		return "", fmt.Errorf("node id: %w", err)
	}
	return id, nil
}

// newNodeID is the host name's first label (what of it is valid, at most
// 40 characters) and 8 random hex digits.
func newNodeID() string {
	host, _ := os.Hostname()
	host, _, _ = strings.Cut(host, ".")
	var b strings.Builder
	for _, c := range host {
		if nodeIDRune(c) && b.Len() < 40 {
			b.WriteRune(c)
		}
	}
	if b.Len() == 0 {
		b.WriteString("kmsd")
	}
	r := make([]byte, 4)
	rand.Read(r)
	return b.String() + "-" + hex.EncodeToString(r)
}

func nodeIDRune(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// validNodeID: 1 to 64 letters, digits, '.', '_' or '-'.
func validNodeID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !nodeIDRune(c) {
			return false
		}
	}
	return true
}
