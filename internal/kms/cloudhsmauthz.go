package kms

import (
	"sort"

	"github.com/kmsd/kmsd/internal/policy"
)

// CloudHSMRequest is what a CloudHSM v2 call is authorised on. The tag
// condition keys CloudHSM supports are IAM's global ones (AWS's service
// authorization reference lists them for cloudhsm:CreateCluster,
// TagResource, UntagResource and the cluster and backup resource types).
type CloudHSMRequest struct {
	// Op is the CloudHSM v2 operation, "DeleteCluster"; its entry in
	// Authorizations is "cloudhsm:"+Op.
	Op string
	// Resource is the cluster's or backup's ARN, or "*" (or "") for the
	// operations on no one resource (DescribeClusters, CreateCluster).
	Resource string
	// ResourceAccount is the account of Resource ("" with "*").
	ResourceAccount string
	// ResourceTags are the existing cluster's tags (aws:ResourceTag/<k>);
	// nil when the resource does not exist or has none.
	ResourceTags map[string]string
	// RequestTags are the tags the call sets (aws:RequestTag/<k>) and
	// TagKeys the tag keys it names (aws:TagKeys): CreateCluster and
	// TagResource set both, UntagResource only TagKeys.
	RequestTags map[string]string
	TagKeys     []string
}

// AuthorizeCloudHSM decides a CloudHSM v2 cluster operation as the
// StoreScope operations are decided (AuthorizeStore): by the caller's
// identity policies alone — there is no resource policy for clusters —
// with an explicit deny first and the account's root allowed, never across
// accounts, and with the global condition keys of every KMS request plus
// the tag keys of r. A denial is an AccessDeniedException in AWS's words
// (policy.AccessDeniedMessage).
func (s *Service) AuthorizeCloudHSM(c *Caller, r CloudHSMRequest) error {
	a, ok := Authorizations["cloudhsm:"+r.Op]
	if !ok || a.Scope != StoreScope {
		return internal(errUnknownOperation("cloudhsm:" + r.Op))
	}
	if r.Resource == "" {
		r.Resource = "*"
	}
	req := s.request(c, a.Action, r.Resource)
	for k, v := range r.ResourceTags {
		req.Set(policy.KeyResourceTagPrefix+k, v)
	}
	for k, v := range r.RequestTags {
		req.Set(policy.KeyRequestTagPrefix+k, v)
	}
	if len(r.TagKeys) > 0 {
		keys := append([]string(nil), r.TagKeys...)
		sort.Strings(keys)
		req.Set(policy.KeyTagKeys, keys...)
	}
	return decideStore(c, req, r.ResourceAccount)
}
