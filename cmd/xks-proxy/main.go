// Command xks-proxy is an AWS KMS External Key Store proxy implementing the XKS Proxy
// API v1, with keys in a PKCS#11 token or in its own encrypted key file.
package main

import (
	"context"
	"os"

	"github.com/kmsd/kmsd/internal/xks/proxycmd"
)

func main() {
	os.Exit(proxycmd.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
