// Package proxycmd is the command line of xks-proxy: `serve` (the XKS proxy),
// `keys` (the software key file), `dev-cert` (a development PKI) and `bench` (a load
// generator). cmd/xks-proxy only calls Run.
package proxycmd

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmsd/kmsd/internal/secretfile"
	"github.com/kmsd/kmsd/internal/xks/keyman/keyfile"
	"github.com/kmsd/kmsd/internal/xks/xksserver"
)

// Version is set at build time with -ldflags "-X …/proxycmd.Version=…".
var Version = "dev"

const usage = `xks-proxy — an AWS KMS External Key Store (XKS) proxy, API v1

Usage:
  xks-proxy serve [--config FILE | flags]   run the proxy (see serve --help)
  xks-proxy keys create|list|disable|enable --keys-file F [--id ID] [--usage ENCRYPT,DECRYPT]
  xks-proxy dev-cert --hostname H[,H2…] --out-dir DIR [--client-cn CN]
  xks-proxy bench --url URL --access-key-id ID --secret-access-key-file F --key-id K [--ca-file F]
  xks-proxy version

Environment: XKS_PROXY_CONFIG (config file), XKS_PROXY_KEYS_PASSPHRASE (key file
passphrase), XKS_PROXY_PKCS11_PIN (token user PIN).
`

// Run runs the command line and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "keys":
		err = keysCmd(args[1:], stdout, stderr)
	case "dev-cert":
		err = devCert(args[1:], stdout, stderr)
	case "bench":
		err = bench(ctx, args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "xks-proxy", Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "xks-proxy: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "xks-proxy:", err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

var errUsage = errors.New("usage error")

func usageErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

// passphrase reads the key file passphrase from --passphrase-file or the
// environment.
func passphrase(file string) ([]byte, error) {
	if file != "" {
		s, err := readSecret(file, "", "key file passphrase")
		return []byte(s), err
	}
	if v := os.Getenv("XKS_PROXY_KEYS_PASSPHRASE"); v != "" {
		return []byte(v), nil
	}
	return nil, usageErr("the key file passphrase is required: --passphrase-file or XKS_PROXY_KEYS_PASSPHRASE")
}

func keysCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageErr("keys: want create, list, disable or enable")
	}
	sub := args[0]
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("keys-file", "", "the software key file")
	passFile := fs.String("passphrase-file", "", "file holding the key file passphrase (else $XKS_PROXY_KEYS_PASSPHRASE)")
	id := fs.String("id", "", "external key id: 1-128 characters of A-Z a-z 0-9 . _ -")
	use := fs.String("usage", "ENCRYPT,DECRYPT", "create: ENCRYPT, DECRYPT, both (comma-separated) or NONE")
	material := fs.String("material-file", "", "create: import key material (32 raw bytes or 64 hex digits) instead of generating it")
	iters := fs.Int("kdf-iterations", keyfile.DefaultIterations, "create: PBKDF2 iterations when the file is created")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *file == "" {
		return usageErr("keys %s: --keys-file is required", sub)
	}
	pass, err := passphrase(*passFile)
	if err != nil {
		return err
	}
	needID := func() error {
		if *id == "" {
			return usageErr("keys %s: --id is required", sub)
		}
		return nil
	}
	switch sub {
	case "create":
		if err := needID(); err != nil {
			return err
		}
		u, err := keyfile.ParseUsage(*use)
		if err != nil {
			return err
		}
		var mat []byte
		if *material != "" {
			raw, err := secretfile.Read(*material)
			if err != nil {
				return err
			}
			if s := strings.TrimSpace(string(raw)); len(s) == 64 {
				if mat, err = hex.DecodeString(s); err != nil {
					return fmt.Errorf("key material: %w", err)
				}
			} else {
				mat = raw
			}
		}
		if err := keyfile.CreateKey(*file, pass, *iters, *id, u, mat, time.Now()); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created key %s (usage %s)\n", *id, usageString(u))
	case "disable", "enable":
		if err := needID(); err != nil {
			return err
		}
		if err := keyfile.SetEnabled(*file, pass, *id, sub == "enable"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%sd key %s\n", sub, *id)
	case "list":
		c, err := keyfile.Load(*file, pass)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSAGE\tSTATUS\tCREATED")
		for _, e := range c.Keys {
			status := "ENABLED"
			if !e.Enabled {
				status = "DISABLED"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.ID, usageString(e.Usage), status, e.Created.Format(time.RFC3339))
		}
		tw.Flush()
	default:
		return usageErr("keys: unknown subcommand %q", sub)
	}
	return nil
}

func usageString(u []string) string {
	if len(u) == 0 {
		return "NONE"
	}
	return strings.Join(u, ",")
}

func devCert(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev-cert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	hosts := fs.String("hostname", "", "server hostnames and IP addresses, comma-separated (the first is the CN)")
	out := fs.String("out-dir", "", "directory for ca.pem, cert.pem and key.pem")
	client := fs.String("client-cn", "", "also write client.pem / client-key.pem for mTLS, with this CN")
	days := fs.Int("days", 365, "validity in days")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *hosts == "" || *out == "" {
		return usageErr("dev-cert: --hostname and --out-dir are required")
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	certs, err := xksserver.NewDevCerts(xksserver.DevCertOptions{Hosts: hs, ClientCN: *client,
		Validity: time.Duration(*days) * 24 * time.Hour})
	if err != nil {
		return err
	}
	if err := certs.Write(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/ca.pem, cert.pem, key.pem", *out)
	if *client != "" {
		fmt.Fprint(stdout, ", client.pem, client-key.pem")
	}
	fmt.Fprintln(stdout, " (development use only)")
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if level == "" {
		level = "info"
	}
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErr("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, usageErr("log format %q: want json or text", format)
}
