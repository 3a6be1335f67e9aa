package e2etest

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// ClosedConnRetryer is the retryer of the tests' aws-sdk-go-v2 clients:
// no retries — a failure of kmsd must show at once — except one for an
// error on a connection the client itself had closed (net.ErrClosed). That
// is a race inside the SDK and net/http after an error response, not a
// fault of the server (aws-sdk-go-v2 issues #1825 and #2737; the SDK's
// default retryer retries it since PR #2949), and it made tests that turn
// retries off fail now and then with "use of closed network connection".
func ClosedConnRetryer() aws.Retryer { return closedConnRetryer{} }

type closedConnRetryer struct{}

func (closedConnRetryer) IsErrorRetryable(err error) bool { return errors.Is(err, net.ErrClosed) }
func (closedConnRetryer) MaxAttempts() int                { return 4 }

// RetryDelay waits a little more each time: an immediate single retry
// failed the same way (TestStoresAtScale, 5 of ~32 runs on a loaded
// machine, both attempts closed).
func (closedConnRetryer) RetryDelay(attempt int, _ error) (time.Duration, error) {
	return time.Duration(attempt) * 25 * time.Millisecond, nil
}
func (closedConnRetryer) GetRetryToken(context.Context, error) (func(error) error, error) {
	return func(error) error { return nil }, nil
}
func (closedConnRetryer) GetInitialToken() func(error) error { return func(error) error { return nil } }
