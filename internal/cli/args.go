package cli

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// Exit codes of the aws CLI v2.
const (
	exitOK        = 0
	exitGeneral   = 255
	exitParam     = 252
	exitConfig    = 253
	exitClient    = 254
	exitInterrupt = 130
)

// usageError is an argparse-style error: printed after the usage text,
// exit 252.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// unknownArgsError is "Unknown options: …", printed after the usage text.
type unknownArgsError struct{ args []string }

func (e *unknownArgsError) Error() string { return "Unknown options: " + strings.Join(e.args, ", ") }

// paramError is an error of the aws CLI's ParamValidationErrorsHandler
// family: printed alone, exit 252.
type paramError struct{ msg string }

func (e *paramError) Error() string { return e.msg }

func newParamError(cliName, msg string) *paramError {
	return &paramError{fmt.Sprintf("Error parsing parameter '%s': %s", cliName, msg)}
}

// configError exits 253.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

// generalError exits 255 with its message.
type generalError struct{ msg string }

func (e *generalError) Error() string { return e.msg }

// globals are the aws CLI's global options.
type globals struct {
	debug, noVerifySSL, noPaginate, version, noSignRequest bool
	endpointURL, output, query, profile, region            string
	color, caBundle, binaryFormat                          string
	readTimeout, connectTimeout                            *string
	set                                                    map[string]bool
}

type globalOpt struct {
	name  string
	flag  bool
	apply func(g *globals, v string) error
}

var outputChoices = []string{"json", "text", "table", "yaml", "yaml-stream"}

func choice(opt string, choices []string, v string) error {
	for _, c := range choices {
		if c == v {
			return nil
		}
	}
	return &usageError{fmt.Sprintf("argument %s: Invalid choice, valid choices are:\n\n%s", opt, choiceTable(choices))}
}

// choiceTable lays choices out in the two columns argparse's aws
// customisation uses.
func choiceTable(choices []string) string {
	var b strings.Builder
	for i := 0; i < len(choices); i += 2 {
		if i+1 < len(choices) {
			fmt.Fprintf(&b, "%-40s | %-40s\n", choices[i], choices[i+1])
		} else {
			fmt.Fprintf(&b, "%-40s\n", choices[i])
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func timeoutOpt(name string, dst func(*globals) **string) globalOpt {
	return globalOpt{name: name, apply: func(g *globals, v string) error {
		*dst(g) = &v
		return nil
	}}
}

var globalOpts = []globalOpt{
	{name: "--debug", flag: true, apply: func(g *globals, _ string) error { g.debug = true; return nil }},
	{name: "--endpoint-url", apply: func(g *globals, v string) error { g.endpointURL = v; return nil }},
	{name: "--no-verify-ssl", flag: true, apply: func(g *globals, _ string) error { g.noVerifySSL = true; return nil }},
	{name: "--no-paginate", flag: true, apply: func(g *globals, _ string) error { g.noPaginate = true; return nil }},
	{name: "--output", apply: func(g *globals, v string) error {
		if err := choice("--output", outputChoices, v); err != nil {
			return err
		}
		g.output = v
		return nil
	}},
	{name: "--query", apply: func(g *globals, v string) error { g.query = v; return nil }},
	{name: "--profile", apply: func(g *globals, v string) error { g.profile = v; return nil }},
	{name: "--region", apply: func(g *globals, v string) error { g.region = v; return nil }},
	{name: "--version", flag: true, apply: func(g *globals, _ string) error { g.version = true; return nil }},
	{name: "--color", apply: func(g *globals, v string) error {
		if err := choice("--color", []string{"on", "off", "auto"}, v); err != nil {
			return err
		}
		g.color = v
		return nil
	}},
	{name: "--no-sign-request", flag: true, apply: func(g *globals, _ string) error { g.noSignRequest = true; return nil }},
	{name: "--ca-bundle", apply: func(g *globals, v string) error { g.caBundle = v; return nil }},
	timeoutOpt("--cli-read-timeout", func(g *globals) **string { return &g.readTimeout }),
	timeoutOpt("--cli-connect-timeout", func(g *globals) **string { return &g.connectTimeout }),
	{name: "--cli-binary-format", apply: func(g *globals, v string) error {
		if err := choice("--cli-binary-format", []string{"base64", "raw-in-base64-out"}, v); err != nil {
			return err
		}
		g.binaryFormat = v
		return nil
	}},
	{name: "--no-cli-pager", flag: true, apply: func(*globals, string) error { return nil }},
	{name: "--cli-auto-prompt", flag: true, apply: func(*globals, string) error { return nil }},
	{name: "--no-cli-auto-prompt", flag: true, apply: func(*globals, string) error { return nil }},
}

func findGlobal(name string) *globalOpt {
	for i := range globalOpts {
		if globalOpts[i].name == name {
			return &globalOpts[i]
		}
	}
	return nil
}

// looksLikeOption is argparse's test for a token that starts an option
// rather than being a value: a leading '-' that is not a negative number.
func looksLikeOption(s string) bool {
	if !strings.HasPrefix(s, "-") || s == "-" {
		return false
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	return true
}

// parseGlobals takes the global options out of args wherever they appear,
// as the aws CLI's main parser does with parse_known_args, and returns
// the rest in order.
func parseGlobals(args []string) (*globals, []string, error) {
	g := &globals{set: map[string]bool{}}
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "--") {
			rest = append(rest, a)
			continue
		}
		opt := findGlobal(name)
		if opt == nil {
			rest = append(rest, a)
			continue
		}
		if opt.flag {
			if hasVal {
				return nil, nil, &usageError{fmt.Sprintf("argument %s: ignored explicit argument '%s'", name, val)}
			}
			g.set[name] = true
			if err := opt.apply(g, ""); err != nil {
				return nil, nil, err
			}
			continue
		}
		if !hasVal {
			if i+1 >= len(args) || looksLikeOption(args[i+1]) {
				return nil, nil, &usageError{fmt.Sprintf("argument %s: expected one argument", name)}
			}
			i++
			val = args[i]
		}
		g.set[name] = true
		if err := opt.apply(g, val); err != nil {
			return nil, nil, err
		}
	}
	return g, rest, nil
}

// argKind is how an operation option takes its value.
type argKind int

const (
	argScalar   argKind = iota // one value
	argList                    // zero or more values (nargs='*')
	argBool                    // --x / --no-x
	argOptional                // zero or one value (nargs='?')
)

// argDef is one option of an operation command.
type argDef struct {
	cliName  string // without the leading dashes
	member   string // input member, "" for CLI-only options
	shape    *model.Shape
	kind     argKind
	required bool
	choices  []string
	typ      string // for help: string, integer, list, structure, map, blob, boolean
}

// opCommand is one operation as a command.
type opCommand struct {
	svc  *model.Service
	op   *model.Operation
	args []*argDef
}

func newOpCommand(svc *model.Service, op *model.Operation) *opCommand {
	c := &opCommand{svc: svc, op: op}
	if op.Input != "" {
		in := svc.Shape(op.Input)
		for _, m := range in.Members {
			sh := svc.Shape(m.Shape)
			d := &argDef{cliName: kebab(m.Name), member: m.Name, shape: sh, required: m.Required, typ: sh.Type}
			switch sh.Type {
			case "list":
				d.kind = argList
			case "boolean":
				d.kind = argBool
			}
			c.args = append(c.args, d)
		}
	}
	c.args = append(c.args,
		&argDef{cliName: "cli-input-json", typ: "string"},
		&argDef{cliName: "cli-input-yaml", typ: "string"},
		&argDef{cliName: "generate-cli-skeleton", kind: argOptional, typ: "string", choices: []string{"input", "output", "yaml-input"}},
	)
	if p := op.Paginator; p != nil {
		c.args = append(c.args, &argDef{cliName: "starting-token", typ: "string"})
		if p.LimitKey != "" {
			c.args = append(c.args, &argDef{cliName: "page-size", typ: "integer"})
		}
		c.args = append(c.args, &argDef{cliName: "max-items", typ: "integer"})
	}
	return c
}

func (c *opCommand) cliName() string { return kebab(c.op.Name) }

func (c *opCommand) find(name string) (*argDef, bool) {
	for _, a := range c.args {
		if a.cliName == name {
			return a, true
		}
		if a.kind == argBool && "no-"+a.cliName == name {
			return a, false
		}
	}
	return nil, false
}

// parsedArgs is the result of parsing an operation's options: the raw
// string values (one or many) and booleans, by cliName.
type parsedArgs struct {
	scalars map[string]string
	lists   map[string][]string
	bools   map[string]bool
	order   []string // cliNames in first-seen order
}

func (p *parsedArgs) has(name string) bool {
	_, a := p.scalars[name]
	_, b := p.lists[name]
	_, c := p.bools[name]
	return a || b || c
}

func (p *parsedArgs) note(name string) {
	for _, n := range p.order {
		if n == name {
			return
		}
	}
	p.order = append(p.order, name)
}

// parse is argparse's parse_known_args over an operation's options
// followed by its required check and the aws CLI's unknown-options check.
func (c *opCommand) parse(args []string) (*parsedArgs, error) {
	p := &parsedArgs{scalars: map[string]string{}, lists: map[string][]string{}, bools: map[string]bool{}}
	var unknown []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") || a == "--" {
			unknown = append(unknown, a)
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		d, positive := c.find(name)
		if d == nil {
			unknown = append(unknown, a)
			continue
		}
		switch d.kind {
		case argBool:
			if hasVal {
				return nil, &usageError{fmt.Sprintf("argument --%s: ignored explicit argument '%s'", name, val)}
			}
			p.bools[d.cliName] = positive
		case argScalar:
			if !hasVal {
				if i+1 >= len(args) || looksLikeOption(args[i+1]) {
					return nil, &usageError{fmt.Sprintf("argument --%s: expected one argument", name)}
				}
				i++
				val = args[i]
			}
			p.scalars[d.cliName] = val
		case argOptional:
			if !hasVal {
				val = "input"
				if i+1 < len(args) && !looksLikeOption(args[i+1]) {
					i++
					val = args[i]
				}
			}
			ok := false
			for _, ch := range d.choices {
				ok = ok || ch == val
			}
			if !ok {
				return nil, choice("--"+name, d.choices, val)
			}
			p.scalars[d.cliName] = val
		case argList:
			var vals []string
			if hasVal {
				vals = append(vals, val)
			}
			for !hasVal && i+1 < len(args) && !looksLikeOption(args[i+1]) {
				i++
				vals = append(vals, args[i])
			}
			if vals == nil {
				vals = []string{}
			}
			p.lists[d.cliName] = vals
		}
		p.note(d.cliName)
	}
	if d, _ := c.find("page-size"); d != nil {
		if v, ok := p.scalars["page-size"]; ok {
			if _, err := pyInt(v); err != nil {
				return nil, &usageError{fmt.Sprintf("argument --page-size: invalid int value: '%s'", v)}
			}
		}
	}
	if v, ok := p.scalars["max-items"]; ok {
		if _, err := pyInt(v); err != nil {
			return nil, &usageError{fmt.Sprintf("argument --max-items: invalid int value: '%s'", v)}
		}
	}
	// Required options, unless the input comes from a file or only a
	// skeleton is asked for (the aws CLI's OverrideRequiredArgsArgument).
	override := p.has("cli-input-json") || p.has("cli-input-yaml")
	if sk, ok := p.scalars["generate-cli-skeleton"]; ok && sk != "output" {
		override = true
	}
	if !override {
		var missing []string
		for _, d := range c.args {
			if d.required && !p.has(d.cliName) {
				missing = append(missing, "--"+d.cliName)
			}
		}
		if len(missing) > 0 {
			return nil, &usageError{"the following arguments are required: " + strings.Join(missing, ", ")}
		}
	}
	if len(unknown) > 0 {
		return nil, &unknownArgsError{unknown}
	}
	return p, nil
}

// pyInt is Python's int(str): surrounding whitespace and underscores
// between digits allowed.
func pyInt(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t2 := strings.ReplaceAll(t, "_", "")
	if t2 == "" || strings.HasPrefix(t, "_") || strings.HasSuffix(t, "_") || strings.Contains(t, "__") {
		return 0, fmt.Errorf("invalid literal for int() with base 10: %s", pyStrRepr(s))
	}
	n, err := strconv.ParseInt(t2, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid literal for int() with base 10: %s", pyStrRepr(s))
	}
	return n, nil
}

// opNames returns the CLI names of a service's operations, sorted.
func opNames(svc *model.Service) []string {
	var out []string
	for _, o := range svc.Operations {
		out = append(out, kebab(o.Name))
	}
	sort.Strings(out)
	return out
}

func findOp(svc *model.Service, cliName string) *model.Operation {
	for _, o := range svc.Operations {
		if kebab(o.Name) == cliName {
			return o
		}
	}
	return nil
}
