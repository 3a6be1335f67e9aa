package server

import (
	"strings"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/policy"
)

// setIdentity fills a record's userIdentity (and recipient account) from
// the identity a request acts as.
func setIdentity(rec *audit.Record, id *identity.Identity) {
	p := &id.Principal
	ui := &rec.UserIdentity
	ui.ARN, ui.AccountID, ui.AccessKeyID, ui.PrincipalID = p.ARN, p.Account, id.AccessKeyID, p.UserID
	switch p.Type {
	case policy.IAMUser:
		ui.Type, ui.UserName = "IAMUser", p.Name
	case policy.AssumedRole:
		ui.Type = "AssumedRole"
		sc := &audit.SessionContext{}
		sc.SessionIssuer.Type = "Role"
		sc.SessionIssuer.PrincipalID, _, _ = strings.Cut(p.UserID, ":")
		sc.SessionIssuer.ARN = p.RoleARN
		sc.SessionIssuer.AccountID = p.Account
		sc.SessionIssuer.UserName = p.Name
		sc.Attributes.MFAAuthenticated = "false"
		sc.SourceIdentity = p.SourceIdentity
		ui.SessionContext = sc
	default:
		ui.Type = string(p.Type)
	}
	rec.RecipientAccountID = p.Account
}

// setRoot fills userIdentity for the account root (emulator mode).
func setRoot(rec *audit.Record, account, akid string) {
	rec.UserIdentity = audit.UserIdentity{Type: "Root", PrincipalID: account, ARN: "arn:aws:iam::" + account + ":root", AccountID: account, AccessKeyID: akid}
	rec.RecipientAccountID = account
}

// setResources lists the keys a call acted on; the record goes to the
// account that owns them.
func setResources(rec *audit.Record, c *kms.Caller) {
	for _, arn := range c.Resources {
		acct := ""
		if parts := strings.SplitN(arn, ":", 6); len(parts) == 6 {
			acct = parts[4]
		}
		rec.Resources = append(rec.Resources, audit.Resource{AccountID: acct, Type: "AWS::KMS::Key", ARN: arn})
		if acct != "" {
			rec.RecipientAccountID = acct
		}
	}
}

// readOnly reports CloudTrail's readOnly for a KMS operation: reads and
// cryptographic operations change nothing. Their responses are never
// recorded (they hold plaintext, ciphertext or nothing of interest).
func readOnly(op string) bool {
	switch op {
	case "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
		"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateRandom", "Sign", "Verify",
		"GenerateMac", "VerifyMac", "DeriveSharedSecret", "GetPublicKey", "GetParametersForImport":
		return true
	}
	return strings.HasPrefix(op, "Describe") || strings.HasPrefix(op, "List") || strings.HasPrefix(op, "Get")
}

// replicaCreated is the second audit record of a successful ReplicateKey:
// AWS records ReplicateKey in the primary's Region and CreateKey in the
// replica's (spec §9.3 "Audit"). It is rec, the ReplicateKey record, as
// seen from the replica's Region — same caller, time and request id, its
// own event id — with the replica key as its only resource and the
// replica's metadata as the response.
func replicaCreated(rec *audit.Record, out any) *audit.Record {
	res, ok := out.(*kmsapi.ReplicateKeyResponse)
	if !ok || res.ReplicaKeyMetadata == nil || res.ReplicaKeyMetadata.Arn == nil {
		return nil
	}
	arn := *res.ReplicaKeyMetadata.Arn
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 {
		return nil
	}
	c := *rec
	c.EventName, c.AWSRegion, c.EventID = "CreateKey", parts[3], uuid.NewString()
	c.Resources = []audit.Resource{{AccountID: parts[4], Type: "AWS::KMS::Key", ARN: arn}}
	c.Response = &kmsapi.CreateKeyResponse{KeyMetadata: res.ReplicaKeyMetadata}
	return &c
}
