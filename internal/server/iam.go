package server

import (
	"context"
	"encoding/xml"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/identity"
	"github.com/kmsd/kmsd/internal/policy"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// The IAM and STS APIs kmsd serves on its listener speak AWS's query
// protocol (awsQuery): a form-encoded POST naming Action and Version,
// answered in XML. Requests are told from KMS's JSON ones by their
// Content-Type, and IAM's from STS's by the service of the SigV4
// credential scope.

const (
	iamNS = "https://iam.amazonaws.com/doc/2010-05-08/"
	stsNS = "https://sts.amazonaws.com/doc/2011-06-15/"
)

// queryError is an awsQuery error answer.
type queryError struct {
	Status  int
	Code    string
	Message string
}

func (e *queryError) Error() string { return e.Code + ": " + e.Message }

var iamStatus = map[string]int{
	"NoSuchEntity": 404, "EntityAlreadyExists": 409, "DeleteConflict": 409, "LimitExceeded": 409,
	"MalformedPolicyDocument": 400, "ValidationError": 400, "AccessDenied": 403, "UnmodifiableEntity": 400,
	"InvalidClientTokenId": 403, "SignatureDoesNotMatch": 403, "InvalidAction": 400,
	"MissingAuthenticationToken": 403, "ExpiredToken": 400, "IncompleteSignature": 400,
}

func toQueryError(err error) *queryError {
	var qe *queryError
	if errors.As(err, &qe) {
		return qe
	}
	var ie *identity.Error
	if errors.As(err, &ie) {
		st := iamStatus[ie.Code]
		if st == 0 {
			st = 400
		}
		return &queryError{st, ie.Code, ie.Message}
	}
	return &queryError{500, "ServiceFailure", "The request failed because of an internal error."}
}

// queryCall is one decoded awsQuery request.
type queryCall struct {
	ctx    context.Context
	id     *identity.Identity
	form   url.Values
	action string
	// sourceIP and secure feed aws:SourceIp and aws:SecureTransport.
	sourceIP string
	secure   bool
}

func (q *queryCall) get(name string) string { return q.form.Get(name) }

// queryOp runs one IAM or STS action and returns its result element
// (nil for actions whose answer is empty) and the response elements to
// audit (secrets left out).
type queryOp func(a *api, q *queryCall) (result any, audited any, err error)

// serveQuery serves an IAM or STS request.
func (a *api) serveQuery(w http.ResponseWriter, r *http.Request, body []byte, rec *audit.Record) {
	form, err := url.ParseQuery(string(body))
	service := scopeService(r)
	ns, verifier, ops := iamNS, a.iamVerifier, iamOps
	rec.EventSource, rec.AWSRegion = "iam.amazonaws.com", "us-east-1"
	if service == "sts" {
		ns, verifier, ops = stsNS, a.stsVerifier, stsOps
		rec.EventSource = "sts.amazonaws.com"
	}
	if err == nil {
		// url.ParseQuery passes any bytes through: refuse what is not
		// text before it is stored, or replaced by U+FFFD on the way.
		if qe := checkUTF8(form); qe != nil {
			a.queryFail(w, rec, ns, qe)
			return
		}
	}
	action := form.Get("Action")
	rec.EventName = action
	if err != nil || action == "" {
		a.queryFail(w, rec, ns, &queryError{400, "InvalidAction", "Could not find operation " + action + "."})
		return
	}
	res, err := verifier.Verify(r, body)
	if err != nil {
		var se *sigv4.Error
		qe := &queryError{403, "InvalidClientTokenId", "The security token included in the request is invalid."}
		if errors.As(err, &se) {
			qe.Code, qe.Message = se.Code, se.Message
			switch se.Code {
			case "UnrecognizedClientException":
				qe.Code = "InvalidClientTokenId"
			case "InvalidSignatureException":
				qe.Code = "SignatureDoesNotMatch"
			}
		}
		a.queryFail(w, rec, ns, qe)
		return
	}
	if region := res.Region; service == "sts" && region != "" {
		rec.AWSRegion = region
	}
	if a.ids == nil {
		a.queryFail(w, rec, ns, &queryError{400, "InvalidAction", "kmsd serves IAM and STS only with --auth verify."})
		return
	}
	id, ok := a.ids.IdentityFor(res.AccessKeyID, res.SessionToken)
	if !ok || !tokenMatches(id, res.SessionToken) {
		a.queryFail(w, rec, ns, &queryError{403, "InvalidClientTokenId", "The security token included in the request is invalid."})
		return
	}
	setIdentity(rec, id)
	op, ok := ops[action]
	if !ok {
		a.queryFail(w, rec, ns, &queryError{400, "InvalidAction", "Could not find operation " + action + " for version " + form.Get("Version") + "."})
		return
	}
	params := map[string]any{}
	for k, v := range form {
		if k == "Action" || k == "Version" || len(v) == 0 || audit.IsSecret(k) {
			continue
		}
		params[strings.ToLower(k[:1])+k[1:]] = v[0]
	}
	if len(params) > 0 {
		rec.RequestParameters = params
	}
	rec.ReadOnly = strings.HasPrefix(action, "Get") || strings.HasPrefix(action, "List")
	q := &queryCall{ctx: r.Context(), id: id, form: form, action: action, sourceIP: rec.SourceIPAddress, secure: r.TLS != nil}
	result, audited, err := op(a, q)
	if err != nil {
		a.queryFail(w, rec, ns, toQueryError(err))
		return
	}
	rec.ResponseElements = audited
	a.metrics.requests.WithLabelValues(action, "OK").Inc() // IAM and STS actions are not pre-resolved
	writeQuery(w, ns, action, rec.RequestID, result)
}

// checkUTF8 refuses a form with a parameter name or value that is not
// UTF-8, as IAM and STS refuse a value outside a member's constraints
// (ValidationError, 400), naming the first such parameter in sorted order.
func checkUTF8(form url.Values) *queryError {
	bad, found, badKey := "", false, false
	for k, vs := range form {
		if !utf8.ValidString(k) {
			badKey = true
			continue
		}
		for _, v := range vs {
			if !utf8.ValidString(v) && (!found || k < bad) {
				bad, found = k, true
			}
		}
	}
	switch {
	case badKey:
		return &queryError{400, "ValidationError", "1 validation error detected: a parameter name is not valid UTF-8"}
	case found:
		if bad != "" {
			bad = strings.ToLower(bad[:1]) + bad[1:] // AWS names members in lower camel case
		}
		return &queryError{400, "ValidationError", "1 validation error detected: Value at '" + bad +
			"' failed to satisfy constraint: Member must be valid UTF-8"}
	}
	return nil
}

// scopeService is the service named by the request's credential scope.
func scopeService(r *http.Request) string {
	h := r.Header.Get("Authorization")
	cred := ""
	if i := strings.Index(h, "Credential="); i >= 0 {
		cred = h[i+len("Credential="):]
		if j := strings.IndexAny(cred, ", "); j >= 0 {
			cred = cred[:j]
		}
	} else {
		cred = r.URL.Query().Get("X-Amz-Credential")
	}
	parts := strings.Split(cred, "/")
	if len(parts) == 5 {
		return parts[3]
	}
	return ""
}

func (a *api) queryFail(w http.ResponseWriter, rec *audit.Record, ns string, e *queryError) {
	a.metrics.fail(rec.EventName, e.Code)
	a.log.Debug("request failed", "op", rec.EventName, "requestId", rec.RequestID, "code", e.Code)
	rec.ErrorCode, rec.ErrorMessage = e.Code, e.Message
	typ := "Sender"
	if e.Status >= 500 {
		typ = "Receiver"
	}
	var b strings.Builder
	b.WriteString(xml.Header)
	b.WriteString(`<ErrorResponse xmlns="` + ns + `"><Error><Type>` + typ + `</Type><Code>`)
	xml.EscapeText(&b, []byte(e.Code))
	b.WriteString(`</Code><Message>`)
	xml.EscapeText(&b, []byte(e.Message))
	b.WriteString(`</Message></Error><RequestId>` + rec.RequestID + `</RequestId></ErrorResponse>`)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-RequestId", rec.RequestID)
	w.WriteHeader(e.Status)
	w.Write([]byte(b.String()))
}

func writeQuery(w http.ResponseWriter, ns, action, reqID string, result any) {
	var b strings.Builder
	b.WriteString(xml.Header)
	b.WriteString(`<` + action + `Response xmlns="` + ns + `">`)
	if result != nil {
		enc := xml.NewEncoder(&b)
		enc.EncodeElement(result, xml.StartElement{Name: xml.Name{Local: action + "Result"}})
		enc.Flush()
	}
	b.WriteString(`<ResponseMetadata><RequestId>` + reqID + `</RequestId></ResponseMetadata></` + action + `Response>`)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-RequestId", reqID)
	w.Write([]byte(b.String()))
}

// iamAuthorize decides an IAM action on resource from the caller's
// identity policies (IAM is not a resource-policy service).
func (q *queryCall) authorize(resource string) error {
	action := "iam:" + q.action
	r := policy.NewRequest(q.id.Principal, action, resource)
	r.SetTime(time.Now())
	if ok, reason := policy.DecideIAMOnly(q.id.AuthzIdentity(), r); !ok {
		return &queryError{403, "AccessDenied", policy.AccessDeniedMessage(r, reason)}
	}
	return nil
}

// userName is the UserName parameter, or the caller's own user name.
func (q *queryCall) userName() (string, error) {
	if n := q.get("UserName"); n != "" {
		return n, nil
	}
	if q.id.Principal.Type == policy.IAMUser {
		return q.id.Principal.Name, nil
	}
	return "", &queryError{400, "ValidationError", "Must specify userName when calling with non-User credentials"}
}

func (q *queryCall) account() string { return q.id.Principal.Account }

func userARN(account, name string) string { return "arn:aws:iam::" + account + ":user/" + name }
func roleARN(account, name string) string { return "arn:aws:iam::" + account + ":role/" + name }

func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

type xmlUser struct {
	Path       string `xml:"Path"`
	UserName   string `xml:"UserName"`
	UserID     string `xml:"UserId"`
	ARN        string `xml:"Arn"`
	CreateDate string `xml:"CreateDate"`
}

func toXMLUser(u *identity.User) xmlUser {
	return xmlUser{Path: u.Path, UserName: u.Name, UserID: u.ID, ARN: u.ARN(), CreateDate: isoTime(u.Created)}
}

func userElements(u *identity.User) map[string]any {
	return map[string]any{"user": map[string]any{"path": u.Path, "userName": u.Name, "userId": u.ID, "arn": u.ARN(), "createDate": isoTime(u.Created)}}
}

type xmlRole struct {
	Path                     string `xml:"Path"`
	RoleName                 string `xml:"RoleName"`
	RoleID                   string `xml:"RoleId"`
	ARN                      string `xml:"Arn"`
	CreateDate               string `xml:"CreateDate"`
	AssumeRolePolicyDocument string `xml:"AssumeRolePolicyDocument"`
	Description              string `xml:"Description,omitempty"`
	MaxSessionDuration       int32  `xml:"MaxSessionDuration"`
}

func toXMLRole(r *identity.Role) xmlRole {
	return xmlRole{Path: r.Path, RoleName: r.Name, RoleID: r.ID, ARN: r.ARN(), CreateDate: isoTime(r.Created),
		AssumeRolePolicyDocument: url.QueryEscape(r.AssumeRolePolicy), Description: r.Description, MaxSessionDuration: r.MaxSession}
}

type userResult struct {
	User xmlUser `xml:"User"`
}

type roleResult struct {
	Role xmlRole `xml:"Role"`
}

type members struct {
	Items []any `xml:"member"`
}

var iamOps = map[string]queryOp{
	"CreateUser": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		u, err := a.ids.CreateUser(q.ctx, q.account(), name, q.get("Path"))
		if err != nil {
			return nil, nil, err
		}
		return userResult{toXMLUser(u)}, userElements(u), nil
	},
	"GetUser": func(a *api, q *queryCall) (any, any, error) {
		name, err := q.userName()
		if err != nil {
			return nil, nil, err
		}
		// Every user may read itself, as in IAM.
		if !(q.id.Principal.Type == policy.IAMUser && q.id.Principal.Name == name) {
			if err := q.authorize(userARN(q.account(), name)); err != nil {
				return nil, nil, err
			}
		}
		u, err := a.ids.GetUser(q.account(), name)
		if err != nil {
			return nil, nil, err
		}
		return userResult{toXMLUser(u)}, nil, nil
	},
	"ListUsers": func(a *api, q *queryCall) (any, any, error) {
		if err := q.authorize(userARN(q.account(), "*")); err != nil {
			return nil, nil, err
		}
		type out struct {
			Users       members `xml:"Users"`
			IsTruncated bool    `xml:"IsTruncated"`
		}
		var o out
		for _, u := range a.ids.ListUsers(q.account(), q.get("PathPrefix")) {
			x := toXMLUser(u)
			o.Users.Items = append(o.Users.Items, x)
		}
		return o, nil, nil
	},
	"DeleteUser": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.DeleteUser(q.ctx, q.account(), name)
	},
	"CreateAccessKey": func(a *api, q *queryCall) (any, any, error) {
		name, err := q.userName()
		if err != nil {
			return nil, nil, err
		}
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		k, secret, err := a.ids.CreateAccessKey(q.ctx, q.account(), name)
		if err != nil {
			return nil, nil, err
		}
		type accessKey struct {
			UserName        string `xml:"UserName"`
			AccessKeyID     string `xml:"AccessKeyId"`
			Status          string `xml:"Status"`
			SecretAccessKey string `xml:"SecretAccessKey"`
			CreateDate      string `xml:"CreateDate"`
		}
		// The secret is in the answer only; the audit record leaves it out.
		type out struct {
			AccessKey accessKey `xml:"AccessKey"`
		}
		return out{accessKey{UserName: name, AccessKeyID: k.ID, Status: k.Status, SecretAccessKey: secret, CreateDate: isoTime(k.Created)}},
			map[string]any{"accessKey": map[string]any{"userName": name, "accessKeyId": k.ID, "status": k.Status, "createDate": isoTime(k.Created)}}, nil
	},
	"DeleteAccessKey": func(a *api, q *queryCall) (any, any, error) {
		name, err := q.userName()
		if err != nil {
			return nil, nil, err
		}
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.DeleteAccessKey(q.ctx, q.account(), name, q.get("AccessKeyId"))
	},
	"ListAccessKeys": func(a *api, q *queryCall) (any, any, error) {
		name, err := q.userName()
		if err != nil {
			return nil, nil, err
		}
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		keys, err := a.ids.ListAccessKeys(q.account(), name)
		if err != nil {
			return nil, nil, err
		}
		type meta struct {
			UserName    string `xml:"UserName"`
			AccessKeyID string `xml:"AccessKeyId"`
			Status      string `xml:"Status"`
			CreateDate  string `xml:"CreateDate"`
		}
		type out struct {
			AccessKeyMetadata members `xml:"AccessKeyMetadata"`
			IsTruncated       bool    `xml:"IsTruncated"`
		}
		var o out
		for _, k := range keys {
			o.AccessKeyMetadata.Items = append(o.AccessKeyMetadata.Items, meta{UserName: name, AccessKeyID: k.ID, Status: k.Status, CreateDate: isoTime(k.Created)})
		}
		return o, nil, nil
	},
	"PutUserPolicy": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.PutUserPolicy(q.ctx, q.account(), name, q.get("PolicyName"), q.get("PolicyDocument"))
	},
	"GetUserPolicy": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		doc, err := a.ids.GetUserPolicy(q.account(), name, q.get("PolicyName"))
		if err != nil {
			return nil, nil, err
		}
		type out struct {
			UserName       string `xml:"UserName"`
			PolicyName     string `xml:"PolicyName"`
			PolicyDocument string `xml:"PolicyDocument"`
		}
		return out{name, q.get("PolicyName"), url.QueryEscape(doc)}, nil, nil
	},
	"ListUserPolicies": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		names, err := a.ids.ListUserPolicies(q.account(), name)
		if err != nil {
			return nil, nil, err
		}
		type out struct {
			PolicyNames members `xml:"PolicyNames"`
			IsTruncated bool    `xml:"IsTruncated"`
		}
		var o out
		for _, n := range names {
			o.PolicyNames.Items = append(o.PolicyNames.Items, n)
		}
		return o, nil, nil
	},
	"DeleteUserPolicy": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("UserName")
		if err := q.authorize(userARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.DeleteUserPolicy(q.ctx, q.account(), name, q.get("PolicyName"))
	},
	"CreateRole": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("RoleName")
		if err := q.authorize(roleARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		var maxSession int64
		if v := q.get("MaxSessionDuration"); v != "" {
			var err error
			if maxSession, err = strconv.ParseInt(v, 10, 32); err != nil {
				return nil, nil, &queryError{400, "ValidationError", "Invalid MaxSessionDuration"}
			}
		}
		r, err := a.ids.CreateRole(q.ctx, q.account(), name, q.get("Path"), q.get("AssumeRolePolicyDocument"), q.get("Description"), int32(maxSession))
		if err != nil {
			return nil, nil, err
		}
		return roleResult{toXMLRole(r)}, map[string]any{"role": map[string]any{"roleName": r.Name, "roleId": r.ID, "arn": r.ARN(), "path": r.Path, "createDate": isoTime(r.Created)}}, nil
	},
	"GetRole": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("RoleName")
		if err := q.authorize(roleARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		r, err := a.ids.GetRole(q.account(), name)
		if err != nil {
			return nil, nil, err
		}
		return roleResult{toXMLRole(r)}, nil, nil
	},
	"ListRoles": func(a *api, q *queryCall) (any, any, error) {
		if err := q.authorize(roleARN(q.account(), "*")); err != nil {
			return nil, nil, err
		}
		type out struct {
			Roles       members `xml:"Roles"`
			IsTruncated bool    `xml:"IsTruncated"`
		}
		var o out
		for _, r := range a.ids.ListRoles(q.account()) {
			x := toXMLRole(r)
			o.Roles.Items = append(o.Roles.Items, x)
		}
		return o, nil, nil
	},
	"PutRolePolicy": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("RoleName")
		if err := q.authorize(roleARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.PutRolePolicy(q.ctx, q.account(), name, q.get("PolicyName"), q.get("PolicyDocument"))
	},
	"DeleteRolePolicy": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("RoleName")
		if err := q.authorize(roleARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.DeleteRolePolicy(q.ctx, q.account(), name, q.get("PolicyName"))
	},
	"DeleteRole": func(a *api, q *queryCall) (any, any, error) {
		name := q.get("RoleName")
		if err := q.authorize(roleARN(q.account(), name)); err != nil {
			return nil, nil, err
		}
		return nil, nil, a.ids.DeleteRole(q.ctx, q.account(), name)
	},
}
