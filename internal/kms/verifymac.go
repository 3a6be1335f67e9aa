package kms

import (
	"context"
	"crypto/hmac"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// errInvalidMac is VerifyMac's answer to a MAC that does not match, of
// any length; AWS sends it without a message (spec §6).
var errInvalidMac = kmsapi.NewException("KMSInvalidMacException", "")

// VerifyMac recomputes the HMAC of a message and compares it with the
// given one in constant time. It answers MacValid true or
// KMSInvalidMacException, never false.
func (s *Service) VerifyMac(ctx context.Context, c *Caller, in *kmsapi.VerifyMacRequest) (*kmsapi.VerifyMacResponse, error) {
	k, mac, err := s.mac(ctx, c, "kms:VerifyMac", *in.KeyId, *in.MacAlgorithm, in.Message, in.DryRun)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(mac, in.Mac) {
		return nil, errInvalidMac
	}
	return &kmsapi.VerifyMacResponse{KeyId: kmsapi.String(k.ARN()), MacValid: kmsapi.Bool(true), MacAlgorithm: in.MacAlgorithm}, nil
}
