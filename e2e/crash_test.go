package e2e

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// ackedBlob is a ciphertext whose Encrypt call returned, with what it
// encrypts.
type ackedBlob struct {
	keyID string
	blob  []byte
	pt    []byte
	ec    map[string]string
}

// acked holds what kmsd acknowledged: only results whose call returned.
type acked struct {
	mu    sync.Mutex
	keys  []string
	blobs []ackedBlob
}

func (a *acked) addKey(id string) {
	a.mu.Lock()
	a.keys = append(a.keys, id)
	a.mu.Unlock()
}

func (a *acked) addBlob(b ackedBlob) {
	a.mu.Lock()
	a.blobs = append(a.blobs, b)
	a.mu.Unlock()
}

// randomKey returns an acknowledged key, or "" if there is none yet.
func (a *acked) randomKey(r *rand.Rand) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.keys) == 0 {
		return ""
	}
	return a.keys[r.IntN(len(a.keys))]
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randomString(r *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:/"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}

// randomContext returns nil or an encryption context of one to three pairs.
func randomContext(r *rand.Rand) map[string]string {
	n := r.IntN(4)
	if n == 0 {
		return nil
	}
	ec := map[string]string{}
	for range n {
		ec[randomString(r, 1+r.IntN(8))] = randomString(r, r.IntN(12))
	}
	return ec
}

// TestCrashSafety kills kmsd with SIGKILL while four clients create keys
// and encrypt, restarts it on the same data directory, and checks that
// every key and every ciphertext kmsd acknowledged survived: each key is
// described, each ciphertext decrypts to its plaintext. Two rounds, the
// second adding to the first.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	var a acked

	for round := 1; round <= 2; round++ {
		c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
		var (
			killed   atomic.Bool
			inflight atomic.Int32
			sent     atomic.Int64
			wg       sync.WaitGroup
		)
		stop := time.Now().Add(6 * time.Second) // a cap: the kill comes first
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for time.Now().Before(stop) && !killed.Load() {
					key := a.randomKey(r)
					inflight.Add(1)
					sent.Add(1)
					if key == "" || r.IntN(4) == 0 {
						out, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("crash round " + strconv.Itoa(round))})
						inflight.Add(-1)
						if err != nil {
							if !killed.Load() {
								t.Errorf("CreateKey before the kill: %v", err)
							}
							return
						}
						a.addKey(aws.ToString(out.KeyMetadata.KeyId))
						continue
					}
					pt := randomBytes(r, 1+r.IntN(512))
					ec := randomContext(r)
					out, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: pt, EncryptionContext: ec})
					inflight.Add(-1)
					if err != nil {
						if !killed.Load() {
							t.Errorf("Encrypt before the kill: %v", err)
						}
						return
					}
					a.addBlob(ackedBlob{keyID: key, blob: out.CiphertextBlob, pt: pt, ec: ec})
				}
			}()
		}

		// Kill mid-load, when requests are in flight.
		time.Sleep(2*time.Second + rand.N(time.Second))
		for inflight.Load() == 0 && time.Now().Before(stop) {
			time.Sleep(time.Millisecond)
		}
		atKill := inflight.Load()
		killed.Store(true)
		s.Kill()
		wg.Wait()
		a.mu.Lock()
		nkeys, nblobs := len(a.keys), len(a.blobs)
		a.mu.Unlock()
		t.Logf("round %d: %d requests sent, %d in flight at SIGKILL; %d keys and %d ciphertexts acknowledged so far", round, sent.Load(), atKill, nkeys, nblobs)
		if atKill == 0 {
			t.Errorf("round %d: no request was in flight when kmsd was killed", round)
		}
		if nkeys == 0 || nblobs == 0 {
			t.Fatalf("round %d: kmsd acknowledged %d keys and %d ciphertexts, want some of each", round, nkeys, nblobs)
		}

		s.Start()
		verifyAcked(t, ctx, sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region), &a, round)
	}
}

// verifyAcked checks, four requests at a time, that every acknowledged key
// exists and every acknowledged ciphertext decrypts to its plaintext.
func verifyAcked(t *testing.T, ctx context.Context, c *kms.Client, a *acked, round int) {
	t.Helper()
	a.mu.Lock()
	keys, blobs := a.keys, a.blobs
	a.mu.Unlock()
	work := make(chan func(), 64)
	var wg sync.WaitGroup
	var failures atomic.Int32
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				f()
			}
		}()
	}
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, id := range keys {
		work <- func() {
			out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
			if err != nil {
				fail("round %d: acknowledged key %s after restart: %v", round, id, err)
				return
			}
			if got, state := aws.ToString(out.KeyMetadata.KeyId), out.KeyMetadata.KeyState; got != id || state != types.KeyStateEnabled {
				fail("round %d: DescribeKey %s: got %q in state %s, want it Enabled", round, id, got, state)
			}
		}
	}
	for _, b := range blobs {
		work <- func() {
			out, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: b.blob, EncryptionContext: b.ec})
			if err != nil {
				fail("round %d: acknowledged ciphertext under %s after restart: %v", round, b.keyID, err)
				return
			}
			if !bytes.Equal(out.Plaintext, b.pt) || aws.ToString(out.KeyId) != keyARN(b.keyID) {
				fail("round %d: Decrypt after restart: got %x from %q, want %x from %q", round, out.Plaintext, aws.ToString(out.KeyId), b.pt, keyARN(b.keyID))
			}
		}
	}
	close(work)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Errorf("round %d: %d of %d acknowledged keys and ciphertexts lost", round, n, len(keys)+len(blobs))
	}
}
