package kms

import (
	"context"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestGenerateRandomWithoutNumberOfBytes: AWS's own text, not the model's
// "1 validation error detected" grammar [S].
func TestGenerateRandomWithoutNumberOfBytes(t *testing.T) {
	f := newFixture(t)
	_, err := f.svc.GenerateRandom(context.Background(), f.caller, &kmsapi.GenerateRandomRequest{})
	wantMessage(t, err, "ValidationException", "NumberOfBytes is required.")
}
