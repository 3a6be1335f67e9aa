package catalog

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// TestEncodeUse: a use EncodeUse encodes decodes back to itself with its
// journal partition, the longest use of a key kmsd makes fits in
// MaxEncodedUse, and JournalLastUses (which encodes) and JournalEncoded
// of the same uses journal the same.
func TestEncodeUse(t *testing.T) {
	longestOp := ""
	for _, op := range kmsapi.EnumKeyLastUsageTrackingOperation {
		if len(op) > len(longestOp) {
			longestOp = op
		}
	}
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 123, time.UTC)
	mrk := "mrk-" + "0123456789abcdef0123456789abcdef"
	uses := []LastUse{
		{Account: "111122223333", Region: "us-east-1", KeyID: uuid.NewString(), Operation: "Encrypt", Time: t0, EventID: uuid.NewString(), RequestID: uuid.NewString()},
		{Account: "111122223333", Region: "eu-west-1", KeyID: mrk, Operation: longestOp, Time: t0.Add(time.Second), EventID: uuid.NewString(), RequestID: uuid.NewString()},
		{Account: "444455556666", Region: "us-east-1", KeyID: "not-a-uuid", Operation: "Sign", Time: t0, EventID: "ev", RequestID: "req"},
	}
	var enc []EncodedUse
	for i := range uses {
		u := &uses[i]
		b, part := EncodeUse(nil, u)
		if part != journalPartIndex(u.KeyID) {
			t.Errorf("%s: partition %d, want %d", u.KeyID, part, journalPartIndex(u.KeyID))
		}
		e := EncodedUse{Account: u.Account, Region: u.Region, Part: part, Entry: b}
		got, err := e.Use()
		if err != nil || *got != *u {
			t.Errorf("decoded %+v, %v; want %+v", got, err, *u)
		}
		enc = append(enc, e)
	}
	if n := len(enc[1].Entry); n != MaxEncodedUse {
		t.Errorf("a multi-Region key's use by %s encodes in %d bytes, MaxEncodedUse is %d", longestOp, n, MaxEncodedUse)
	}
	bad := EncodedUse{Account: "111122223333", Region: "us-east-1", Part: (enc[0].Part + 1) % journalParts, Entry: enc[0].Entry}
	if _, err := bad.Use(); err == nil {
		t.Error("a use with another partition than its key id's decoded")
	}

	ctx := t.Context()
	for _, d := range lastUseDrivers {
		t.Run(d.name, func(t *testing.T) {
			cs := d.open(t, 2)
			if err := cs[0].JournalLastUses(ctx, uses); err != nil {
				t.Fatal(err)
			}
			if err := cs[1].JournalEncoded(ctx, enc); err != nil {
				t.Fatal(err)
			}
			rows, err := cs[0].store.List(ctx, journalPrefix, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			// Two flushes of the same uses: each partition's row twice,
			// under two names of the partition.
			parts := map[int]bool{}
			for _, e := range enc {
				parts[e.Part] = true
			}
			if len(rows) != 2*len(parts) {
				t.Fatalf("%d journal rows, want %d", len(rows), 2*len(parts))
			}
			for i := 0; i < len(rows); i += 2 {
				a, b := rows[i], rows[i+1]
				if a.Key[:len(journalPrefix)+3] != b.Key[:len(journalPrefix)+3] || !bytes.Equal(a.Value, b.Value) {
					t.Errorf("rows %s and %s differ", a.Key, b.Key)
				}
			}
			for _, u := range uses {
				got, err := cs[0].LastUse(ctx, u.Account, u.Region, u.KeyID)
				if err != nil || *got != u {
					t.Errorf("LastUse %s = %+v, %v; want %+v", u.KeyID, got, err, u)
				}
			}
		})
	}
}
