package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// The kmsd commands: kmsd-specific admin operations that are no AWS API,
// sent like cloudhsm-cli's to kmsd's admin API (X-Amz-Target
// KmsdAdmin.<Op>). inject-connect-fault needs a kmsd started with
// --fault-injection.

const kmsdUsage = `usage: kmsctl kmsd <command> [options]

commands:
  inject-connect-fault --custom-key-store-id <id> [--connection-error-code <code>] [--latency <duration>]
      make the next ConnectCustomKeyStore of the store wait --latency (e.g. 2s)
      and then fail with --connection-error-code (any ConnectionErrorCodeType
      value, e.g. SUBNET_NOT_FOUND); kmsd must run with --fault-injection
`

var kmsdCommands = map[string]struct {
	op      string
	options map[string]string // option -> request member
}{
	"inject-connect-fault": {"InjectConnectFault", map[string]string{
		"custom-key-store-id": "CustomKeyStoreId", "connection-error-code": "ConnectionErrorCode", "latency": "Latency"}},
}

// kmsdCommand runs a kmsd command.
func (r *runner) kmsdCommand(ctx context.Context, args []string) (int, error) {
	if len(args) == 0 || isHelp(args[0]) {
		io.WriteString(r.env.Stdout, kmsdUsage)
		return exitOK, nil
	}
	name := args[0]
	cmd, ok := kmsdCommands[name]
	if !ok {
		return 0, &usageError{fmt.Sprintf("kmsd: unknown command %q\n\n%s", name, kmsdUsage)}
	}
	in := map[string]string{}
	for i := 1; i < len(args); i++ {
		if !strings.HasPrefix(args[i], "--") {
			return 0, &usageError{fmt.Sprintf("kmsd %s: unexpected argument %q", name, args[i])}
		}
		k, v, hasVal := strings.Cut(strings.TrimPrefix(args[i], "--"), "=")
		member, known := cmd.options[k]
		if !known {
			return 0, &usageError{fmt.Sprintf("kmsd %s: unknown option --%s", name, k)}
		}
		if !hasVal {
			if i+1 >= len(args) {
				return 0, &usageError{fmt.Sprintf("kmsd %s: --%s expects a value", name, k)}
			}
			i++
			v = args[i]
		}
		in[member] = v
	}
	if in["CustomKeyStoreId"] == "" {
		return 0, &usageError{fmt.Sprintf("kmsd %s: the following arguments are required: --custom-key-store-id", name)}
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
	raw, err := cl.send(ctx, requestURL(cl.endpoint), adminService.TargetPrefix+"."+cmd.op, payload, creds, &model.Operation{Name: cmd.op})
	if err != nil {
		return 0, err
	}
	if s := strings.TrimSpace(string(raw)); s != "" && s != "{}" {
		fmt.Fprintln(r.env.Stdout, s)
	}
	return exitOK, nil
}
