package proxycmd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/xks/xksbench"
)

// bench drives a running proxy with signed Encrypt/Decrypt requests and prints ops/s
// and latency percentiles per concurrency.
func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "proxy URL with the key store prefix, e.g. https://127.0.0.1:8443/tenant")
	akid := fs.String("access-key-id", "", "SigV4 access key id")
	secretFile := fs.String("secret-access-key-file", "", "file holding the SigV4 secret")
	region := fs.String("region", "us-east-1", "SigV4 region")
	keyID := fs.String("key-id", "", "external key id")
	caFile := fs.String("ca-file", "", "CA bundle to trust (PEM)")
	certFile := fs.String("client-cert", "", "mTLS client certificate (PEM)")
	keyFile := fs.String("client-key", "", "mTLS client key (PEM)")
	ops := fs.String("ops", "encrypt,decrypt", "operations to measure")
	concs := fs.String("concurrency", "1,16,64", "concurrency levels")
	dur := fs.Duration("duration", 5*time.Second, "measuring time per level")
	warm := fs.Duration("warmup", time.Second, "warm-up time per level")
	maxReq := fs.Int("max-requests", 1_000_000, "request cap per level")
	size := fs.Int("plaintext-size", 32, "plaintext bytes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" || *akid == "" || *secretFile == "" || *keyID == "" {
		return usageErr("bench: --url, --access-key-id, --secret-access-key-file and --key-id are required")
	}
	secret, err := readSecret(*secretFile, "", "SigV4 secret")
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		tlsCfg.RootCAs.AppendCertsFromPEM(pem)
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return err
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	var levels []int
	for _, s := range strings.Split(*concs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 1024 {
			return usageErr("bench: bad concurrency %q", s)
		}
		levels = append(levels, n)
	}
	maxC := 1
	for _, n := range levels {
		maxC = max(maxC, n)
	}
	c := xksbench.NewClient(*url, *akid, secret, *region, tlsCfg, maxC)
	for _, op := range strings.Split(*ops, ",") {
		res, err := xksbench.Run(ctx, c, xksbench.Config{KeyID: *keyID, Op: strings.TrimSpace(op), Concurrency: levels,
			Duration: *dur, Warmup: *warm, MaxRequests: *maxReq, PlaintextSize: *size})
		if err != nil {
			return err
		}
		for _, r := range res {
			fmt.Fprintln(stdout, r)
		}
	}
	return nil
}
