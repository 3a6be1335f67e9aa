package e2etest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// Kmsctl runs kmsctl bin against endpoint with env (e.g. KMSD.CLIEnv) and
// args as the aws CLI takes them, and decodes its JSON output; a failure
// is an error carrying kmsctl's stderr.
func Kmsctl(bin, endpoint string, env []string, args ...string) (map[string]any, error) {
	cmd := exec.Command(bin, append([]string{"--endpoint-url", endpoint, "--output", "json"}, args...)...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kmsctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	var v map[string]any
	if strings.TrimSpace(out.String()) != "" {
		if err := json.Unmarshal(out.Bytes(), &v); err != nil {
			return nil, fmt.Errorf("kmsctl %s: %v: %s", strings.Join(args, " "), err, out.String())
		}
	}
	return v, nil
}

// CA is a customer's certificate authority, made with openssl, that signs
// clusters' CSRs (InitializeCluster).
type CA struct{ Crt, Key string }

// NewCA makes a self-signed CA named name with openssl in dir.
func NewCA(t testing.TB, dir, name string) CA {
	t.Helper()
	c := CA{filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")}
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", c.Key, "-out", c.Crt,
		"-days", "3", "-subj", "/CN="+name).CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v\n%s", err, out)
	}
	return c
}

// Sign signs the CSR file csr with openssl and returns the certificate's
// file, written beside csr. The serial number is random (no serial file:
// several may sign at once).
func (c CA) Sign(csr string) (string, error) {
	crt := strings.TrimSuffix(csr, filepath.Ext(csr)) + ".crt"
	serial := make([]byte, 16)
	rand.Read(serial)
	serial[0] &= 0x7f
	if out, err := exec.Command("openssl", "x509", "-req", "-days", "3", "-in", csr, "-CA", c.Crt, "-CAkey", c.Key,
		"-set_serial", "0x"+hex.EncodeToString(serial), "-out", crt).CombinedOutput(); err != nil {
		return "", fmt.Errorf("openssl x509 -req: %v\n%s", err, out)
	}
	return crt, nil
}

// ClusterConfig says how ActiveCluster reaches kmsd.
type ClusterConfig struct {
	Kmsctl, Endpoint string
	Env              []string // kmsctl's: credentials and AWS_DEFAULT_REGION
	Dir              string   // for the CSR and the signed certificate
	CA               CA
	// AdminPassword and KMSUserPassword; adminPswd1 and kmsPswd1 when empty.
	AdminPassword, KMSUserPassword string
}

// ActiveCluster makes, through kmsctl (cloudhsmv2 and cloudhsm-cli, the
// aws CLI's and CloudHSM CLI's arguments), an ACTIVE cluster with one HSM
// in each of two Availability Zones, initialized with a certificate c.CA
// signed, and the crypto user kmsuser: what a CloudHSM key store needs.
// It returns the cluster id.
func ActiveCluster(c ClusterConfig) (string, error) {
	if c.AdminPassword == "" {
		c.AdminPassword = "adminPswd1"
	}
	if c.KMSUserPassword == "" {
		c.KMSUserPassword = "kmsPswd1"
	}
	ctl := func(args ...string) (map[string]any, error) { return Kmsctl(c.Kmsctl, c.Endpoint, c.Env, args...) }
	out, err := ctl("cloudhsmv2", "create-cluster", "--hsm-type", "hsm2m.medium", "--subnet-ids",
		"subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002")
	if err != nil {
		return "", err
	}
	id, _ := out["Cluster"].(map[string]any)["ClusterId"].(string)
	wait := func(state string) (map[string]any, error) {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			v, err := ctl("cloudhsmv2", "describe-clusters", "--filters", "clusterIds="+id)
			if err != nil {
				return nil, err
			}
			cs, _ := v["Clusters"].([]any)
			if len(cs) == 1 {
				cl := cs[0].(map[string]any)
				if cl["State"] == state && !strings.Contains(fmt.Sprint(cl["Hsms"]), "_IN_PROGRESS") {
					return cl, nil
				}
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("cluster %s never reached %s: %v", id, state, cs)
			}
		}
	}
	cl, err := wait("UNINITIALIZED")
	if err != nil {
		return "", err
	}
	var zones []string
	for az := range cl["SubnetMapping"].(map[string]any) {
		zones = append(zones, az)
	}
	sort.Strings(zones)
	for _, az := range zones {
		if _, err := ctl("cloudhsmv2", "create-hsm", "--cluster-id", id, "--availability-zone", az); err != nil {
			return "", err
		}
	}
	if cl, err = wait("UNINITIALIZED"); err != nil {
		return "", err
	}
	csr := filepath.Join(c.Dir, id+".csr")
	if err := os.WriteFile(csr, []byte(cl["Certificates"].(map[string]any)["ClusterCsr"].(string)), 0o600); err != nil {
		return "", err
	}
	crt, err := c.CA.Sign(csr)
	if err != nil {
		return "", err
	}
	if _, err := ctl("cloudhsmv2", "initialize-cluster", "--cluster-id", id, "--signed-cert", "file://"+crt, "--trust-anchor", "file://"+c.CA.Crt); err != nil {
		return "", err
	}
	if _, err := wait("INITIALIZED"); err != nil {
		return "", err
	}
	if _, err := ctl("cloudhsm-cli", "cluster", "activate", "--cluster-id", id, "--password", c.AdminPassword); err != nil {
		return "", err
	}
	if _, err := ctl("cloudhsm-cli", "user", "create", "--cluster-id", id, "--username", "kmsuser", "--role", "crypto-user",
		"--password", c.KMSUserPassword); err != nil {
		return "", err
	}
	_, err = wait("ACTIVE")
	return id, err
}
