package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// TestShorthand checks the parser against results the aws CLI's own
// ShorthandParser produced for the same inputs (testdata/shorthand.json).
func TestShorthand(t *testing.T) {
	raw, err := os.ReadFile("testdata/shorthand.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		In  string          `json:"in"`
		Out json.RawMessage `json:"out"`
		Err string          `json:"err"`
	}
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.In, func(t *testing.T) {
			got, err := ParseShorthand(c.In)
			if c.Err != "" {
				if err == nil || err.Error() != c.Err {
					t.Fatalf("error %v, want %q", err, c.Err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			var b strings.Builder
			pyJSON(&b, got, -1, false)
			want, _ := decodeJSON(c.Out)
			var w strings.Builder
			pyJSON(&w, want, -1, false)
			if b.String() != w.String() {
				t.Errorf("got %s, want %s", b.String(), w.String())
			}
		})
	}
}

// TestKebab checks the option and command names against botocore's
// xform_name for every name in the kms and cloudhsmv2 models.
func TestKebab(t *testing.T) {
	raw, err := os.ReadFile("testdata/xform_names.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		name, want, _ := strings.Cut(line, " ")
		if got := kebab(name); got != want {
			t.Errorf("kebab(%q) = %q, want %q", name, got, want)
		}
	}
}

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var o, e bytes.Buffer
	rc := Run(context.Background(), args, Env{Stdout: &o, Stderr: &e})
	return o.String(), e.String(), rc
}

// TestParams covers option parsing up to the request: file:// and
// fileb://, shorthand for lists of structures, JSON, booleans, and
// --cli-input-json merging (command-line values win), using
// --generate-cli-skeleton output with --query to show the parameters.
func TestParams(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "policy.json"), []byte(`{"Version":"2012-10-17"}`), 0o600)
	os.WriteFile(filepath.Join(dir, "bin"), []byte{0, 0xff, 1}, 0o600)
	os.WriteFile(filepath.Join(dir, "in.json"), []byte(`{"Description":"file","KeyUsage":"SIGN_VERIFY","Tags":[{"TagKey":"a","TagValue":"b"}]}`), 0o600)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	c := newOpCommand(model.KMS, model.KMS.Op("CreateKey"))
	for _, tc := range []struct {
		name string
		args []string
		want string // JSON of the built parameters
	}{
		{"file", []string{"--policy", "file://" + filepath.Join(dir, "policy.json")}, `{"Policy": "{\"Version\":\"2012-10-17\"}"}`},
		{"shorthand list of structures", []string{"--tags", "TagKey=a,TagValue=b", "TagKey=c,TagValue=d"}, `{"Tags": [{"TagKey": "a", "TagValue": "b"}, {"TagKey": "c", "TagValue": "d"}]}`},
		{"json list", []string{"--tags", `[{"TagKey":"a","TagValue":"b"}]`}, `{"Tags": [{"TagKey": "a", "TagValue": "b"}]}`},
		{"booleans", []string{"--multi-region", "--no-bypass-policy-lockout-safety-check"}, `{"BypassPolicyLockoutSafetyCheck": false, "MultiRegion": true}`},
		{"cli-input-json merged under the command line", []string{"--cli-input-json", "file://" + filepath.Join(dir, "in.json"), "--description", "cmdline"}, `{"Description": "cmdline", "KeyUsage": "SIGN_VERIFY", "Tags": [{"TagKey": "a", "TagValue": "b"}]}`},
		{"cli-input-yaml", []string{"--cli-input-yaml", "Description: y\nMultiRegion: true\n"}, `{"Description": "y", "MultiRegion": true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := c.parse(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			params, err := c.buildParams(p)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			pyJSON(&b, params, -1, false)
			if b.String() != tc.want {
				t.Errorf("got %s\nwant %s", b.String(), tc.want)
			}
		})
	}
	t.Run("fileb blob", func(t *testing.T) {
		e := newOpCommand(model.KMS, model.KMS.Op("Encrypt"))
		p, err := e.parse([]string{"--key-id", "k", "--plaintext", "fileb://" + filepath.Join(dir, "bin")})
		if err != nil {
			t.Fatal(err)
		}
		params, _ := e.buildParams(p)
		v, err := e.decodeBlobs(model.KMS.Shape("EncryptRequest"), params)
		if err != nil {
			t.Fatal(err)
		}
		if got := v.(*Object).M["Plaintext"]; !bytes.Equal(got.([]byte), []byte{0, 0xff, 1}) {
			t.Errorf("Plaintext = %v", got)
		}
		var b strings.Builder
		pyJSON(&b, serialize(model.KMS, model.KMS.Shape("EncryptRequest"), v), -1, false)
		if want := `{"KeyId": "k", "Plaintext": "AP8B"}`; b.String() != want {
			t.Errorf("body %s, want %s", b.String(), want)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, stderr, rc := run(t, "kms", "create-key", "--policy", "file:///nonexistent/p.json")
		if rc != 252 || stderr != "\nError parsing parameter '--policy': Unable to load paramfile file:///nonexistent/p.json: [Errno 2] No such file or directory: '/nonexistent/p.json'\n" {
			t.Errorf("rc %d stderr %q", rc, stderr)
		}
	})
}

// TestQuery checks JMESPath results and the key order of what they build.
func TestQuery(t *testing.T) {
	resp, _ := decodeJSON([]byte(`{"Keys":[{"KeyId":"b","KeyArn":"arn:b"},{"KeyId":"a","KeyArn":"arn:a"}],"Truncated":false,"Count":2}`))
	for _, tc := range []struct{ expr, want string }{
		{"Keys[0]", `{"KeyId": "b", "KeyArn": "arn:b"}`},
		{"Keys[].KeyId", `["b", "a"]`},
		{"Keys[].{Z: KeyId, A: KeyArn}", `[{"Z": "b", "A": "arn:b"}, {"Z": "a", "A": "arn:a"}]`},
		{"sort_by(Keys, &KeyId)[0].KeyId", `"a"`},
		{"length(Keys)", `2`},
		{"Count", `2`},
		{"Truncated", `false`},
		{"Keys[?KeyId=='a'] | [0].KeyArn", `"arn:a"`},
		{"Missing", `null`},
		// Backtick literals that are not JSON are strings, as in Python's
		// jmespath; JSON ones keep their type.
		{"Keys[?KeyId==`a`].KeyArn", `["arn:a"]`},
		{"Keys[?KeyArn==`  arn:b`] | [0].KeyId", `"b"`},
		{"`alias/x`", `"alias/x"`},
		{"`a\\`b`", `"a` + "`" + `b"`},
		{"`tab\\tnext`", `"tab\tnext"`},
		{"`true`", `true`},
		{"`2`", `2`},
		{"`\"quoted\"`", `"quoted"`},
		{"'`raw`'", `"` + "`raw`" + `"`},
		{"[Count, `{\"a\": 1}`]", `[2, {"a": 1}]`},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			q, err := compileQuery(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			v, err := q.search(resp)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			pyJSON(&b, v, -1, false)
			if b.String() != tc.want {
				t.Errorf("got %s, want %s", b.String(), tc.want)
			}
		})
	}
	if _, err := compileQuery("foo("); err == nil || !strings.Contains(err.Error(), "Bad value for --query foo(: Invalid jmespath expression: Incomplete expression:\n\"foo(\"\n     ^") {
		t.Errorf("bad query error: %v", err)
	}
	// U+0080 after an identifier panics go-jmespath's lexer: an error,
	// pointing at it, not a crash.
	if _, err := compileQuery("ab\u0080"); err == nil || !strings.Contains(err.Error(), "Bad value for --query ab\u0080: Invalid jmespath expression: Invalid token:\n\"ab\u0080\"\n   ^") {
		t.Errorf("query with U+0080: %v", err)
	}
	// Not JSON even as a string: an error, pointing into the expression as
	// written.
	if _, err := compileQuery("Keys[?KeyId==`a\"b`]"); err == nil {
		t.Error("literal `a\"b` compiled")
	}
}

// TestExitCodes covers the aws CLI's exit codes that need no server.
func TestExitCodes(t *testing.T) {
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	for _, tc := range []struct {
		name string
		args []string
		rc   int
		err  string
	}{
		{"missing required", []string{"kms", "describe-key"}, 252, "kmsctl: error: the following arguments are required: --key-id\n\n"},
		{"unknown option", []string{"kms", "describe-key", "--key-id", "k", "--nope"}, 252, "\nUnknown options: --nope\n\n"},
		{"bad int", []string{"kms", "generate-random", "--number-of-bytes", "x", "--region", "us-east-1"}, 255, "\ninvalid literal for int() with base 10: 'x'\n"},
		{"no region", []string{"kms", "list-keys", "--region", ""}, 253, "You must specify a region"},
		{"no credentials", []string{"kms", "list-keys", "--region", "us-east-1"}, 253, "\nUnable to locate credentials. You can configure credentials by running \"aws configure\".\n"},
		{"cannot connect", []string{"kms", "list-keys", "--region", "us-east-1", "--no-sign-request", "--endpoint-url", "http://127.0.0.1:1"}, 255, "\nCould not connect to the endpoint URL: \"http://127.0.0.1:1/\"\n"},
		{"skeleton", []string{"kms", "connect-custom-key-store", "--generate-cli-skeleton"}, 0, ""},
		{"help", []string{"kms", "describe-key", "help"}, 0, ""},
		{"completion", []string{"completion", "bash"}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, rc := run(t, tc.args...)
			if rc != tc.rc || !strings.Contains(stderr, tc.err) {
				t.Errorf("rc %d stderr %q; want rc %d containing %q", rc, stderr, tc.rc, tc.err)
			}
		})
	}
}

// TestHelp checks that --help is help at every level, and that the top
// help lists every command group, each of which answers help itself.
func TestHelp(t *testing.T) {
	top, stderr, rc := run(t, "help")
	if rc != 0 || stderr != "" {
		t.Fatalf("help: rc %d stderr %q", rc, stderr)
	}
	var listed []string
	for _, l := range strings.Split(top, "\n") {
		if n, ok := strings.CutPrefix(l, "       o "); ok {
			listed = append(listed, n)
		}
	}
	want := []string{"audit", "cloudhsm-cli", "cloudhsmv2", "completion", "help", "kms", "kmsd"}
	if strings.Join(listed, " ") != strings.Join(want, " ") {
		t.Errorf("help lists %q, want %q", listed, want)
	}
	for _, args := range [][]string{
		{"help"},
		{"kms", "help"},
		{"cloudhsmv2", "help"},
		{"kms", "describe-key", "help"},
		{"audit", "help"},
		{"cloudhsm-cli", "help"},
		{"kmsd", "help"},
		{"completion", "help"},
	} {
		name := strings.Join(args, " ")
		t.Run(name, func(t *testing.T) {
			out, stderr, rc := run(t, args...)
			if rc != 0 || stderr != "" || out == "" {
				t.Fatalf("rc %d stderr %q stdout %q", rc, stderr, out)
			}
			dash := append(append([]string{}, args[:len(args)-1]...), "--help")
			out2, stderr2, rc2 := run(t, dash...)
			if rc2 != 0 || stderr2 != "" || out2 != out {
				t.Errorf("%s: rc %d stderr %q, stdout differs from %s: %v", strings.Join(dash, " "), rc2, stderr2, name, out2 != out)
			}
		})
	}
	for _, g := range want {
		if g == "help" {
			continue
		}
		if _, stderr, rc := run(t, g, "help"); rc != 0 {
			t.Errorf("%s help: rc %d stderr %q", g, rc, stderr)
		}
	}
	// An unknown command's error lists the same choices.
	_, stderr, rc = run(t, "nope")
	if rc != 252 || !strings.Contains(stderr, "cloudhsm-cli") || !strings.Contains(stderr, "kmsd") || !strings.Contains(stderr, "audit") {
		t.Errorf("unknown command: rc %d stderr %q", rc, stderr)
	}
}

// FuzzLegacyLiterals checks the backtick rewrite against the JMESPath
// lexer: an expression that compiles as it is has only JSON literals, so
// the rewrite must leave it unchanged (a scan that lost track of quotes
// would not); and no input makes it panic.
func FuzzLegacyLiterals(f *testing.F) {
	for _, s := range []string{"Keys[?KeyId==`a`]", "`\"x\"`", "'`'", "\"`\"", "`a\\`b`", "[`1`, 'it''s', \"q\\\"`\"]", "foo(`", "a\u0080"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		out := legacyLiterals(expr)
		if _, err := compileJMESPath(expr); err == nil && out != expr {
			t.Fatalf("legacyLiterals(%q) = %q; it compiles as it is", expr, out)
		}
	})
}
