// Package keys holds what identifies and describes a KMS key, independent
// of storage and transport: key ids, key and alias ARNs and how a KeyId
// parameter resolves to one of them, the key-state machine, the
// ciphertext blob format, and what each key spec allows (spec.go: usages,
// algorithms, grant operations).
package keys

import (
	"errors"
	"regexp"
	"strings"
)

// State is a KMS key state (the KeyState enum).
type State string

// Key states, as the KMS API names them.
const (
	Creating        State = "Creating"
	Enabled         State = "Enabled"
	Disabled        State = "Disabled"
	PendingDeletion State = "PendingDeletion"
	PendingImport   State = "PendingImport"
	Unavailable     State = "Unavailable"
	Updating        State = "Updating"
	// PendingReplicaDeletion: a multi-Region primary key scheduled for
	// deletion while it still has replicas.
	PendingReplicaDeletion State = "PendingReplicaDeletion"
)

// Kind says which form a KeyId parameter took.
type Kind int

// The four ways a caller can name a key.
const (
	KindKeyID    Kind = iota // 1234abcd-12ab-34cd-56ef-1234567890ab
	KindKeyARN               // arn:aws:kms:us-east-2:111122223333:key/1234abcd-…
	KindAlias                // alias/ExampleAlias
	KindAliasARN             // arn:aws:kms:us-east-2:111122223333:alias/ExampleAlias
)

// Ref is a parsed KeyId parameter.
type Ref struct {
	Kind      Kind
	ID        string // key id (KindKeyID, KindKeyARN)
	AliasName string // "alias/…" (KindAlias, KindAliasARN)
	Region    string // from an ARN
	Account   string // from an ARN
}

// ErrInvalidKeyID means the parameter is none of the four forms.
var ErrInvalidKeyID = errors.New("keys: invalid key id")

var (
	idPattern    = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	mrkPattern   = regexp.MustCompile(`^mrk-[0-9a-f]{32}$`)
	arnAccountRe = regexp.MustCompile(`^[0-9]{12}$`)
)

// IsKeyID reports whether s has the shape of a key id: a lower-case UUID,
// or mrk- and 32 hex digits. It runs on every request, so it is a byte
// loop rather than a regular expression (idPattern and mrkPattern state the
// same rule; a test keeps them in agreement).
func IsKeyID(s string) bool {
	if len(s) != 36 {
		return false
	}
	if s[:4] == "mrk-" {
		for i := 4; i < len(s); i++ {
			if !isLowerHex(s[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
		} else if !isLowerHex(c) {
			return false
		}
	}
	return true
}

func isLowerHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }

// Parse reads a KeyId parameter.
func Parse(s string) (Ref, error) {
	switch {
	case strings.HasPrefix(s, "alias/"):
		return Ref{Kind: KindAlias, AliasName: s}, nil
	case strings.HasPrefix(s, "arn:"):
		// arn:<partition>:kms:<region>:<account>:<resource>
		parts := strings.SplitN(s, ":", 6)
		if len(parts) != 6 || parts[2] != "kms" || parts[3] == "" || !arnAccountRe.MatchString(parts[4]) {
			return Ref{}, ErrInvalidKeyID
		}
		res := parts[5]
		switch {
		case strings.HasPrefix(res, "key/") && IsKeyID(res[4:]):
			return Ref{Kind: KindKeyARN, ID: res[4:], Region: parts[3], Account: parts[4]}, nil
		case strings.HasPrefix(res, "alias/") && len(res) > len("alias/"):
			return Ref{Kind: KindAliasARN, AliasName: res, Region: parts[3], Account: parts[4]}, nil
		}
		return Ref{}, ErrInvalidKeyID
	case IsKeyID(s):
		return Ref{Kind: KindKeyID, ID: s}, nil
	}
	return Ref{}, ErrInvalidKeyID
}

// Partition is the ARN partition of region: aws-cn for the China Regions,
// aws for every other Region kmsd serves.
func Partition(region string) string {
	if InChina(region) {
		return "aws-cn"
	}
	return "aws"
}

// KeyARN is the ARN of key id in account and region.
func KeyARN(region, account, id string) string {
	return KeyARNIn(Partition(region), region, account, id)
}

// KeyARNIn is the ARN of key id in account and region, in partition.
func KeyARNIn(partition, region, account, id string) string {
	return "arn:" + partition + ":kms:" + region + ":" + account + ":key/" + id
}

// AliasARN is the ARN of an alias ("alias/…") in account and region.
func AliasARN(region, account, alias string) string {
	return "arn:" + Partition(region) + ":kms:" + region + ":" + account + ":" + alias
}
