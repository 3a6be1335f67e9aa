package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the architecture's promise for this binary: no storage driver, no
// KMS service, no AWS SDK.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/kmsd/kmsd/internal/kms", "github.com/kmsd/kmsd/internal/storage",
			"github.com/kmsd/kmsd/internal/catalog", "modernc.org/sqlite", "github.com/jackc/pgx", "github.com/aws/aws-sdk-go-v2"} {
			if pkg == banned || strings.HasPrefix(pkg, banned+"/") {
				t.Errorf("xks-proxy links %s", pkg)
			}
		}
	}
}
