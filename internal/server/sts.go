package server

import "strconv"

// stsOps is the STS subset kmsd serves: enough for SDK role profiles
// (role_arn + source_profile) and for `aws sts get-caller-identity`.
var stsOps = map[string]queryOp{
	"GetCallerIdentity": func(a *api, q *queryCall) (any, any, error) {
		type out struct {
			ARN     string `xml:"Arn"`
			UserID  string `xml:"UserId"`
			Account string `xml:"Account"`
		}
		p := q.id.Principal
		return out{p.ARN, p.UserID, p.Account}, nil, nil
	},
	"AssumeRole": func(a *api, q *queryCall) (any, any, error) {
		var dur int64
		if v := q.get("DurationSeconds"); v != "" {
			var err error
			if dur, err = strconv.ParseInt(v, 10, 32); err != nil {
				return nil, nil, &queryError{400, "ValidationError", "Invalid DurationSeconds"}
			}
		}
		cr, err := a.ids.AssumeRole(q.id, q.get("RoleArn"), q.get("RoleSessionName"), int32(dur))
		if err != nil {
			return nil, nil, err
		}
		type creds struct {
			AccessKeyID     string `xml:"AccessKeyId"`
			SecretAccessKey string `xml:"SecretAccessKey"`
			SessionToken    string `xml:"SessionToken"`
			Expiration      string `xml:"Expiration"`
		}
		type user struct {
			AssumedRoleID string `xml:"AssumedRoleId"`
			ARN           string `xml:"Arn"`
		}
		type out struct {
			Credentials     creds `xml:"Credentials"`
			AssumedRoleUser user  `xml:"AssumedRoleUser"`
		}
		exp := isoTime(cr.Expiration)
		// The audit record names the new access key, never its secret
		// or session token.
		audited := map[string]any{
			"credentials":     map[string]any{"accessKeyId": cr.AccessKeyID, "expiration": exp},
			"assumedRoleUser": map[string]any{"assumedRoleId": cr.AssumedRoleID, "arn": cr.AssumedRoleARN},
		}
		return out{Credentials: creds{cr.AccessKeyID, cr.SecretAccessKey, cr.SessionToken, exp}, AssumedRoleUser: user{cr.AssumedRoleID, cr.AssumedRoleARN}}, audited, nil
	},
}
