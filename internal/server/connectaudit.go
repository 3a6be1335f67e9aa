package server

import (
	"time"

	"github.com/google/uuid"
	"github.com/kmsd/kmsd/internal/audit"
	"github.com/kmsd/kmsd/internal/keystore"
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
