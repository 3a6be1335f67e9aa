package server

import (
	"context"

	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// handler decodes, validates and runs one operation.
type handler struct {
	// decode reads and validates the input shape.
	decode func(body []byte) (any, error)
	// call runs the operation on a decoded input.
	call func(ctx context.Context, s *kms.Service, c *kms.Caller, in any) (any, error)
}

// op adapts a typed service method to a handler: strict decoding into the
// input shape, the model's validation, then the method.
func op[I any, O any, PI interface {
	*I
	kmsapi.Validator
}](f func(*kms.Service, context.Context, *kms.Caller, PI) (*O, error)) handler {
	return handler{
		decode: func(body []byte) (any, error) {
			in := PI(new(I))
			if err := awsjson.Decode(body, in); err != nil {
				return nil, err
			}
			if msg := kmsapi.Validate(in); msg != "" {
				return nil, kmsapi.NewException("ValidationException", msg)
			}
			return in, nil
		},
		call: func(ctx context.Context, s *kms.Service, c *kms.Caller, in any) (any, error) {
			return f(s, ctx, c, in.(PI))
		},
	}
}

// handlers holds the operations kmsd implements; every other operation of
// the model answers UnsupportedOperationException.
var handlers = map[string]handler{
	"CancelKeyDeletion":                   op((*kms.Service).CancelKeyDeletion),
	"ConnectCustomKeyStore":               op((*kms.Service).ConnectCustomKeyStore),
	"CreateCustomKeyStore":                op((*kms.Service).CreateCustomKeyStore),
	"DeleteCustomKeyStore":                op((*kms.Service).DeleteCustomKeyStore),
	"DescribeCustomKeyStores":             op((*kms.Service).DescribeCustomKeyStores),
	"DisconnectCustomKeyStore":            op((*kms.Service).DisconnectCustomKeyStore),
	"UpdateCustomKeyStore":                op((*kms.Service).UpdateCustomKeyStore),
	"CreateAlias":                         op((*kms.Service).CreateAlias),
	"CreateGrant":                         op((*kms.Service).CreateGrant),
	"CreateKey":                           op((*kms.Service).CreateKey),
	"Decrypt":                             op((*kms.Service).Decrypt),
	"DeleteAlias":                         op((*kms.Service).DeleteAlias),
	"DeriveSharedSecret":                  op((*kms.Service).DeriveSharedSecret),
	"DescribeKey":                         op((*kms.Service).DescribeKey),
	"DisableKey":                          op((*kms.Service).DisableKey),
	"DisableKeyRotation":                  op((*kms.Service).DisableKeyRotation),
	"EnableKey":                           op((*kms.Service).EnableKey),
	"EnableKeyRotation":                   op((*kms.Service).EnableKeyRotation),
	"Encrypt":                             op((*kms.Service).Encrypt),
	"GenerateDataKey":                     op((*kms.Service).GenerateDataKey),
	"GenerateDataKeyWithoutPlaintext":     op((*kms.Service).GenerateDataKeyWithoutPlaintext),
	"GenerateDataKeyPair":                 op((*kms.Service).GenerateDataKeyPair),
	"GenerateDataKeyPairWithoutPlaintext": op((*kms.Service).GenerateDataKeyPairWithoutPlaintext),
	"GenerateMac":                         op((*kms.Service).GenerateMac),
	"GenerateRandom":                      op((*kms.Service).GenerateRandom),
	"GetKeyLastUsage":                     op((*kms.Service).GetKeyLastUsage),
	"GetKeyPolicy":                        op((*kms.Service).GetKeyPolicy),
	"GetParametersForImport":              op((*kms.Service).GetParametersForImport),
	"ImportKeyMaterial":                   op((*kms.Service).ImportKeyMaterial),
	"DeleteImportedKeyMaterial":           op((*kms.Service).DeleteImportedKeyMaterial),
	"GetKeyRotationStatus":                op((*kms.Service).GetKeyRotationStatus),
	"GetPublicKey":                        op((*kms.Service).GetPublicKey),
	"ListAliases":                         op((*kms.Service).ListAliases),
	"ListGrants":                          op((*kms.Service).ListGrants),
	"ListKeyPolicies":                     op((*kms.Service).ListKeyPolicies),
	"ListKeyRotations":                    op((*kms.Service).ListKeyRotations),
	"ListKeys":                            op((*kms.Service).ListKeys),
	"ListResourceTags":                    op((*kms.Service).ListResourceTags),
	"ListRetirableGrants":                 op((*kms.Service).ListRetirableGrants),
	"PutKeyPolicy":                        op((*kms.Service).PutKeyPolicy),
	"ReplicateKey":                        op((*kms.Service).ReplicateKey),
	"ReEncrypt":                           op((*kms.Service).ReEncrypt),
	"RetireGrant":                         op((*kms.Service).RetireGrant),
	"RevokeGrant":                         op((*kms.Service).RevokeGrant),
	"RotateKeyOnDemand":                   op((*kms.Service).RotateKeyOnDemand),
	"ScheduleKeyDeletion":                 op((*kms.Service).ScheduleKeyDeletion),
	"Sign":                                op((*kms.Service).Sign),
	"TagResource":                         op((*kms.Service).TagResource),
	"UntagResource":                       op((*kms.Service).UntagResource),
	"UpdateAlias":                         op((*kms.Service).UpdateAlias),
	"UpdateKeyDescription":                op((*kms.Service).UpdateKeyDescription),
	"UpdatePrimaryRegion":                 op((*kms.Service).UpdatePrimaryRegion),
	"Verify":                              op((*kms.Service).Verify),
	"VerifyMac":                           op((*kms.Service).VerifyMac),
}
