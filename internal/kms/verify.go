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

// errVerifyMu answers Verify with MessageType EXTERNAL_MU; a signature made
// from μ verifies as RAW over the message it was computed from.
var errVerifyMu = kmsapi.NewException("UnsupportedOperationException",
	"Verify with MessageType EXTERNAL_MU is not supported by kmsd yet: verify the signature with MessageType RAW over the message μ was computed from.")

// Verify checks a signature with the public key of an asymmetric
// SIGN_VERIFY key. The message type need not be the one used to sign.
func (s *Service) Verify(ctx context.Context, c *Caller, in *kmsapi.VerifyRequest) (*kmsapi.VerifyResponse, error) {
	k, alg, input, err := s.signingKey(ctx, c, "kms:Verify", in.KeyId, in.SigningAlgorithm, in.MessageType, in.Message)
	if err != nil {
		return nil, err
	}
	if messageType(in.MessageType) == material.MessageTypeMu {
		// Neither ML-DSA library kmsd can use verifies from μ in its public
		// API (filippo.io/mldsa's VerifyExternalMu is internal to that
		// module; circl computes μ itself), and kmsd does not hand-write
		// ML-DSA arithmetic. Refused before DryRun: it would fail too.
		return nil, errVerifyMu
	}
	if err := dryRun(in.DryRun); err != nil {
		return nil, err
	}
	pub, err := s.publicKey(k)
	if err != nil {
		return nil, internal(err)
	}
	ok, err := pub.Verify(alg, input, in.Signature)
	if err != nil {
		return nil, internal(err)
	}
	if !ok {
		return nil, errInvalidSignature
	}
	return &kmsapi.VerifyResponse{KeyId: kmsapi.String(k.ARN()), SignatureValid: kmsapi.Bool(true), SigningAlgorithm: kmsapi.String(alg)}, nil
}
