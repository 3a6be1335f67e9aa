package audit

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

type inner struct {
	Name   *string
	Blob   []byte
	Secret *string
}

type outer struct {
	KeyId             *string
	Plaintext         []byte
	EncryptionContext map[string]string
	GrantTokens       []string
	Tags              []inner
	Limit             *int32
	DryRun            *bool
	Nested            *inner
	Password          *string
	Empty             *inner
}

// TestAppendSanitizedMatchesSanitize checks the direct encoder against
// the reference (maps through encoding/json): same JSON values.
func TestAppendSanitizedMatchesSanitize(t *testing.T) {
	s := func(v string) *string { return &v }
	n := int32(7)
	yes := true
	tests := []struct {
		name string
		in   any
	}{
		{"full", &outer{
			KeyId: s("alias/x"), Plaintext: []byte("secret"),
			EncryptionContext: map[string]string{"b": "2", "a": "quote\" and \\ and \n and \x01"},
			GrantTokens:       []string{"t"}, Tags: []inner{{Name: s("n"), Blob: []byte{1}}},
			Limit: &n, DryRun: &yes, Nested: &inner{Name: s("ü")}, Password: s("hunter2"), Empty: &inner{},
		}},
		{"empty", &outer{}},
		{"nil", (*outer)(nil)},
		{"map of any", map[string]any{"Password": "x", "plain": "y", "n": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := AppendSanitized(nil, tt.in)
			want := Sanitize(tt.in)
			if want == nil {
				if ok {
					t.Fatalf("got %s, want nothing", got)
				}
				return
			}
			wantJSON, _ := json.Marshal(want)
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("invalid JSON %s: %v", got, err)
			}
			json.Unmarshal(wantJSON, &w)
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("got  %s\nwant %s", got, wantJSON)
			}
		})
	}
}

// TestAppendRecordMatchesEncodingJSON checks the hand-written record
// encoder against encoding/json on the Record type.
func TestAppendRecordMatchesEncodingJSON(t *testing.T) {
	r := &Record{
		EventVersion: EventVersion, EventTime: "2026-01-02T03:04:05Z", EventSource: "kms.amazonaws.com",
		EventName: "Encrypt", AWSRegion: "us-east-1", SourceIPAddress: "127.0.0.1", UserAgent: "ua \"quoted\"",
		UserIdentity: UserIdentity{Type: "IAMUser", ARN: "arn:aws:iam::111122223333:user/a", AccountID: "111122223333"},
		ErrorCode:    "NotFoundException", ErrorMessage: "Key 'x' does not exist",
		RequestParameters: json.RawMessage(`{"keyId":"k"}`),
		RequestID:         "r", EventID: "e", ReadOnly: true,
		Resources: []Resource{{AccountID: "111122223333", Type: "AWS::KMS::Key", ARN: "arn:k"}},
		EventType: "AwsApiCall", ManagementEvent: true, RecipientAccountID: "111122223333", EventCategory: "Management",
		AdditionalEventData: map[string]any{"x": 1},
	}
	want, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	got := appendRecord(nil, r)
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("invalid JSON %s: %v", got, err)
	}
	json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	r.ErrorCode, r.ErrorMessage, r.Resources, r.AdditionalEventData, r.RequestParameters = "", "", nil, nil, nil
	want, _ = json.Marshal(r)
	got = appendRecord(nil, r)
	json.Unmarshal(got, &g)
	json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// TestAppendUserIdentityMatchesEncodingJSON: the hand-written user
// identity is what encoding/json writes, member for member and in the
// same order, for every member set or empty.
func TestAppendUserIdentityMatchesEncodingJSON(t *testing.T) {
	full := UserIdentity{Type: "AssumedRole", PrincipalID: "AROAEXAMPLE:s", ARN: "arn:aws:sts::111122223333:assumed-role/R/s",
		AccountID: "111122223333", AccessKeyID: "ASIAEXAMPLE", UserName: "u \"q\" \x01", InvokedBy: "kms.amazonaws.com",
		SessionContext: &SessionContext{SourceIdentity: "alice"}}
	full.SessionContext.SessionIssuer.Type = "Role"
	full.SessionContext.SessionIssuer.PrincipalID = "AROAEXAMPLE"
	full.SessionContext.SessionIssuer.ARN = "arn:aws:iam::111122223333:role/R"
	full.SessionContext.SessionIssuer.AccountID = "111122223333"
	full.SessionContext.SessionIssuer.UserName = "R"
	full.SessionContext.Attributes.CreationDate = "2026-01-02T03:04:05Z"
	full.SessionContext.Attributes.MFAAuthenticated = "false"
	// Every subset of the members (the session context's as one).
	for mask := 0; mask < 1<<8; mask++ {
		u := full
		sc := *full.SessionContext
		u.SessionContext = &sc
		drop := []func(){
			func() { u.Type = "" }, func() { u.PrincipalID = "" }, func() { u.ARN = "" }, func() { u.AccountID = "" },
			func() { u.AccessKeyID = "" }, func() { u.UserName = "" }, func() { u.InvokedBy = "" },
			func() { u.SessionContext = nil },
		}
		for i, d := range drop {
			if mask&(1<<i) != 0 {
				d()
			}
		}
		if mask&1 != 0 && u.SessionContext != nil {
			sc.SourceIdentity, sc.Attributes.CreationDate = "", ""
		}
		if mask&2 != 0 && u.SessionContext != nil {
			sc.SessionIssuer.UserName, sc.Attributes.MFAAuthenticated = "", ""
		}
		want, err := json.Marshal(&u)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendUserIdentity(nil, &u); string(got) != string(want) {
			t.Fatalf("mask %b:\ngot  %s\nwant %s", mask, got, want)
		}
	}
}

// TestAdditionalEventDataNode: the node and sequence number written
// directly are what encoding/json writes for the map they stand for,
// byte for byte, and the map path still serves every other record.
func TestAdditionalEventDataNode(t *testing.T) {
	for _, node := range []string{"node-1", "9f8e7d6c-1234-4abc-8def-0123456789ab", "a<b>&c", "n\u0153ud", "tab\there", `q"uote\`} {
		for _, extra := range []map[string]any{nil, {}, {"x": 1, "a": "<b>"}} {
			r := &Record{EventName: "Encrypt", Node: node, Seq: 1<<63 + 5, AdditionalEventData: extra}
			got := appendRecord(nil, r)
			m := map[string]any{"kmsdNode": node, "kmsdSeq": r.Seq}
			for k, v := range extra {
				m[k] = v
			}
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			want := `,"additionalEventData":` + string(data) + `,"requestID"`
			if !strings.Contains(string(got), want) {
				t.Errorf("node %q, data %v:\ngot  %s\nwant …%s…", node, extra, got, want)
			}
		}
	}
}
