package multiregion

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// sdk is an aws-sdk-go-v2 client of kmsd's administrator in region.
func (e *env) sdk(region string) *kms.Client {
	e.t.Helper()
	cfg, err := config.LoadDefaultConfig(context.Background(),
		config.WithSharedCredentialsFiles([]string{e.k.Creds}),
		config.WithSharedConfigFiles([]string{filepath.Join(e.dir, "no-config")}),
		config.WithSharedConfigProfile("kmsd"), config.WithRegion(region),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }))
	if err != nil {
		e.t.Fatal(err)
	}
	return kms.NewFromConfig(cfg, func(o *kms.Options) { o.BaseEndpoint = aws.String(e.k.Endpoint) })
}

// TestCrashMidReplication kills kmsd with SIGKILL while replications are
// in flight, replicas are Creating and keys are Updating, restarts it on
// the same data directory, and checks that the states converge: every
// related key agrees on the configuration, each key it names exists (and
// no other), every replica decrypts what its primary encrypted before the
// crash (no replica without material), every acknowledged replication
// and primary change took effect, and nothing stays Creating or Updating.
func TestCrashMidReplication(t *testing.T) {
	t.Parallel()
	e := start(t, "1s")
	ctx := context.Background()
	regions := []string{east, west, apse}
	client := map[string]*kms.Client{}
	for _, r := range regions {
		client[r] = e.sdk(r)
	}
	pt := []byte("encrypted before the crash")
	const n = 8
	var ids []string
	blobs := map[string][]byte{}
	for range n {
		out, err := client[east].CreateKey(ctx, &kms.CreateKeyInput{MultiRegion: aws.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		id := aws.ToString(out.KeyMetadata.KeyId)
		ids = append(ids, id)
		enc, err := client[east].Encrypt(ctx, &kms.EncryptInput{KeyId: &id, Plaintext: pt})
		if err != nil {
			t.Fatal(err)
		}
		blobs[id] = enc.CiphertextBlob
	}
	// The first two keys get an Enabled replica in eu-west-1, to move
	// their primary there just before the kill.
	swap := ids[:2]
	for _, id := range swap {
		if _, err := client[east].ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(west)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range swap {
		waitSDK(t, client[west], id, func(m *types.KeyMetadata) bool { return m.KeyState == types.KeyStateEnabled })
	}

	var (
		mu        sync.Mutex
		acked     = map[string][]string{} // key id → Regions acknowledged
		swapped   []string
		wg        sync.WaitGroup
		firstAcks = make(chan struct{}, 64)
	)
	// Both swaps are acknowledged, so their keys are Updating (for a
	// second) when the kill comes.
	for _, id := range swap {
		if _, err := client[east].UpdatePrimaryRegion(ctx, &kms.UpdatePrimaryRegionInput{KeyId: &id, PrimaryRegion: aws.String(west)}); err != nil {
			t.Fatal(err)
		}
		swapped = append(swapped, id)
	}
	for _, id := range ids[2:] {
		for _, r := range []string{west, apse} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := client[east].ReplicateKey(ctx, &kms.ReplicateKeyInput{KeyId: &id, ReplicaRegion: aws.String(r)}); err == nil {
					mu.Lock()
					acked[id] = append(acked[id], r)
					mu.Unlock()
					firstAcks <- struct{}{}
				}
			}()
		}
	}
	// Kill once a few calls were acknowledged, while others are in
	// flight and the acknowledged ones are Creating or Updating.
	for range 3 {
		select {
		case <-firstAcks:
		case <-time.After(10 * time.Second):
			t.Fatal("no acknowledgement")
		}
	}
	e.k.Kill()
	wg.Wait()
	mu.Lock()
	t.Logf("acknowledged before the kill: %d primary changes, replications %v", len(swapped), acked)
	mu.Unlock()

	e.k = e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, DataDir: e.k.DataDir, Env: e.k.Cmd.Env, Args: []string{"--replica-delay", "1s"}})
	for r := range client {
		client[r] = e.sdk(r)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range ids {
		for {
			bad := converged(ctx, t, client, id, blobs[id], pt)
			if bad == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not converge: %s", id, bad)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// What was acknowledged took effect.
		m, _ := client[east].DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		cfg := m.KeyMetadata.MultiRegionConfiguration
		var have []string
		for _, rk := range cfg.ReplicaKeys {
			have = append(have, aws.ToString(rk.Region))
		}
		have = append(have, aws.ToString(cfg.PrimaryKey.Region))
		for _, r := range acked[id] {
			if !slices.Contains(have, r) {
				t.Errorf("%s: acknowledged replica in %s is gone (related keys in %v)", id, r, have)
			}
		}
		if slices.Contains(swapped, id) && aws.ToString(cfg.PrimaryKey.Region) != west {
			t.Errorf("%s: acknowledged primary change to %s, primary is %s", id, west, aws.ToString(cfg.PrimaryKey.Region))
		}
	}
}

// converged returns "" when the related keys of id agree and are settled,
// else what is not yet so.
func converged(ctx context.Context, t *testing.T, client map[string]*kms.Client, id string, blob, pt []byte) string {
	t.Helper()
	var ref []string // primary, then replicas, as the first key found says
	var mid *string  // CurrentKeyMaterialId, the same on every related key
	found := map[string]bool{}
	for _, r := range []string{east, west, apse} {
		m, err := client[r].DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: &id})
		if err != nil {
			continue // no related key in r
		}
		found[r] = true
		md := m.KeyMetadata
		if md.KeyState == types.KeyStateCreating || md.KeyState == types.KeyStateUpdating {
			return r + " is " + string(md.KeyState)
		}
		if md.KeyState != types.KeyStateEnabled {
			t.Fatalf("%s in %s: %s", id, r, md.KeyState)
		}
		cfg := []string{aws.ToString(md.MultiRegionConfiguration.PrimaryKey.Region)}
		for _, rk := range md.MultiRegionConfiguration.ReplicaKeys {
			cfg = append(cfg, aws.ToString(rk.Region))
		}
		if md.CurrentKeyMaterialId == nil || (mid != nil && *mid != *md.CurrentKeyMaterialId) {
			t.Fatalf("%s in %s: CurrentKeyMaterialId %v, another related key's %v", id, r, aws.ToString(md.CurrentKeyMaterialId), aws.ToString(mid))
		}
		mid = md.CurrentKeyMaterialId
		if ref == nil {
			ref = cfg
		} else if !slices.Equal(ref, cfg) {
			t.Fatalf("%s: related keys disagree: %v and %v (in %s)", id, ref, cfg, r)
		}
		// Material: the pre-crash ciphertext decrypts here.
		out, err := client[r].Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob})
		if err != nil || !bytes.Equal(out.Plaintext, pt) {
			t.Fatalf("%s in %s cannot decrypt its primary's ciphertext: %v", id, r, err)
		}
	}
	for _, r := range ref {
		if !found[r] {
			t.Fatalf("%s: configuration %v names %s, where it does not exist", id, ref, r)
		}
	}
	if len(found) != len(ref) {
		t.Fatalf("%s: keys in %v, configuration %v", id, found, ref)
	}
	return ""
}

// waitSDK polls DescribeKey until ok holds of the metadata.
func waitSDK(t *testing.T, c *kms.Client, id string, ok func(*types.KeyMetadata) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: &id})
		if err == nil && ok(m.KeyMetadata) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v, %v", id, m, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
