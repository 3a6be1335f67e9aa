package server

// Authorization of the CloudHSM v2 API. Every operation kmsd serves is
// decided by the KMS policy engine (kms.Service.AuthorizeCloudHSM): IAM
// identity policies only, explicit deny first, the account's root allowed,
// never across accounts. The order is authenticate → decode and validate
// the input against the model → authorize → run: the model's checks say
// nothing about what exists, and the resource ARN needs the (well-formed)
// cluster id. Everything that does depend on what exists — not found,
// wrong state — comes after the decision, and the ARN of a cluster id that
// does not exist is decided like any other, so a denied caller hears
// AccessDeniedException whether or not the cluster exists.
//
// A denial answers AccessDeniedException (the IAM front door's exception,
// not the model's CloudHsmAccessDeniedException, which CloudHSM returns
// for its own refusals) with HTTP 400, as AWS's awsJson services do for
// every client error; hsmapi.Status gives 400 for any name that is not a
// modelled server fault.

import (
	"errors"
	"strings"

	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/hsm"
	"github.com/kmsd/kmsd/internal/hsmapi"
	"github.com/kmsd/kmsd/internal/kms"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// hsmAuthorizer decides CloudHSM v2 calls; *kms.Service implements it.
type hsmAuthorizer interface {
	AuthorizeCloudHSM(c *kms.Caller, r kms.CloudHSMRequest) error
}

var _ hsmAuthorizer = (*kms.Service)(nil)

// hsmResourceTags returns the tags of a caller's cluster or backup (nil when it does
// not exist); *hsm.Service.ResourceTags.
type hsmResourceTags func(c hsm.Caller, id string) map[string]string

// cloudHSMARN is the ARN of a CloudHSM resource: kind "cluster" or
// "backup".
func cloudHSMARN(c hsm.Caller, kind, id string) string {
	return "arn:aws:cloudhsm:" + c.Region + ":" + c.Account + ":" + kind + "/" + id
}

// cloudHSMRequest is what the decoded input in of operation op is
// authorised on: the resource and the tag condition keys AWS supplies for
// the operation. Clusters (and backups) are named by id, so they are
// always the caller's account's: the id of another account's cluster
// builds an ARN of the caller's account, which names no cluster.
func cloudHSMRequest(op string, in any, c hsm.Caller, tags hsmResourceTags) kms.CloudHSMRequest {
	r := kms.CloudHSMRequest{Op: op, Resource: "*"}
	resource := func(id string) {
		kind := "cluster"
		if strings.HasPrefix(id, "backup-") {
			kind = "backup"
		}
		r.Resource, r.ResourceAccount = cloudHSMARN(c, kind, id), c.Account
		if tags != nil {
			r.ResourceTags = tags(c, id)
		}
	}
	switch in := in.(type) {
	case *hsmapi.CreateClusterRequest:
		if in.SourceBackupId != nil {
			id := *in.SourceBackupId // a backup id or ARN
			resource(id[strings.LastIndex(id, "/")+1:])
		}
		r.RequestTags, r.TagKeys = requestTags(in.TagList)
	case *hsmapi.CreateHsmRequest:
		resource(*in.ClusterId)
	case *hsmapi.DeleteClusterRequest:
		resource(*in.ClusterId)
	case *hsmapi.DeleteHsmRequest:
		resource(*in.ClusterId)
	case *hsmapi.InitializeClusterRequest:
		resource(*in.ClusterId)
	case *hsmapi.ModifyClusterRequest:
		resource(*in.ClusterId)
	case *hsmapi.DeleteBackupRequest:
		resource(*in.BackupId)
	case *hsmapi.RestoreBackupRequest:
		resource(*in.BackupId)
	case *hsmapi.ModifyBackupAttributesRequest:
		resource(*in.BackupId)
	case *hsmapi.CopyBackupToRegionRequest:
		resource(*in.BackupId)
		r.RequestTags, r.TagKeys = requestTags(in.TagList)
	case *hsmapi.ListTagsRequest:
		resource(*in.ResourceId)
	case *hsmapi.TagResourceRequest:
		resource(*in.ResourceId)
		r.RequestTags, r.TagKeys = requestTags(in.TagList)
	case *hsmapi.UntagResourceRequest:
		resource(*in.ResourceId)
		r.TagKeys = in.TagKeyList
	}
	// DescribeClusters, DescribeBackups: "*" (CopyBackupToRegion: the
	// source backup).
	return r
}

func requestTags(ts []hsmapi.Tag) (map[string]string, []string) {
	if len(ts) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(ts))
	keys := make([]string, 0, len(ts))
	for _, t := range ts {
		if t.Key == nil {
			continue
		}
		v := ""
		if t.Value != nil {
			v = *t.Value
		}
		m[*t.Key] = v
		keys = append(keys, *t.Key)
	}
	return m, keys
}

// authorize decides operation op with input in for caller kc, and records
// the resource in the audit record. The error is the exception to answer.
func (h *hsmServer) authorize(kc *kms.Caller, op string, in any, rec *audit.Record) *hsmapi.Exception {
	c := hsm.Caller{Account: kc.Account, Region: kc.Region}
	r := cloudHSMRequest(op, in, c, h.svc.ResourceTags)
	if r.Resource != "*" {
		typ := "AWS::CloudHSM::Cluster"
		if strings.Contains(r.Resource, ":backup/") {
			typ = "AWS::CloudHSM::Backup"
		}
		rec.Resources = append(rec.Resources, audit.Resource{AccountID: r.ResourceAccount, Type: typ, ARN: r.Resource})
	}
	err := h.authz.AuthorizeCloudHSM(kc, r)
	if err == nil {
		return nil
	}
	var ke *kmsapi.Exception
	if errors.As(err, &ke) && ke.Name == "AccessDeniedException" {
		return hsmapi.NewException(ke.Name, ke.Message)
	}
	h.log.Error("cloudhsm authorization failed", "op", op, "requestId", rec.RequestID, "err", err)
	return hsmapi.NewException("CloudHsmInternalFailureException", "The request was rejected because of an internal failure of kmsd.")
}
