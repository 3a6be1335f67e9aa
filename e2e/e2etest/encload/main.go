// Command encload is an Encrypt load generator for end-to-end tests that
// measure kmsd's latency: built without the race detector whatever the
// test binary is built with, so that the client's own cost does not count
// as kmsd's. It calls Encrypt on one key from --clients goroutines, each
// with aws-sdk-go-v2, prints "ready" once --warmup calls are done, and runs
// until its standard input closes; then it writes every call made after the
// warm-up to --out, one "start-unix-nanoseconds latency-nanoseconds" line
// each, and exits (non-zero if a call failed).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

func main() {
	endpoint := flag.String("endpoint", "", "kmsd's endpoint URL")
	keyID := flag.String("key-id", "", "the key to encrypt with")
	clients := flag.Int("clients", 2, "concurrent callers")
	warmup := flag.Int("warmup", 100, "calls before measuring")
	out := flag.String("out", "", "file for the samples")
	flag.Parse()
	if err := run(*endpoint, *keyID, *clients, *warmup, *out); err != nil {
		fmt.Fprintln(os.Stderr, "encload:", err)
		os.Exit(1)
	}
}

type sample struct{ start, lat int64 }

func run(endpoint, keyID string, clients, warmup int, out string) error {
	ctx := context.Background()
	// Credentials, profile and Region from the environment (the test's
	// CLI environment for kmsd).
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }))
	if err != nil {
		return err
	}
	c := kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(endpoint) })
	encrypt := func() (time.Time, time.Duration, error) {
		t0 := time.Now()
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &keyID, Plaintext: []byte("while stores connect")})
		return t0, time.Since(t0), err
	}
	for range warmup {
		if _, _, err := encrypt(); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	var stop atomic.Bool
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop.Store(true)
	}()
	var mu sync.Mutex
	var all []sample
	var firstErr error
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []sample
			for !stop.Load() {
				t0, d, err := encrypt()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					break
				}
				mine = append(mine, sample{t0.UnixNano(), int64(d)})
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, s := range all {
		fmt.Fprintf(w, "%d %d\n", s.start, s.lat)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return firstErr
}
