//go:build cgo

package hsm

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"
)

func TestFitPIN(t *testing.T) {
	rotated := strings.Repeat("0123456789abcdef", 2) // a rotated kmsuser password
	cases := []struct {
		name, pin string
		max       uint
		same      bool
	}{
		{"fits", "kmsPswd1", 8, true},
		{"no limit", rotated, 0, true},
		{"SoftHSM2's 255", rotated, 255, true},
		{"openCryptoki's 8", rotated, 8, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := fitPIN(tc.pin, tc.max)
			if tc.same != (got == tc.pin) {
				t.Fatalf("fitPIN(%q, %d) = %q", tc.pin, tc.max, got)
			}
			if tc.max > 0 && uint(len(got)) > tc.max {
				t.Fatalf("fitPIN(%q, %d) = %q: too long", tc.pin, tc.max, got)
			}
			if again := fitPIN(tc.pin, tc.max); again != got {
				t.Fatal("fitPIN is not deterministic")
			}
		})
	}
	if fitPIN(rotated, 8) == fitPIN(rotated+"x", 8) {
		t.Fatal("two passwords met one PIN")
	}
}

// TestOpenWrapped: kmsd's in-memory unwrap (openWrapped) reads both forms
// a token's wrap makes — CKM_AES_KEY_WRAP_PAD (RFC 5649) as SoftHSM2
// wraps, and CKM_AES_CBC_PAD after its IV as SoftHSM2 encrypts — and
// refuses a tampered or malformed one.
func TestOpenWrapped(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	id := activeCluster(t, s, 1)
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "test"); err != nil {
		t.Fatal(err)
	}
	r, _, _ := s.get(context.Background(), caller, id)
	toks, err := s.tokensFor(r)
	if err != nil {
		t.Fatal(err)
	}
	m := toks.(*module)
	masking := bytes.Repeat([]byte{0x5a}, 32)
	err = m.with(ctx, r.HSMs[0].label(), func(h p11.SessionHandle) error {
		// Session objects: a wrapping key of known material and an
		// extractable, readable key to wrap.
		mk, err := m.ctx.CreateObject(h, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
			p11.NewAttribute(p11.CKA_TOKEN, false),
			p11.NewAttribute(p11.CKA_WRAP, true),
			p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_VALUE, masking),
		})
		if err != nil {
			return err
		}
		for _, n := range []int{16, 32} {
			k, err := m.ctx.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
				p11.NewAttribute(p11.CKA_TOKEN, false),
				p11.NewAttribute(p11.CKA_SENSITIVE, false),
				p11.NewAttribute(p11.CKA_EXTRACTABLE, true),
				p11.NewAttribute(p11.CKA_VALUE_LEN, n),
			})
			if err != nil {
				return err
			}
			attrs, err := m.ctx.GetAttributeValue(h, k, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			if err != nil {
				return err
			}
			want := attrs[0].Value
			kwpForm, err := m.ctx.WrapKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_WRAP_PAD, nil)}, mk, k)
			if err != nil {
				return err
			}
			iv := bytes.Repeat([]byte{byte(n)}, 16)
			// SoftHSM2 does not wrap with CKM_AES_CBC_PAD; a wrap with it
			// is by definition the key's value encrypted with it
			// (openCryptoki's form is checked end to end, e2e/hsm).
			if err := m.ctx.EncryptInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_CBC_PAD, iv)}, mk); err != nil {
				return err
			}
			cbc, err := m.ctx.Encrypt(h, want)
			if err != nil {
				return err
			}
			cbcForm := append(iv, cbc...)
			for _, tc := range []struct {
				name    string
				ms      mechSet
				wrapped []byte
			}{
				{"KWP", mechSet{kwp: true}, kwpForm},
				{"CBC-PAD", mechSet{}, cbcForm},
			} {
				got, err := openWrapped(tc.ms, masking, tc.wrapped)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s, %d-byte key: openWrapped = %x, %v; want %x", tc.name, n, got, err, want)
				}
				for i := range tc.wrapped {
					bad := bytes.Clone(tc.wrapped)
					bad[i] ^= 0x01
					if got, err := openWrapped(tc.ms, masking, bad); err == nil && bytes.Equal(got, want) {
						t.Errorf("%s: byte %d flipped still opens to the key", tc.name, i)
					}
				}
				if _, err := openWrapped(tc.ms, masking, tc.wrapped[:len(tc.wrapped)-8]); !errors.Is(err, errWrapped) {
					t.Errorf("%s: a truncated form: %v, want errWrapped", tc.name, err)
				}
				if _, err := openWrapped(tc.ms, bytes.Repeat([]byte{1}, 32), tc.wrapped); !errors.Is(err, errWrapped) {
					t.Errorf("%s: another masking key: %v, want errWrapped", tc.name, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestUnwrapFallback: SoftHSM2 honours C_UnwrapKey's template, so key
// copies are unwrapped in the token; a module found to ignore it gets its
// copies from kmsd's memory (C_CreateObject), protected, and working.
func TestUnwrapFallback(t *testing.T) {
	s := newService(t)
	ctx := context.Background()
	id := activeCluster(t, s, 2)
	if err := s.Login(ctx, caller, id, "kmsuser", RoleCryptoUser, "kmspass1", "test"); err != nil {
		t.Fatal(err)
	}
	r, _, _ := s.get(context.Background(), caller, id)
	toks, err := s.tokensFor(r)
	if err != nil {
		t.Fatal(err)
	}
	m := toks.(*module)
	if err := s.CreateKey(ctx, id, "in-token"); err != nil {
		t.Fatal(err)
	}
	if f := m.unwrapFinding(); f != unwrapHonours {
		t.Fatalf("SoftHSM2's unwrap finding %d, want unwrapHonours", f)
	}

	m.setUnwrapFinding(unwrapIgnores)
	t.Cleanup(func() { m.setUnwrapFinding(unwrapUnknown) })
	if err := s.CreateKey(ctx, id, "in-memory"); err != nil {
		t.Fatal(err)
	}
	iv, ct, err := s.Encrypt(ctx, id, "in-memory", []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ { // round-robin over both HSMs
		if pt, err := s.Decrypt(ctx, id, "in-memory", iv, ct, nil); err != nil || string(pt) != "hello" {
			t.Fatalf("Decrypt = %q, %v", pt, err)
		}
	}
	r, _, _ = s.get(context.Background(), caller, id)
	for _, hr := range r.HSMs {
		err := m.with(ctx, hr.label(), func(h p11.SessionHandle) error {
			k, err := m.oneKey(h, "in-memory")
			if err != nil {
				return err
			}
			if ok, err := m.protected(h, k); err != nil || !ok {
				t.Errorf("HSM %s: the copy is not sensitive and non-extractable (%v)", hr.ID, err)
			}
			_, err = m.ctx.GetAttributeValue(h, k, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			if !isCode(err, p11.CKR_ATTRIBUTE_SENSITIVE) {
				t.Errorf("HSM %s: reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", hr.ID, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
