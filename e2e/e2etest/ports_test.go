package e2etest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestFreeAddrReserves: FreeAddr hands a port out once, in this process and
// among test processes running side by side.
func TestFreeAddrReserves(t *testing.T) {
	if os.Getenv("PORTS_CHILD") != "" {
		// Print 300 addresses, one per line.
		for range 300 {
			os.Stdout.WriteString(FreeAddr(t) + "\n")
		}
		return
	}
	seen := map[string]bool{}
	for range 300 {
		a := FreeAddr(t)
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFreeAddrReserves$")
	cmd.Env = append(os.Environ(), "PORTS_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range strings.Fields(string(out)) {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			continue
		}
		n++
		if seen[a] {
			t.Fatalf("%s handed out to this process and to another", a)
		}
	}
	if n != 300 {
		t.Fatalf("child printed %d addresses, want 300:\n%s", n, out)
	}
}
