package walkthrough

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const doc = "# Title\n\n```sh\nnot in the walkthrough\n```\n\n" + BeginMarker + "\n\nText.\n\n" +
		"```sh\necho one\necho two\n```\n\n```text\none\ntwo\n```\n\n" +
		"Silent:\n\n```sh\ntrue\n```\n\n" +
		"```sh\naws kms list-keys\n```\n```json\n{\n    \"Keys\": []\n}\n```\n\n" + EndMarker + "\n\n```sh\nafter\n```\n"
	steps, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []Step{
		{Line: 11, Script: "echo one\necho two", Want: "one\ntwo"},
		{Line: 23, Script: "true"},
		{Line: 27, Script: "aws kms list-keys", Want: "{\n    \"Keys\": []\n}"},
	}
	if !reflect.DeepEqual(steps, want) {
		t.Fatalf("Parse:\n%+v\nwant\n%+v", steps, want)
	}

	for _, c := range []struct{ name, doc, err string }{
		{"no markers", "```sh\ntrue\n```\n", "no " + BeginMarker},
		{"no end", BeginMarker + "\n```sh\ntrue\n```\n", "no " + EndMarker},
		{"two begins", BeginMarker + "\n" + EndMarker + "\n" + BeginMarker + "\n", "a second"},
		{"end first", EndMarker + "\n", "before"},
		{"unclosed", BeginMarker + "\n```sh\ntrue\n" + EndMarker + "\n", "unclosed"},
		{"output without a command", BeginMarker + "\n```text\nx\n```\n" + EndMarker + "\n", "follows no"},
		{"output after prose", BeginMarker + "\n```sh\ntrue\n```\nprose\n```text\nx\n```\n" + EndMarker + "\n", "follows no"},
		{"two outputs", BeginMarker + "\n```sh\ntrue\n```\n```text\nx\n```\n```text\ny\n```\n" + EndMarker + "\n", "follows no"},
		{"other language", BeginMarker + "\n```toml\nx = 1\n```\n" + EndMarker + "\n", "```toml"},
		{"bash fence", BeginMarker + "\n```bash\ntrue\n```\n" + EndMarker + "\n", "```bash"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Parse([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.err) {
				t.Fatalf("Parse: %v, want an error with %q", err, c.err)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		name, want, got string
		ok              bool
	}{
		{"same", "a\nb", "a\nb\n", true},
		{"trailing spaces and lines", "a\nb\n\n", "a  \nb\t\n\n\n", true},
		{"nothing", "", "", true},
		{"nothing printed", "", "x\n", false},
		{"placeholder", `"KeyId": "…",`, `"KeyId": "1234abcd-12ab",`, true},
		{"placeholder in the middle", "arn:aws:kms:…:key/…", "arn:aws:kms:us-east-1:key/k", true},
		{"placeholder is not empty", "cks-…", "cks-", false},
		{"placeholder stays in its line", "a…\nb", "ax\nzz\nb", false},
		{"stable part differs", `"KeyState": "Enabled",`, `"KeyState": "Disabled",`, false},
		{"regexp characters are literal", "a.b (c)", "axb (c)", false},
		{"regexp characters match themselves", "a.b (c) [d]*", "a.b (c) [d]*", true},
		{"line missing", "a\nb", "a", false},
		{"line extra", "a", "a\nb", false},
		{"leading empty line kept", "\nx", "x", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := Match(c.want, c.got); (err == nil) != c.ok {
				t.Fatalf("Match(%q, %q) = %v, want ok %v", c.want, c.got, err, c.ok)
			}
		})
	}
}
