package xks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestCustomKeyStoreQuota: the request quota per custom key store (spec
// §11) with kmsd started at --custom-key-store-rps 20. A burst of Encrypts
// through aws-sdk-go-v2 (retries off) on an external key store's key gets
// no more than the quota allows and ThrottlingException (AWS's message,
// HTTP 400) for the rest, and the throttled requests never reach the
// proxy, and are counted by kmsd_custom_key_store_throttled_total; Encrypts
// on a plain key, sent at the same time, all succeed; a second later the
// store's key works again.
func TestCustomKeyStoreQuota(t *testing.T) {
	t.Parallel()
	const rps = 20
	dir := t.TempDir()
	pk := filepath.Join(dir, "pki")
	proxyRun(t, "dev-cert", "--hostname", "localhost,127.0.0.1", "--out-dir", pk)
	keyFile := filepath.Join(dir, "keys.json")
	proxyRun(t, "keys", "create", "--keys-file", keyFile, "--id", "k1", "--kdf-iterations", "2000")
	p := startProxy(t, pk, keyFile)
	metrics := e2etest.FreeAddr(t)
	k := startKMSD(t, "--xks-ca-bundle", filepath.Join(pk, "ca.pem"), "--xks-health-interval", "0", "--custom-key-store-rps", "20",
		"--metrics-listen", metrics)
	id, errs, code := k.createStore(storeReq("quota", "PUBLIC_ENDPOINT", "https://localhost:"+p.Port(), "/kms/xks/v1", akid, secret))
	if code != 0 {
		t.Fatalf("create: %s", errs)
	}
	k.aws(connectArgs(id)...)
	if e := k.settle(id)[id]; e["ConnectionState"] != "CONNECTED" {
		t.Fatalf("connect: %v", e)
	}
	runs := k.cliBatch([]string{"kms", "create-key", "--origin", "EXTERNAL_KEY_STORE", "--custom-key-store-id", id, "--xks-key-id", "k1"},
		[]string{"kms", "create-key"})
	xk := runs[0].ok(t)["KeyMetadata"].(map[string]any)["KeyId"].(string)
	plain := runs[1].ok(t)["KeyMetadata"].(map[string]any)["KeyId"].(string)
	ctx := context.Background()
	c := k.sdk() // retries off: every answer is kmsd's first
	encrypts := func() int { return strings.Count(p.Log.String(), `"operation":"encrypt"`) }
	time.Sleep(time.Second) // the bucket is full again after the key's creation
	before := encrypts()

	// 8 workers, 100 Encrypts each: 50 on the store's key, 50 on the plain key.
	const workers, each = 8, 50
	var mu sync.Mutex
	var ok, throttled, plainOK int
	var other []error
	var wg sync.WaitGroup
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: []byte("quota")})
				_, perr := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &plain, Plaintext: []byte("quota")})
				mu.Lock()
				switch {
				case err == nil:
					ok++
				case isThrottled(err):
					throttled++
				default:
					other = append(other, err)
				}
				if perr == nil {
					plainOK++
				} else {
					other = append(other, perr)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	if len(other) > 0 {
		t.Fatalf("%d unexpected errors, first: %v", len(other), other[0])
	}
	// One second's burst, then rps a second (one token of slack for the
	// refill between the clock reads).
	allowed := rps + int(elapsed.Seconds()*rps) + 1
	if ok+throttled != workers*each || ok > allowed || throttled == 0 || plainOK != workers*each {
		t.Fatalf("in %v: store key %d ok, %d throttled (at most %d allowed); plain key %d of %d ok",
			elapsed, ok, throttled, allowed, plainOK, workers*each)
	}
	t.Logf("%d Encrypts on the store's key in %v: %d ok (quota allows %d), %d ThrottlingException; %d/%d on a plain key ok",
		workers*each, elapsed.Round(time.Millisecond), ok, allowed, throttled, plainOK, workers*each)
	waitFor(t, "the proxy's log of the allowed Encrypts", func() bool { return encrypts()-before >= ok })
	if n := encrypts() - before; n != ok {
		t.Fatalf("the proxy saw %d Encrypts, kmsd allowed %d: throttled requests reached it", n, ok)
	}

	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`kmsd_custom_key_store_throttled_total{custom_key_store_id=%q} %d`, id, throttled); !strings.Contains(string(b), want) {
		t.Fatalf("metrics lack %s", want)
	}

	time.Sleep(time.Second)
	if _, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &xk, Plaintext: []byte("quota")}); err != nil {
		t.Fatalf("a second later: %v", err)
	}
}

// isThrottled reports whether err is kmsd's ThrottlingException with
// AWS's message and HTTP 400.
func isThrottled(err error) bool {
	var re *awshttp.ResponseError
	return apiCode(err) == "ThrottlingException" &&
		apiMessage(err) == "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls." &&
		errors.As(err, &re) && re.HTTPStatusCode() == 400
}
