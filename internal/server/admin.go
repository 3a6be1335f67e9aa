package server

// kmsd's admin API: what AWS users do with the CloudHSM CLI (activate a
// cluster, manage the kmsuser crypto user, log in and out, list and
// delete keys), as JSON over the KMS listener with X-Amz-Target
// KmsdAdmin.<Op>, SigV4-signed for the "kms" service, for the account's
// administrator only. kmsctl's cloudhsm-cli commands are its client.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/awsjson"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/identity"
)

const adminPrefix = "KmsdAdmin"

// adminEventSource is the audit log's eventSource of admin operations.
const adminEventSource = "kmsd-admin"

// adminParams is what the audit log records of an admin request.
type adminParams struct {
	ClusterId string `json:"clusterId,omitempty"`
	Username  string `json:"username,omitempty"`
	Role      string `json:"role,omitempty"`
	Label     string `json:"label,omitempty"`
}

// adminRequest is the input of every admin operation; each uses the
// members it needs.
type adminRequest struct {
	ClusterId string `json:"ClusterId"`
	Username  string `json:"Username"`
	Role      string `json:"Role"`
	Password  string `json:"Password"`
	Label     string `json:"Label"`
}

type adminKey struct {
	Label string   `json:"Label"`
	Hsms  []string `json:"Hsms"`
}

type adminUser struct {
	Username     string `json:"Username"`
	Role         string `json:"Role"`
	LockedOut    bool   `json:"LockedOut"`
	FailedLogins int    `json:"FailedLogins"`
	LoggedIn     bool   `json:"LoggedIn"`
}

// adminOps are the admin operations; each returns its JSON output.
var adminOps = map[string]func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error){
	"ActivateCluster": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"ClusterId": in.ClusterId, "State": hsm.ClusterActive}, s.Activate(ctx, c, in.ClusterId, in.Password)
	},
	"CreateUser": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"Username": in.Username, "Role": in.Role}, s.CreateUser(ctx, c, in.ClusterId, in.Username, in.Role, in.Password)
	},
	"DeleteUser": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"Username": in.Username, "Role": in.Role}, s.DeleteUser(ctx, c, in.ClusterId, in.Username, in.Role)
	},
	"ChangePassword": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"Username": in.Username, "Role": in.Role}, s.ChangePassword(ctx, c, in.ClusterId, in.Username, in.Role, in.Password)
	},
	"ListUsers": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		us, err := s.Users(ctx, c, in.ClusterId)
		out := []adminUser{}
		for _, u := range us {
			out = append(out, adminUser{Username: u.Name, Role: u.Role, LockedOut: u.Locked, FailedLogins: u.FailedLogins, LoggedIn: u.LoggedIn})
		}
		return map[string]any{"Users": out}, err
	},
	"Login": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"Username": in.Username, "Role": in.Role}, s.Login(ctx, c, in.ClusterId, in.Username, in.Role, in.Password, hsm.ClientCLI)
	},
	"Logout": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		return map[string]string{"Username": in.Username, "Role": in.Role}, s.Logout(ctx, c, in.ClusterId, in.Username, in.Role, hsm.ClientCLI)
	},
	"ListKeys": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		if _, err := s.Describe(c, in.ClusterId); err != nil {
			return nil, err
		}
		ks, err := s.Keys(ctx, in.ClusterId)
		out := []adminKey{}
		for _, k := range ks {
			out = append(out, adminKey{Label: k.Label, Hsms: k.HSMs})
		}
		return map[string]any{"Keys": out}, err
	},
	"GenerateKey": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		if _, err := s.Describe(c, in.ClusterId); err != nil {
			return nil, err
		}
		return map[string]string{"Label": in.Label, "KeyType": "aes", "KeyLengthBytes": "32"}, s.CreateKey(ctx, in.ClusterId, in.Label)
	},
	"DeleteKey": func(ctx context.Context, s *hsm.Service, c hsm.Caller, in *adminRequest) (any, error) {
		if _, err := s.Describe(c, in.ClusterId); err != nil {
			return nil, err
		}
		return map[string]string{"Label": in.Label}, s.DeleteKey(ctx, in.ClusterId, in.Label)
	},
}

// adminErrors maps the hsm package's errors to the admin API's exception
// names, first match wins.
var adminErrors = []struct {
	err  error
	code string
}{
	{hsm.ErrUnavailable, "HsmUnavailableException"},
	{hsm.ErrClusterNotFound, "ClusterNotFoundException"},
	{hsm.ErrClusterNotActive, "ClusterNotActiveException"},
	{hsm.ErrNoActiveHSM, "NoActiveHsmException"},
	{hsm.ErrUnreachable, "HsmUnreachableException"},
	{hsm.ErrKeyNotFound, "KeyNotFoundException"},
	{hsm.ErrKeyExists, "KeyAlreadyExistsException"},
	{hsm.ErrUserNotFound, "UserNotFoundException"},
	{hsm.ErrUserExists, "UserAlreadyExistsException"},
	{hsm.ErrPINLocked, "UserLockedOutException"},
	{hsm.ErrInvalidCredentials, "InvalidCredentialsException"},
	{hsm.ErrNotLoggedIn, "UserNotLoggedInException"},
	{hsm.ErrUserLoggedIn, "UserLoggedInException"},
	{hsm.ErrInvalidRequest, "InvalidRequestException"},
}

func adminError(err error) (code string, ok bool) {
	for _, e := range adminErrors {
		if errors.Is(err, e.err) {
			return e.code, true
		}
	}
	return "", false
}

// isAdmin reports whether p may use the admin API: the account's root or
// the administrator kmsd creates (bootstrapAdmin).
func isAdmin(p identity.Principal) bool {
	return p.ARN == identity.Root(p.Account).ARN || p.ARN == "arn:aws:iam::"+p.Account+":user/kmsd-admin"
}

// adminCaller verifies an admin API request (signed for "kms") and
// returns its caller if it is the account's administrator. The gate is
// that identity, not IAM policies (see the doc of cloudhsm.go): any other
// principal is refused with AccessDeniedException whatever its policies.
func (h *hsmServer) adminCaller(r *http.Request, body []byte, rec *audit.Record) (hsm.Caller, *hsmapi.Exception) {
	kc, exc := h.caller(r, body, h.kmsVerifier, rec)
	if exc != nil {
		return hsm.Caller{}, exc
	}
	if !isAdmin(identity.Principal{Account: kc.Account, ARN: kc.ARN}) {
		return hsm.Caller{}, hsmapi.NewException("AccessDeniedException", "User: "+kc.ARN+" is not the account's administrator and may not use kmsd's admin API.")
	}
	return hsmCaller(&kc), nil
}

func (h *hsmServer) serveAdmin(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record, m *metrics) {
	reqID := rec.RequestID
	opName, _ := awsjson.Target(r.Header.Get("X-Amz-Target"), adminPrefix)
	rec.EventSource = adminEventSource
	if adminOps[opName] != nil {
		rec.EventName = opName
		rec.ReadOnly = strings.HasPrefix(opName, "List")
	}
	fail := func(code, msg string) {
		label := opName
		if adminOps[opName] == nil {
			label = "unknown"
		}
		m.fail("admin:"+label, code)
		status := http.StatusBadRequest
		if code == "InternalFailure" {
			status = http.StatusInternalServerError
		}
		rec.ErrorCode, rec.ErrorMessage = code, msg
		awsjson.WriteError(w, reqID, &awsjson.Error{Code: code, Message: msg, Status: status})
	}
	c, exc := h.adminCaller(r, body, rec)
	if exc != nil {
		fail(exc.Name, exc.Message)
		return
	}
	op, ok := adminOps[opName]
	if !ok {
		fail("UnknownOperationException", "")
		return
	}
	in := new(adminRequest)
	if e := awsjson.Decode(body, in); e != nil {
		fail(e.Code, e.Message)
		return
	}
	// Never the password.
	rec.RequestParameters = adminParams{ClusterId: in.ClusterId, Username: in.Username, Role: in.Role, Label: in.Label}
	if in.ClusterId == "" {
		fail("ValidationException", "ClusterId is required.")
		return
	}
	out, err := op(r.Context(), h.svc, c, in)
	if err != nil {
		if code, ok := adminError(err); ok {
			fail(code, strings.TrimPrefix(err.Error(), "hsm: "))
			return
		}
		var e *hsmapi.Exception
		if errors.As(err, &e) {
			fail(e.Name, e.Message)
			return
		}
		h.log.Error("admin internal error", "op", opName, "requestId", reqID, "err", err)
		fail("InternalFailure", "The request processing has failed because of an internal error.")
		return
	}
	m.requests.WithLabelValues("admin:"+opName, "OK").Inc()
	b, _ := json.Marshal(out)
	var v any
	json.Unmarshal(b, &v)
	awsjson.WriteJSON(w, reqID, v)
}
