package xksproxy

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// TestBench drives the proxy with the binary's own load generator (`xks-proxy
// bench`), over HTTPS on loopback, against the software key file and the PKCS#11 tokens. By
// default it is a short smoke run; XKS_BENCH=1 runs the full measurement (concurrency
// 1, 16 and 64, XKS_BENCH_DURATION per level, default 3s) and prints the figures:
//
//	XKS_BENCH=1 go test -run TestBench -v ./e2e/xksproxy/
//
// It runs once per PKCS#11 implementation (pkcs11test.Modules: SoftHSM2 and
// openCryptoki's software token; KMSD_TEST_PKCS11 picks), each with a proxy of
// its own; the key file is measured with the first.
func TestBench(t *testing.T) {
	for i, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { bench(t, impl, i == 0) })
	}
}

func bench(t *testing.T, impl string, withKeyFile bool) {
	full := os.Getenv("XKS_BENCH") == "1"
	dur, conc, warm := "300ms", "1,4", "100ms"
	if full {
		dur, conc, warm = "3s", "1,16,64", "1s"
		if d := os.Getenv("XKS_BENCH_DURATION"); d != "" {
			dur = d
		}
	}
	dir := t.TempDir()
	pk := pki(t, dir)
	tk, hsmEnv := hsmSetup(t, dir, impl)
	_, kfEnv := keyFile(t, dir)
	cfg := writeConfig(t, dir, pk, tk.Module)
	env := append(append(hsmEnv, kfEnv...), "E2E_SECRET_B="+secretB)
	// A full run pins the proxy to CPU 1 (with GOMAXPROCS 1, as if started
	// there) and the load generator to CPU 0, so the two do not compete
	// for a core.
	pin := full && runtime.NumCPU() >= 2
	if pin {
		env = append(env, "GOMAXPROCS=1")
	}
	metrics := e2etest.FreeAddr(t)
	p := start(t, env, "--config", cfg, "--metrics-listen", metrics)
	base := "https://localhost:" + p.Port()
	if pin {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(p.Cmd.Process.Pid)).CombinedOutput(); err != nil {
			t.Fatalf("taskset: %v\n%s", err, out)
		}
	}
	cases := []struct{ name, prefix, key string }{{impl, "/hsm", "foo"}}
	if withKeyFile {
		cases = append([]struct{ name, prefix, key string }{{"key file", "/soft", "both"}}, cases...)
	}
	for _, tc := range cases {
		args := []string{"bench", "--url", base + tc.prefix, "--access-key-id", akidA,
			"--secret-access-key-file", filepath.Join(dir, "secretA"), "--ca-file", filepath.Join(pk, "ca.pem"),
			"--key-id", tc.key, "--concurrency", conc, "--duration", dur, "--warmup", warm}
		var out string
		if pin {
			b, err := exec.Command("taskset", append([]string{"-c", "0", binPath}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("bench: %v\n%s", err, b)
			}
			out = string(b)
		} else {
			out = run(t, nil, args...)
		}
		t.Logf("%s (%s):\n%s%s", tc.name, tc.prefix, out, serverSide(t, metrics, tc.prefix))
		if strings.Count(out, "ops/s") != 2*len(strings.Split(conc, ",")) {
			t.Fatalf("bench output:\n%s", out)
		}
		// The smoke run must be clean. A full run on a loaded machine may see
		// requests pass the 200ms EKM budget (DependencyTimeoutException, as
		// designed); they are reported in the figures, not failed.
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !full && !strings.Contains(line, ", 0 errors)") {
				t.Errorf("errors during the benchmark: %s", line)
			}
		}
	}
}

// serverSide reads the proxy's request duration histogram (from ServeHTTP to the
// answer written, so without TLS, connection and client time) and tells, per
// operation of prefix, the share of requests answered within 1 ms and 5 ms since the
// proxy started. Beside the client's figures it shows whether a tail is made in the
// proxy or around it.
func serverSide(t *testing.T, addr, prefix string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := ""
	for _, op := range []string{"encrypt", "decrypt"} {
		count := func(le string) float64 {
			var v float64
			key := `xks_proxy_request_duration_seconds_bucket{operation="` + op + `",prefix="` + prefix + `",le="` + le + `"} `
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, key) {
					v, _ = strconv.ParseFloat(strings.TrimPrefix(l, key), 64)
				}
			}
			return v
		}
		if all := count("+Inf"); all > 0 {
			out += fmt.Sprintf("server-side %s: %.2f%% within 1 ms, %.2f%% within 5 ms (%.0f requests)\n", op,
				100*count("0.001")/all, 100*count("0.005")/all, all)
		}
	}
	return out
}
