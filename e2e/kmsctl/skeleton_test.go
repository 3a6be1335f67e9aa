package kmsctl_test

import (
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// oracleModel is the part of the aws CLI's own KMS model this test reads
// to build a valid input for every operation.
type oracleModel struct {
	Operations map[string]struct {
		Input *struct{ Shape string } `json:"input"`
	} `json:"operations"`
	Shapes map[string]struct {
		Type     string                            `json:"type"`
		Required []string                          `json:"required"`
		Members  map[string]struct{ Shape string } `json:"members"`
		Member   *struct{ Shape string }           `json:"member"`
		Value    *struct{ Shape string }           `json:"value"`
		Min      *float64                          `json:"min"`
		Enum     []string                          `json:"enum"`
	} `json:"shapes"`
}

func loadOracleModel(t *testing.T, svc string) *oracleModel {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(oracleModels, svc, "*", "service-2.json*"))
	if len(paths) == 0 {
		t.Fatalf("no oracle model for %s", svc)
	}
	f, err := os.Open(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(paths[0], ".gz") {
		if r, err = gzip.NewReader(f); err != nil {
			t.Fatal(err)
		}
	}
	var m oracleModel
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return &m
}

// minimal builds the smallest input that passes botocore's client-side
// validation: required members only, lengths and values at their minimum.
func (m *oracleModel) minimal(shape string) any {
	s := m.Shapes[shape]
	min := 1
	if s.Min != nil && int(*s.Min) > 1 {
		min = int(*s.Min)
	}
	switch s.Type {
	case "structure":
		o := map[string]any{}
		for _, r := range s.Required {
			o[r] = m.minimal(s.Members[r].Shape)
		}
		return o
	case "list":
		var l []any
		for i := 0; i < min; i++ {
			l = append(l, m.minimal(s.Member.Shape))
		}
		return l
	case "map":
		return map[string]any{"k": m.minimal(s.Value.Shape)}
	case "string":
		if len(s.Enum) > 0 {
			return s.Enum[0]
		}
		return strings.Repeat("x", min)
	case "integer", "long":
		return min
	case "boolean":
		return true
	case "blob":
		return "AAAA"
	case "timestamp":
		return 0
	}
	return nil
}

// kebab is botocore's xform_name for the operation names of KMS.
func kebab(name string) string {
	var b strings.Builder
	for i, r := range name {
		if i > 0 && r >= 'A' && r <= 'Z' {
			prevLower := name[i-1] >= 'a' && name[i-1] <= 'z'
			nextLower := i+1 < len(name) && name[i+1] >= 'a' && name[i+1] <= 'z'
			if prevLower || nextLower {
				b.WriteByte('-')
			}
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}

// TestSkeletons compares --generate-cli-skeleton (input) and
// --generate-cli-skeleton output for every kms operation of the oracle's
// model, byte for byte, exit code included (output skeletons that
// botocore's stub validation rejects are rejected with the same report).
func TestSkeletons(t *testing.T) {
	requireOracle(t)
	m := loadOracleModel(t, "kms")
	home := t.TempDir()
	env := clientEnv(home, "AWS_DEFAULT_REGION=us-east-1", "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test")
	var ops []string
	for name := range m.Operations {
		ops = append(ops, name)
	}
	sort.Strings(ops)
	type cmp struct {
		name string
		args []string
	}
	var cases []cmp
	for _, op := range ops {
		in := "{}"
		if i := m.Operations[op].Input; i != nil {
			b, _ := json.Marshal(m.minimal(i.Shape))
			in = string(b)
		}
		cases = append(cases,
			cmp{op + " input", []string{"kms", kebab(op), "--generate-cli-skeleton"}},
			cmp{op + " output", []string{"kms", kebab(op), "--generate-cli-skeleton", "output", "--cli-input-json", in}},
		)
	}
	// Bounded by go test -timeout; the machine may be shared and slow.
	ctx := t.Context()
	res := make([][2]result, len(cases))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			res[i][0] = runBin(ctx, awsBin, env, c.args...)
			res[i][1] = runBin(ctx, kmsctlOracle, env, c.args...)
		}()
	}
	wg.Wait()
	ok := 0
	for i, c := range cases {
		a, k := res[i][0], res[i][1]
		a.stderr = asKmsctl(a.stderr)
		if a != k {
			t.Errorf("%s (%s)\n  aws    rc=%d stdout=%q stderr=%q\n  kmsctl rc=%d stdout=%q stderr=%q", c.name, strings.Join(c.args, " "), a.code, a.stdout, a.stderr, k.code, k.stdout, k.stderr)
		} else if a.code == 0 {
			ok++
		}
	}
	t.Logf("%d skeleton cases over %d operations compared; %d printed a skeleton, the rest the same validation error", len(cases), len(ops), ok)
}
