package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// waitInterval is how often wait polls DescribeCustomKeyStores.
var waitInterval = 5 * time.Second

// waitMaxAttempts bounds a wait (about 20 minutes at the default
// interval, as connecting an HSM key store can take).
var waitMaxAttempts = 240

// wait is `kmsctl kms wait custom-key-store-connected|disconnected
// --custom-key-store-id ID`: it polls DescribeCustomKeyStores until the
// store reaches the state (exit 0) or goes FAILED (exit 255, with the
// ConnectionErrorCode). On a terminal it shows progress on stderr.
func (r *runner) wait(ctx context.Context, svc *model.Service, args []string) (int, error) {
	if len(args) == 0 {
		return 0, &usageError{"the following arguments are required: waiter (custom-key-store-connected or custom-key-store-disconnected)"}
	}
	var want string
	switch args[0] {
	case "custom-key-store-connected":
		want = "CONNECTED"
	case "custom-key-store-disconnected":
		want = "DISCONNECTED"
	default:
		return 0, &usageError{"argument waiter: Invalid choice, valid choices are:\n\n" + choiceTable([]string{"custom-key-store-connected", "custom-key-store-disconnected"})}
	}
	var id string
	var unknown []string
	for i := 1; i < len(args); i++ {
		switch {
		case args[i] == "--custom-key-store-id" && i+1 < len(args):
			id = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--custom-key-store-id="):
			id = strings.TrimPrefix(args[i], "--custom-key-store-id=")
		default:
			unknown = append(unknown, args[i])
		}
	}
	if id == "" {
		return 0, &usageError{"the following arguments are required: --custom-key-store-id"}
	}
	if len(unknown) > 0 {
		return 0, &unknownArgsError{unknown}
	}
	cfg, err := loadConfig(ctx, r.g)
	if err != nil {
		return 0, err
	}
	var debug = r.env.Stderr
	if !r.g.debug {
		debug = nil
	}
	cl, err := newClient(ctx, svc, cfg, r.g, debug)
	if err != nil {
		return 0, err
	}
	op := svc.Op("DescribeCustomKeyStores")
	params := NewObject()
	params.Set("CustomKeyStoreId", id)
	start := time.Now()
	for attempt := 1; ; attempt++ {
		resp, err := cl.call(ctx, op, params)
		if err != nil {
			return 0, err
		}
		state, code := "", ""
		if o, ok := resp.(*Object); ok {
			if l, ok := o.M["CustomKeyStores"].([]any); ok && len(l) > 0 {
				if ks, ok := l[0].(*Object); ok {
					state, _ = ks.M["ConnectionState"].(string)
					code, _ = ks.M["ConnectionErrorCode"].(string)
				}
			}
		}
		if r.env.StderrTTY {
			fmt.Fprintf(r.env.Stderr, "\r\x1b[K%s: %s (%ds)", id, state, int(time.Since(start).Seconds()))
		}
		if state == want {
			if r.env.StderrTTY {
				fmt.Fprint(r.env.Stderr, "\n")
			}
			return exitOK, nil
		}
		if state == "FAILED" && want == "CONNECTED" {
			if r.env.StderrTTY {
				fmt.Fprint(r.env.Stderr, "\n")
			}
			return 0, &generalError{fmt.Sprintf("Waiter CustomKeyStoreConnected failed: Waiter encountered a terminal failure state: ConnectionState FAILED, ConnectionErrorCode %s", code)}
		}
		if attempt >= waitMaxAttempts {
			return 0, &generalError{fmt.Sprintf("Waiter failed: Max attempts exceeded; last ConnectionState %s", state)}
		}
		select {
		case <-time.After(waitInterval):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
