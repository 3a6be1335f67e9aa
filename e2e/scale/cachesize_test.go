package scale

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestCacheSizeBound: kmsd started with --cache-size 1000 on a store of
// 5,000 keys answers DescribeKey and Encrypt for every key, each time with
// that key (read twice over, so evicted keys are read again), while its
// caches (kmsd_cache_entries on /metrics) never hold more than 1,000
// records of a kind.
func TestCacheSizeBound(t *testing.T) {
	const n, size = 5000, 1000
	// Bad sizes are refused before anything starts, from the flag or
	// the environment.
	for _, bad := range []struct{ arg, env string }{{"--cache-size=0", ""}, {"", "KMSD_CACHE_SIZE=many"}} {
		cmd := exec.Command(kmsdBin, "serve", "--listen", e2etest.FreeAddr(t), "--data-dir", t.TempDir())
		if bad.arg != "" {
			cmd.Args = append(cmd.Args, bad.arg)
		}
		cmd.Env = env()
		if bad.env != "" {
			cmd.Env = env(bad.env)
		}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--cache-size") {
			t.Errorf("kmsd with %s%s: %v, %q; want a refusal naming --cache-size", bad.arg, bad.env, err, out)
		}
	}
	s := prepare(t, sqliteDriver, n, false)
	metrics := e2etest.FreeAddr(t)
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: s.dataDir, Env: s.env,
		Args: append([]string{"--cache-size", strconv.Itoa(size), "--metrics-listen", metrics, "--log-level", "warn"}, s.args...)})
	client := kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(k.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(s.akid, s.secret, ""),
		Retryer:      e2etest.ClosedConnRetryer(),
	})
	ctx := context.Background()
	cached := func() map[string]float64 {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]float64{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), `kmsd_cache_entries{cache="`)
			if !ok {
				continue
			}
			kind, v, _ := strings.Cut(line, `"} `)
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", sc.Text(), err)
			}
			out[kind] = f
		}
		if len(out) != 3 {
			t.Fatalf("kmsd_cache_entries for %v, want keys, grants and aliases", out)
		}
		return out
	}
	plaintext := []byte("cache bound")
	for pass := range 2 {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < n; i += 8 {
					id := s.ids[i]
					d, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
					if err != nil {
						errs <- err
						return
					}
					if got := aws.ToString(d.KeyMetadata.KeyId); got != id {
						t.Errorf("pass %d: DescribeKey %s answered for %s", pass, id, got)
					}
					e, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: plaintext})
					if err != nil {
						errs <- err
						return
					}
					if got := aws.ToString(e.KeyId); !strings.HasSuffix(got, ":key/"+id) {
						t.Errorf("pass %d: Encrypt with %s used %s", pass, id, got)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("pass %d: %v", pass, err)
		}
		c := cached()
		t.Logf("after pass %d over %d keys with --cache-size %d: cached %v", pass, n, size, c)
		for kind, v := range c {
			if v > size {
				t.Errorf("pass %d: %v %s cached, over --cache-size %d", pass, v, kind, size)
			}
		}
		if c["keys"] < size/2 {
			t.Errorf("pass %d: only %v keys cached after reading %d", pass, c["keys"], n)
		}
	}
	// The process's soft memory limit follows the cache size (package
	// memlimit): at least 128 MiB + 4 KiB a key, and not the runtime's
	// default of none.
	limit := e2etest.Scrape(t, "http://"+metrics+"/metrics", "go_gc_gomemlimit_bytes")
	if floor := float64(128<<20 + size*4<<10); limit < floor || limit > 1<<30 {
		t.Errorf("go_gc_gomemlimit_bytes = %v with --cache-size %d, want from %v up to 1 GiB", limit, size, floor)
	}
	// Decrypt of a ciphertext of an evicted key: the key is read again.
	e, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(s.ids[0]), Plaintext: plaintext})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range s.ids[1 : 2*size] {
		if _, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil {
			t.Fatal(err)
		}
	}
	d, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: e.CiphertextBlob})
	if err != nil || string(d.Plaintext) != string(plaintext) || !strings.HasSuffix(aws.ToString(d.KeyId), ":key/"+s.ids[0]) {
		t.Fatalf("Decrypt after the key was evicted: %v", err)
	}
}

// TestCachePreload: kmsd started with --cache-preload on and --cache-size
// 3,000 on a store of 5,000 keys reads 3,000 of them into its cache in the
// background, and no more (kmsd_cache_entries, the log line), and then
// answers Encrypt for every key; a --cache-preload other than on or off
// is refused before anything starts.
func TestCachePreload(t *testing.T) {
	const n, size = 5000, 3000
	cmd := exec.Command(kmsdBin, "serve", "--listen", e2etest.FreeAddr(t), "--data-dir", t.TempDir(), "--cache-preload", "yes")
	cmd.Env = env()
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), `--cache-preload "yes": want off or on`) {
		t.Errorf("kmsd --cache-preload yes: %v, %q; want a refusal naming --cache-preload", err, out)
	}
	s := prepare(t, sqliteDriver, n, false)
	metrics := e2etest.FreeAddr(t)
	k := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: s.dataDir, Env: s.env,
		Args: append([]string{"--cache-size", strconv.Itoa(size), "--cache-preload", "on", "--metrics-listen", metrics}, s.args...)})
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, err := os.ReadFile(k.LogFile)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(log), `msg="cache preloaded" keys=3000 `) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"cache preloaded\" line with 3000 keys within 30 s:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := e2etest.Scrape(t, "http://"+metrics+"/metrics", `kmsd_cache_entries{cache="keys"}`); got != size {
		t.Errorf("kmsd_cache_entries{cache=\"keys\"} = %v after the preload, want %d", got, size)
	}
	client := kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(k.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(s.akid, s.secret, ""),
		Retryer:      e2etest.ClosedConnRetryer(),
	})
	for _, id := range s.ids {
		e, err := client.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("preloaded")})
		if err != nil {
			t.Fatal(err)
		}
		if got := aws.ToString(e.KeyId); !strings.HasSuffix(got, ":key/"+id) {
			t.Errorf("Encrypt with %s used %s", id, got)
		}
	}
}
