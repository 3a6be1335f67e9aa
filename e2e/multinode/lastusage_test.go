package multinode

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// TestLastUsageAcrossNodes: a key's last use, recorded by the node that
// served the call, is what GetKeyLastUsage answers on another node within
// a few flush intervals — last-use records are left out of the change
// feed (storage.UnfedPrefix), and no node caches them: each reads the
// database. Both ways, so a later use through the other node replaces it.
func TestLastUsageAcrossNodes(t *testing.T) {
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 2})
	ctx := t.Context()
	a, b := c.client(c.nodes[0]), c.client(c.nodes[1])
	out, err := a.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatal(err)
	}
	id := out.KeyMetadata.KeyId
	enc, err := a.Encrypt(ctx, &kms.EncryptInput{KeyId: id, Plaintext: []byte("last use")})
	if err != nil {
		t.Fatal(err)
	}
	encID, _ := awsmiddleware.GetRequestIDMetadata(enc.ResultMetadata)
	// waitUse polls GetKeyLastUsage on cl until it names op with request
	// id reqID.
	waitUse := func(cl *kms.Client, node, op, reqID string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			u, err := cl.GetKeyLastUsage(ctx, &kms.GetKeyLastUsageInput{KeyId: id})
			if err != nil {
				t.Fatalf("GetKeyLastUsage on %s: %v", node, err)
			}
			if l := u.KeyLastUsage; l != nil && string(l.Operation) == op && aws.ToString(l.KmsRequestId) == reqID {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("GetKeyLastUsage on %s after 15 s: %+v, want %s request %s", node, u.KeyLastUsage, op, reqID)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitUse(b, "node 1", "Encrypt", encID)
	dec, err := b.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
	if err != nil {
		t.Fatal(err)
	}
	decID, _ := awsmiddleware.GetRequestIDMetadata(dec.ResultMetadata)
	waitUse(a, "node 0", "Decrypt", decID)
}
