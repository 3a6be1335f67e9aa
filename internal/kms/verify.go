package kms

import (
	"context"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/material"
)

// errInvalidSignature is Verify's answer to a signature that does not
// verify, malformed ones included: AWS sends it without a message and
// never answers SignatureValid false (spec §5.2).
var errInvalidSignature = kmsapi.NewException("KMSInvalidSignatureException", "")

// Verify checks a signature with the public key of an asymmetric
// SIGN_VERIFY key. The message type need not be the one used to sign.
func (s *Service) Verify(ctx context.Context, c *Caller, in *kmsapi.VerifyRequest) (*kmsapi.VerifyResponse, error) {
	k, alg, input, err := s.signingKey(ctx, c, "kms:Verify", in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	pub, err := s.publicKey(k)
	if err != nil {
		return nil, internal(err)
	}
	var ok bool
	if messageType(in.MessageType) == material.MessageTypeMu {
		// μ is verified as given (signingKey checked its length and the
		// algorithm), with the copy of filippo.io/mldsa's internal
		// VerifyExternalMu: the module's API signs from μ but verifies
		// messages only.
		ok, err = pub.VerifyMu(input, in.Signature)
	} else {
		ok, err = pub.Verify(alg, input, in.Signature)
	}
	if err != nil {
		return nil, internal(err)
	}
	if !ok {
		return nil, errInvalidSignature
	}
	return &kmsapi.VerifyResponse{KeyId: kmsapi.String(k.ARN()), SignatureValid: kmsapi.Bool(true), SigningAlgorithm: kmsapi.String(alg)}, nil
}
