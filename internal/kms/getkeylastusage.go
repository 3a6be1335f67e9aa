package kms

import (
	"context"
	"errors"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// GetKeyLastUsage tells when a key was last used successfully by one of
// the tracked operations (spec §10), and by which call: the eventID of
// that call's audit record and its request id. The key is named by key id
// or key ARN only, in the caller's account; the operation works in every
// key state. Uses are kept by package lastuse, batched in memory for up to
// a second before they are stored.
func (s *Service) GetKeyLastUsage(ctx context.Context, c *Caller, in *kmsapi.GetKeyLastUsageRequest) (*kmsapi.GetKeyLastUsageResponse, error) {
	k, err := s.resolveKeyID(ctx, c, *in.KeyId)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, c, "kms:GetKeyLastUsage", k, nil, nil); err != nil {
		return nil, err
	}
	began, err := s.usage.Began(ctx)
	if err != nil {
		return nil, internal(err)
	}
	arn := k.ARN()
	data := &kmsapi.KeyLastUsageData{} // no use yet: "KeyLastUsage": {} [spec §10, R]
	u, err := s.usage.Get(ctx, arn)
	switch {
	case err == nil:
		data.Operation = kmsapi.String(u.Operation)
		data.Timestamp = kmsapi.NewTime(u.Time)
		data.CloudTrailEventId = kmsapi.String(u.EventID)
		data.KmsRequestId = kmsapi.String(u.RequestID)
	case !errors.Is(err, catalog.ErrNotFound):
		return nil, internal(err)
	}
	start := k.Created
	if began.After(start) {
		start = began
	}
	return &kmsapi.GetKeyLastUsageResponse{
		KeyId:             &arn,
		KeyLastUsage:      data,
		TrackingStartDate: kmsapi.NewTime(start),
		KeyCreationDate:   kmsapi.NewTime(k.Created),
	}, nil
}

// usageTracked reports whether a successful call of op counts as a use
// of its keys: the values of KeyLastUsageTrackingOperation.
func usageTracked(op string) bool {
	switch op {
	case "Decrypt", "DeriveSharedSecret", "Encrypt", "GenerateDataKey", "GenerateDataKeyPair",
		"GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext", "GenerateMac",
		"ReEncrypt", "Sign", "Verify", "VerifyMac":
		return true
	}
	return false
}

// RecordUse notes, for GetKeyLastUsage, that c's call of op, made at
// time at, succeeded: the server calls it once the operation has returned
// without error, with the eventTime and eventID of the call's audit
// record, so that the use names that record exactly. Every key the call
// acted on (c.Resources; both keys of a ReEncrypt) counts as used. Calls
// of other operations, and failed or dry-run calls (which return an
// error, so the server never gets here), count for nothing. It does no
// I/O: it is on the path of every Encrypt.
func (s *Service) RecordUse(c *Caller, op string, at time.Time, eventID string) {
	if len(c.Resources) == 0 || !usageTracked(op) {
		return
	}
	s.usage.Record(c.Resources, op, at, eventID, c.RequestID)
}

// StartUsageTracking stores when key usage tracking began, once per
// store: when the Service was made, if no earlier Service stored a time.
// For keys older than the first kmsd that tracks usage TrackingStartDate
// is that time. The server calls it as it starts; without that call the
// first GetKeyLastUsage stores it.
func (s *Service) StartUsageTracking(ctx context.Context) error {
	_, err := s.usage.Began(ctx)
	return err
}

// FlushUsage stores the key uses recorded so far (the flusher does so
// every second by itself).
func (s *Service) FlushUsage(ctx context.Context) error { return s.usage.Flush(ctx) }

// forgetUsage deletes the recorded use of k as k itself is deleted.
func (s *Service) forgetUsage(ctx context.Context, k *catalog.Key) error {
	return s.usage.Delete(ctx, k.ARN())
}

// closeUsage stops the flusher and stores what it has not written yet.
func (s *Service) closeUsage() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.usage.Close(ctx); err != nil {
		s.log.Error("key last use: final flush failed", "err", err)
	}
}
