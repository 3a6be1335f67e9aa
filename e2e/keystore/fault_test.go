package keystore

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kmsctl runs kmsctl against k with args and returns stdout, stderr and
// the exit code.
func (k *kmsd) kmsctl(args ...string) (string, string, int) {
	k.t.Helper()
	return run(k.t, k.env, kmsctlBin, append([]string{"--endpoint-url", k.endpoint}, args...)...)
}

// TestInjectConnectFault: a kmsd started with fault injection fails the
// next connect with a chosen ConnectionErrorCode — also the ones a SoftHSM2
// cluster cannot cause, SUBNET_NOT_FOUND and
// INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET — or makes it slower; without the
// flag the admin operation is refused.
func TestInjectConnectFault(t *testing.T) {
	t.Parallel()
	requireTools(t)
	k := startAt(t, filepath.Join(t.TempDir(), "data"), "KMSD_FAULT_INJECTION=1")
	id, _, _ := k.readyStore("faulty")
	inject := func(args ...string) {
		t.Helper()
		if out, errs, code := k.kmsctl(append([]string{"kmsd", "inject-connect-fault", "--custom-key-store-id", id}, args...)...); code != 0 {
			t.Fatalf("inject-connect-fault %v: exit %d\n%s%s", args, code, out, errs)
		}
	}
	for _, code := range []string{"SUBNET_NOT_FOUND", "INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET"} {
		inject("--connection-error-code", code)
		k.connectFails(id, code)
	}
	// A fault is used once: the next connect is a real one.
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "CONNECTED", "")
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")

	// Latency: CONNECTING lasts at least that long, then connects.
	inject("--latency", "2s")
	began := time.Now()
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	for k.store(id)["ConnectionState"] == "CONNECTING" {
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(began); d < 2*time.Second {
		t.Fatalf("CONNECTING lasted %v with 2s of injected latency", d)
	}
	k.waitStore(id, "CONNECTED", "")

	// Refusals: bad code, unknown store.
	for _, args := range [][]string{
		{"--custom-key-store-id", id, "--connection-error-code", "NO_SUCH_CODE"},
		{"--custom-key-store-id", id, "--latency", "soon"},
		{"--custom-key-store-id", id},
	} {
		if _, errs, code := k.kmsctl(append([]string{"kmsd", "inject-connect-fault"}, args...)...); code == 0 || !strings.Contains(errs, "(ValidationException)") {
			t.Fatalf("inject %v: exit %d %s", args, code, errs)
		}
	}
	if _, errs, code := k.kmsctl("kmsd", "inject-connect-fault", "--custom-key-store-id", "cks-00000000000000000", "--latency", "1s"); code == 0 ||
		!strings.Contains(errs, "(CustomKeyStoreNotFoundException)") {
		t.Fatalf("inject into an unknown store: exit %d %s", code, errs)
	}

	// Without --fault-injection: refused.
	plain := start(t)
	if _, errs, code := plain.kmsctl("kmsd", "inject-connect-fault", "--custom-key-store-id", id, "--connection-error-code", "SUBNET_NOT_FOUND"); code == 0 ||
		!strings.Contains(errs, "(UnsupportedOperationException)") {
		t.Fatalf("inject without --fault-injection: exit %d %s", code, errs)
	}
}

// TestRestartWhileConnecting: kmsd killed (SIGKILL) while a store is
// CONNECTING resumes the connect when it starts again — the store ends
// CONNECTED, never stuck — and the store's keys work.
func TestRestartWhileConnecting(t *testing.T) {
	t.Parallel()
	requireTools(t)
	const delay = 4 * time.Second // KMSD_KEYSTORE_CONNECT_DELAY: the window for the kill
	k := startAt(t, filepath.Join(t.TempDir(), "data"), "KMSD_KEYSTORE_CONNECT_DELAY="+delay.String())
	id, _, _ := k.readyStore("crash")
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "CONNECTED", "")
	arn := k.aws("kms", "create-key", "--origin", "AWS_CLOUDHSM", "--custom-key-store-id", id)["KeyMetadata"].(map[string]any)["Arn"].(string)
	ct := k.aws("kms", "encrypt", "--key-id", arn, "--plaintext", "aGVsbG8gSFNN")["CiphertextBlob"].(string)
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")

	// The connect answers once the store is CONNECTING (recorded); it stays
	// so for delay, and kmsd is killed well inside that window.
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	answered := time.Now()
	if err := k.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(answered); d > delay/2 {
		t.Fatalf("kill %v after the connect: not surely while CONNECTING", d)
	}
	k.restart()
	if st := k.store(id)["ConnectionState"]; st != "CONNECTING" && st != "CONNECTED" {
		t.Fatalf("after the restart: %v", st)
	}
	k.waitStore(id, "CONNECTED", "")
	if pt := k.aws("kms", "decrypt", "--ciphertext-blob", ct)["Plaintext"]; pt != "aGVsbG8gSFNN" {
		t.Fatalf("decrypt after the crash: %v", pt)
	}
	ct = k.aws("kms", "encrypt", "--key-id", arn, "--plaintext", "YWdhaW4=")["CiphertextBlob"].(string)
	if pt := k.aws("kms", "decrypt", "--ciphertext-blob", ct)["Plaintext"]; pt != "YWdhaW4=" {
		t.Fatalf("round trip after the crash: %v", pt)
	}
	// kmsd's password rotation survived the crash: a later reconnect logs in.
	k.aws("kms", "disconnect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "DISCONNECTED", "")
	k.aws("kms", "connect-custom-key-store", "--custom-key-store-id", id)
	k.waitStore(id, "CONNECTED", "")
}
