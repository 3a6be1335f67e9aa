package server

import (
	"crypto/subtle"

	"github.com/kmsd/kmsd/internal/identity"
)

// tokenMatches reports whether token, the request's X-Amz-Security-Token
// ("" when absent), belongs to the access key of id: temporary credentials
// need their own session token, and a long-term key must come without one,
// as AWS answers a long-term key sent with any token "The security token
// included in the request is invalid." Every API that authenticates with
// SigV4 (KMS, IAM, STS, CloudHSM, admin) applies this one rule.
//
// The comparison takes the same time for every token of a given length, so
// that timing reveals nothing of a session token's value.
func tokenMatches(id *identity.Identity, token string) bool {
	if !id.Temporary() {
		return token == ""
	}
	return subtle.ConstantTimeCompare([]byte(token), []byte(id.SessionToken)) == 1
}
