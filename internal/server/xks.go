package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/netallow"
	"github.com/prometheus/client_golang/prometheus"
)

// xksBacking is the backing of external key stores from cfg: the CA
// bundle (--xks-ca-bundle), the VPC endpoint services with their addresses
// and private DNS names (--xks-vpc-endpoint-services), where public
// proxies may be (--xks-allowed-endpoints) and the health-check interval.
func xksBacking(cfg Config) (*keystore.External, time.Duration, error) {
	ext := &keystore.External{VPCServices: map[string]string{}}
	allowed, err := netallow.Parse(cfg.XKSAllowedEndpoints)
	if err != nil {
		return nil, 0, fmt.Errorf("--xks-allowed-endpoints: %w", err)
	}
	ext.Allowed = allowed
	if cfg.XKSCABundle != "" {
		pem, err := os.ReadFile(cfg.XKSCABundle)
		if err != nil {
			return nil, 0, fmt.Errorf("--xks-ca-bundle: %w", err)
		}
		if !strings.Contains(string(pem), "-----BEGIN CERTIFICATE-----") {
			return nil, 0, fmt.Errorf("--xks-ca-bundle %s: no PEM certificate", cfg.XKSCABundle)
		}
		ext.CABundle = pem
	}
	if err := parseVPCServices(cfg.XKSVPCEndpointServices, ext); err != nil {
		return nil, 0, err
	}
	interval := time.Minute
	if cfg.XKSHealthInterval != "" {
		d, err := time.ParseDuration(cfg.XKSHealthInterval)
		if err != nil || d < 0 {
			return nil, 0, fmt.Errorf("--xks-health-interval %q: want a duration such as 1m", cfg.XKSHealthInterval)
		}
		interval = d
	}
	return ext, interval, nil
}

// privateDNSRe is a DNS name of at least two labels (a private DNS name is
// a sub-domain of a public domain, spec §10.4).
var privateDNSRe = regexp.MustCompile(`^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)

// parseVPCServices reads --xks-vpc-endpoint-services: comma-separated
// entries "name=host:port" (the address kmsd dials for VPC endpoint
// service name) or "name=private.dns.name@host:port", which also gives the
// service's private DNS name; stores on that service must then have
// https://private.dns.name as XksProxyUriEndpoint (spec §10.4), checked
// at create, update and connect.
func parseVPCServices(v string, ext *keystore.External) error {
	for _, kv := range strings.Split(v, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		name, addr, ok := strings.Cut(kv, "=")
		name, addr = strings.TrimSpace(name), strings.TrimSpace(addr)
		dns, rest, hasDNS := strings.Cut(addr, "@")
		if hasDNS {
			dns, addr = strings.TrimSpace(dns), strings.TrimSpace(rest)
		}
		switch {
		case !ok || name == "" || addr == "":
			return fmt.Errorf("--xks-vpc-endpoint-services: %q: want name=host:port or name=private.dns.name@host:port", kv)
		case hasDNS && !privateDNSRe.MatchString(strings.TrimSuffix(dns, ".")):
			return fmt.Errorf("--xks-vpc-endpoint-services: %q: %q is not a DNS name", kv, dns)
		}
		if _, dup := ext.VPCServices[name]; dup {
			return fmt.Errorf("--xks-vpc-endpoint-services: %s is mapped twice", name)
		}
		ext.VPCServices[name] = addr
		if hasDNS {
			if ext.VPCPrivateDNS == nil {
				ext.VPCPrivateDNS = map[string]string{}
			}
			ext.VPCPrivateDNS[name] = dns
		}
	}
	return nil
}

// startXKS gives the service its external key stores and starts their
// background health check, exported as kmsd_xks_proxy_healthy{store}.
func (a *api) startXKS(ks *keystore.Manager, ext *keystore.External, interval time.Duration, log *slog.Logger) {
	a.svc.SetExternal(ext)
	if ext.Allowed != nil {
		log.Info("xks: public proxy endpoints limited", "xks_allowed_endpoints", ext.Allowed.String())
	}
	var gauge *prometheus.GaugeVec
	if a.metrics != nil {
		gauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kmsd_xks_proxy_healthy",
			Help: "1 when the last background GetHealthStatus of a connected external key store's proxy succeeded, else 0.",
		}, []string{"custom_key_store_id"})
		if err := a.register(gauge); err != nil {
			log.Warn("xks: health gauge not registered", "err", err)
			gauge = nil
		}
	}
	// A controller duty (server.go): one node checks the proxies.
	a.xksHealth = func(ctx context.Context) {
		ks.PollExternal(ctx, ext, interval, func(st *keystore.Store, err error) {
			if gauge == nil {
				return
			}
			v := 1.0
			if err != nil {
				v = 0
			}
			gauge.WithLabelValues(st.ID).Set(v)
		})
	}
}
