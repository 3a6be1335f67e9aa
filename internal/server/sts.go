package server

import (
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/kmsd/kmsd/internal/identity"
)

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
		in, err := assumeRoleInput(q.form)
		if err != nil {
			return nil, nil, err
		}
		in.SourceIP, in.SecureTransport = q.sourceIP, q.secure
		cr, err := a.ids.AssumeRole(q.id, in)
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
			Credentials      creds  `xml:"Credentials"`
			AssumedRoleUser  user   `xml:"AssumedRoleUser"`
			PackedPolicySize *int   `xml:"PackedPolicySize,omitempty"`
			SourceIdentity   string `xml:"SourceIdentity,omitempty"`
		}
		exp := isoTime(cr.Expiration)
		// The audit record names the new access key, never its secret
		// or session token.
		audited := map[string]any{
			"credentials":     map[string]any{"accessKeyId": cr.AccessKeyID, "expiration": exp},
			"assumedRoleUser": map[string]any{"assumedRoleId": cr.AssumedRoleID, "arn": cr.AssumedRoleARN},
		}
		o := out{Credentials: creds{cr.AccessKeyID, cr.SecretAccessKey, cr.SessionToken, exp},
			AssumedRoleUser: user{cr.AssumedRoleID, cr.AssumedRoleARN}, SourceIdentity: cr.SourceIdentity}
		if cr.PackedPolicySize >= 0 {
			o.PackedPolicySize = &cr.PackedPolicySize
			audited["packedPolicySize"] = cr.PackedPolicySize
		}
		if cr.SourceIdentity != "" {
			audited["sourceIdentity"] = cr.SourceIdentity
		}
		return o, audited, nil
	},
}

// assumeRoleInput decodes AssumeRole's parameters. A parameter kmsd does
// not know is refused rather than ignored: dropping one (a session policy,
// an MFA code) could give a session more than its caller asked for.
func assumeRoleInput(form url.Values) (*identity.AssumeRoleInput, error) {
	in := &identity.AssumeRoleInput{RoleARN: form.Get("RoleArn"), RoleSessionName: form.Get("RoleSessionName")}
	opt := func(name string) *string {
		if v, ok := form[name]; ok && len(v) > 0 {
			return &v[0]
		}
		return nil
	}
	in.Policy, in.ExternalID, in.SourceIdentity = opt("Policy"), opt("ExternalId"), opt("SourceIdentity")
	in.SerialNumber, in.TokenCode = opt("SerialNumber"), opt("TokenCode")
	if v := opt("DurationSeconds"); v != nil {
		d, err := strconv.ParseInt(*v, 10, 64)
		if err != nil {
			return nil, &queryError{400, "ValidationError", "1 validation error detected: Value '" + *v + "' at 'durationSeconds' failed to satisfy constraint: Member must be an integer"}
		}
		in.DurationSeconds = &d
	}
	arns := map[int]string{}
	tags := map[int]*identity.Tag{}
	transitive := map[int]string{}
	contexts := map[int]bool{}
	for name, vs := range form {
		v := ""
		if len(vs) > 0 {
			v = vs[0]
		}
		switch name {
		case "Action", "Version", "RoleArn", "RoleSessionName", "Policy", "ExternalId", "SourceIdentity",
			"SerialNumber", "TokenCode", "DurationSeconds":
			continue
		case "PolicyArns", "Tags", "TransitiveTagKeys", "ProvidedContexts":
			if v == "" { // an empty list
				continue
			}
		}
		list, rest, _ := strings.Cut(name, ".member.")
		n, field, _ := strings.Cut(rest, ".")
		i, err := strconv.Atoi(n)
		if err != nil || i < 1 {
			return nil, unknownParameter(name)
		}
		switch {
		case list == "PolicyArns" && field == "arn":
			arns[i] = v
		case list == "Tags" && (field == "Key" || field == "Value"):
			t := tags[i]
			if t == nil {
				t = &identity.Tag{}
				tags[i] = t
			}
			if field == "Key" {
				t.Key = v
			} else {
				t.Value = v
			}
		case list == "TransitiveTagKeys" && field == "":
			transitive[i] = v
		case list == "ProvidedContexts":
			contexts[i] = true
		default:
			return nil, unknownParameter(name)
		}
	}
	for _, i := range sortedIndexes(arns) {
		in.PolicyARNs = append(in.PolicyARNs, arns[i])
	}
	for _, i := range sortedIndexes(tags) {
		in.Tags = append(in.Tags, *tags[i])
	}
	for _, i := range sortedIndexes(transitive) {
		in.TransitiveTagKeys = append(in.TransitiveTagKeys, transitive[i])
	}
	in.ProvidedContexts = len(contexts)
	return in, nil
}

func unknownParameter(name string) error {
	return &queryError{400, "ValidationError", "kmsd does not support the parameter " + name + " of AssumeRole."}
}

func sortedIndexes[V any](m map[int]V) []int {
	out := make([]int, 0, len(m))
	for i := range m {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}
