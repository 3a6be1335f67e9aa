package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// kmsctl console-login asks kmsd (X-Amz-Target KmsdConsole.CreateLoginUrl,
// signed with the usual credentials) for a one-time URL that signs into
// kmsd's web console as the principal of those credentials, and prints
// it. The URL works once, within two minutes.

const consoleLoginUsage = `usage: kmsctl [global options] console-login

Prints a one-time URL (valid for two minutes) that signs into kmsd's web
console as the principal of the credentials kmsctl uses.
`

// consoleService is the console-login request as the request machinery
// sees it.
var consoleService = &model.Service{
	Name: "console-login", EndpointPrefix: "kms", SigningName: "kms", TargetPrefix: "KmsdConsole",
	JSONVersion: "1.1", ServiceID: "KMS", Shapes: map[string]*model.Shape{},
}

func (r *runner) consoleLogin(ctx context.Context, args []string) (int, error) {
	if len(args) > 0 {
		if args[0] == "help" || args[0] == "--help" {
			io.WriteString(r.env.Stdout, consoleLoginUsage)
			return exitOK, nil
		}
		return 0, &usageError{fmt.Sprintf("console-login: unexpected argument %q\n\n%s", args[0], consoleLoginUsage)}
	}
	cfg, err := loadConfig(ctx, r.g)
	if err != nil {
		return 0, err
	}
	cl, err := newClient(ctx, consoleService, cfg, r.g, nil)
	if err != nil {
		return 0, err
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil || creds.AccessKeyID == "" {
		return 0, &configError{"Unable to locate credentials. You can configure credentials by running \"aws configure\"."}
	}
	raw, err := cl.send(ctx, requestURL(cl.endpoint), consoleService.TargetPrefix+".CreateLoginUrl", []byte("{}"), creds, &model.Operation{Name: "CreateLoginUrl"})
	if err != nil {
		return 0, err
	}
	var out struct{ LoginUrl string }
	if err := json.Unmarshal(raw, &out); err != nil || out.LoginUrl == "" {
		return 0, &generalError{"kmsd did not answer with a console URL"}
	}
	fmt.Fprintln(r.env.Stdout, out.LoginUrl)
	return exitOK, nil
}
