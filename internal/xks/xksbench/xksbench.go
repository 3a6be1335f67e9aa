// Package xksbench is a load generator for XKS proxies: it signs requests as KMS does
// (SigV4, service kms-xks-proxy, signed headers host and x-amz-date) and measures
// throughput and latency percentiles of Encrypt and Decrypt at given concurrencies.
// Loops are bounded by a duration and a request cap.
package xksbench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmsd/kmsd/internal/sigv4"
	"github.com/kmsd/kmsd/internal/xks"
)

// Client calls one logical key store of an XKS proxy.
type Client struct {
	BaseURL     string // https://host:port/prefix (without /kms/xks/v1)
	AccessKeyID string
	Secret      string
	Region      string
	HTTP        *http.Client
	signer      sigv4.Signer
}

// NewClient builds a client with a keep-alive transport sized for concurrency.
func NewClient(baseURL, akid, secret, region string, tlsCfg *tls.Config, concurrency int) *Client {
	tr := &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConns: concurrency * 2,
		MaxIdleConnsPerHost: concurrency * 2, MaxConnsPerHost: 0, IdleConnTimeout: 90 * time.Second}
	if region == "" {
		region = "us-east-1"
	}
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), AccessKeyID: akid, Secret: secret, Region: region,
		HTTP: &http.Client{Transport: tr, Timeout: 10 * time.Second}, signer: sigv4.Signer{RawPath: true, Headers: []string{}}}
}

// APIError is an error answer of the proxy.
type APIError struct {
	Status int
	xks.ErrorResponse
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, e.ErrorName, e.ErrorMessage)
}

// Call posts req to path (relative to BaseURL+"/kms/xks/v1") and decodes the answer
// into resp.
func (c *Client) Call(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+xks.APIRoot+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	c.signer.Sign(r, body, c.AccessKeyID, c.Secret, "", c.Region, "kms-xks-proxy", time.Now())
	res, err := c.HTTP.Do(r)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		e := &APIError{Status: res.StatusCode}
		json.Unmarshal(raw, &e.ErrorResponse)
		return e
	}
	return json.Unmarshal(raw, resp)
}

// Metadata is the requestMetadata the benchmark sends.
func Metadata(op string) *xks.RequestMetadata {
	return &xks.RequestMetadata{AWSPrincipalARN: "arn:aws:iam::111122223333:user/bench",
		KMSKeyARN: "arn:aws:kms:us-east-1:111122223333:key/bench", KMSOperation: op, KMSRequestID: "bench"}
}

// Config is one benchmark run.
type Config struct {
	KeyID         string
	Op            string // "encrypt" or "decrypt"
	Concurrency   []int
	Duration      time.Duration // per concurrency level
	MaxRequests   int           // cap per level (default 1,000,000)
	PlaintextSize int           // default 32 (a data key)
	AADSize       int           // default 64
	Warmup        time.Duration
}

// Result is the outcome at one concurrency.
type Result struct {
	Op          string
	Concurrency int
	Requests    int
	Errors      int
	FirstError  string
	Elapsed     time.Duration
	OpsPerSec   float64
	P50, P99    time.Duration
	Max         time.Duration
}

func (r Result) String() string {
	s := fmt.Sprintf("%-7s c=%-3d  %8.0f ops/s  p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%d requests, %d errors)",
		r.Op, r.Concurrency, r.OpsPerSec, ms(r.P50), ms(r.P99), ms(r.Max), r.Requests, r.Errors)
	if r.FirstError != "" {
		s += " first error: " + r.FirstError
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run runs cfg against c, one level after the other.
func Run(ctx context.Context, c *Client, cfg Config) ([]Result, error) {
	if cfg.MaxRequests == 0 {
		cfg.MaxRequests = 1_000_000
	}
	if cfg.PlaintextSize == 0 {
		cfg.PlaintextSize = 32
	}
	if cfg.AADSize == 0 {
		cfg.AADSize = 64
	}
	pt, aad := make([]byte, cfg.PlaintextSize), make([]byte, cfg.AADSize)
	rand.Read(pt)
	rand.Read(aad)
	encReq := &xks.EncryptRequest{RequestMetadata: Metadata("Encrypt"), Plaintext: pt, EncryptionAlgorithm: xks.AlgorithmGCM,
		AdditionalAuthenticatedData: aad, CiphertextDataIntegrityValueAlgorithm: xks.CDIVAlgorithm}
	var enc xks.EncryptResponse
	if err := c.Call(ctx, "/keys/"+cfg.KeyID+"/encrypt", encReq, &enc); err != nil {
		return nil, fmt.Errorf("first encrypt: %w", err)
	}
	decReq := &xks.DecryptRequest{RequestMetadata: Metadata("Decrypt"), Ciphertext: enc.Ciphertext, EncryptionAlgorithm: xks.AlgorithmGCM,
		InitializationVector: enc.InitializationVector, AuthenticationTag: enc.AuthenticationTag,
		AdditionalAuthenticatedData: aad, CiphertextMetadata: enc.CiphertextMetadata}
	one := func(ctx context.Context) error {
		if cfg.Op == "decrypt" {
			var out xks.DecryptResponse
			return c.Call(ctx, "/keys/"+cfg.KeyID+"/decrypt", decReq, &out)
		}
		var out xks.EncryptResponse
		return c.Call(ctx, "/keys/"+cfg.KeyID+"/encrypt", encReq, &out)
	}
	var results []Result
	for _, conc := range cfg.Concurrency {
		// Every level starts from the same state: no keep-alive connections
		// left over from an earlier level (a level after one at concurrency
		// 64 would otherwise run beside 48 idle connections the proxy
		// keeps, and its figures depend on the order of the runs).
		c.HTTP.CloseIdleConnections()
		if cfg.Warmup > 0 {
			level(ctx, one, conc, cfg.Warmup, cfg.MaxRequests)
		}
		r := level(ctx, one, conc, cfg.Duration, cfg.MaxRequests)
		r.Op = cfg.Op
		results = append(results, r)
		if ctx.Err() != nil {
			break
		}
	}
	return results, nil
}

func level(ctx context.Context, one func(context.Context) error, conc int, d time.Duration, maxReq int) Result {
	var (
		issued   atomic.Int64
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr string
		wg       sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			lerrs, lfirst := 0, ""
			for time.Now().Before(deadline) && ctx.Err() == nil && issued.Add(1) <= int64(maxReq) {
				t0 := time.Now()
				err := one(ctx)
				local = append(local, time.Since(t0))
				if err != nil {
					lerrs++
					if lfirst == "" {
						lfirst = err.Error()
					}
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			errs += lerrs
			if firstErr == "" {
				firstErr = lfirst
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := Result{Concurrency: conc, Requests: len(lat), Errors: errs, FirstError: firstErr, Elapsed: elapsed}
	if len(lat) > 0 {
		r.OpsPerSec = float64(len(lat)) / elapsed.Seconds()
		r.P50 = lat[len(lat)*50/100]
		r.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
		r.Max = lat[len(lat)-1]
	}
	return r
}
