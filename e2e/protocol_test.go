package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/kmsd/kmsd/internal/sigv4"
)

// rawResponse is an HTTP response read whole.
type rawResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// signer prepares a request's authentication; nil sends none.
type signer func(t *testing.T, r *http.Request, body []byte)

// sigV4 signs with aws-sdk-go-v2's SigV4 signer for service kms.
func sigV4(accessKeyID, secret, region string, at time.Time) signer {
	return func(t *testing.T, r *http.Request, body []byte) {
		t.Helper()
		sum := sha256.Sum256(body)
		err := v4.NewSigner().SignHTTP(context.Background(),
			aws.Credentials{AccessKeyID: accessKeyID, SecretAccessKey: secret},
			r, hex.EncodeToString(sum[:]), "kms", region, at)
		if err != nil {
			t.Fatalf("sign: %v", err)
		}
	}
}

// post sends body to s as the operation target names (the whole
// X-Amz-Target value), authenticated by sign.
func post(t *testing.T, s *server, target, body string, sign signer) rawResponse {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.Endpoint+"/", strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	if target != "" {
		req.Header.Set("X-Amz-Target", target)
	}
	if sign != nil {
		sign(t, req, []byte(body))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read body: %v", target, err)
	}
	return rawResponse{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// errorEnvelope decodes an AWS JSON error body {"__type","message"}.
func errorEnvelope(t *testing.T, r rawResponse) (code, msg string) {
	t.Helper()
	var e struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %q", err, r.Body)
	}
	return e.Type, e.Message
}

// wantRequestID checks the x-amzn-RequestId header every response carries.
func wantRequestID(t *testing.T, r rawResponse, seen map[string]bool) {
	t.Helper()
	id := r.Header.Get("X-Amzn-Requestid")
	if id == "" {
		t.Errorf("response %d %s: no x-amzn-RequestId header", r.Status, r.Body)
		return
	}
	if seen[id] {
		t.Errorf("x-amzn-RequestId %q seen twice", id)
	}
	seen[id] = true
}

// nulls returns the JSON paths in v whose value is null.
func nulls(v any, path string) []string {
	switch x := v.(type) {
	case nil:
		return []string{path}
	case map[string]any:
		var out []string
		for k, e := range x {
			out = append(out, nulls(e, path+"."+k)...)
		}
		return out
	case []any:
		var out []string
		for i, e := range x {
			out = append(out, nulls(e, path+"["+strconv.Itoa(i)+"]")...)
		}
		return out
	}
	return nil
}

// TestProtocol checks the wire protocol with raw HTTP: SigV4 failures,
// operation dispatch, body decoding, request ids, and the JSON shape of
// answers.
func TestProtocol(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	now := time.Now()
	good := sigV4(cr.AccessKeyID, cr.SecretAccessKey, region, now)
	seen := map[string]bool{}

	const mismatch = "The request signature we calculated does not match the signature you provided. " +
		"Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
	rawAuth := func(value string) signer {
		return func(t *testing.T, r *http.Request, body []byte) {
			r.Header.Set("X-Amz-Date", now.UTC().Format("20060102T150405Z"))
			r.Header.Set("Authorization", value)
		}
	}
	expiredAt := now.Add(-10 * time.Minute)
	cases := []struct {
		name       string
		target     string
		body       string
		sign       signer
		status     int
		code       string
		msg        string // exact message, unless msgPrefix
		msgPrefix  bool
		anyMessage bool // only check that there is a message
	}{
		{name: "bad signature", target: "TrentService.ListKeys", body: "{}",
			sign: sigV4(cr.AccessKeyID, cr.SecretAccessKey+"x", region, now), status: 400, code: "InvalidSignatureException", msg: mismatch},
		{name: "unknown access key", target: "TrentService.ListKeys", body: "{}",
			sign: sigV4("AKIAE2EUNKNOWN000000", cr.SecretAccessKey, region, now), status: 400, code: "UnrecognizedClientException",
			msg: "The security token included in the request is invalid."},
		{name: "expired signature", target: "TrentService.ListKeys", body: "{}",
			sign: sigV4(cr.AccessKeyID, cr.SecretAccessKey, region, expiredAt), status: 400, code: "InvalidSignatureException",
			msg: "Signature expired: " + expiredAt.UTC().Format("20060102T150405Z") + " is now earlier than ", msgPrefix: true},
		{name: "signature from the future", target: "TrentService.ListKeys", body: "{}",
			sign: sigV4(cr.AccessKeyID, cr.SecretAccessKey, region, now.Add(10*time.Minute)), status: 400, code: "InvalidSignatureException",
			msg: "Signature not yet current: " + now.Add(10*time.Minute).UTC().Format("20060102T150405Z") + " is still later than ", msgPrefix: true},
		{name: "body changed after signing", target: "TrentService.ListKeys", body: "{}",
			sign: func(t *testing.T, r *http.Request, body []byte) {
				good(t, r, body)
				r.Body = io.NopCloser(strings.NewReader(`{"Limit":1}`))
				r.ContentLength = int64(len(`{"Limit":1}`))
			}, status: 400, code: "InvalidSignatureException", msg: mismatch},
		{name: "no Authorization", target: "TrentService.ListKeys", body: "{}",
			code: "MissingAuthenticationTokenException", msg: "Missing Authentication Token"},
		{name: "malformed Authorization", target: "TrentService.ListKeys", body: "{}",
			sign: rawAuth("AWS4-HMAC-SHA256 garbage"), status: 400, code: "IncompleteSignatureException", anyMessage: true},
		{name: "Authorization without Signature", target: "TrentService.ListKeys", body: "{}",
			sign:   rawAuth("AWS4-HMAC-SHA256 Credential=" + cr.AccessKeyID + "/" + now.UTC().Format("20060102") + "/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date"),
			status: 400, code: "IncompleteSignatureException", anyMessage: true},
		{name: "unknown operation", target: "TrentService.NoSuchOperation", body: "{}", sign: good,
			status: 400, code: "UnknownOperationException"},
		{name: "other service's target", target: "DynamoDB_20120810.ListTables", body: "{}", sign: good,
			status: 400, code: "UnknownOperationException"},
		{name: "malformed JSON", target: "TrentService.ListKeys", body: `{"Limit":`, sign: good,
			status: 400, code: "SerializationException", anyMessage: true},
		{name: "not an object", target: "TrentService.ListKeys", body: `[1]`, sign: good,
			status: 400, code: "SerializationException", anyMessage: true},
		{name: "wrong member type", target: "TrentService.GenerateRandom", body: `{"NumberOfBytes":"32"}`, sign: good,
			status: 400, code: "SerializationException", anyMessage: true},
		{name: "blob that is not base64", target: "TrentService.Decrypt", body: `{"CiphertextBlob":"***"}`, sign: good,
			status: 400, code: "SerializationException", anyMessage: true},
		// A multi-Region operation on a well-formed key id of no key.
		{name: "multi-Region key absent", target: "TrentService.UpdatePrimaryRegion",
			body: `{"KeyId":"mrk-1234abcd12ab34cd56ef1234567890ab","PrimaryRegion":"eu-west-1"}`,
			sign: good, status: 400, code: "NotFoundException", anyMessage: true},
		{name: "missing required member", target: "TrentService.DescribeKey", body: `{}`, sign: good,
			status: 400, code: "ValidationException",
			msg: "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, s, tc.target, tc.body, tc.sign)
			wantRequestID(t, r, seen)
			code, msg := errorEnvelope(t, r)
			if tc.status != 0 && r.Status != tc.status {
				t.Errorf("status: got %d, want %d (body %s)", r.Status, tc.status, r.Body)
			}
			if tc.status == 0 && (r.Status < 400 || r.Status > 499) {
				t.Errorf("status: got %d, want a 4xx (body %s)", r.Status, r.Body)
			}
			if code != tc.code {
				t.Errorf("__type: got %q, want %q (body %s)", code, tc.code, r.Body)
			}
			switch {
			case tc.anyMessage:
				if msg == "" {
					t.Errorf("message: got none, want one (body %s)", r.Body)
				}
			case tc.msgPrefix:
				if !strings.HasPrefix(msg, tc.msg) {
					t.Errorf("message: got %q, want it to begin %q", msg, tc.msg)
				}
			case msg != tc.msg:
				t.Errorf("message: got %q, want %q", msg, tc.msg)
			}
			if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
				t.Errorf("Content-Type: got %q, want application/x-amz-json-1.1", ct)
			}
		})
	}

	// Successful answers: a request id, no null anywhere, timestamps as
	// JSON numbers (epoch seconds).
	t.Run("response shapes", func(t *testing.T) {
		call := func(op, body string) map[string]any {
			t.Helper()
			r := post(t, s, "TrentService."+op, body, good)
			wantRequestID(t, r, seen)
			if r.Status != 200 {
				t.Fatalf("%s: got %d %s, want 200", op, r.Status, r.Body)
			}
			dec := json.NewDecoder(bytes.NewReader(r.Body))
			dec.UseNumber()
			var v map[string]any
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("%s: body is not a JSON object: %v: %s", op, err, r.Body)
			}
			if n := nulls(v, op); len(n) > 0 {
				t.Errorf("%s: null members %v in %s", op, n, r.Body)
			}
			return v
		}
		isNumber := func(op string, v any) {
			t.Helper()
			n, ok := v.(json.Number)
			if !ok {
				t.Errorf("%s: got %#v, want a JSON number", op, v)
				return
			}
			f, err := n.Float64()
			if err != nil || !within(time.Unix(int64(f), 0), now, time.Minute+10*24*time.Hour) {
				t.Errorf("%s: got %s, want epoch seconds near now", op, n)
			}
		}
		created := call("CreateKey", `{"Description":"shapes"}`)
		md, _ := created["KeyMetadata"].(map[string]any)
		isNumber("CreateKey KeyMetadata.CreationDate", md["CreationDate"])
		if _, ok := md["DeletionDate"]; ok {
			t.Errorf("CreateKey: KeyMetadata has DeletionDate %v, want it absent", md["DeletionDate"])
		}
		id, _ := md["KeyId"].(string)
		described := call("DescribeKey", `{"KeyId":"`+id+`"}`)
		isNumber("DescribeKey KeyMetadata.CreationDate", described["KeyMetadata"].(map[string]any)["CreationDate"])
		call("ListKeys", `{}`)
		call("ListAliases", `{}`)
		call("ListResourceTags", `{"KeyId":"`+id+`"}`)
		call("GetKeyRotationStatus", `{"KeyId":"`+id+`"}`)
		call("ListKeyRotations", `{"KeyId":"`+id+`"}`)
		call("ListKeyPolicies", `{"KeyId":"`+id+`"}`)
		call("GetKeyPolicy", `{"KeyId":"`+id+`","PolicyName":"default"}`)
		enc := call("Encrypt", `{"KeyId":"`+id+`","Plaintext":"aGVsbG8="}`)
		call("Decrypt", `{"CiphertextBlob":"`+enc["CiphertextBlob"].(string)+`"}`)
		call("GenerateDataKey", `{"KeyId":"`+id+`","KeySpec":"AES_256"}`)
		call("GenerateDataKeyWithoutPlaintext", `{"KeyId":"`+id+`","NumberOfBytes":16}`)
		call("GenerateRandom", `{"NumberOfBytes":8}`)
		call("RotateKeyOnDemand", `{"KeyId":"`+id+`"}`)
		rot := call("ListKeyRotations", `{"KeyId":"`+id+`"}`)
		if l, _ := rot["Rotations"].([]any); len(l) == 1 {
			isNumber("ListKeyRotations Rotations[0].RotationDate", l[0].(map[string]any)["RotationDate"])
		} else {
			t.Errorf("ListKeyRotations: got %v, want one rotation", rot["Rotations"])
		}
		sched := call("ScheduleKeyDeletion", `{"KeyId":"`+id+`","PendingWindowInDays":7}`)
		isNumber("ScheduleKeyDeletion DeletionDate", sched["DeletionDate"])
		pending := call("DescribeKey", `{"KeyId":"`+id+`"}`)
		isNumber("DescribeKey KeyMetadata.DeletionDate", pending["KeyMetadata"].(map[string]any)["DeletionDate"])
		call("CancelKeyDeletion", `{"KeyId":"`+id+`"}`)
	})
}

// TestUnsignedHeaders: headers that choose what a request does must be
// signed, and a long-term key comes without a security token. The replay
// case is the attack: a captured Encrypt signed with host;x-amz-date only,
// sent again within the clock skew as ScheduleKeyDeletion.
func TestUnsignedHeaders(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	now := time.Now()
	good := sigV4(cr.AccessKeyID, cr.SecretAccessKey, region, now)

	created := post(t, s, "TrentService.CreateKey", `{"Description":"replay target"}`, good)
	if created.Status != 200 {
		t.Fatalf("CreateKey: %d %s", created.Status, created.Body)
	}
	var out struct {
		KeyMetadata struct{ KeyId, KeyState string }
	}
	if err := json.Unmarshal(created.Body, &out); err != nil {
		t.Fatal(err)
	}
	id := out.KeyMetadata.KeyId
	encrypt := `{"KeyId":"` + id + `","Plaintext":"aGVsbG8="}`

	// signOnly signs with exactly host, x-amz-date and the given headers,
	// then applies edit, as an attacker holding the signed request could.
	signOnly := func(edit func(*http.Request), headers ...string) signer {
		return func(t *testing.T, r *http.Request, body []byte) {
			(&sigv4.Signer{Headers: append([]string{}, headers...)}).Sign(r, body, cr.AccessKeyID, cr.SecretAccessKey, "", region, "kms", now)
			if edit != nil {
				edit(r)
			}
		}
	}
	retarget := func(r *http.Request) { r.Header.Set("X-Amz-Target", "TrentService.ScheduleKeyDeletion") }
	withToken := func(token string, signed bool) signer {
		return func(t *testing.T, r *http.Request, body []byte) {
			if signed {
				r.Header.Set("X-Amz-Security-Token", token)
			}
			(&sigv4.Signer{}).Sign(r, body, cr.AccessKeyID, cr.SecretAccessKey, "", region, "kms", now)
			r.Header.Set("X-Amz-Security-Token", token)
		}
	}
	notSigned := func(h string) string { return "'" + h + "' must be a 'SignedHeader' in the AWS Authorization." }
	for _, tc := range []struct {
		name, target, body string
		sign               signer
		code, msg          string
	}{
		{name: "replay with host and date signed", target: "TrentService.Encrypt", body: encrypt,
			sign: signOnly(retarget), code: "InvalidSignatureException", msg: notSigned("X-Amz-Target")},
		{name: "replay with the target unsigned", target: "TrentService.Encrypt", body: encrypt,
			sign: signOnly(retarget, "content-type"), code: "InvalidSignatureException", msg: notSigned("X-Amz-Target")},
		{name: "unsigned content-type changed", target: "TrentService.ListKeys", body: `{}`,
			sign: signOnly(func(r *http.Request) { r.Header.Set("Content-Type", "application/json") }, "x-amz-target"),
			code: "InvalidSignatureException", msg: notSigned("Content-Type")},
		{name: "x-amz header added after signing", target: "TrentService.ListKeys", body: `{}`,
			sign: func(t *testing.T, r *http.Request, body []byte) { good(t, r, body); r.Header.Set("X-Amz-Foo", "bar") },
			code: "InvalidSignatureException", msg: notSigned("X-Amz-Foo")},
		{name: "long-term key with a signed token", target: "TrentService.ListKeys", body: `{}`,
			sign: withToken("bogus", true), code: "UnrecognizedClientException", msg: "The security token included in the request is invalid."},
		{name: "long-term key with an unsigned token", target: "TrentService.ListKeys", body: `{}`,
			sign: withToken("bogus", false), code: "UnrecognizedClientException", msg: "The security token included in the request is invalid."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, s, tc.target, tc.body, tc.sign)
			code, msg := errorEnvelope(t, r)
			if r.Status != 400 || code != tc.code || msg != tc.msg {
				t.Errorf("got %d %s %q, want 400 %s %q", r.Status, code, msg, tc.code, tc.msg)
			}
		})
	}

	// The AWS SDK for JavaScript v2 never signs Content-Type, and AWS KMS
	// accepts its requests: the JSON protocol's own Content-Type may be
	// unsigned (any other value may not, above).
	if r := post(t, s, "TrentService.ListKeys", `{}`, signOnly(nil, "x-amz-target")); r.Status != 200 {
		t.Errorf("ListKeys with the protocol's Content-Type unsigned: %d %s", r.Status, r.Body)
	}

	described := post(t, s, "TrentService.DescribeKey", `{"KeyId":"`+id+`"}`, good)
	if err := json.Unmarshal(described.Body, &out); err != nil || out.KeyMetadata.KeyState != "Enabled" {
		t.Errorf("after the replays: %d %s, want the key Enabled", described.Status, described.Body)
	}
}

// TestInvalidText: a body that is not UTF-8 text, or escapes half a
// surrogate pair, is refused instead of being stored with U+FFFD in place
// of what was sent.
func TestInvalidText(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cr := s.Creds()
	good := sigV4(cr.AccessKeyID, cr.SecretAccessKey, region, time.Now())
	countKeys := func() int {
		t.Helper()
		r := post(t, s, "TrentService.ListKeys", `{}`, good)
		var out struct{ Keys []any }
		if err := json.Unmarshal(r.Body, &out); r.Status != 200 || err != nil {
			t.Fatalf("ListKeys: %d %s", r.Status, r.Body)
		}
		return len(out.Keys)
	}
	before := countKeys()
	for _, tc := range []struct{ name, body, msg string }{
		{"lone high surrogate", `{"Description":"\ud800"}`, "Could not parse request body into json: Unexpected character at offset 16"},
		{"lone low surrogate", `{"Description":"x\uDC00y"}`, "Could not parse request body into json: Unexpected character at offset 17"},
		{"invalid UTF-8", "{\"Description\":\"\xff\"}", "Could not parse request body into json: Unexpected character at offset 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, s, "TrentService.CreateKey", tc.body, good)
			code, msg := errorEnvelope(t, r)
			if r.Status != 400 || code != "SerializationException" || msg != tc.msg {
				t.Errorf("got %d %s %q, want 400 SerializationException %q", r.Status, code, msg, tc.msg)
			}
		})
	}
	if after := countKeys(); after != before {
		t.Errorf("%d keys after the refused CreateKey calls, want %d", after, before)
	}
	// A surrogate pair is one character and is kept.
	r := post(t, s, "TrentService.CreateKey", `{"Description":"\ud83d\ude00"}`, good)
	var out struct{ KeyMetadata struct{ Description string } }
	if err := json.Unmarshal(r.Body, &out); r.Status != 200 || err != nil || out.KeyMetadata.Description != "\U0001F600" {
		t.Errorf("CreateKey with a surrogate pair: %d %s", r.Status, r.Body)
	}
}

// TestEmulatorAuth checks --auth emulator: fake credentials work in any
// region, and keys belong to the region they were created in.
func TestEmulatorAuth(t *testing.T) {
	t.Parallel()
	s := startServer(t, withArgs("--auth", "emulator"))
	ctx := testContext(t)
	east := sdkClient(s, "test", "test", "us-east-1")
	west := sdkClient(s, "test", "test", "eu-west-1")

	out, err := east.CreateKey(ctx, &kms.CreateKeyInput{})
	if err != nil {
		t.Fatalf("CreateKey in us-east-1 with test/test: %v", err)
	}
	id := aws.ToString(out.KeyMetadata.KeyId)
	if got, want := aws.ToString(out.KeyMetadata.Arn), keyARN(id); got != want {
		t.Errorf("CreateKey: Arn: got %q, want %q", got, want)
	}
	if _, err := east.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Errorf("DescribeKey in us-east-1: %v", err)
	}
	westARN := "arn:aws:kms:eu-west-1:" + account + ":key/" + id
	_, err = west.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	wantAPIError[*types.NotFoundException](t, "DescribeKey in eu-west-1 of a us-east-1 key", err, "Key '"+westARN+"' does not exist")
	_, err = west.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(keyARN(id))})
	// AWS names the ARN's Region (spec §1.3 [S]).
	wantAPIError[*types.NotFoundException](t, "DescribeKey in eu-west-1 by us-east-1 ARN", err, "Invalid arn us-east-1")
	lk, err := west.ListKeys(ctx, &kms.ListKeysInput{})
	if err != nil {
		t.Fatalf("ListKeys in eu-west-1: %v", err)
	}
	if len(lk.Keys) != 0 {
		t.Errorf("ListKeys in eu-west-1: got %d keys, want none", len(lk.Keys))
	}

	// A blob made in one region does not decrypt in another.
	blob := encrypt(t, ctx, east, id, []byte("regional"), nil)
	_, err = west.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob})
	wantAPIError[*types.InvalidCiphertextException](t, "Decrypt in eu-west-1 of a us-east-1 blob", err, "")

	// Any access key and secret will do, in any region.
	other := sdkClient(s, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "ap-southeast-2")
	if _, err := other.ListKeys(ctx, &kms.ListKeysInput{}); err != nil {
		t.Errorf("ListKeys in ap-southeast-2 with other fake credentials: %v", err)
	}

	// The form of the signature and the clock are still checked.
	r := post(t, s, "TrentService.ListKeys", "{}", nil)
	if code, _ := errorEnvelope(t, r); code != "MissingAuthenticationTokenException" {
		t.Errorf("unsigned request in emulator mode: got %d %s, want MissingAuthenticationTokenException", r.Status, r.Body)
	}
	old := time.Now().Add(-10 * time.Minute)
	r = post(t, s, "TrentService.ListKeys", "{}", sigV4("test", "test", region, old))
	if code, msg := errorEnvelope(t, r); code != "InvalidSignatureException" || !strings.HasPrefix(msg, "Signature expired: ") {
		t.Errorf("request signed 10 minutes ago in emulator mode: got %d %s, want InvalidSignatureException Signature expired", r.Status, r.Body)
	}
}

// TestAdminKeyFromEnv checks that KMSD_ADMIN_ACCESS_KEY_ID and
// KMSD_ADMIN_SECRET_ACCESS_KEY give the administrator's key pair, that it
// keeps working across a restart with the keys kmsd stores, and that other
// keys are refused.
func TestAdminKeyFromEnv(t *testing.T) {
	t.Parallel()
	const (
		akid   = "AKIAE2EENVADMIN00001"
		secret = "e2eEnvAdminSecretKey/0123456789abcdefghij"
	)
	s := startServer(t, withEnv("KMSD_ADMIN_ACCESS_KEY_ID="+akid, "KMSD_ADMIN_SECRET_ACCESS_KEY="+secret))
	ctx := testContext(t)
	c := sdkClient(s, akid, secret, region)
	id := aws.ToString(createKey(t, ctx, c, "env admin").KeyId)
	blob := encrypt(t, ctx, c, id, []byte("env"), nil)

	s.Restart()
	c = sdkClient(s, akid, secret, region)
	decrypt(t, ctx, c, "", blob, nil, []byte("env"), keyARN(id))
	_, err := sdkClient(s, akid, secret+"x", region).ListKeys(ctx, &kms.ListKeysInput{})
	wantErrorCode(t, "ListKeys with the wrong secret", err, "InvalidSignatureException",
		"The request signature we calculated does not match the signature you provided. "+
			"Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
	_, err = sdkClient(s, "AKIAE2EOTHER00000001", secret, region).ListKeys(ctx, &kms.ListKeysInput{})
	wantErrorCode(t, "ListKeys with another access key", err, "UnrecognizedClientException",
		"The security token included in the request is invalid.")
}
