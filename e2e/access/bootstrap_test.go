package access

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestThreeNodesStartAtOnce: three kmsd processes started at the same
// moment on one data directory (one database) without an administrator —
// three rounds — all come up, and each lists exactly one access key for
// the administrator, the same one, which the profile written in the data
// directory holds. The database is made first by a kmsd in emulator mode
// (which makes no administrator): SQLite refuses concurrent first opens
// of one file (SQLITE_BUSY while one creates the schema), which is the
// storage driver's business, not the bootstrap's.
func TestThreeNodesStartAtOnce(t *testing.T) {
	for round := 0; round < 3; round++ {
		dir := t.TempDir()
		data := filepath.Join(dir, "data")
		e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: data, Args: []string{"--auth", "emulator"},
			Env: []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}}).Stop()
		if _, err := os.Stat(filepath.Join(data, "credentials")); err == nil {
			t.Fatal("kmsd in emulator mode made an administrator: the test proves nothing")
		}
		var nodes []*kmsd
		var cmds []*exec.Cmd
		for i := 0; i < 3; i++ {
			addr := e2etest.FreeAddr(t)
			logf, err := os.Create(filepath.Join(dir, fmt.Sprint("kmsd", i, ".log")))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(kmsdBin, "serve", "--listen", addr, "--data-dir", data, "--node-id", fmt.Sprint("node-", i),
				"--audit-log", filepath.Join(dir, fmt.Sprint("audit", i, ".log")))
			cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
			cmd.Stdout, cmd.Stderr = logf, logf
			cmds = append(cmds, cmd)
			nodes = append(nodes, &kmsd{t: t, dataDir: data, endpoint: "http://" + addr, logPath: logf.Name()})
		}
		for _, cmd := range cmds {
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmd := cmd
			t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
		}
		for i, n := range nodes {
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if resp, err := http.Get(n.endpoint + "/healthz"); err == nil {
					resp.Body.Close()
					break
				}
				if time.Now().After(deadline) {
					b, _ := os.ReadFile(n.logPath)
					t.Fatalf("round %d: node %d did not come up:\n%s", round, i, b)
				}
			}
		}
		admin := adminProfile(t, nodes[0])
		want := admin.env[0][len("AWS_ACCESS_KEY_ID="):]
		for i, n := range nodes {
			out := n.ok(admin, "iam", "list-access-keys", "--user-name", "kmsd-admin")
			keys, _ := out["AccessKeyMetadata"].([]any)
			if len(keys) != 1 || str(keys[0], "AccessKeyId") != want {
				t.Fatalf("round %d: node %d lists the administrator's keys %v, want only %s", round, i, keys, want)
			}
		}
		for _, cmd := range cmds {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
	}
}
