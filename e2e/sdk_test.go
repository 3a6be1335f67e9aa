package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

// sdkClient is an aws-sdk-go-v2 KMS client for s with static credentials,
// signing for region, without retries (a failure must show at once) but
// the one for a connection the client closed (e2etest.ClosedConnRetryer).
func sdkClient(s *server, accessKeyID, secret, region string) *kms.Client {
	return kms.New(kms.Options{
		Region:       region,
		BaseEndpoint: aws.String(s.Endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(accessKeyID, secret, ""),
		Retryer:      e2etest.ClosedConnRetryer(),
	})
}

// profileClient is an aws-sdk-go-v2 KMS client configured the way a user
// would: the SDK's own loader reads the profile "kmsd" (keys and region)
// from the credentials file kmsd wrote.
func profileClient(t *testing.T, s *server) *kms.Client {
	t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{filepath.Join(s.DataDir, "credentials")}),
		config.WithSharedConfigFiles([]string{filepath.Join(t.TempDir(), "no-config")}),
		config.WithSharedConfigProfile("kmsd"),
		config.WithRetryer(e2etest.ClosedConnRetryer),
	)
	if err != nil {
		t.Fatalf("load SDK config from the kmsd profile: %v", err)
	}
	if cfg.Region != region {
		t.Fatalf("region from the kmsd profile: got %q, want %q", cfg.Region, region)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(s.Endpoint) })
}

func keyARN(id string) string     { return "arn:aws:kms:" + region + ":" + account + ":key/" + id }
func aliasARN(name string) string { return "arn:aws:kms:" + region + ":" + account + ":" + name }

// wantAPIError checks that err is the SDK's typed error E (for example
// *types.NotFoundException) with exactly the message msg.
func wantAPIError[E smithy.APIError](t *testing.T, what string, err error, msg string) {
	t.Helper()
	var e E
	if !errors.As(err, &e) {
		t.Errorf("%s: got error %v (%T), want %T", what, err, err, e)
		return
	}
	if got := e.ErrorMessage(); got != msg {
		t.Errorf("%s: message: got %q, want %q", what, got, msg)
	}
}

// wantErrorCode checks that err is an API error with code and message,
// for exceptions the KMS model has no type for (ValidationException).
func wantErrorCode(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var e smithy.APIError
	if !errors.As(err, &e) {
		t.Errorf("%s: got error %v (%T), want an API error %s", what, err, err, code)
		return
	}
	if e.ErrorCode() != code || e.ErrorMessage() != msg {
		t.Errorf("%s: got %s %q, want %s %q", what, e.ErrorCode(), e.ErrorMessage(), code, msg)
	}
}

// within reports whether got is within d of want.
func within(got, want time.Time, d time.Duration) bool {
	diff := got.Sub(want)
	return diff >= -d && diff <= d
}

func createKey(t *testing.T, ctx context.Context, c *kms.Client, desc string) *types.KeyMetadata {
	t.Helper()
	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String(desc)})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return out.KeyMetadata
}

func describe(t *testing.T, ctx context.Context, c *kms.Client, keyID string) *types.KeyMetadata {
	t.Helper()
	out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(keyID)})
	if err != nil {
		t.Fatalf("DescribeKey %s: %v", keyID, err)
	}
	return out.KeyMetadata
}

func encrypt(t *testing.T, ctx context.Context, c *kms.Client, keyID string, pt []byte, ec map[string]string) []byte {
	t.Helper()
	out, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyID), Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Encrypt under %s: %v", keyID, err)
	}
	if out.EncryptionAlgorithm != types.EncryptionAlgorithmSpecSymmetricDefault {
		t.Errorf("Encrypt: EncryptionAlgorithm: got %q, want SYMMETRIC_DEFAULT", out.EncryptionAlgorithm)
	}
	return out.CiphertextBlob
}

// decrypt decrypts blob (naming keyID when not empty) and checks that the
// plaintext is want and that the key that did it is wantARN.
func decrypt(t *testing.T, ctx context.Context, c *kms.Client, keyID string, blob []byte, ec map[string]string, want []byte, wantARN string) {
	t.Helper()
	in := &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec}
	if keyID != "" {
		in.KeyId = aws.String(keyID)
	}
	out, err := c.Decrypt(ctx, in)
	if err != nil {
		t.Fatalf("Decrypt (KeyId %q): %v", keyID, err)
	}
	if !bytes.Equal(out.Plaintext, want) {
		t.Errorf("Decrypt (KeyId %q): plaintext: got %x, want %x", keyID, out.Plaintext, want)
	}
	if aws.ToString(out.KeyId) != wantARN {
		t.Errorf("Decrypt (KeyId %q): KeyId: got %q, want %q", keyID, aws.ToString(out.KeyId), wantARN)
	}
}

func wantState(t *testing.T, ctx context.Context, c *kms.Client, keyID string, state types.KeyState) *types.KeyMetadata {
	t.Helper()
	md := describe(t, ctx, c, keyID)
	if md.KeyState != state || md.Enabled != (state == types.KeyStateEnabled) {
		t.Errorf("DescribeKey %s: KeyState, Enabled: got %s, %v; want %s, %v", keyID, md.KeyState, md.Enabled, state, state == types.KeyStateEnabled)
	}
	return md
}

// TestSDKFlow drives the life of symmetric keys through aws-sdk-go-v2,
// configured from the profile kmsd writes: create, encrypt, decrypt,
// re-encrypt, data keys, aliases, rotation, disable/enable, scheduled
// deletion and its cancellation.
func TestSDKFlow(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := testContext(t)
	c := profileClient(t, s)
	start := time.Now()

	// CreateKey answers the metadata AWS answers.
	md1 := createKey(t, ctx, c, "e2e first key")
	k1 := aws.ToString(md1.KeyId)
	arn1 := keyARN(k1)
	if got := aws.ToString(md1.Arn); got != arn1 {
		t.Errorf("CreateKey: Arn: got %q, want %q", got, arn1)
	}
	if got := aws.ToString(md1.AWSAccountId); got != account {
		t.Errorf("CreateKey: AWSAccountId: got %q, want %q", got, account)
	}
	if md1.KeyState != types.KeyStateEnabled || !md1.Enabled {
		t.Errorf("CreateKey: KeyState, Enabled: got %s, %v; want Enabled, true", md1.KeyState, md1.Enabled)
	}
	if md1.KeyUsage != types.KeyUsageTypeEncryptDecrypt || md1.KeySpec != types.KeySpecSymmetricDefault ||
		md1.Origin != types.OriginTypeAwsKms || md1.KeyManager != types.KeyManagerTypeCustomer {
		t.Errorf("CreateKey: KeyUsage, KeySpec, Origin, KeyManager: got %s, %s, %s, %s; want ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT, AWS_KMS, CUSTOMER",
			md1.KeyUsage, md1.KeySpec, md1.Origin, md1.KeyManager)
	}
	if !slices.Equal(md1.EncryptionAlgorithms, []types.EncryptionAlgorithmSpec{types.EncryptionAlgorithmSpecSymmetricDefault}) {
		t.Errorf("CreateKey: EncryptionAlgorithms: got %v, want [SYMMETRIC_DEFAULT]", md1.EncryptionAlgorithms)
	}
	if got := aws.ToString(md1.Description); got != "e2e first key" {
		t.Errorf("CreateKey: Description: got %q, want %q", got, "e2e first key")
	}
	if md1.CreationDate == nil || !within(*md1.CreationDate, start, time.Minute) {
		t.Errorf("CreateKey: CreationDate: got %v, want about %v", md1.CreationDate, start)
	}
	if md1.DeletionDate != nil {
		t.Errorf("CreateKey: DeletionDate: got %v, want none", md1.DeletionDate)
	}
	if got := describe(t, ctx, c, arn1); aws.ToString(got.KeyId) != k1 {
		t.Errorf("DescribeKey by ARN: KeyId: got %q, want %q", aws.ToString(got.KeyId), k1)
	}

	// Encrypt, then decrypt with and without KeyId.
	pt := []byte("attack at dawn \x00\xff")
	ec := map[string]string{"purpose": "e2e", "tenant": "acme"}
	out, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k1), Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if got := aws.ToString(out.KeyId); got != arn1 {
		t.Errorf("Encrypt: KeyId: got %q, want %q", got, arn1)
	}
	blob := out.CiphertextBlob
	if bytes.Contains(blob, pt) {
		t.Errorf("Encrypt: the ciphertext blob contains the plaintext")
	}
	decrypt(t, ctx, c, k1, blob, ec, pt, arn1)
	decrypt(t, ctx, c, arn1, blob, ec, pt, arn1)
	decrypt(t, ctx, c, "", blob, ec, pt, arn1)

	// ReEncrypt to a second key; the new blob decrypts under it only.
	k2 := aws.ToString(createKey(t, ctx, c, "e2e second key").KeyId)
	arn2 := keyARN(k2)
	ec2 := map[string]string{"stage": "re-encrypted"}
	re, err := c.ReEncrypt(ctx, &kms.ReEncryptInput{
		CiphertextBlob:               blob,
		SourceEncryptionContext:      ec,
		DestinationKeyId:             aws.String(k2),
		DestinationEncryptionContext: ec2,
	})
	if err != nil {
		t.Fatalf("ReEncrypt: %v", err)
	}
	if got := aws.ToString(re.SourceKeyId); got != arn1 {
		t.Errorf("ReEncrypt: SourceKeyId: got %q, want %q", got, arn1)
	}
	if got := aws.ToString(re.KeyId); got != arn2 {
		t.Errorf("ReEncrypt: KeyId: got %q, want %q", got, arn2)
	}
	decrypt(t, ctx, c, "", re.CiphertextBlob, ec2, pt, arn2)
	decrypt(t, ctx, c, k2, re.CiphertextBlob, ec2, pt, arn2)
	_, err = c.Decrypt(ctx, &kms.DecryptInput{KeyId: aws.String(k1), CiphertextBlob: re.CiphertextBlob, EncryptionContext: ec2})
	wantAPIError[*types.IncorrectKeyException](t, "Decrypt naming the wrong key", err,
		"The key ID in the request does not identify a CMK that can perform this operation.")

	// GenerateDataKey: the plaintext data key is what its blob decrypts to.
	dk, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k1), KeySpec: types.DataKeySpecAes256, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if len(dk.Plaintext) != 32 || aws.ToString(dk.KeyId) != arn1 {
		t.Errorf("GenerateDataKey: got %d bytes from %q, want 32 from %q", len(dk.Plaintext), aws.ToString(dk.KeyId), arn1)
	}
	decrypt(t, ctx, c, "", dk.CiphertextBlob, ec, dk.Plaintext, arn1)
	dk64, err := c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(k1), NumberOfBytes: aws.Int32(64)})
	if err != nil {
		t.Fatalf("GenerateDataKey NumberOfBytes 64: %v", err)
	}
	if len(dk64.Plaintext) != 64 {
		t.Errorf("GenerateDataKey NumberOfBytes 64: got %d bytes, want 64", len(dk64.Plaintext))
	}
	decrypt(t, ctx, c, k1, dk64.CiphertextBlob, nil, dk64.Plaintext, arn1)

	// GenerateDataKeyWithoutPlaintext: only the blob, which decrypts to a
	// key of the asked size.
	dkw, err := c.GenerateDataKeyWithoutPlaintext(ctx, &kms.GenerateDataKeyWithoutPlaintextInput{KeyId: aws.String(k1), KeySpec: types.DataKeySpecAes128})
	if err != nil {
		t.Fatalf("GenerateDataKeyWithoutPlaintext: %v", err)
	}
	if aws.ToString(dkw.KeyId) != arn1 || len(dkw.CiphertextBlob) == 0 {
		t.Errorf("GenerateDataKeyWithoutPlaintext: KeyId %q, blob of %d bytes; want %q and a blob", aws.ToString(dkw.KeyId), len(dkw.CiphertextBlob), arn1)
	}
	dkwPlain, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: dkw.CiphertextBlob})
	if err != nil {
		t.Fatalf("Decrypt the GenerateDataKeyWithoutPlaintext blob: %v", err)
	}
	if len(dkwPlain.Plaintext) != 16 {
		t.Errorf("Decrypt the GenerateDataKeyWithoutPlaintext blob: got %d bytes, want 16", len(dkwPlain.Plaintext))
	}

	// Aliases.
	const alias = "alias/e2e-flow"
	if _, err := c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k1)}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	for _, name := range []string{alias, aliasARN(alias)} {
		if got := aws.ToString(describe(t, ctx, c, name).KeyId); got != k1 {
			t.Errorf("DescribeKey %s: KeyId: got %q, want %q", name, got, k1)
		}
	}
	viaAlias := encrypt(t, ctx, c, alias, pt, nil)
	decrypt(t, ctx, c, "", viaAlias, nil, pt, arn1)
	decrypt(t, ctx, c, alias, viaAlias, nil, pt, arn1)
	if _, err := c.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(alias), TargetKeyId: aws.String(k2)}); err != nil {
		t.Fatalf("UpdateAlias: %v", err)
	}
	if got := aws.ToString(describe(t, ctx, c, alias).KeyId); got != k2 {
		t.Errorf("DescribeKey %s after UpdateAlias: KeyId: got %q, want %q", alias, got, k2)
	}
	la, err := c.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(k2)})
	if err != nil {
		t.Fatalf("ListAliases: %v", err)
	}
	if len(la.Aliases) != 1 || aws.ToString(la.Aliases[0].AliasName) != alias ||
		aws.ToString(la.Aliases[0].AliasArn) != aliasARN(alias) || aws.ToString(la.Aliases[0].TargetKeyId) != k2 {
		t.Errorf("ListAliases KeyId %s: got %s, want one alias %s → %s", k2, jsonString(la.Aliases), alias, k2)
	}
	all, err := c.ListAliases(ctx, &kms.ListAliasesInput{})
	if err != nil {
		t.Fatalf("ListAliases: %v", err)
	}
	if !slices.ContainsFunc(all.Aliases, func(a types.AliasListEntry) bool { return aws.ToString(a.AliasName) == alias }) {
		t.Errorf("ListAliases: got %s, want it to include %s", jsonString(all.Aliases), alias)
	}
	if _, err := c.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String(alias)}); err != nil {
		t.Fatalf("DeleteAlias: %v", err)
	}
	_, err = c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(alias)})
	wantAPIError[*types.NotFoundException](t, "DescribeKey of a deleted alias", err, "Alias "+aliasARN(alias)+" is not found.")

	// Rotation on demand: older ciphertexts still decrypt.
	rot, err := c.RotateKeyOnDemand(ctx, &kms.RotateKeyOnDemandInput{KeyId: aws.String(k1)})
	if err != nil {
		t.Fatalf("RotateKeyOnDemand: %v", err)
	}
	if got := aws.ToString(rot.KeyId); got != arn1 {
		t.Errorf("RotateKeyOnDemand: KeyId: got %q, want the key ARN %q", got, arn1)
	}
	decrypt(t, ctx, c, "", blob, ec, pt, arn1)
	decrypt(t, ctx, c, k1, viaAlias, nil, pt, arn1)
	after := encrypt(t, ctx, c, k1, pt, nil)
	decrypt(t, ctx, c, "", after, nil, pt, arn1)
	lr, err := c.ListKeyRotations(ctx, &kms.ListKeyRotationsInput{KeyId: aws.String(k1)})
	if err != nil {
		t.Fatalf("ListKeyRotations: %v", err)
	}
	if len(lr.Rotations) != 1 || lr.Rotations[0].RotationType != types.RotationTypeOnDemand || aws.ToString(lr.Rotations[0].KeyId) != k1 ||
		lr.Rotations[0].RotationDate == nil || !within(*lr.Rotations[0].RotationDate, time.Now(), time.Minute) || lr.Truncated {
		t.Errorf("ListKeyRotations: got %s, truncated %v; want one ON_DEMAND rotation of %s just now", jsonString(lr.Rotations), lr.Truncated, k1)
	}

	// Automatic rotation's switch.
	if _, err := c.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String(k1)}); err != nil {
		t.Fatalf("EnableKeyRotation: %v", err)
	}
	rs, err := c.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(k1)})
	if err != nil {
		t.Fatalf("GetKeyRotationStatus: %v", err)
	}
	if !rs.KeyRotationEnabled || aws.ToInt32(rs.RotationPeriodInDays) != 365 || rs.NextRotationDate == nil ||
		!within(*rs.NextRotationDate, time.Now().Add(365*24*time.Hour), time.Minute) {
		t.Errorf("GetKeyRotationStatus after EnableKeyRotation: got enabled %v, period %d, next %v; want true, 365, in 365 days",
			rs.KeyRotationEnabled, aws.ToInt32(rs.RotationPeriodInDays), rs.NextRotationDate)
	}
	if _, err := c.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String(k1)}); err != nil {
		t.Fatalf("DisableKeyRotation: %v", err)
	}
	if rs, err := c.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String(k1)}); err != nil || rs.KeyRotationEnabled {
		t.Errorf("GetKeyRotationStatus after DisableKeyRotation: got %v, %v; want false, nil", rs != nil && rs.KeyRotationEnabled, err)
	}

	// Disable and enable.
	if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(k1)}); err != nil {
		t.Fatalf("DisableKey: %v", err)
	}
	wantState(t, ctx, c, k1, types.KeyStateDisabled)
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k1), Plaintext: pt})
	wantAPIError[*types.DisabledException](t, "Encrypt under a disabled key", err, arn1+" is disabled.")
	_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
	wantAPIError[*types.DisabledException](t, "Decrypt under a disabled key", err, arn1+" is disabled.")
	if _, err := c.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(k1)}); err != nil {
		t.Fatalf("EnableKey: %v", err)
	}
	wantState(t, ctx, c, k1, types.KeyStateEnabled)
	decrypt(t, ctx, c, "", blob, ec, pt, arn1)

	// Scheduled deletion and its cancellation.
	sd, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(k1), PendingWindowInDays: aws.Int32(7)})
	if err != nil {
		t.Fatalf("ScheduleKeyDeletion: %v", err)
	}
	week := time.Now().Add(7 * 24 * time.Hour)
	if aws.ToString(sd.KeyId) != arn1 || sd.KeyState != types.KeyStatePendingDeletion || aws.ToInt32(sd.PendingWindowInDays) != 7 ||
		sd.DeletionDate == nil || !within(*sd.DeletionDate, week, time.Minute) {
		t.Errorf("ScheduleKeyDeletion: got %s; want KeyId %s, PendingDeletion, 7 days, DeletionDate about %v", jsonString(sd), arn1, week)
	}
	md := wantState(t, ctx, c, k1, types.KeyStatePendingDeletion)
	if md.DeletionDate == nil || sd.DeletionDate == nil || !md.DeletionDate.Equal(*sd.DeletionDate) {
		t.Errorf("DescribeKey of a key pending deletion: DeletionDate: got %v, want %v", md.DeletionDate, sd.DeletionDate)
	}
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k1), Plaintext: pt})
	wantAPIError[*types.KMSInvalidStateException](t, "Encrypt under a key pending deletion", err, arn1+" is pending deletion.")
	ck, err := c.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(k1)})
	if err != nil {
		t.Fatalf("CancelKeyDeletion: %v", err)
	}
	if got := aws.ToString(ck.KeyId); got != arn1 {
		t.Errorf("CancelKeyDeletion: KeyId: got %q, want %q", got, arn1)
	}
	if md := wantState(t, ctx, c, k1, types.KeyStateDisabled); md.DeletionDate != nil {
		t.Errorf("DescribeKey after CancelKeyDeletion: DeletionDate: got %v, want none", md.DeletionDate)
	}
	_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k1), Plaintext: pt})
	wantAPIError[*types.DisabledException](t, "Encrypt after CancelKeyDeletion", err, arn1+" is disabled.")
}

// TestSDKErrors checks the typed errors and exact messages the SDK gets
// for requests AWS KMS refuses.
func TestSDKErrors(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	k := aws.ToString(createKey(t, ctx, c, "errors").KeyId)
	arn := keyARN(k)

	t.Run("missing key", func(t *testing.T) {
		const missing = "0d7ec6a5-8a2e-4b1c-9d3e-000000000000"
		_, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(missing)})
		wantAPIError[*types.NotFoundException](t, "DescribeKey", err, "Key '"+keyARN(missing)+"' does not exist")
		_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(keyARN(missing)), Plaintext: []byte("x")})
		wantAPIError[*types.NotFoundException](t, "Encrypt", err, "Key '"+keyARN(missing)+"' does not exist")
		_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/missing"), Plaintext: []byte("x")})
		wantAPIError[*types.NotFoundException](t, "Encrypt via a missing alias", err, "Alias "+aliasARN("alias/missing")+" is not found.")
	})

	t.Run("disabled key", func(t *testing.T) {
		dk := aws.ToString(createKey(t, ctx, c, "to disable").KeyId)
		blob := encrypt(t, ctx, c, dk, []byte("secret"), nil)
		if _, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(dk)}); err != nil {
			t.Fatalf("DisableKey: %v", err)
		}
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(dk), Plaintext: []byte("x")})
		wantAPIError[*types.DisabledException](t, "Encrypt", err, keyARN(dk)+" is disabled.")
		_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob})
		wantAPIError[*types.DisabledException](t, "Decrypt", err, keyARN(dk)+" is disabled.")
		_, err = c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(dk), KeySpec: types.DataKeySpecAes256})
		wantAPIError[*types.DisabledException](t, "GenerateDataKey", err, keyARN(dk)+" is disabled.")
	})

	t.Run("tampered ciphertext", func(t *testing.T) {
		pt := []byte("tamper with me")
		ec := map[string]string{"k": "v"}
		blob := encrypt(t, ctx, c, k, pt, ec)
		decrypt(t, ctx, c, "", blob, ec, pt, arn)
		for i := range blob {
			for _, mask := range []byte{0x01, 0x80} {
				bad := bytes.Clone(blob)
				bad[i] ^= mask
				_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: bad, EncryptionContext: ec})
				wantAPIError[*types.InvalidCiphertextException](t, "Decrypt with byte "+strconv.Itoa(i)+" ^ "+strconv.Itoa(int(mask)), err, "")
			}
		}
		for _, n := range []int{1, len(blob) / 2, len(blob) - 1} {
			_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob[:n], EncryptionContext: ec})
			wantAPIError[*types.InvalidCiphertextException](t, "Decrypt of the first "+strconv.Itoa(n)+" bytes", err, "")
		}
		_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: append(bytes.Clone(blob), 0), EncryptionContext: ec})
		wantAPIError[*types.InvalidCiphertextException](t, "Decrypt with a byte appended", err, "")
	})

	t.Run("wrong encryption context", func(t *testing.T) {
		pt := []byte("bound to a context")
		right := map[string]string{"ab": "c"}
		blob := encrypt(t, ctx, c, k, pt, right)
		decrypt(t, ctx, c, "", blob, right, pt, arn)
		for name, ec := range map[string]map[string]string{
			`{"a":"bc"}`:         {"a": "bc"},
			"none":               nil,
			`{"ab":"C"}`:         {"ab": "C"},
			`{"ab":"c","x":"y"}`: {"ab": "c", "x": "y"},
			`{"abc":""}`:         {"abc": ""},
		} {
			_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
			wantAPIError[*types.InvalidCiphertextException](t, "Decrypt with context "+name, err, "")
		}
		plain := encrypt(t, ctx, c, k, pt, nil)
		_, err := c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: plain, EncryptionContext: right})
		wantAPIError[*types.InvalidCiphertextException](t, "Decrypt with a context of a blob made without one", err, "")
	})

	t.Run("oversized plaintext", func(t *testing.T) {
		encrypt(t, ctx, c, k, make([]byte, 4096), nil)
		_, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(k), Plaintext: make([]byte, 4097)})
		wantErrorCode(t, "Encrypt of 4097 bytes", err, "ValidationException",
			"1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096")
	})

	t.Run("invalid enum", func(t *testing.T) {
		_, err := c.CreateKey(ctx, &kms.CreateKeyInput{KeyUsage: types.KeyUsageType("BOGUS")})
		wantErrorCode(t, "CreateKey KeyUsage BOGUS", err, "ValidationException",
			"1 validation error detected: Value 'BOGUS' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]")
	})

	t.Run("deletion window outside 7-30 days", func(t *testing.T) {
		for _, tc := range []struct {
			days int32
			msg  string
		}{
			{6, "1 validation error detected: Value '6' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value greater than or equal to 7"},
			{31, "1 validation error detected: Value '31' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value less than or equal to 30"},
		} {
			_, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(k), PendingWindowInDays: aws.Int32(tc.days)})
			wantErrorCode(t, "ScheduleKeyDeletion PendingWindowInDays "+strconv.Itoa(int(tc.days)), err, "ValidationException", tc.msg)
		}
		wantState(t, ctx, c, k, types.KeyStateEnabled)
	})

	t.Run("GenerateRandom", func(t *testing.T) {
		var prev []byte
		for _, n := range []int32{1, 32, 1024} {
			out, err := c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(n)})
			if err != nil {
				t.Fatalf("GenerateRandom %d: %v", n, err)
			}
			if len(out.Plaintext) != int(n) {
				t.Errorf("GenerateRandom %d: got %d bytes", n, len(out.Plaintext))
			}
			if n == 32 {
				prev = out.Plaintext
			}
		}
		again, err := c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(32)})
		if err != nil {
			t.Fatalf("GenerateRandom: %v", err)
		}
		if bytes.Equal(again.Plaintext, prev) {
			t.Errorf("GenerateRandom 32 twice: got the same bytes %x", prev)
		}
		_, err = c.GenerateRandom(ctx, &kms.GenerateRandomInput{NumberOfBytes: aws.Int32(0)})
		wantErrorCode(t, "GenerateRandom 0", err, "ValidationException",
			"1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy constraint: Member must have value greater than or equal to 1")
	})
}

// TestSDKListKeysPagination pages through five keys two at a time.
func TestSDKListKeysPagination(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)
	var want []string
	for range 5 {
		want = append(want, aws.ToString(createKey(t, ctx, c, "page").KeyId))
	}
	var got []string
	var sizes []int
	var marker *string
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatalf("ListKeys: more than 5 pages")
		}
		out, err := c.ListKeys(ctx, &kms.ListKeysInput{Limit: aws.Int32(2), Marker: marker})
		if err != nil {
			t.Fatalf("ListKeys page %d: %v", page, err)
		}
		sizes = append(sizes, len(out.Keys))
		for _, k := range out.Keys {
			got = append(got, aws.ToString(k.KeyId))
			if aws.ToString(k.KeyArn) != keyARN(aws.ToString(k.KeyId)) {
				t.Errorf("ListKeys: KeyArn: got %q, want %q", aws.ToString(k.KeyArn), keyARN(aws.ToString(k.KeyId)))
			}
		}
		if out.Truncated != (out.NextMarker != nil) {
			t.Errorf("ListKeys page %d: Truncated %v with NextMarker %v", page, out.Truncated, out.NextMarker)
		}
		if !out.Truncated {
			break
		}
		marker = out.NextMarker
	}
	if !slices.Equal(sizes, []int{2, 2, 1}) {
		t.Errorf("ListKeys page sizes: got %v, want [2 2 1]", sizes)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("ListKeys: got %v, want %v", got, want)
	}

	// The paginator the SDK ships walks the same pages.
	var n int
	p := kms.NewListKeysPaginator(c, &kms.ListKeysInput{Limit: aws.Int32(2)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListKeysPaginator: %v", err)
		}
		n += len(out.Keys)
	}
	if n != 5 {
		t.Errorf("ListKeysPaginator: got %d keys, want 5", n)
	}
}

// TestSDKTagsDescriptionPolicy round-trips tags, descriptions and key
// policies.
func TestSDKTagsDescriptionPolicy(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	ctx := testContext(t)
	c := sdkClient(s, cr.AccessKeyID, cr.SecretAccessKey, region)

	out, err := c.CreateKey(ctx, &kms.CreateKeyInput{
		Description: aws.String("tagged"),
		Tags:        []types.Tag{{TagKey: aws.String("Project"), TagValue: aws.String("kmsd")}},
	})
	if err != nil {
		t.Fatalf("CreateKey with tags: %v", err)
	}
	k := aws.ToString(out.KeyMetadata.KeyId)
	tags := func() map[string]string {
		t.Helper()
		out, err := c.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String(k)})
		if err != nil {
			t.Fatalf("ListResourceTags: %v", err)
		}
		if out.Truncated {
			t.Errorf("ListResourceTags: Truncated: got true, want false")
		}
		m := map[string]string{}
		for _, tg := range out.Tags {
			m[aws.ToString(tg.TagKey)] = aws.ToString(tg.TagValue)
		}
		return m
	}
	if got, want := tags(), map[string]string{"Project": "kmsd"}; !reflect.DeepEqual(got, want) {
		t.Errorf("tags after CreateKey: got %v, want %v", got, want)
	}
	_, err = c.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String(k), Tags: []types.Tag{
		{TagKey: aws.String("Env"), TagValue: aws.String("test")},
		{TagKey: aws.String("Project"), TagValue: aws.String("kmsd-e2e")},
		{TagKey: aws.String("Empty"), TagValue: aws.String("")},
	}})
	if err != nil {
		t.Fatalf("TagResource: %v", err)
	}
	if got, want := tags(), map[string]string{"Project": "kmsd-e2e", "Env": "test", "Empty": ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("tags after TagResource: got %v, want %v", got, want)
	}
	if _, err := c.UntagResource(ctx, &kms.UntagResourceInput{KeyId: aws.String(k), TagKeys: []string{"Env", "Absent"}}); err != nil {
		t.Fatalf("UntagResource: %v", err)
	}
	if got, want := tags(), map[string]string{"Project": "kmsd-e2e", "Empty": ""}; !reflect.DeepEqual(got, want) {
		t.Errorf("tags after UntagResource: got %v, want %v", got, want)
	}

	if got := aws.ToString(describe(t, ctx, c, k).Description); got != "tagged" {
		t.Errorf("Description after CreateKey: got %q, want %q", got, "tagged")
	}
	if _, err := c.UpdateKeyDescription(ctx, &kms.UpdateKeyDescriptionInput{KeyId: aws.String(k), Description: aws.String("re-described ✓")}); err != nil {
		t.Fatalf("UpdateKeyDescription: %v", err)
	}
	if got := aws.ToString(describe(t, ctx, c, k).Description); got != "re-described ✓" {
		t.Errorf("Description after UpdateKeyDescription: got %q, want %q", got, "re-described ✓")
	}

	// A new key has AWS's default key policy.
	gp, err := c.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(k), PolicyName: aws.String("default")})
	if err != nil {
		t.Fatalf("GetKeyPolicy: %v", err)
	}
	if got := aws.ToString(gp.PolicyName); got != "default" {
		t.Errorf("GetKeyPolicy: PolicyName: got %q, want default", got)
	}
	var gotPolicy any
	if err := json.Unmarshal([]byte(aws.ToString(gp.Policy)), &gotPolicy); err != nil {
		t.Fatalf("GetKeyPolicy: policy is not JSON: %v\n%s", err, aws.ToString(gp.Policy))
	}
	var wantPolicy any
	json.Unmarshal([]byte(`{
		"Version": "2012-10-17",
		"Id": "key-default-1",
		"Statement": [{
			"Sid": "Enable IAM User Permissions",
			"Effect": "Allow",
			"Principal": {"AWS": "arn:aws:iam::111122223333:root"},
			"Action": "kms:*",
			"Resource": "*"
		}]
	}`), &wantPolicy)
	if !reflect.DeepEqual(gotPolicy, wantPolicy) {
		t.Errorf("GetKeyPolicy of a new key: got %s, want AWS's default policy %s", aws.ToString(gp.Policy), jsonString(wantPolicy))
	}
	// GetKeyPolicy without PolicyName (optional since 2024) is the same.
	if gp2, err := c.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(k)}); err != nil || aws.ToString(gp2.Policy) != aws.ToString(gp.Policy) {
		t.Errorf("GetKeyPolicy without PolicyName: got %v, %v; want the default policy", gp2, err)
	}
	lp, err := c.ListKeyPolicies(ctx, &kms.ListKeyPoliciesInput{KeyId: aws.String(k)})
	if err != nil {
		t.Fatalf("ListKeyPolicies: %v", err)
	}
	if !slices.Equal(lp.PolicyNames, []string{"default"}) || lp.Truncated {
		t.Errorf("ListKeyPolicies: got %v, truncated %v; want [default], false", lp.PolicyNames, lp.Truncated)
	}

	policy := `{"Version":"2012-10-17","Id":"e2e","Statement":[{"Sid":"Root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},{"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/kmsd-admin"},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`
	if _, err := c.PutKeyPolicy(ctx, &kms.PutKeyPolicyInput{KeyId: aws.String(k), PolicyName: aws.String("default"), Policy: aws.String(policy)}); err != nil {
		t.Fatalf("PutKeyPolicy: %v", err)
	}
	gp, err = c.GetKeyPolicy(ctx, &kms.GetKeyPolicyInput{KeyId: aws.String(k), PolicyName: aws.String("default")})
	if err != nil {
		t.Fatalf("GetKeyPolicy after PutKeyPolicy: %v", err)
	}
	if got := aws.ToString(gp.Policy); got != policy {
		t.Errorf("GetKeyPolicy after PutKeyPolicy: got %s, want %s", got, policy)
	}
	_, err = c.PutKeyPolicy(ctx, &kms.PutKeyPolicyInput{KeyId: aws.String(k), Policy: aws.String("not json")})
	var mp *types.MalformedPolicyDocumentException
	if !errors.As(err, &mp) {
		t.Errorf("PutKeyPolicy of a policy that is not JSON: got %v, want MalformedPolicyDocumentException", err)
	}
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
