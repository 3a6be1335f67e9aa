package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestReadPasswordLine(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		ok   bool
	}{
		{"line", "s3cret\n", "s3cret", true},
		{"CRLF", "s3cret\r\n", "s3cret", true},
		{"no final newline", "s3cret", "s3cret", true},
		{"first line only", "first\nsecond\n", "first", true},
		{"spaces kept", " a b \n", " a b ", true},
		{"longest", strings.Repeat("p", maxPasswordLine) + "\n", strings.Repeat("p", maxPasswordLine), true},
		{"too long", strings.Repeat("p", maxPasswordLine+1) + "\n", "", false},
		{"empty input", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.NewReader(tt.in)
			got, err := readPasswordLine(in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("readPasswordLine = %q, want an error", got)
				}
				if strings.Contains(err.Error(), "ppp") {
					t.Fatalf("error repeats the input: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("readPasswordLine = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := readPasswordLine(nil); err == nil {
		t.Fatal("readPasswordLine(nil) succeeded")
	}
	// Nothing after the line is consumed.
	in := strings.NewReader("pw\nrest")
	readPasswordLine(in)
	if in.Len() != len("rest") {
		t.Fatalf("%d bytes left after the line, want %d", in.Len(), len("rest"))
	}
}

// TestReadPasswordTerminal: on a terminal the password is prompted for on
// standard error, twice for a new one, and never written anywhere.
func TestReadPasswordTerminal(t *testing.T) {
	tests := []struct {
		name    string
		typed   []string
		confirm bool
		want    string
		prompts string
		ok      bool
	}{
		{"login", []string{"pw1"}, false, "pw1", "Enter password:\n", true},
		{"new, confirmed", []string{"pw1", "pw1"}, true, "pw1", "Enter password:\nConfirm password:\n", true},
		{"new, mismatch", []string{"pw1", "pw2"}, true, "", "Enter password:\nConfirm password:\n", false},
		{"terminal error", nil, false, "", "Enter password:\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			typed := tt.typed
			r := &runner{env: Env{Stdout: &stdout, Stderr: &stderr, Stdin: strings.NewReader("from stdin\n"),
				ReadPassword: func() ([]byte, error) {
					if len(typed) == 0 {
						return nil, errors.New("not a terminal")
					}
					pw := typed[0]
					typed = typed[1:]
					return []byte(pw), nil
				}}}
			got, err := r.readPassword(tt.confirm)
			if tt.ok != (err == nil) || got != tt.want {
				t.Fatalf("readPassword = %q, %v; want %q, ok %v", got, err, tt.want, tt.ok)
			}
			if stderr.String() != tt.prompts {
				t.Errorf("stderr %q, want %q", stderr.String(), tt.prompts)
			}
			if strings.Contains(stdout.String()+stderr.String(), "pw1") {
				t.Errorf("the password was written out")
			}
		})
	}
}

// TestCloudHSMCLIPasswordRequired: without --password and with nothing on
// standard input, a command that needs a password says so before sending
// anything.
func TestCloudHSMCLIPasswordRequired(t *testing.T) {
	var stdout, stderr bytes.Buffer
	rc := Run(t.Context(), []string{"--endpoint-url", "http://127.0.0.1:1", "cloudhsm-cli", "login", "--cluster-id", "cluster-abc",
		"--username", "kmsuser", "--role", "crypto-user"}, Env{Stdout: &stdout, Stderr: &stderr, Stdin: strings.NewReader("")})
	if rc != exitParam || !strings.Contains(stderr.String(), "no password") {
		t.Fatalf("rc %d, stderr %q; want %d and a message about the password", rc, stderr.String(), exitParam)
	}
	stderr.Reset()
	rc = Run(t.Context(), []string{"cloudhsm-cli", "login", "--cluster-id", "cluster-abc", "--username", "kmsuser",
		"--role", "crypto-user", "--password", ""}, Env{Stdout: &stdout, Stderr: &stderr})
	if rc != exitParam || !strings.Contains(stderr.String(), "the password is empty") {
		t.Fatalf("empty --password: rc %d, stderr %q", rc, stderr.String())
	}
}
