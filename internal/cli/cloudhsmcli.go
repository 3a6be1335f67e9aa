package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// The cloudhsm-cli commands: what AWS users do with the CloudHSM CLI
// (cluster activate, user create|delete|change-password|list, login,
// logout, key list|delete), named as the CloudHSM CLI names them and sent
// to kmsd's admin API (X-Amz-Target KmsdAdmin.<Op>, SigV4 for "kms") with
// the usual global options (--endpoint-url, --region, --profile). Output is
// the CloudHSM CLI's JSON: {"error_code": 0, "data": …}; a failure prints
// {"error_code": 1, "data": "<message>"} and exits 1.

// adminService is the admin API as the request machinery sees it.
var adminService = &model.Service{
	Name: "cloudhsm-cli", EndpointPrefix: "kms", SigningName: "kms", TargetPrefix: "KmsdAdmin",
	JSONVersion: "1.1", ServiceID: "KMS", Shapes: map[string]*model.Shape{},
}

// cloudhsmCommand is one cloudhsm-cli command: its admin operation, the
// options it takes (required ones marked with a trailing '!'), and how it
// asks for a password --password leaves out (see readPassword).
type cloudhsmCommand struct {
	op       string
	options  []string
	password passwordPrompt
}

// passwordPrompt says whether a command takes a password and, on a
// terminal, whether it asks for it twice, as the CloudHSM CLI does for a
// new password.
type passwordPrompt uint8

const (
	noPassword passwordPrompt = iota
	enterPassword
	newPassword // entered and confirmed
)

var cloudhsmCommands = map[string]cloudhsmCommand{
	"cluster activate":           {"ActivateCluster", []string{"cluster-id!", "password"}, newPassword},
	"user create":                {"CreateUser", []string{"cluster-id!", "username!", "role!", "password"}, newPassword},
	"user delete":                {"DeleteUser", []string{"cluster-id!", "username!", "role!"}, noPassword},
	"user change-password":       {"ChangePassword", []string{"cluster-id!", "username!", "role!", "password"}, newPassword},
	"user list":                  {"ListUsers", []string{"cluster-id!"}, noPassword},
	"login":                      {"Login", []string{"cluster-id!", "username!", "role!", "password"}, enterPassword},
	"logout":                     {"Logout", []string{"cluster-id!", "username", "role"}, noPassword},
	"key list":                   {"ListKeys", []string{"cluster-id!"}, noPassword},
	"key delete":                 {"DeleteKey", []string{"cluster-id!", "filter!"}, noPassword},
	"key generate-symmetric aes": {"GenerateKey", []string{"cluster-id!", "label!", "key-length-bytes!"}, noPassword},
}

const cloudhsmUsage = `usage: kmsctl cloudhsm-cli <command> [options]

commands:
  cluster activate     --cluster-id <id> [--password <admin password>]
  user create          --cluster-id <id> --username <name> --role crypto-user [--password <pw>]
  user delete          --cluster-id <id> --username <name> --role crypto-user
  user change-password --cluster-id <id> --username <name> --role crypto-user [--password <pw>]
  user list            --cluster-id <id>
  login                --cluster-id <id> --username <name> --role crypto-user [--password <pw>]
  logout               --cluster-id <id> [--username <name> --role crypto-user]
  key list             --cluster-id <id>
  key delete           --cluster-id <id> --filter attr.label=<label>
  key generate-symmetric aes --cluster-id <id> --label <label> --key-length-bytes 32

Without --password, the password is asked for on the terminal without echo
("Enter password:", and "Confirm password:" for a new one), or, when standard
input is not a terminal, read as one line from it:
  kmsctl cloudhsm-cli login ... < password-file
A password given with --password is visible to other users of the machine
(ps, /proc/<pid>/cmdline) and may be kept in shell history: prefer the prompt
or standard input.
`

// cloudhsmCLI runs a cloudhsm-cli command.
func (r *runner) cloudhsmCLI(ctx context.Context, args []string) (int, error) {
	var words []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "--") {
		words, args = append(words, args[0]), args[1:]
	}
	name := strings.Join(words, " ")
	if name == "" || name == "help" {
		io.WriteString(r.env.Stdout, cloudhsmUsage)
		return exitOK, nil
	}
	cmd, ok := cloudhsmCommands[name]
	if !ok {
		return 0, &usageError{fmt.Sprintf("cloudhsm-cli: unknown command %q\n\n%s", name, cloudhsmUsage)}
	}
	opts := map[string]string{}
	for i := 0; i < len(args); i++ {
		k, v, hasVal := strings.Cut(strings.TrimPrefix(args[i], "--"), "=")
		if !strings.HasPrefix(args[i], "--") {
			return 0, &usageError{fmt.Sprintf("cloudhsm-cli %s: unexpected argument %q", name, args[i])}
		}
		known := false
		for _, o := range cmd.options {
			known = known || strings.TrimSuffix(o, "!") == k
		}
		if !known {
			return 0, &usageError{fmt.Sprintf("cloudhsm-cli %s: unknown option --%s", name, k)}
		}
		if !hasVal {
			if i+1 >= len(args) {
				return 0, &usageError{fmt.Sprintf("cloudhsm-cli %s: --%s expects a value", name, k)}
			}
			i++
			v = args[i]
		}
		opts[k] = v
	}
	for _, o := range cmd.options {
		if strings.HasSuffix(o, "!") && opts[strings.TrimSuffix(o, "!")] == "" {
			return 0, &usageError{fmt.Sprintf("cloudhsm-cli %s: the following arguments are required: --%s", name, strings.TrimSuffix(o, "!"))}
		}
	}
	if _, given := opts["password"]; cmd.password != noPassword && !given {
		pw, err := r.readPassword(cmd.password == newPassword)
		if err != nil {
			return 0, err
		}
		opts["password"] = pw
	}
	if cmd.password != noPassword && opts["password"] == "" {
		return 0, &usageError{fmt.Sprintf("cloudhsm-cli %s: the password is empty", name)}
	}
	in := map[string]string{"ClusterId": opts["cluster-id"], "Username": opts["username"], "Role": opts["role"], "Password": opts["password"]}
	if name == "logout" {
		if in["Username"] == "" {
			in["Username"] = "kmsuser"
		}
		if in["Role"] == "" {
			in["Role"] = "crypto-user"
		}
	}
	if l, ok := opts["label"]; ok {
		if opts["key-length-bytes"] != "32" {
			return 0, &usageError{"cloudhsm-cli key generate-symmetric aes: only --key-length-bytes 32 (AES-256) is supported"}
		}
		in["Label"] = l
	}
	if f, ok := opts["filter"]; ok {
		label, found := strings.CutPrefix(f, "attr.label=")
		if !found || label == "" {
			return 0, &usageError{"cloudhsm-cli key delete: --filter must be attr.label=<label>"}
		}
		in["Label"] = label
	}
	payload, _ := json.Marshal(in)

	cfg, err := loadConfig(ctx, r.g)
	if err != nil {
		return 0, err
	}
	cl, err := newClient(ctx, adminService, cfg, r.g, nil)
	if err != nil {
		return 0, err
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil || creds.AccessKeyID == "" {
		return 0, &configError{"Unable to locate credentials. You can configure credentials by running \"aws configure\"."}
	}
	op := &model.Operation{Name: cmd.op}
	raw, err := cl.send(ctx, requestURL(cl.endpoint), adminService.TargetPrefix+"."+cmd.op, payload, creds, op)
	enc := json.NewEncoder(r.env.Stdout)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err != nil {
		var se *serviceError
		if !errors.As(err, &se) {
			return 0, err
		}
		enc.Encode(map[string]any{"error_code": 1, "data": se.Code + ": " + se.Message})
		return 1, nil
	}
	var data any
	if err := json.Unmarshal(raw, &data); err != nil {
		return 0, &generalError{fmt.Sprintf("Unable to parse response: %v", err)}
	}
	enc.Encode(map[string]any{"error_code": 0, "data": data})
	return exitOK, nil
}
