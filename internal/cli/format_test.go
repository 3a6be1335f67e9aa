package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The golden files under testdata/format were written by the aws CLI v2's
// own formatters (awscli.formatter) from the .json inputs beside them;
// -update rewrites them from kmsctl instead.
var update = flag.Bool("update", false, "rewrite golden files from kmsctl's output")

func TestFormatGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/format/*.json")
	if len(inputs) == 0 {
		t.Fatal("no inputs")
	}
	for _, in := range inputs {
		raw, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		base := strings.TrimSuffix(in, ".json")
		for _, f := range []struct {
			name   string
			render func(v any) string
		}{
			{"json", func(v any) string { var b strings.Builder; formatJSON(&b, v); return b.String() }},
			{"text", func(v any) string { var b strings.Builder; formatText(&b, v); return b.String() }},
			{"table", func(v any) string {
				var b strings.Builder
				formatTable(&b, "Operation", v, 80, false)
				return b.String()
			}},
			{"table.color", func(v any) string {
				var b strings.Builder
				formatTable(&b, "Operation", v, 80, true)
				return b.String()
			}},
			{"yaml", func(v any) string { var b strings.Builder; formatYAML(&b, v); return b.String() }},
		} {
			golden := base + "." + f.name + ".golden"
			if f.name == "json" {
				golden = base + ".json.golden"
			}
			t.Run(filepath.Base(golden), func(t *testing.T) {
				want, err := os.ReadFile(golden)
				if err != nil && !*update {
					t.Fatalf("golden output of the aws CLI: %v (regenerate with -update)", err)
				}
				v, err := decodeJSON(raw)
				if err != nil {
					t.Fatal(err)
				}
				got := f.render(v)
				if *update {
					os.WriteFile(golden, []byte(got), 0o644)
					return
				}
				if got != string(want) {
					t.Errorf("got:\n%s\nwant:\n%s", got, want)
				}
			})
		}
	}
}
