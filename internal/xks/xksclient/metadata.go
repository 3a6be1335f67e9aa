package xksclient

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/kmsd/kmsd/internal/xks"
)

// Metadata calls GetKeyMetadata for an external key (spec §1.5), as CreateKey does
// (§2.2). meta.Operation defaults to CreateKey; meta.Principal is required. The
// answer is checked for shape only; CheckKey says whether the key may back a KMS key.
func (c *Client) Metadata(ctx context.Context, keyID string, meta Meta) (*xks.MetadataResponse, error) {
	const op = xks.OpMetadata
	path, err := keyPath(op, keyID)
	if err != nil {
		return nil, err
	}
	rm, err := meta.requestMetadata(op, apiMetadata, OpCreateKey)
	if err != nil {
		return nil, err
	}
	data, err := c.call(ctx, op, path, &xks.MetadataRequest{RequestMetadata: rm})
	if err != nil {
		return nil, err
	}
	m, err := ParseMetadata(data)
	if err != nil {
		return nil, invalid(op, 200, err)
	}
	return m, nil
}

type metadataWire struct {
	KeySpec   *string  `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus *string  `json:"keyStatus"`
}

// ParseMetadata decodes and validates a GetKeyMetadata answer (spec §1.5): keySpec
// present and non-empty; keyUsage 1 to 10 upper-case entries including ENCRYPT or
// DECRYPT; keyStatus ENABLED or DISABLED.
func ParseMetadata(data []byte) (*xks.MetadataResponse, error) {
	var w metadataWire
	if err := decodeStrict(data, &w); err != nil {
		return nil, err
	}
	switch {
	case w.KeySpec == nil || *w.KeySpec == "":
		return nil, missing("keySpec")
	case len(w.KeyUsage) == 0 || len(w.KeyUsage) > 10:
		return nil, errors.New("keyUsage must hold 1 to 10 entries")
	case w.KeyStatus == nil:
		return nil, missing("keyStatus")
	case *w.KeyStatus != xks.StatusEnabled && *w.KeyStatus != xks.StatusDisabled:
		return nil, errors.New("keyStatus must be ENABLED or DISABLED")
	}
	for _, u := range w.KeyUsage {
		if u == "" || u != strings.ToUpper(u) {
			return nil, errors.New("keyUsage entries must be upper-case names")
		}
	}
	if !slices.Contains(w.KeyUsage, xks.UsageEncrypt) && !slices.Contains(w.KeyUsage, xks.UsageDecrypt) {
		return nil, errors.New("keyUsage must include ENCRYPT or DECRYPT")
	}
	return &xks.MetadataResponse{KeySpec: *w.KeySpec, KeyUsage: w.KeyUsage, KeyStatus: *w.KeyStatus}, nil
}

// CheckKey reports (KindKeyConfiguration) whether an external key may back a KMS key:
// key spec AES_256, usage including both ENCRYPT and DECRYPT, status ENABLED (spec
// §1.5 "KMS side", §2.1 CreateKey → XksKeyInvalidConfigurationException).
func CheckKey(m *xks.MetadataResponse) error {
	var why string
	switch {
	case m.KeySpec != xks.KeySpecAES256:
		why = "key spec is not AES_256"
	case !slices.Contains(m.KeyUsage, xks.UsageEncrypt) || !slices.Contains(m.KeyUsage, xks.UsageDecrypt):
		why = "key usage does not include both ENCRYPT and DECRYPT"
	case m.KeyStatus != xks.StatusEnabled:
		why = "key is not ENABLED"
	default:
		return nil
	}
	return &Error{Op: xks.OpMetadata, Kind: KindKeyConfiguration, Err: errors.New(why)}
}
