package xksclient

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/xks"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

const goodHealth = `{"xksProxyFleetSize":2,"xksProxyVendor":"kmsd","xksProxyModel":"kmsd xks-proxy 1","ekmVendor":"SoftHSM",` +
	`"ekmFleetDetails":[{"id":"a","model":"m","healthStatus":"ACTIVE"},{"id":"b","model":"","healthStatus":"UNAVAILABLE"}],"extra":1}`

var healthCases = []struct {
	name, body string
	ok         bool
}{
	{"valid", goodHealth, true},
	{"degraded only", `{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[{"id":"a","model":"m","healthStatus":"DEGRADED"}]}`, true},
	{"not JSON", `<html>hello</html>`, false},
	{"array", `[]`, false},
	{"empty", ``, false},
	{"trailing garbage", goodHealth + `x`, false},
	{"fleet size missing", strings.Replace(goodHealth, `"xksProxyFleetSize":2,`, ``, 1), false},
	{"fleet size zero", strings.Replace(goodHealth, `"xksProxyFleetSize":2`, `"xksProxyFleetSize":0`, 1), false},
	{"fleet size string", strings.Replace(goodHealth, `"xksProxyFleetSize":2`, `"xksProxyFleetSize":"2"`, 1), false},
	{"fleet size fraction", strings.Replace(goodHealth, `"xksProxyFleetSize":2`, `"xksProxyFleetSize":1.5`, 1), false},
	{"vendor empty", strings.Replace(goodHealth, `"xksProxyVendor":"kmsd"`, `"xksProxyVendor":""`, 1), false},
	{"model missing", strings.Replace(goodHealth, `"xksProxyModel":"kmsd xks-proxy 1",`, ``, 1), false},
	{"ekm vendor null", strings.Replace(goodHealth, `"ekmVendor":"SoftHSM"`, `"ekmVendor":null`, 1), false},
	{"no EKMs", `{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[]}`, false},
	{"eleven EKMs", `{"xksProxyFleetSize":1,"xksProxyVendor":"v","xksProxyModel":"m","ekmVendor":"e","ekmFleetDetails":[` +
		strings.TrimSuffix(strings.Repeat(`{"id":"x","model":"m","healthStatus":"ACTIVE"},`, 11), ",") + `]}`, false},
	{"duplicate EKM id", strings.Replace(goodHealth, `"id":"b"`, `"id":"a"`, 1), false},
	{"bad status", strings.Replace(goodHealth, `"ACTIVE"`, `"active"`, 1), false},
	{"status missing", strings.Replace(goodHealth, `,"healthStatus":"ACTIVE"`, ``, 1), false},
	{"EKM id missing", strings.Replace(goodHealth, `"id":"a",`, ``, 1), false},
}

func TestParseHealth(t *testing.T) {
	for _, tc := range healthCases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHealth([]byte(tc.body))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (h.XksProxyFleetSize <= 0 || len(h.EkmFleetDetails) == 0) {
				t.Fatalf("accepted %+v", h)
			}
		})
	}
}

var metadataCases = []struct {
	name, body string
	ok         bool
}{
	{"valid", `{"keySpec":"AES_256","keyUsage":["ENCRYPT","DECRYPT","WRAP"],"keyStatus":"ENABLED"}`, true},
	{"other spec is well-formed", `{"keySpec":"AES_128","keyUsage":["ENCRYPT"],"keyStatus":"DISABLED"}`, true},
	{"spec missing", `{"keyUsage":["ENCRYPT"],"keyStatus":"ENABLED"}`, false},
	{"usage missing", `{"keySpec":"AES_256","keyStatus":"ENABLED"}`, false},
	{"usage empty", `{"keySpec":"AES_256","keyUsage":[],"keyStatus":"ENABLED"}`, false},
	{"usage lower case", `{"keySpec":"AES_256","keyUsage":["encrypt"],"keyStatus":"ENABLED"}`, false},
	{"usage without encrypt or decrypt", `{"keySpec":"AES_256","keyUsage":["SIGN"],"keyStatus":"ENABLED"}`, false},
	{"usage eleven", `{"keySpec":"AES_256","keyUsage":["ENCRYPT","A","B","C","D","E","F","G","H","I","J"],"keyStatus":"ENABLED"}`, false},
	{"usage not strings", `{"keySpec":"AES_256","keyUsage":[1],"keyStatus":"ENABLED"}`, false},
	{"status other", `{"keySpec":"AES_256","keyUsage":["ENCRYPT"],"keyStatus":"PENDING"}`, false},
	{"status missing", `{"keySpec":"AES_256","keyUsage":["ENCRYPT"]}`, false},
}

func TestParseMetadata(t *testing.T) {
	for _, tc := range metadataCases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseMetadata([]byte(tc.body)); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestCheckKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    xks.MetadataResponse
		ok   bool
	}{
		{"usable", xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: []string{"DECRYPT", "ENCRYPT"}, KeyStatus: "ENABLED"}, true},
		{"AES_128", xks.MetadataResponse{KeySpec: "AES_128", KeyUsage: []string{"DECRYPT", "ENCRYPT"}, KeyStatus: "ENABLED"}, false},
		{"encrypt only", xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: []string{"ENCRYPT"}, KeyStatus: "ENABLED"}, false},
		{"disabled", xks.MetadataResponse{KeySpec: "AES_256", KeyUsage: []string{"DECRYPT", "ENCRYPT"}, KeyStatus: "DISABLED"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKey(&tc.m)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && CreateKeyException(err) != ExcXksKeyInvalidConfiguration {
				t.Fatalf("CreateKey exception %s", CreateKeyException(err))
			}
		})
	}
}

// encryptBody renders an Encrypt answer for plaintext pt and AAD aad, with edits.
type encFields struct{ ct, iv, tag, meta, cdiv string }

func (f encFields) json() string {
	s := "{"
	add := func(k, v string) {
		if v != "-" {
			if len(s) > 1 {
				s += ","
			}
			s += fmt.Sprintf("%q:%s", k, v)
		}
	}
	add("ciphertext", f.ct)
	add("initializationVector", f.iv)
	add("authenticationTag", f.tag)
	add("ciphertextMetadata", f.meta)
	add("ciphertextDataIntegrityValue", f.cdiv)
	return s + "}"
}

var (
	encPT, encAAD = []byte("inner ciphertext"), []byte("aad")
	encCT         = []byte("0123456789abcdef")
	encIV, encTag = make([]byte, 12), make([]byte, 16)
	encMeta       = []byte("key_version=1")
	q             = func(b []byte) string { return `"` + b64(b) + `"` }
	goodEncFields = encFields{q(encCT), q(encIV), q(encTag), q(encMeta), q(xks.CDIV(encAAD, encMeta, encIV, encCT, encTag))}
	encryptCases  = []struct {
		name string
		f    encFields
		cdiv bool
		ok   bool
	}{
		{"valid", goodEncFields, true, true},
		{"valid without metadata", encFields{q(encCT), q(encIV), q(encTag), "-", q(xks.CDIV(encAAD, nil, encIV, encCT, encTag))}, true, true},
		{"valid 16-byte IV", encFields{q(encCT), q(make([]byte, 16)), q(encTag), "-", q(xks.CDIV(encAAD, nil, make([]byte, 16), encCT, encTag))}, true, true},
		{"no CDIV when not asked", encFields{q(encCT), q(encIV), q(encTag), "-", "-"}, false, true},
		{"CDIV missing", encFields{q(encCT), q(encIV), q(encTag), "-", "-"}, true, false},
		{"CDIV wrong", encFields{q(encCT), q(encIV), q(encTag), "-", q(make([]byte, 32))}, true, false},
		{"CDIV wrong though not asked", encFields{q(encCT), q(encIV), q(encTag), "-", q(make([]byte, 32))}, false, false},
		{"ciphertext missing", encFields{"-", q(encIV), q(encTag), "-", "-"}, false, false},
		{"ciphertext short", encFields{q(encCT[1:]), q(encIV), q(encTag), "-", "-"}, false, false},
		{"ciphertext with tag appended", encFields{q(append(encCT[:16:16], encTag...)), q(encIV), q(encTag), "-", "-"}, false, false},
		{"IV missing", encFields{q(encCT), "-", q(encTag), "-", "-"}, false, false},
		{"IV 8 bytes", encFields{q(encCT), q(make([]byte, 8)), q(encTag), "-", "-"}, false, false},
		{"tag missing", encFields{q(encCT), q(encIV), "-", "-", "-"}, false, false},
		{"tag 12 bytes", encFields{q(encCT), q(encIV), q(make([]byte, 12)), "-", "-"}, false, false},
		{"metadata 21 bytes", encFields{q(encCT), q(encIV), q(encTag), q(make([]byte, 21)), "-"}, false, false},
		{"URL-safe Base64", encFields{`"` + base64.URLEncoding.EncodeToString([]byte{0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0xfb, 0xff, 0xfe, 0}) + `"`, q(encIV), q(encTag), "-", "-"}, false, false},
		{"unpadded Base64", encFields{`"` + base64.RawStdEncoding.EncodeToString(encCT) + `"`, q(encIV), q(encTag), "-", "-"}, false, false},
		{"number for ciphertext", encFields{`12`, q(encIV), q(encTag), "-", "-"}, false, false},
	}
)

func TestParseEncrypt(t *testing.T) {
	for _, tc := range encryptCases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := ParseEncrypt([]byte(tc.f.json()), encPT, encAAD, tc.cdiv)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v (%s)", err, tc.ok, tc.f.json())
			}
			if tc.ok && (len(out.Ciphertext) != len(encPT) || len(out.Tag) != 16) {
				t.Fatalf("accepted %+v", out)
			}
		})
	}
}

var decryptCases = []struct {
	name, body string
	ok         bool
}{
	{"valid", `{"plaintext":"` + b64(encPT) + `"}`, true},
	{"missing", `{}`, false},
	{"null", `{"plaintext":null}`, false},
	{"short", `{"plaintext":"` + b64(encPT[1:]) + `"}`, false},
	{"bad Base64", `{"plaintext":"!!!!"}`, false},
	{"junk", `{"plaintext":`, false},
}

func TestParseDecrypt(t *testing.T) {
	for _, tc := range decryptCases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseDecrypt([]byte(tc.body), len(encPT)); (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
