package kms

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestDeleteBackingKeyLog: the sweep's deletion of a deleted key's backing
// key says what happened. An external key store's key has its external
// key left in the proxy (KMS deletes only its own metadata, spec §5.10),
// whether its store is connected or not — not "not connected"; a CloudHSM
// key store's key has its material deleted from the cluster when the
// store is connected, and is logged as not deleted, with the store's
// state, when it is not.
func TestDeleteBackingKeyLog(t *testing.T) {
	ctx := context.Background()
	f, m, h, _ := newStoreFixture(t)
	var log bytes.Buffer
	f.svc.log = slog.New(slog.NewTextHandler(&log, nil))
	id := f.createStore(t, "ks", "cluster-aaaaaaaaaaa")

	ext := &catalog.Key{ID: "11111111-2222-4333-8444-555555555555", Account: f.caller.Account, Region: f.caller.Region,
		Origin: "EXTERNAL_KEY_STORE", CustomKeyStoreID: "cks-00000000000000000", XksKeyID: "ext-1"}
	f.svc.deleteBackingKey(ctx, ext)
	if got := log.String(); !strings.Contains(got, "external key left in the external key store proxy") || strings.Contains(got, "not connected") {
		t.Fatalf("external key: log %q", got)
	}

	log.Reset()
	hk := &catalog.Key{ID: "66666666-2222-4333-8444-555555555555", Account: f.caller.Account, Region: f.caller.Region,
		Origin: "AWS_CLOUDHSM", CustomKeyStoreID: id}
	f.svc.deleteBackingKey(ctx, hk)
	if got := log.String(); !strings.Contains(got, "backing key not deleted: custom key store not connected (DISCONNECTED)") {
		t.Fatalf("key of a disconnected CloudHSM key store: log %q", got)
	}

	if _, err := f.svc.ConnectCustomKeyStore(ctx, f.caller, &kmsapi.ConnectCustomKeyStoreRequest{CustomKeyStoreId: &id}); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	label := hsmLabel(hk.Region, hk.Account, hk.ID)
	if err := h.CreateKey(ctx, "cluster-aaaaaaaaaaa", label); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	f.svc.deleteBackingKey(ctx, hk)
	if _, err := h.key("cluster-aaaaaaaaaaa", label); err == nil || strings.Contains(log.String(), "not deleted") {
		t.Fatalf("key of a connected CloudHSM key store: material still in the cluster (%v), log %q", err, log.String())
	}
}
