// Command apigen reads a botocore service model (service-2.json or .json.gz)
// and writes Go wire shapes for it: one struct per structure shape with its
// members in model order, a Validate method per input shape that applies the
// model's constraints (required, length, range, pattern, enum) with AWS's
// ValidationException wording, the enum value sets, the exception names with
// their fault side, and the operation table.
//
// It copies facts only — names, types, constraints — never documentation.
//
// Usage (from go:generate):
//
//	go run ../apigen -service kms -package kmsapi -out zz_generated.go
//
// The model is searched for in the botocore packages installed on the
// machine (pip's first, then Debian's); -model names a file explicitly.
package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"fmt"
	"go/format"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

type model struct {
	Metadata   map[string]any        `json:"metadata"`
	Operations map[string]*operation `json:"operations"`
	Shapes     map[string]*shape     `json:"shapes"`
}

type operation struct {
	Name   string `json:"name"`
	Input  *ref   `json:"input"`
	Output *ref   `json:"output"`
	Errors []ref  `json:"errors"`
}

type ref struct {
	Shape string `json:"shape"`
}

type shape struct {
	Type      string          `json:"type"`
	Required  []string        `json:"required"`
	Members   orderedMembers  `json:"members"`
	Member    *ref            `json:"member"`
	Key       *ref            `json:"key"`
	Value     *ref            `json:"value"`
	Min       *float64        `json:"min"`
	Max       *float64        `json:"max"`
	Pattern   string          `json:"pattern"`
	Enum      []string        `json:"enum"`
	Sensitive bool            `json:"sensitive"`
	Exception bool            `json:"exception"`
	Fault     bool            `json:"fault"`
	Error     json.RawMessage `json:"error"`
}

type member struct {
	Name  string
	Shape string
}

// orderedMembers keeps the members in the order the model lists them,
// which encoding/json's map decoding would lose.
type orderedMembers []member

func (o *orderedMembers) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		var r ref
		if err := dec.Decode(&r); err != nil {
			return err
		}
		*o = append(*o, member{Name: tok.(string), Shape: r.Shape})
	}
	return nil
}

func main() {
	service := flag.String("service", "kms", "botocore service name")
	pkg := flag.String("package", "kmsapi", "Go package name")
	out := flag.String("out", "zz_generated.go", "output file")
	modelPath := flag.String("model", "", "path to service-2.json[.gz]; searched for when empty")
	mode := flag.String("mode", "api", "output: api (wire shapes) or cli (kmsctl's shape tables)")
	varName := flag.String("var", "", "cli mode: name of the generated Service variable")
	flag.Parse()

	path := *modelPath
	if path == "" {
		var err error
		if path, err = findModel(*service); err != nil {
			log.Fatal(err)
		}
	}
	if *mode == "cli" {
		src, err := generateCLI(path, *service, *pkg, *varName)
		if err != nil {
			log.Fatal(err)
		}
		if err := os.WriteFile(*out, src, 0o644); err != nil {
			log.Fatal(err)
		}
		return
	}
	m, err := load(path)
	if err != nil {
		log.Fatal(err)
	}
	src, err := generate(m, *service, *pkg, filepath.Base(filepath.Dir(path)))
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		log.Fatal(err)
	}
}

// findModel looks for the newest service model among the botocore copies
// installed on this machine.
func findModel(service string) (string, error) {
	var roots []string
	if out, err := exec.Command("python3", "-c", "import botocore,os;print(os.path.dirname(botocore.__file__))").Output(); err == nil {
		roots = append(roots, strings.TrimSpace(string(out)))
	}
	roots = append(roots, "/usr/lib/python3/dist-packages/botocore", "/usr/lib/python3/dist-packages/awscli/botocore")
	for _, root := range roots {
		dirs, _ := filepath.Glob(filepath.Join(root, "data", service, "*"))
		sort.Strings(dirs)
		for i := len(dirs) - 1; i >= 0; i-- {
			for _, name := range []string{"service-2.json", "service-2.json.gz"} {
				p := filepath.Join(dirs[i], name)
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
			}
		}
	}
	return "", fmt.Errorf("no botocore model for %q found; pass -model", service)
}

func load(path string) (*model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = gz
	}
	var m model
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &m, nil
}

type gen struct {
	m   *model
	buf bytes.Buffer
	// inputs holds every shape reachable from an operation input; only
	// these get Validate methods.
	inputs map[string]bool
}

func (g *gen) p(format string, args ...any) { fmt.Fprintf(&g.buf, format, args...) }

func generate(m *model, service, pkg, version string) ([]byte, error) {
	g := &gen{m: m, inputs: map[string]bool{}}
	var ops []string
	for name := range m.Operations {
		ops = append(ops, name)
	}
	sort.Strings(ops)
	for _, op := range ops {
		if in := m.Operations[op].Input; in != nil {
			g.markInputs(in.Shape)
		}
	}

	g.p("// Code generated by apigen from the botocore %s model %s; DO NOT EDIT.\n\n", service, version)
	g.p("package %s\n\n", pkg)
	g.p("import (\n\t\"regexp\"\n\t\"unicode/utf8\"\n)\n\n")
	g.p("var (\n\t_ = regexp.MustCompile\n\t_ = utf8.RuneCountInString\n)\n\n")
	g.p("// TargetPrefix is the X-Amz-Target prefix of the service.\nconst TargetPrefix = %q\n\n", m.Metadata["targetPrefix"])
	g.p("// APIVersion is the model's API version.\nconst APIVersion = %q\n\n", m.Metadata["apiVersion"])

	// Operation table.
	g.p("// Operations lists every operation of the model, by name.\nvar Operations = map[string]*Operation{\n")
	for _, name := range ops {
		op := m.Operations[name]
		in, out := "", ""
		if op.Input != nil {
			in = op.Input.Shape
		}
		if op.Output != nil {
			out = op.Output.Shape
		}
		var errs []string
		for _, e := range op.Errors {
			errs = append(errs, fmt.Sprintf("%q", e.Shape))
		}
		g.p("\t%q: {Name: %q, Input: %q, Output: %q, Errors: []string{%s}},\n", name, name, in, out, strings.Join(errs, ", "))
	}
	g.p("}\n\n")

	// Exceptions.
	var shapes []string
	for name := range m.Shapes {
		shapes = append(shapes, name)
	}
	sort.Strings(shapes)
	g.p("// Exceptions maps every modelled exception name to whether it is a server fault.\nvar Exceptions = map[string]bool{\n")
	for _, name := range shapes {
		if s := m.Shapes[name]; s.Exception {
			g.p("\t%q: %v,\n", name, s.Fault)
		}
	}
	g.p("}\n\n")

	// Enums.
	for _, name := range shapes {
		s := m.Shapes[name]
		if len(s.Enum) == 0 {
			continue
		}
		var vals []string
		for _, v := range s.Enum {
			vals = append(vals, fmt.Sprintf("%q", v))
		}
		g.p("// Enum%s is the value set of %s, in model order.\nvar Enum%s = []string{%s}\n\n", name, name, name, strings.Join(vals, ", "))
	}

	// Patterns.
	for _, name := range shapes {
		s := m.Shapes[name]
		if s.Pattern == "" || !g.inputs[name] {
			continue
		}
		g.p("var pattern%s = regexp.MustCompile(%q)\n", name, anchor(s.Pattern))
	}
	g.p("\n")

	// Structures.
	for _, name := range shapes {
		s := m.Shapes[name]
		if s.Type != "structure" || s.Exception {
			continue
		}
		g.p("// %s is the %s shape.\ntype %s struct {\n", name, name, name)
		for _, mem := range s.Members {
			// omitzero leaves out absent (nil) members but keeps an empty
			// list or map that was set: AWS answers "Keys":[] for no keys.
			g.p("\t%s %s `json:\"%s,omitzero\"`\n", goField(mem.Name), g.goType(mem.Shape), mem.Name)
		}
		g.p("}\n\n")
		if g.inputs[name] {
			g.validator(name, s)
		}
	}
	// Operations without an output shape answer {}.
	for _, name := range ops {
		if m.Operations[name].Output == nil && m.Shapes[name+"Response"] == nil {
			g.p("// %sResponse is the empty output of %s, which answers {}.\ntype %sResponse struct{}\n\n", name, name, name)
		}
	}
	src, err := format.Source(g.buf.Bytes())
	if err != nil {
		return g.buf.Bytes(), err
	}
	return src, nil
}

func (g *gen) markInputs(name string) {
	if g.inputs[name] {
		return
	}
	g.inputs[name] = true
	s := g.m.Shapes[name]
	switch s.Type {
	case "structure":
		for _, mem := range s.Members {
			g.markInputs(mem.Shape)
		}
	case "list":
		g.markInputs(s.Member.Shape)
	case "map":
		g.markInputs(s.Key.Shape)
		g.markInputs(s.Value.Shape)
	}
}

func goField(name string) string { return strings.ToUpper(name[:1]) + name[1:] }

// goType maps a shape to its Go type. Scalars are pointers so that an
// absent member (null) differs from a zero value, as validation needs.
func (g *gen) goType(name string) string {
	s := g.m.Shapes[name]
	switch s.Type {
	case "string":
		return "*string"
	case "integer":
		return "*int32"
	case "long":
		return "*int64"
	case "boolean":
		return "*bool"
	case "blob":
		return "[]byte"
	case "timestamp":
		return "*Time"
	case "list":
		return "[]" + strings.TrimPrefix(g.elemType(s.Member.Shape), "")
	case "map":
		return "map[string]" + g.elemType(s.Value.Shape)
	case "structure":
		return "*" + name
	}
	panic("unknown shape type " + s.Type + " for " + name)
}

// elemType is the Go type of a list element or map value: values, not
// pointers, for scalars.
func (g *gen) elemType(name string) string {
	t := g.goType(name)
	switch t {
	case "*string", "*int32", "*int64", "*bool":
		return t[1:]
	}
	if strings.HasPrefix(t, "*") && g.m.Shapes[name].Type == "structure" {
		return t[1:]
	}
	return t
}

// anchor turns a Smithy pattern into an RE2 expression that must match the
// whole value: \uXXXX escapes become \x{XXXX} and the pattern is wrapped in
// ^(?:…)$ whether or not the model anchored it.
func anchor(p string) string {
	p = regexp.MustCompile(`\\u([0-9A-Fa-f]{4})`).ReplaceAllString(p, `\x{$1}`)
	return "^(?:" + p + ")$"
}

func lowerCamel(name string) string {
	// AWS paths lower only the first letter ("AWSAccountId" → "aWSAccountId").
	return strings.ToLower(name[:1]) + name[1:]
}

func (g *gen) validator(name string, s *shape) {
	g.p("// Validate checks v against the model's constraints, appending a\n// message per violation to errs under the member path prefix.\n")
	g.p("func (v *%s) Validate(errs *Errors, path string) {\n", name)
	g.p("\tif v == nil {\n\t\treturn\n\t}\n")
	req := map[string]bool{}
	for _, r := range s.Required {
		req[r] = true
	}
	for _, mem := range s.Members {
		if !req[mem.Name] && !g.hasChecks(mem.Shape) {
			continue
		}
		field := "v." + goField(mem.Name)
		p := fmt.Sprintf("path+%q", lowerCamel(mem.Name))
		g.checks(field, p, mem.Shape, req[mem.Name], false)
	}
	g.p("}\n\n")
}

// checks writes the constraint checks of one value. elem is true when the
// value is a list element or map value (held by value, not pointer).
func (g *gen) checks(expr, path, shapeName string, required, elem bool) {
	s := g.m.Shapes[shapeName]
	nilable := !elem || s.Type == "list" || s.Type == "map" || s.Type == "blob"
	if required && nilable {
		g.p("\tif %s == nil {\n\t\terrs.Null(%s)\n\t} else {\n", expr, path)
	} else if nilable && s.Type != "list" && s.Type != "map" && s.Type != "blob" {
		g.p("\tif %s != nil {\n", expr)
	} else {
		g.p("\t{\n")
	}
	val := expr
	if !elem && (s.Type == "string" || s.Type == "integer" || s.Type == "long" || s.Type == "boolean") {
		val = "*" + expr
	}
	sens := s.Sensitive
	switch s.Type {
	case "string":
		if s.Min != nil {
			g.p("\t\tif n := utf8.RuneCountInString(%s); n < %d {\n\t\t\terrs.MinLength(%s, %s, %v, %d)\n\t\t}\n", val, int(*s.Min), path, val, sens, int(*s.Min))
		}
		if s.Max != nil {
			g.p("\t\tif n := utf8.RuneCountInString(%s); n > %d {\n\t\t\terrs.MaxLength(%s, %s, %v, %d)\n\t\t}\n", val, int(*s.Max), path, val, sens, int(*s.Max))
		}
		if s.Pattern != "" {
			g.p("\t\tif !pattern%s.MatchString(%s) {\n\t\t\terrs.Pattern(%s, %s, %v, %q)\n\t\t}\n", shapeName, val, path, val, sens, s.Pattern)
		}
		if len(s.Enum) > 0 {
			g.p("\t\tif !inEnum(Enum%s, %s) {\n\t\t\terrs.Enum(%s, %s, Enum%s)\n\t\t}\n", shapeName, val, path, val, shapeName)
		}
	case "integer", "long":
		if s.Min != nil {
			g.p("\t\tif %s < %d {\n\t\t\terrs.MinValue(%s, int64(%s), %d)\n\t\t}\n", val, int64(*s.Min), path, val, int64(*s.Min))
		}
		if s.Max != nil {
			g.p("\t\tif %s > %d {\n\t\t\terrs.MaxValue(%s, int64(%s), %d)\n\t\t}\n", val, int64(*s.Max), path, val, int64(*s.Max))
		}
	case "blob":
		if s.Min != nil {
			g.p("\t\tif %s != nil && len(%s) < %d {\n\t\t\terrs.MinLength(%s, \"\", true, %d)\n\t\t}\n", val, val, int(*s.Min), path, int(*s.Min))
		}
		if s.Max != nil {
			g.p("\t\tif len(%s) > %d {\n\t\t\terrs.MaxLength(%s, \"\", true, %d)\n\t\t}\n", val, int(*s.Max), path, int(*s.Max))
		}
	case "list":
		if s.Min != nil && *s.Min > 0 {
			g.p("\t\tif %s != nil && len(%s) < %d {\n\t\t\terrs.MinLength(%s, listString(%s), false, %d)\n\t\t}\n", val, val, int(*s.Min), path, val, int(*s.Min))
		}
		if s.Max != nil {
			g.p("\t\tif len(%s) > %d {\n\t\t\terrs.MaxLength(%s, listString(%s), false, %d)\n\t\t}\n", val, int(*s.Max), path, val, int(*s.Max))
		}
		if g.hasChecks(s.Member.Shape) {
			g.p("\t\tfor i := range %s {\n", val)
			g.checks(fmt.Sprintf("%s[i]", val), fmt.Sprintf("%s+\".\"+itoa(i+1)+\".member\"", path), s.Member.Shape, false, true)
			g.p("\t\t}\n")
		}
	case "map":
		if g.hasChecks(s.Key.Shape) || g.hasChecks(s.Value.Shape) {
			g.p("\t\tfor k, mv := range %s {\n\t\t\t_, _ = k, mv\n", val)
			if g.hasChecks(s.Key.Shape) {
				g.checks("k", fmt.Sprintf("%s+\".\"+k+\".key\"", path), s.Key.Shape, false, true)
			}
			if g.hasChecks(s.Value.Shape) {
				g.checks("mv", fmt.Sprintf("%s+\".\"+k+\".value\"", path), s.Value.Shape, false, true)
			}
			g.p("\t\t}\n")
		}
	case "structure":
		if elem {
			g.p("\t\t(&%s).Validate(errs, %s+\".\")\n", expr, path)
		} else {
			g.p("\t\t%s.Validate(errs, %s+\".\")\n", expr, path)
		}
	}
	g.p("\t}\n")
}

func (g *gen) hasChecks(name string) bool {
	s := g.m.Shapes[name]
	switch s.Type {
	case "structure":
		return true
	case "list":
		return s.Min != nil || s.Max != nil || g.hasChecks(s.Member.Shape)
	case "map":
		return g.hasChecks(s.Key.Shape) || g.hasChecks(s.Value.Shape)
	}
	return s.Min != nil || s.Max != nil || s.Pattern != "" || len(s.Enum) > 0
}
