package xksclient

import (
	"errors"
	"slices"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
	"github.com/kmsd/kmsd/internal/xks"
)

// allKinds lists every Kind; the test below keeps the list and the table in step.
var allKinds = []Kind{KindInternal, KindCanceled, KindUnreachable, KindTLS, KindTimeout, KindNetwork,
	KindInvalidResponse, KindProxy, KindEKMUnavailable, KindKeyConfiguration}

// outcomes returns one error per table row.
func outcomes() []error {
	var out []error
	for _, k := range allKinds {
		if k != KindProxy {
			out = append(out, &Error{Kind: k})
		}
	}
	for _, n := range xks.ErrorNames() {
		out = append(out, &Error{Kind: KindProxy, Name: n, Status: xks.Status(n)})
	}
	return out
}

// TestTablesComplete: every Kind and every spec error name has a row, and every value
// a row yields exists in the KMS API model for the operation it is used by.
func TestTablesComplete(t *testing.T) {
	if len(allKinds) != len(kindNames) {
		t.Fatalf("allKinds has %d kinds, kindNames %d", len(allKinds), len(kindNames))
	}
	for _, k := range allKinds {
		if _, ok := kindTable[k]; !ok && k != KindProxy {
			t.Errorf("kind %v has no row", k)
		}
	}
	for _, n := range xks.ErrorNames() {
		if _, ok := nameTable[n]; !ok {
			t.Errorf("error name %s has no row", n)
		}
	}
	in := func(op, exc string) bool { return slices.Contains(kmsapi.Operations[op].Errors, exc) }
	for _, err := range outcomes() {
		code, store, ck, crypto := ConnectionErrorCode(err), StoreException(err), CreateKeyException(err), CryptoException(err)
		if !slices.Contains(kmsapi.EnumConnectionErrorCodeType, code) {
			t.Errorf("%v: code %q not in the model", err, code)
		}
		for _, op := range []string{"CreateCustomKeyStore", "UpdateCustomKeyStore"} {
			if !in(op, store) {
				t.Errorf("%v: %s not an error of %s", err, store, op)
			}
		}
		if !in("CreateKey", ck) {
			t.Errorf("%v: %s not an error of CreateKey", err, ck)
		}
		for _, op := range []string{"Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncrypt"} {
			if !in(op, crypto) {
				t.Errorf("%v: %s not an error of %s", err, crypto, op)
			}
		}
		if Message(err) == "" {
			t.Errorf("%v: no message", err)
		}
	}
}

// TestSpecRows pins the rows the spec tables state outright (xks-proxy-api.md §2.4,
// §2.5; kms-custom-key-stores.md §5.1, §8.3, §10.7).
func TestSpecRows(t *testing.T) {
	p := func(name string) error { return &Error{Kind: KindProxy, Name: name, Status: xks.Status(name)} }
	k := func(kind Kind) error { return &Error{Kind: kind} }
	for _, tc := range []struct {
		name                          string
		err                           error
		code, store, createKey, crypt string
	}{
		{"401", p(xks.AuthenticationFailedException), CodeInvalidCredentials, ExcProxyIncorrectCredential, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"403", p(xks.AccessDeniedException), CodeAccessDenied, ExcProxyInvalidConfiguration, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"bad path", p(xks.InvalidURIPathException), CodeInvalidConfiguration, ExcProxyInvalidConfiguration, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"validation", p(xks.ValidationException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"internal", p(xks.InternalException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"throttled", p(xks.ThrottlingException), CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"dependency timeout", p(xks.DependencyTimeoutException), CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"key not found", p(xks.KeyNotFoundException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyNotFound, ExcInvalidState},
		{"key disabled", p(xks.InvalidStateException), CodeInvalidConfiguration, ExcProxyInvalidConfiguration, ExcXksKeyInvalidConfiguration, ExcInvalidState},
		{"key usage", p(xks.InvalidKeyUsageException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyInvalidConfiguration, ExcInvalidState},
		{"bad ciphertext", p(xks.InvalidCiphertextException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"unsupported", p(xks.UnsupportedOperationException), CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"tcp", k(KindUnreachable), CodeNotReachable, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"tls", k(KindTLS), CodeInvalidTLSConfiguration, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"timeout", k(KindTimeout), CodeTimedOut, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"network", k(KindNetwork), CodeNetworkErrors, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"malformed", k(KindInvalidResponse), CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"all EKMs unavailable", k(KindEKMUnavailable), CodeNotReachable, ExcProxyUriUnreachable, ExcCustomKeyStoreInvalidState, ExcInvalidState},
		{"key configuration", k(KindKeyConfiguration), CodeInvalidResponse, ExcProxyInvalidResponse, ExcXksKeyInvalidConfiguration, ExcInvalidState},
		{"ours", errors.New("bug"), CodeInternalError, ExcInternal, ExcInternal, ExcInternal},
		{"canceled", k(KindCanceled), CodeInternalError, ExcInternal, ExcInternal, ExcInternal},
		{"unknown name", &Error{Kind: KindProxy, Name: "Nope"}, CodeInvalidResponse, ExcProxyInvalidResponse, ExcCustomKeyStoreInvalidState, ExcInvalidState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := [4]string{ConnectionErrorCode(tc.err), StoreException(tc.err), CreateKeyException(tc.err), CryptoException(tc.err)}
			want := [4]string{tc.code, tc.store, tc.createKey, tc.crypt}
			if got != want {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	if ConnectionErrorCode(nil) != "" || CryptoException(nil) != "" || Retryable(nil) {
		t.Fatal("nil error mapped")
	}
	if !Retryable(p(xks.ThrottlingException)) || Retryable(p(xks.KeyNotFoundException)) || !Retryable(k(KindTimeout)) {
		t.Fatal("retryable flags")
	}
	if Message(invalid("encrypt", 200, errCDIV)) != msgGistCDIV {
		t.Fatal("CDIV mismatch message")
	}
	if !errors.Is(p(xks.KeyNotFoundException), &Error{Kind: KindProxy, Name: xks.KeyNotFoundException}) ||
		errors.Is(p(xks.KeyNotFoundException), &Error{Kind: KindProxy, Name: xks.InternalException}) {
		t.Fatal("Error.Is")
	}
}
