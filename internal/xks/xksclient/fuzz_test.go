package xksclient

import (
	"bytes"
	"testing"

	"github.com/kmsd/kmsd/internal/xks"
)

// FuzzParseResponse feeds arbitrary bodies to every response validator, seeded with
// the unit-test cases, and checks that whatever is accepted keeps the promises the
// layers above rely on (§2.3).
func FuzzParseResponse(f *testing.F) {
	for _, c := range healthCases {
		f.Add([]byte(c.body))
	}
	for _, c := range metadataCases {
		f.Add([]byte(c.body))
	}
	for _, c := range encryptCases {
		f.Add([]byte(c.f.json()))
	}
	for _, c := range decryptCases {
		f.Add([]byte(c.body))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if h, err := ParseHealth(data); err == nil {
			if h.XksProxyFleetSize <= 0 || len(h.EkmFleetDetails) < 1 || len(h.EkmFleetDetails) > 10 || h.EkmVendor == "" {
				t.Fatalf("accepted invalid health %+v", h)
			}
		}
		if m, err := ParseMetadata(data); err == nil {
			if m.KeySpec == "" || len(m.KeyUsage) < 1 || len(m.KeyUsage) > 10 ||
				(m.KeyStatus != xks.StatusEnabled && m.KeyStatus != xks.StatusDisabled) {
				t.Fatalf("accepted invalid metadata %+v", m)
			}
		}
		for _, cdiv := range []bool{false, true} {
			if out, err := ParseEncrypt(data, encPT, encAAD, cdiv); err == nil {
				if len(out.Ciphertext) != len(encPT) || (len(out.IV) != 12 && len(out.IV) != 16) || len(out.Tag) != 16 ||
					len(out.Metadata) > 20 || (cdiv && !bytes.Equal(out.CDIV, xks.CDIV(encAAD, out.Metadata, out.IV, out.Ciphertext, out.Tag))) {
					t.Fatalf("accepted invalid encrypt answer %+v", out)
				}
			}
		}
		if pt, err := ParseDecrypt(data, len(encPT)); err == nil && len(pt) != len(encPT) {
			t.Fatalf("accepted plaintext of %d bytes", len(pt))
		}
	})
}
