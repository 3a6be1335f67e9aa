package server

import (
	"fmt"
	"testing"

	"github.com/kmsd/kmsd/internal/hsm"
)

// TestAdminErrorsComplete: every typed error of the hsm package has an
// admin API exception name, also when wrapped.
func TestAdminErrorsComplete(t *testing.T) {
	for _, err := range []error{
		hsm.ErrUnavailable, hsm.ErrClusterNotFound, hsm.ErrClusterNotActive, hsm.ErrNoActiveHSM, hsm.ErrUnreachable,
		hsm.ErrKeyNotFound, hsm.ErrKeyExists, hsm.ErrUserNotFound, hsm.ErrUserExists, hsm.ErrInvalidCredentials,
		hsm.ErrPINLocked, hsm.ErrNotLoggedIn, hsm.ErrUserLoggedIn, hsm.ErrInvalidRequest,
	} {
		if _, ok := adminError(fmt.Errorf("context: %w", err)); !ok {
			t.Errorf("%v has no admin exception name", err)
		}
	}
}
