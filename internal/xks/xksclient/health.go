package xksclient

import (
	"context"
	"errors"
	"fmt"

	"github.com/kmsd/kmsd/internal/xks"
)

// Health calls GetHealthStatus (spec §1.8), as CreateCustomKeyStore,
// UpdateCustomKeyStore, ConnectCustomKeyStore and the background check do (§2.2).
// meta.Operation defaults to KmsHealthCheck. When the answer is valid but every
// external key manager is UNAVAILABLE, Health returns the answer together with a
// KindEKMUnavailable error, since KMS then fails the operation (§1.8, §2.4).
func (c *Client) Health(ctx context.Context, meta Meta) (*xks.HealthResponse, error) {
	const op = xks.OpHealth
	rm, err := meta.requestMetadata(op, apiHealth, OpKmsHealthCheck)
	if err != nil {
		return nil, err
	}
	data, err := c.call(ctx, op, "/health", &xks.HealthRequest{RequestMetadata: rm})
	if err != nil {
		return nil, err
	}
	h, err := ParseHealth(data)
	if err != nil {
		return nil, invalid(op, 200, err)
	}
	if allUnavailable(h) {
		return h, &Error{Op: op, Kind: KindEKMUnavailable, Status: 200, Err: errors.New("every external key manager reports UNAVAILABLE")}
	}
	return h, nil
}

func allUnavailable(h *xks.HealthResponse) bool {
	for _, e := range h.EkmFleetDetails {
		if e.HealthStatus != xks.HealthUnavailable {
			return false
		}
	}
	return true
}

// healthWire mirrors xks.HealthResponse with pointers, to tell absent from zero.
type healthWire struct {
	XksProxyFleetSize *int    `json:"xksProxyFleetSize"`
	XksProxyVendor    *string `json:"xksProxyVendor"`
	XksProxyModel     *string `json:"xksProxyModel"`
	EkmVendor         *string `json:"ekmVendor"`
	EkmFleetDetails   []struct {
		ID           *string `json:"id"`
		Model        *string `json:"model"`
		HealthStatus *string `json:"healthStatus"`
	} `json:"ekmFleetDetails"`
}

// ParseHealth decodes and validates a GetHealthStatus answer (spec §1.8): every field
// present, fleet size > 0, non-empty vendor and model strings, 1 to 10 key managers
// with unique non-empty ids, a model, and a status of ACTIVE, DEGRADED or UNAVAILABLE.
func ParseHealth(data []byte) (*xks.HealthResponse, error) {
	var w healthWire
	if err := decodeStrict(data, &w); err != nil {
		return nil, err
	}
	switch {
	case w.XksProxyFleetSize == nil:
		return nil, missing("xksProxyFleetSize")
	case *w.XksProxyFleetSize <= 0:
		return nil, errors.New("xksProxyFleetSize must be positive")
	case w.XksProxyVendor == nil || *w.XksProxyVendor == "":
		return nil, missing("xksProxyVendor")
	case w.XksProxyModel == nil || *w.XksProxyModel == "":
		return nil, missing("xksProxyModel")
	case w.EkmVendor == nil || *w.EkmVendor == "":
		return nil, missing("ekmVendor")
	case len(w.EkmFleetDetails) == 0 || len(w.EkmFleetDetails) > 10:
		return nil, errors.New("ekmFleetDetails must hold 1 to 10 entries")
	}
	h := &xks.HealthResponse{XksProxyFleetSize: *w.XksProxyFleetSize, XksProxyVendor: *w.XksProxyVendor,
		XksProxyModel: *w.XksProxyModel, EkmVendor: *w.EkmVendor}
	seen := map[string]bool{}
	for i, e := range w.EkmFleetDetails {
		switch {
		case e.ID == nil || *e.ID == "":
			return nil, fmt.Errorf("ekmFleetDetails[%d]: missing id", i)
		case seen[*e.ID]:
			return nil, fmt.Errorf("ekmFleetDetails[%d]: duplicate id", i)
		case e.Model == nil:
			return nil, fmt.Errorf("ekmFleetDetails[%d]: missing model", i)
		case e.HealthStatus == nil:
			return nil, fmt.Errorf("ekmFleetDetails[%d]: missing healthStatus", i)
		}
		switch *e.HealthStatus {
		case xks.HealthActive, xks.HealthDegraded, xks.HealthUnavailable:
		default:
			return nil, fmt.Errorf("ekmFleetDetails[%d]: healthStatus is not ACTIVE, DEGRADED or UNAVAILABLE", i)
		}
		seen[*e.ID] = true
		h.EkmFleetDetails = append(h.EkmFleetDetails, xks.EKMDetail{ID: *e.ID, Model: *e.Model, HealthStatus: *e.HealthStatus})
	}
	return h, nil
}
