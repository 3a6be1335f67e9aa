// Package cli is kmsctl: an aws-cli-compatible command line for the kms
// and cloudhsmv2 services, driven entirely by the shape tables in
// internal/cli/model. It parses options as aws CLI v2 does (shorthand,
// JSON, file:// and fileb://, --cli-input-json/yaml), validates like
// botocore, sends awsJson requests through aws-sdk-go-v2's configuration,
// signer and retryer, and prints json, text, table, yaml and yaml-stream
// output byte for byte as aws CLI v2 prints it.
package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// Version is kmsctl's version, printed by --version.
var Version = "0.1.0"

// Env is what Run needs from the process.
type Env struct {
	Stdout, Stderr io.Writer
	StdoutTTY      bool // colour and table width follow the terminal
	StderrTTY      bool // wait progress only on a terminal
	TermWidth      int  // 0: not a terminal (80 is used, as the aws CLI does)
	// Stdin is standard input; cloudhsm-cli reads a password left out of
	// its arguments from it, one line. nil reads as empty.
	Stdin io.Reader
	// ReadPassword reads a line from the terminal without echoing it. It
	// is set only when standard input is a terminal.
	ReadPassword func() ([]byte, error)
}

const usageText = `usage: kmsctl [options] <command> <subcommand> [<subcommand> ...] [parameters]
To see help text, you can run:

  kmsctl help
  kmsctl <command> help
  kmsctl <command> <subcommand> help
`

// Run runs kmsctl with args (without the program name) and returns the
// exit code.
func Run(ctx context.Context, args []string, env Env) int {
	r := &runner{env: env}
	rc, err := r.run(ctx, args)
	if err != nil {
		return r.report(ctx, err)
	}
	return rc
}

type runner struct {
	env Env
	g   *globals
}

// report prints err as the aws CLI's error handler chain does.
func (r *runner) report(ctx context.Context, err error) int {
	w := r.env.Stderr
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		fmt.Fprint(r.env.Stdout, "\n")
		return exitInterrupt
	}
	var ue *usageError
	var uk *unknownArgsError
	var pe *paramError
	var ce *configError
	var se *serviceError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(w, "\n%s\nkmsctl: error: %s\n\n", usageText, ue.msg)
		return exitParam
	case errors.As(err, &uk):
		fmt.Fprintf(w, "\n%s\n%s\n\n", usageText, uk.Error())
		return exitParam
	case errors.As(err, &pe):
		fmt.Fprintf(w, "\n%s\n", pe.msg)
		return exitParam
	case errors.As(err, &ce):
		fmt.Fprintf(w, "\n%s\n", ce.msg)
		return exitConfig
	case errors.As(err, &se):
		fmt.Fprintf(w, "\n%s\n", se.Error())
		return exitClient
	}
	fmt.Fprintf(w, "\n%s\n", err.Error())
	return exitGeneral
}

func (r *runner) run(ctx context.Context, args []string) (int, error) {
	g, rest, err := parseGlobals(args)
	if err != nil {
		return 0, err
	}
	r.g = g
	if g.version {
		fmt.Fprintf(r.env.Stdout, "kmsctl/%s Go/%s %s/%s\n", Version, strings.TrimPrefix(runtime.Version(), "go"), runtime.GOOS, runtime.GOARCH)
		return exitOK, nil
	}
	if len(rest) == 0 {
		return 0, &usageError{"the following arguments are required: command"}
	}
	switch rest[0] {
	case "help", "--help":
		io.WriteString(r.env.Stdout, topHelp())
		return exitOK, nil
	case "completion":
		return r.completion(rest[1:])
	case "audit":
		return r.audit(ctx, rest[1:])
	case "__complete":
		return r.complete(rest[1:])
	case "cloudhsm-cli": // [hsm] cloudhsmcli.go
		return r.cloudhsmCLI(ctx, rest[1:])
	case "kmsd": // kmsdcmd.go
		return r.kmsdCommand(ctx, rest[1:])
	case "console-login": // consolelogin.go
		return r.consoleLogin(ctx, rest[1:])
	}
	svc, ok := model.Services[rest[0]]
	if !ok {
		return 0, &usageError{"argument command: Invalid choice, valid choices are:\n\n" + choiceTable(commandNames())}
	}
	if len(rest) == 1 {
		return 0, &usageError{"the following arguments are required: operation"}
	}
	if isHelp(rest[1]) {
		io.WriteString(r.env.Stdout, serviceHelp(svc))
		return exitOK, nil
	}
	if rest[1] == "wait" && svc == model.KMS {
		return r.wait(ctx, svc, rest[2:])
	}
	op := findOp(svc, rest[1])
	if op == nil {
		msg := "argument operation: Invalid choice, valid choices are:\n\n" + choiceTable(append(opNames(svc), "help"))
		if s := suggest(rest[1], opNames(svc)); s != "" {
			msg += fmt.Sprintf("\n\n\nInvalid choice: '%s', maybe you meant:\n\n  * %s", rest[1], s)
		}
		return 0, &usageError{msg}
	}
	cmd := newOpCommand(svc, op)
	opArgs := rest[2:]
	if len(opArgs) > 0 && isHelp(opArgs[len(opArgs)-1]) {
		io.WriteString(r.env.Stdout, opHelp(cmd))
		return exitOK, nil
	}
	return r.runOp(ctx, cmd, opArgs)
}

// suggest is a crude difflib.get_close_matches: the closest name within
// an edit distance of a third of its length.
func suggest(s string, names []string) string {
	best, bestD := "", len(s)/3+1
	for _, n := range names {
		if d := editDistance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	d := make([]int, len(b)+1)
	for j := range d {
		d[j] = j
	}
	for i := 1; i <= len(a); i++ {
		prev := d[0]
		d[0] = i
		for j := 1; j <= len(b); j++ {
			tmp := d[j]
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			d[j] = min(d[j]+1, d[j-1]+1, prev+c)
			prev = tmp
		}
	}
	return d[len(b)]
}

// outputFormat is --output, else AWS_DEFAULT_OUTPUT, else the profile's
// output, else json.
func (r *runner) outputFormat() string {
	if r.g.output != "" {
		return r.g.output
	}
	if v := os.Getenv("AWS_DEFAULT_OUTPUT"); v != "" {
		return v
	}
	if v := profileSetting(r.g.profile, "output"); v != "" {
		return v
	}
	return "json"
}

// profileSetting reads one plain setting of the active profile from the
// shared config file (settings the SDK does not model, like output).
func profileSetting(profile, key string) string {
	if profile == "" {
		profile = os.Getenv("AWS_PROFILE")
	}
	if profile == "" {
		profile = "default"
	}
	path := os.Getenv("AWS_CONFIG_FILE")
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		path = home + "/.aws/config"
	}
	f, err := os.Open(expandPath(path))
	if err != nil {
		return ""
	}
	defer f.Close()
	want := "profile " + profile
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			name := strings.Join(strings.Fields(line[1:len(line)-1]), " ")
			in = name == want || (profile == "default" && name == "default")
			continue
		}
		if !in || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func (r *runner) runOp(ctx context.Context, cmd *opCommand, args []string) (int, error) {
	p, err := cmd.parse(args)
	if err != nil {
		return 0, err
	}
	op, svc := cmd.op, cmd.svc
	// Pagination: on by default for paginated operations; off with
	// --no-paginate or when the user drives the service's own tokens.
	doPaginate := op.Paginator != nil && !r.g.noPaginate
	if pg := op.Paginator; pg != nil {
		for _, t := range append(append([]string{}, pg.InputToken...), pg.LimitKey) {
			if t != "" && p.has(kebab(t)) {
				doPaginate = false
			}
		}
		if !doPaginate {
			var used []string
			for _, n := range []string{"starting-token", "page-size", "max-items"} {
				if v, ok := p.scalars[n]; ok && v != "" {
					used = append(used, "--"+n)
				}
			}
			if len(used) > 0 {
				return 0, &paramError{"Cannot specify --no-paginate along with pagination arguments: " + strings.Join(used, ", ")}
			}
		}
	}
	params, err := cmd.buildParams(p)
	if err != nil {
		return 0, err
	}
	if doPaginate {
		for _, t := range op.Paginator.InputToken {
			if _, ok := params.Get(t); ok {
				doPaginate = false
			}
		}
		if _, ok := params.Get(op.Paginator.LimitKey); ok && op.Paginator.LimitKey != "" {
			doPaginate = false
		}
	}
	skel := p.scalars["generate-cli-skeleton"]
	switch skel {
	case "input":
		if op.Input == "" {
			io.WriteString(r.env.Stdout, "{}\n")
		} else {
			io.WriteString(r.env.Stdout, skeletonJSON(skeleton(svc, svc.Shape(op.Input), false)))
		}
		return exitOK, nil
	case "yaml-input":
		if op.Input == "" {
			io.WriteString(r.env.Stdout, "{}\n")
		} else {
			io.WriteString(r.env.Stdout, skeletonYAML(svc, svc.Shape(op.Input)))
		}
		return exitOK, nil
	}
	var q *query
	if r.g.query != "" {
		if q, err = compileQuery(r.g.query); err != nil {
			return 0, err
		}
	}
	format := r.outputFormat()
	if err := choice("--output", outputChoices, format); err != nil {
		return 0, &generalError{fmt.Sprintf("Unknown output type: %s", format)}
	}
	cfg, err := loadConfig(ctx, r.g)
	if err != nil {
		return 0, err
	}
	var debug io.Writer
	if r.g.debug {
		debug = r.env.Stderr
	}
	cl, err := newClient(ctx, svc, cfg, r.g, debug)
	if err != nil {
		return 0, err
	}
	if op.Input != "" {
		v, err := cmd.decodeBlobs(svc.Shape(op.Input), params)
		if err != nil {
			return 0, err
		}
		params = v.(*Object)
	}
	if skel == "output" {
		if err := validateParams(svc, params, op.Input); err != nil {
			return 0, err
		}
		var fake any = NewObject()
		if op.Output != "" {
			fake = skeleton(svc, svc.Shape(op.Output), true)
			if err := validateParams(svc, fake, op.Output); err != nil {
				return 0, err
			}
			fake = fixTimes(fake)
		}
		return r.display(op, fake, nil, format, q)
	}
	if doPaginate {
		pc := pageConfig{}
		if v, ok := p.scalars["page-size"]; ok {
			n, _ := pyInt(v)
			pc.pageSize = &n
		}
		if v, ok := p.scalars["max-items"]; ok {
			n, _ := pyInt(v)
			pc.maxItems = &n
		}
		if v, ok := p.scalars["starting-token"]; ok {
			pc.startingToken = &v
		}
		res, err := paginate(ctx, cl, op, params, pc)
		if err != nil {
			return 0, err
		}
		return r.display(op, nil, res, format, q)
	}
	if err := validateParams(svc, params, op.Input); err != nil {
		return 0, err
	}
	resp, err := cl.call(ctx, op, params)
	if err != nil {
		return 0, err
	}
	return r.display(op, resp, nil, format, q)
}

// display formats a response (or a paginated result) as the aws CLI's
// formatter for the format does.
func (r *runner) display(op *model.Operation, resp any, pages *pageResult, format string, q *query) (int, error) {
	out := r.env.Stdout
	apply := func(v any) (any, error) {
		if q == nil {
			return v, nil
		}
		return q.search(v)
	}
	switch format {
	case "text":
		if pages != nil {
			for i, page := range pages.pages {
				cur := NewObject()
				for _, rk := range op.Paginator.ResultKeys {
					_ = i
					setPath(cur, rk, lookup(page.(*Object), rk))
				}
				v, err := apply(cur)
				if err != nil {
					return 0, err
				}
				formatText(out, v)
			}
			if pages.hasResume {
				nt := NewObject()
				inner := NewObject()
				inner.Set("NextToken", pages.resumeToken)
				nt.Set("NextToken", inner)
				v, err := apply(nt)
				if err != nil {
					return 0, err
				}
				formatText(out, v)
			}
			return exitOK, nil
		}
		v, err := apply(resp)
		if err != nil {
			return 0, err
		}
		formatText(out, v)
		return exitOK, nil
	case "yaml-stream":
		list := []any{resp}
		if pages != nil {
			list = pages.pages
		} else if o, ok := resp.(*Object); ok && o.Len() == 0 && q == nil {
			return exitOK, nil
		}
		for _, page := range list {
			v, err := apply(page)
			if err != nil {
				return 0, err
			}
			if q == nil {
				if o, ok := v.(*Object); ok && o.Len() == 0 && pages == nil {
					continue
				}
			}
			formatYAML(out, []any{v})
		}
		return exitOK, nil
	}
	if pages != nil {
		resp = fullResult(op.Paginator, pages)
	}
	v, err := apply(resp)
	if err != nil {
		return 0, err
	}
	switch format {
	case "json":
		formatJSON(out, v)
	case "yaml":
		if o, ok := v.(*Object); ok && o.Len() == 0 {
			return exitOK, nil
		}
		formatYAML(out, v)
	case "table":
		color := r.env.StdoutTTY
		switch r.g.color {
		case "on":
			color = true
		case "off":
			color = false
		}
		width := r.env.TermWidth
		if width <= 0 {
			width = 80
		}
		formatTable(out, op.Name, v, width, color)
	}
	return exitOK, nil
}
