package server

import (
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/keystore"
	"github.com/kmsd/kmsd/internal/kms"
)

// auditConnectResult records the outcome of a custom key store's
// asynchronous connection as an audit event of its own (CloudTrail's
// AwsServiceEvent shape): ConnectCustomKeyStore's API record only says the
// connection started, so success and each failure code are logged here.
func (a *api) auditConnectResult(st keystore.Store, state, code string) {
	details := map[string]any{
		"customKeyStoreId":   st.ID,
		"customKeyStoreName": st.Name,
		"customKeyStoreType": st.Type,
		"connectionState":    state,
	}
	if code != "" {
		details["connectionErrorCode"] = code
	}
	if st.ClusterID != "" {
		details["cloudHsmClusterId"] = st.ClusterID
	}
	rec := &audit.Record{
		Time:                time.Now(),
		UserIdentity:        audit.UserIdentity{Type: "AWSService", InvokedBy: "kms.amazonaws.com"},
		EventSource:         "kms.amazonaws.com",
		EventName:           "ConnectCustomKeyStore",
		AWSRegion:           st.Region,
		SourceIPAddress:     "kms.amazonaws.com",
		UserAgent:           "kms.amazonaws.com",
		RequestID:           uuid.NewString(),
		EventID:             uuid.NewString(),
		ReadOnly:            false,
		EventType:           "AwsServiceEvent",
		ManagementEvent:     true,
		RecipientAccountID:  st.Account,
		EventCategory:       "Management",
		ServiceEventDetails: details,
	}
	if code != "" {
		rec.ErrorCode = code
	}
	a.audit.Log(rec)
}

// auditExpiry records the expiry sweep's deletion of imported key
// material as AWS does, an AwsServiceEvent named DeleteExpiredKeyMaterial
// (spec §7.6), with the key as resource and the material ids in the
// details (never the material).
func (a *api) auditExpiry(e kms.ExpiredMaterial) {
	rec := &audit.Record{
		Time:                time.Now(),
		UserIdentity:        audit.UserIdentity{Type: "AWSService", InvokedBy: "kms.amazonaws.com"},
		EventSource:         "kms.amazonaws.com",
		EventName:           "DeleteExpiredKeyMaterial",
		AWSRegion:           e.Region,
		SourceIPAddress:     "kms.amazonaws.com",
		UserAgent:           "kms.amazonaws.com",
		RequestID:           uuid.NewString(),
		EventID:             uuid.NewString(),
		EventType:           "AwsServiceEvent",
		ManagementEvent:     true,
		RecipientAccountID:  e.Account,
		EventCategory:       "Management",
		Resources:           []audit.Resource{{AccountID: e.Account, Type: "AWS::KMS::Key", ARN: e.KeyARN}},
		ServiceEventDetails: map[string]any{"keyMaterialIds": e.KeyMaterialIDs},
	}
	a.audit.Log(rec)
}
