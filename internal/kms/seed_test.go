package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
)

const seedID = "0b7e4a3c-2f4e-4e8a-9d6b-1c2d3e4f5a6b"

func seedMaterial(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func seedKeyOf(where string, material ...[]byte) SeedKey {
	return SeedKey{Where: where, Account: "111122223333", Region: "us-east-1", ID: seedID, Description: "seeded", Material: material}
}

// TestSeedAllOrNothing: a declaration that fails its checks leaves nothing
// of the file in the catalog, even what came before it.
func TestSeedAllOrNothing(t *testing.T) {
	cases := []struct {
		name string
		ks   []SeedKey
		as   []SeedAlias
		gs   []SeedGrant
		want string
	}{
		{"alias to nothing", []SeedKey{seedKeyOf("f:1", seedMaterial(1))},
			[]SeedAlias{{Where: "f:5", Account: "111122223333", Region: "us-east-1", Name: "alias/x", TargetKeyID: "1c8f5b4d-3a5f-4f9b-8e7c-2d3e4f5a6b7c"}}, nil, "f:5: alias alias/x"},
		{"reserved alias", []SeedKey{seedKeyOf("f:1", seedMaterial(1))},
			[]SeedAlias{{Where: "f:5", Account: "111122223333", Region: "us-east-1", Name: "alias/aws/x", TargetKeyID: seedID}}, nil, "f:5: alias alias/aws/x"},
		{"grant operation", []SeedKey{seedKeyOf("f:1", seedMaterial(1))}, nil,
			[]SeedGrant{{Where: "f:9", Account: "111122223333", Region: "us-east-1", KeyID: seedID, GranteePrincipal: "arn:aws:iam::111122223333:role/r", Operations: []string{"Sign"}}}, "f:9: grant on"},
		{"short material", []SeedKey{seedKeyOf("f:1", []byte("short"))}, nil, nil, "f:1: key " + seedID + ": key material 1 is 5 bytes"},
		{"usage", []SeedKey{func() SeedKey {
			k := seedKeyOf("f:1")
			k.KeySpec = "RSA_2048"
			k.KeyUsage = "GENERATE_VERIFY_MAC"
			return k
		}()}, nil, nil, "not compatible"},
		{"twice", []SeedKey{seedKeyOf("f:1"), seedKeyOf("f:2")}, nil, nil, "f:2: key " + seedID + " is declared twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			_, err := f.svc.Seed(context.Background(), c.ks, c.as, c.gs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if _, err := f.cat.Key(context.Background(), seedID); err != catalog.ErrNotFound {
				t.Fatalf("the key is there after a failed seed: %v", err)
			}
		})
	}
}

// TestSeedIdempotent: a second application creates nothing and reports
// how the stored key differs; the fixed material is the key's.
func TestSeedIdempotent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ks := []SeedKey{seedKeyOf("f:1", seedMaterial(1), seedMaterial(2))}
	as := []SeedAlias{{Where: "f:4", Account: "111122223333", Region: "us-east-1", Name: "alias/seeded", TargetKeyID: seedID}}
	rep, err := f.svc.Seed(ctx, ks, as, nil)
	if err != nil || len(rep.Created) != 2 {
		t.Fatalf("first: %+v %v", rep, err)
	}
	k, _ := f.cat.Key(ctx, seedID)
	if k.Current != 2 || len(k.Versions) != 2 {
		t.Fatalf("versions %d, current %d", len(k.Versions), k.Current)
	}
	for _, v := range k.Versions {
		if bytes.Contains(v.Sealed, seedMaterial(byte(v.Number))) {
			t.Fatal("material stored in clear")
		}
	}
	// The current version's AEAD is AES-GCM under the second material.
	blob := f.encrypt(t, seedID, []byte("pt"), nil)
	b, _ := keys.ParseBlob(blob)
	block, _ := aes.NewCipher(seedMaterial(2))
	gcm, _ := cipher.NewGCM(block)
	if pt, err := gcm.Open(nil, b.Nonce, b.Sealed, keys.AppendAAD(nil, b.Header, nil)); err != nil || string(pt) != "pt" {
		t.Fatalf("the fixed material does not open kmsd's blob: %v", err)
	}
	ks[0].Description = "changed in the file"
	rep, err = f.svc.Seed(ctx, ks, as, nil)
	if err != nil || len(rep.Created) != 0 || len(rep.Existing) != 2 || len(rep.Differences) != 1 || !strings.Contains(rep.Differences[0], "Description") {
		t.Fatalf("second: %+v %v", rep, err)
	}
	if k2, _ := f.cat.Key(ctx, seedID); k2.Description != "seeded" {
		t.Fatalf("the existing key changed: %q", k2.Description)
	}
}

// TestSeedLocalKMSBlob: a key seeded from a local-kms file opens
// local-kms's blobs of each backing key; another key does not.
func TestSeedLocalKMSBlob(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := seedKeyOf("f:1", seedMaterial(1), seedMaterial(2))
	k.LocalKMS = true
	if _, err := f.svc.Seed(ctx, []SeedKey{k}, nil, nil); err != nil {
		t.Fatal(err)
	}
	other := f.createKey(t)
	blob := func(id string, idx uint32, material []byte) []byte {
		arn := "arn:aws:kms:eu-west-2:111122223333:key/" + id
		block, _ := aes.NewCipher(material)
		gcm, _ := cipher.NewGCM(block)
		nonce := bytes.Repeat([]byte{9}, 12)
		out := append([]byte{byte(len(arn))}, arn...)
		out = binary.LittleEndian.AppendUint32(out, idx)
		out = append(out, nonce...)
		return gcm.Seal(out, nonce, []byte("lkms"), []byte("appx"))
	}
	for i, m := range [][]byte{seedMaterial(1), seedMaterial(2)} {
		pt, err := f.decrypt(blob(seedID, uint32(i), m), map[string]string{"app": "x"})
		if err != nil || string(pt) != "lkms" {
			t.Fatalf("backing key %d: %q %v", i, pt, err)
		}
	}
	if _, err := f.decrypt(blob(seedID, 0, seedMaterial(1)), nil); err == nil {
		t.Fatal("decrypted without its context")
	}
	_, err := f.decrypt(blob(other, 0, seedMaterial(1)), map[string]string{"app": "x"})
	wantException(t, err, "InvalidCiphertextException")
}
