package cli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// Help pages are generated from the shape tables: synopsis, every option
// with its type, required options marked. They carry no AWS
// documentation text.

var globalHelp = []string{
	"--debug (boolean) Turn on debug logging.",
	"--endpoint-url (string) Override command's default URL with the given URL.",
	"--no-verify-ssl (boolean) Do not verify SSL certificates.",
	"--no-paginate (boolean) Disable automatic pagination.",
	"--output (string) The formatting style for command output: json, text, table, yaml, yaml-stream.",
	"--query (string) A JMESPath query to use in filtering the response data.",
	"--profile (string) Use a specific profile from your credential file.",
	"--region (string) The region to use.",
	"--version (string) Display the version of this tool.",
	"--color (string) Turn on/off color output: on, off, auto.",
	"--no-sign-request (boolean) Do not sign requests.",
	"--ca-bundle (string) The CA certificate bundle to use when verifying SSL certificates.",
	"--cli-read-timeout (int) The maximum socket read time in seconds; 0 blocks forever. Default 60.",
	"--cli-connect-timeout (int) The maximum socket connect time in seconds; 0 blocks forever. Default 60.",
	"--cli-binary-format (string) The formatting style for binary blobs: base64 (default), raw-in-base64-out.",
	"--no-cli-pager (boolean) Accepted for compatibility; kmsctl never pages.",
}

// commandNames is every top-level command: the AWS services kmsctl
// speaks, kmsctl's own groups (audit, cloudhsm-cli, kmsd) and completion
// and help, sorted as the aws CLI sorts its list.
func commandNames() []string {
	names := append(model.ServiceNames(), "audit", "cloudhsm-cli", "completion", "help", "kmsd")
	sort.Strings(names)
	return names
}

// isHelp reports whether a word asks for help: help, or --help, which
// kmsctl takes wherever help is taken.
func isHelp(s string) bool { return s == "help" || s == "--help" }

func topHelp() string {
	var b strings.Builder
	b.WriteString("kmsctl\n\nSYNOPSIS\n       kmsctl [options] <command> <subcommand> [parameters]\n\n")
	b.WriteString("AVAILABLE SERVICES\n")
	for _, n := range commandNames() {
		fmt.Fprintf(&b, "       o %s\n", n)
	}
	b.WriteString("\nGLOBAL OPTIONS\n")
	for _, h := range globalHelp {
		b.WriteString("       " + h + "\n")
	}
	return b.String()
}

func serviceHelp(svc *model.Service) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nSYNOPSIS\n       kmsctl %s <subcommand> [parameters]\n\nAVAILABLE COMMANDS\n", svc.Name, svc.Name)
	names := opNames(svc)
	if svc == model.KMS {
		names = append(names, "wait")
		sort.Strings(names)
	}
	for _, n := range names {
		fmt.Fprintf(&b, "       o %s\n", n)
	}
	b.WriteString("       o help\n")
	return b.String()
}

func argType(c *opCommand, d *argDef) string {
	if d.shape == nil {
		return d.typ
	}
	switch d.shape.Type {
	case "list":
		return "list"
	case "integer", "long":
		return "integer"
	}
	return d.shape.Type
}

func opHelp(c *opCommand) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nSYNOPSIS\n            %s\n", c.cliName(), c.cliName())
	for _, d := range c.args {
		if d.member == "" {
			continue
		}
		name := "--" + d.cliName
		if d.kind == argBool {
			name += " | --no-" + d.cliName
		} else {
			name += " <value>"
		}
		if d.required {
			fmt.Fprintf(&b, "          %s\n", name)
		} else {
			fmt.Fprintf(&b, "          [%s]\n", name)
		}
	}
	b.WriteString("          [--cli-input-json | --cli-input-yaml]\n")
	if c.op.Paginator != nil {
		b.WriteString("          [--starting-token <value>]\n")
		if c.op.Paginator.LimitKey != "" {
			b.WriteString("          [--page-size <value>]\n")
		}
		b.WriteString("          [--max-items <value>]\n")
	}
	b.WriteString("          [--generate-cli-skeleton <value>]\n          [--debug] [--endpoint-url <value>] [--no-verify-ssl] [--no-paginate]\n          [--output <value>] [--query <value>] [--profile <value>] [--region <value>]\n          [--version <value>] [--color <value>] [--no-sign-request] [--ca-bundle <value>]\n          [--cli-read-timeout <value>] [--cli-connect-timeout <value>]\n\nOPTIONS\n")
	for _, d := range c.args {
		if d.member == "" {
			continue
		}
		req := ""
		if d.required {
			req = " [required]"
		}
		fmt.Fprintf(&b, "       --%s (%s)%s\n", d.cliName, argType(c, d), req)
		if d.shape != nil {
			if len(d.shape.Enum) > 0 {
				fmt.Fprintf(&b, "          Possible values: %s\n", strings.Join(d.shape.Enum, ", "))
			}
			if d.shape.Min != nil || d.shape.Max != nil {
				var parts []string
				if d.shape.Min != nil {
					parts = append(parts, fmt.Sprintf("min %d", *d.shape.Min))
				}
				if d.shape.Max != nil {
					parts = append(parts, fmt.Sprintf("max %d", *d.shape.Max))
				}
				fmt.Fprintf(&b, "          Constraints: %s\n", strings.Join(parts, ", "))
			}
			if c.supportsShorthand(d.shape) {
				if s := shorthandDoc(c.svc, d.shape); s != "" {
					fmt.Fprintf(&b, "          Shorthand Syntax:\n            %s\n", s)
				}
			}
			if d.shape.Type == "structure" || d.shape.Type == "map" || d.shape.Type == "list" {
				sk := skeleton(c.svc, d.shape, false)
				fmt.Fprintf(&b, "          JSON Syntax:\n            %s", strings.ReplaceAll(skeletonJSON(sk), "\n", "\n            "))
				b.WriteString("\n")
			}
		}
	}
	b.WriteString("       --cli-input-json | --cli-input-yaml (string)\n       --generate-cli-skeleton (string) input, output or yaml-input\n")
	if c.op.Paginator != nil {
		b.WriteString("       --starting-token (string)\n")
		if c.op.Paginator.LimitKey != "" {
			b.WriteString("       --page-size (integer)\n")
		}
		b.WriteString("       --max-items (integer)\n")
	}
	b.WriteString("\nGLOBAL OPTIONS\n")
	for _, h := range globalHelp {
		b.WriteString("       " + h + "\n")
	}
	return b.String()
}

// shorthandDoc is ParamShorthandDocGen's example for a shape.
func shorthandDoc(svc *model.Service, sh *model.Shape) string {
	if sh.Type == "list" {
		return shDoc(svc, svc.Shape(sh.Member), nil) + " ..."
	}
	return shDoc(svc, sh, nil)
}

func shDoc(svc *model.Service, sh *model.Shape, stack []string) string {
	if len(stack) > 3 {
		return ""
	}
	switch sh.Type {
	case "structure":
		var parts []string
		for _, m := range sh.Members {
			ms := svc.Shape(m.Shape)
			rec := false
			for _, s := range stack {
				rec = rec || s == ms.Name
			}
			if rec {
				parts = append(parts, m.Name+"=( ... recursive ... )")
				continue
			}
			parts = append(parts, m.Name+"="+shDoc(svc, ms, append(stack, ms.Name)))
		}
		if len(stack) == 0 {
			return strings.Join(parts, ",")
		}
		return "{" + strings.Join(parts, ",") + "}"
	case "list":
		el := svc.Shape(sh.Member)
		e := shDoc(svc, el, append(stack, el.Name))
		if isComplex(el) || len(stack) > 1 {
			return "[" + e + "," + e + "]"
		}
		return e + "," + e
	case "map":
		v := shDoc(svc, svc.Shape(sh.Value), stack)
		s := "KeyName1=" + v + ",KeyName2=" + v
		if len(stack) > 0 {
			s = "{" + s + "}"
		}
		return s
	}
	return sh.Type
}
