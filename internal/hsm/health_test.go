package hsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/internal/hsmapi"
)

// tokenDir is the SoftHSM2 directory of token label under the tests' HSM
// directory.
func tokenDir(t *testing.T, label string) string {
	t.Helper()
	fs, _ := filepath.Glob(filepath.Join(hsmDir, "tokens", "*", "token.object"))
	for _, f := range fs {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte(label)) {
			return filepath.Dir(f)
		}
	}
	t.Fatalf("no token directory for %s", label)
	return ""
}

// states is the cluster's state and its HSMs' states in HSM order.
func states(t *testing.T, s *Service, id string) string {
	t.Helper()
	out, err := s.DescribeClusters(context.Background(), caller, &hsmapi.DescribeClustersRequest{Filters: map[string][]string{"clusterIds": {id}}})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Clusters[0]
	got := *c.State
	for _, h := range c.Hsms {
		got += " " + *h.State
	}
	return got
}

// waitStates polls until states is want and returns how long it took.
func waitStates(t *testing.T, s *Service, id, want string) time.Duration {
	t.Helper()
	start := time.Now()
	for deadline := start.Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got := states(t, s, id)
		if got == want {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster %s: %s, want %s", id, got, want)
		}
	}
}

// TestProbeFollowsTokens takes the tokens of a kmsd-made cluster away
// behind kmsd's back and brings them back: the HSMs and the cluster turn
// DEGRADED within three probe intervals and key operations fail as the
// cluster being unusable; a token that returns is ACTIVE again within an
// interval or so, with the keys made and the password rotated while it
// was away, and the key operations work without a new login.
func TestProbeFollowsTokens(t *testing.T) {
	const every = 500 * time.Millisecond
	s := newService(t, func(c *Config) { c.ProbeInterval = every })
	ctx := context.Background()
	id := activeCluster(t, s, 2)
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "kms"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, id, "k1"); err != nil {
		t.Fatal(err)
	}
	iv, ct, err := s.Encrypt(ctx, id, "k1", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := s.byID(id)
	a, b := r.HSMs[0].label(), r.HSMs[1].label()
	adir, bdir, away := tokenDir(t, a), tokenDir(t, b), t.TempDir()
	move := func(from, to string) {
		t.Helper()
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}

	// Every token goes: DEGRADED within three intervals (a little more
	// for the polling and a loaded machine), and key operations fail.
	move(adir, filepath.Join(away, "a"))
	move(bdir, filepath.Join(away, "b"))
	if took := waitStates(t, s, id, "DEGRADED DEGRADED DEGRADED"); took > 3*every+every/2 {
		t.Errorf("DEGRADED after %v, want within 3 intervals of %v", took, every)
	}
	if _, _, err := s.Encrypt(ctx, id, "k1", []byte("x"), nil); !errors.Is(err, ErrClusterNotActive) {
		t.Fatalf("Encrypt with every token away: %v, want ErrClusterNotActive", err)
	}
	if st := fmt.Sprint(s.Statuses()[0]); st != fmt.Sprintf("{%s 111122223333 us-east-1 DEGRADED [{%s DEGRADED} {%s DEGRADED}]}", id, r.HSMs[0].ID, r.HSMs[1].ID) {
		t.Fatalf("Statuses: %s", st)
	}

	// One comes back: ACTIVE again, and it serves the old ciphertext
	// without a new login. A key made and a password rotated now reach
	// only that one.
	move(filepath.Join(away, "a"), adir)
	if took := waitStates(t, s, id, "ACTIVE ACTIVE DEGRADED"); took > 3*every+every/2 {
		t.Errorf("ACTIVE after %v, want within 3 intervals of %v", took, every)
	}
	if pt, err := s.Decrypt(ctx, id, "k1", iv, ct, nil); err != nil || string(pt) != "hello" {
		t.Fatalf("Decrypt after the token came back: %q, %v", pt, err)
	}
	if err := s.CreateKey(ctx, id, "k2"); err != nil {
		t.Fatal(err)
	}
	if err := s.RotatePassword(ctx, caller, id, "kmsuser", "kmspass1", "kmspass9"); err != nil {
		t.Fatal(err)
	}

	// The other, long gone and so looked for only every second probe,
	// comes back and is given what it missed, within three intervals.
	for s.misses(r.HSMs[1].ID) < longGone+1 {
		time.Sleep(every / 4)
	}
	move(filepath.Join(away, "b"), bdir)
	if took := waitStates(t, s, id, "ACTIVE ACTIVE ACTIVE"); took > 3*every+every/2 {
		t.Errorf("long-gone token ACTIVE after %v, want within 3 intervals of %v", took, every)
	}
	keys, err := s.Keys(ctx, id)
	if err != nil || fmt.Sprint(keys) != fmt.Sprintf("[{k1 [%s %s]} {k2 [%s %s]}]", r.HSMs[0].ID, r.HSMs[1].ID, r.HSMs[0].ID, r.HSMs[1].ID) {
		t.Fatalf("Keys = %v, %v", keys, err)
	}
	if err := s.Logout(ctx, caller, id, "kmsuser", RoleCryptoUser, "kms"); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass9", "kms"); err != nil {
		t.Fatalf("login with the password rotated while a token was away: %v", err)
	}
	toks, _ := s.tokens()
	for _, h := range []string{a, b} {
		if pt, err := toks.Decrypt(ctx, h, "k1", iv, ct, nil); err != nil || string(pt) != "hello" {
			t.Fatalf("Decrypt on %s: %q, %v", h, pt, err)
		}
	}
}
