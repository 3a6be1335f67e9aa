package hsm

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsd/kmsd/e2e/e2etest"
	"github.com/kmsd/kmsd/internal/xks/keyman/pkcs11/pkcs11test"
)

// TestBench measures Decrypt (and Encrypt) through a CloudHSM key store:
// aws-sdk-go-v2 → kmsd (SigV4, key policy) → PKCS#11 C_Decrypt on a token
// of the store's cluster, declared over two tokens of each PKCS#11
// implementation under test (KMSD_TEST_PKCS11: SoftHSM2, openCryptoki's
// software token). By default it is a short smoke run at concurrency 1 and
// 4; HSM_BENCH=1 runs the full measurement (concurrency 1, 16 and 64,
// HSM_BENCH_DURATION per level, default 3s) and prints the figures beside
// those of the xks-proxy bench (XKS_BENCH=1 go test -run TestBench
// ./e2e/xksproxy/):
//
//	HSM_BENCH=1 go test -run 'TestBench$' -v ./e2e/hsm/
//	HSM_BENCH=1 KMSD_TEST_PKCS11=opencryptoki go test -run 'TestBench$' -v ./e2e/hsm/
//
// A full run pins kmsd to CPU 1 (GOMAXPROCS 1) and the test's load
// generator to CPU 0, as the xks-proxy bench does. The store's request
// quota is off (--custom-key-store-rps 0): the figures are the HSM path's.
func TestBench(t *testing.T) {
	requireTools(t)
	for _, impl := range pkcs11test.Modules() {
		t.Run(impl, func(t *testing.T) { benchStore(t, impl) })
	}
}

func benchStore(t *testing.T, impl string) {
	full := os.Getenv("HSM_BENCH") == "1"
	dur, levels := 300*time.Millisecond, []int{1, 4}
	if full {
		dur, levels = 3*time.Second, []int{1, 16, 64}
		if d := os.Getenv("HSM_BENCH_DURATION"); d != "" {
			var err error
			if dur, err = time.ParseDuration(d); err != nil {
				t.Fatalf("HSM_BENCH_DURATION: %v", err)
			}
		}
	}
	labels := [2]string{"bench-a", "bench-b"}
	mod, env, _ := declaredTokens(t, impl, labels, "adminPw1", "kmsPswd1")
	dir := t.TempDir()
	anchor, _ := ca(t, dir, "customerCA")
	soFile := write(t, filepath.Join(dir, "so.pin"), "adminPw1\n")
	cfg := write(t, filepath.Join(dir, "hsm.toml"), `
[[cluster]]
name = "bench"
module = "`+mod+`"
so_pin = "file:`+soFile+`"
crypto_user_pin = "env:BENCH_KMSUSER_PIN"
trust_anchor = "`+anchor+`"

[[cluster.hsm]]
token = "bench-a"
availability_zone = "us-east-1a"

[[cluster.hsm]]
token = "bench-b"
availability_zone = "us-east-1b"
`)
	pin := full && runtime.NumCPU() >= 2
	env = append(env, "BENCH_KMSUSER_PIN=kmsPswd1", "KMSD_KEYSTORE_CONNECT_DELAY=50ms")
	if pin {
		env = append(env, "GOMAXPROCS=1")
	}
	k := startWith(t, kmsdBin, env, "--hsm-config", cfg, "--custom-key-store-rps", "0", "--log-level", "warn")
	if pin {
		taskset(t, "1", k.proc.Cmd.Process.Pid)
		taskset(t, "0", os.Getpid())
		t.Cleanup(func() { taskset(t, fmt.Sprintf("0-%d", runtime.NumCPU()-1), os.Getpid()) })
	}
	clusterID := list(k.aws(t, "describe-clusters")["Clusters"])[0].(map[string]any)["ClusterId"].(string)

	ctx := context.Background()
	c := benchClient(t, k)
	store, err := c.CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{CustomKeyStoreName: aws.String("bench"),
		CloudHsmClusterId: &clusterID, TrustAnchorCertificate: aws.String(read(t, anchor)), KeyStorePassword: aws.String("kmsPswd1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConnectCustomKeyStore(ctx, &kms.ConnectCustomKeyStoreInput{CustomKeyStoreId: store.CustomKeyStoreId}); err != nil {
		t.Fatal(err)
	}
	k.waitStore(t, *store.CustomKeyStoreId, "CONNECTED", "")
	key, err := c.CreateKey(ctx, &kms.CreateKeyInput{Origin: "AWS_CLOUDHSM", CustomKeyStoreId: store.CustomKeyStoreId})
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("32 bytes of data key, say......!")
	enc, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: msg})
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]func() error{
		"Decrypt": func() error {
			out, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
			if err == nil && string(out.Plaintext) != string(msg) {
				err = fmt.Errorf("decrypt gave %q", out.Plaintext)
			}
			return err
		},
		"Encrypt": func() error {
			_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: key.KeyMetadata.KeyId, Plaintext: msg})
			return err
		},
	}
	var report strings.Builder
	for _, op := range []string{"Decrypt", "Encrypt"} {
		for _, n := range levels {
			loadFor(dur/4, n, ops[op]) // warm up
			lat, errs := loadFor(dur, n, ops[op])
			if len(errs) > 0 {
				t.Fatalf("%s at concurrency %d: %d errors, the first: %v", op, n, len(errs), errs[0])
			}
			if len(lat) == 0 {
				t.Fatalf("%s at concurrency %d: no call finished in %v", op, n, dur)
			}
			fmt.Fprintf(&report, "%-7s c=%-3d %7.0f ops/s  p50 %v  p99 %v  (%d calls)\n", op, n,
				float64(len(lat))/dur.Seconds(), pctl(lat, 50), pctl(lat, 99), len(lat))
		}
	}
	t.Logf("CloudHSM key store over %s (kmsd → PKCS#11), aws-sdk-go-v2 on loopback, %v a level%s:\n%s", impl, dur,
		map[bool]string{true: ", kmsd pinned to CPU 1 and the client to CPU 0", false: ""}[pin], report.String())
}

// benchClient is an aws-sdk-go-v2 KMS client of k's administrator with
// connections enough for 64 callers and no retries.
func benchClient(t *testing.T, k *kmsd) *kms.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{k.creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(t.TempDir(), "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(e2etest.ClosedConnRetryer))
	if err != nil {
		t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) {
		o.BaseEndpoint = aws.String(k.endpoint)
		o.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) { tr.MaxIdleConnsPerHost = 64 })
	})
}

// loadFor runs op from n goroutines for d and returns each call's latency
// and the errors.
func loadFor(d time.Duration, n int, op func() error) ([]time.Duration, []error) {
	var mu sync.Mutex
	var lat []time.Duration
	var errs []error
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				t0 := time.Now()
				err := op()
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return lat, errs
}

// pctl is the p-th percentile of ds (nearest rank).
func pctl(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)].Round(10 * time.Microsecond)
}

// taskset pins every thread of process pid to cpus.
func taskset(t *testing.T, cpus string, pid int) {
	t.Helper()
	if out, err := exec.Command("taskset", "-a", "-p", "-c", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		t.Fatalf("taskset: %v\n%s", err, out)
	}
}
