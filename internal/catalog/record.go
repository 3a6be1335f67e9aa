package catalog

import (
	"encoding/json"
	"errors"
	"fmt"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/kmsd/kmsd/internal/policy"
)

// A key record is stored as the JSON of its Key, except that the policy
// member is left out when the key's policy text is, byte for byte, the
// default key policy of the key's account (policy.DefaultKeyPolicy, which
// depends on the account alone): the text nearly every key has, about 330
// of a record's 810 bytes. Decoding puts the text back (one shared copy
// per account), so every reader of a Key sees the policy it saw before.
//
// The representation cannot be taken for a real policy: kmsd writes a key
// record only with a policy (encodeKey refuses one without), every policy
// it stores is a JSON document that parsed (checkPolicy), never empty, and
// kmsd before data format level 2 wrote the member on every record. So a
// record without the member, or with an empty one, has the default policy:
// an empty member is what a kmsd of level 1 writes back when, in the
// heartbeat after a newer node joined, it updates a record it read without
// the member; it reads as the default again. Records with the default
// written inline (by older kmsd) decode as before, to the same shared
// text; any other policy is stored inline as always.

// errNoPolicy: a key record to be written has no key policy.
var errNoPolicy = errors.New("catalog: a key record needs a key policy")

// encodeKey is the stored form of k (see above).
func encodeKey(k *Key) ([]byte, error) {
	if k.Policy == "" {
		return nil, fmt.Errorf("%w (key %s)", errNoPolicy, k.ID)
	}
	if !policy.IsDefaultKeyPolicy(k.Policy, k.Account) {
		return json.Marshal(k)
	}
	r := *k
	r.Policy = "" // omitted (omitempty)
	return json.Marshal(&r)
}

// decodeKey decodes a stored key record: the default policy is put back,
// and with texts its policy text is shared with the other records texts
// has seen (without, the default is a copy of its own).
//
// It decodes with go-json-experiment/json (the proposed encoding/json/v2),
// which reads a record in a fraction of encoding/json's time and
// allocations (BenchmarkDecodeKey): its decoder keeps the short strings it
// made (account, Region, key spec, state, …) and gives them again rather
// than allocating each — but not always the same copy, so shareFields
// (intern.go) then makes those fields one copy for every record. On the
// records encodeKey writes (encoding/json's output: exact member names,
// valid UTF-8, no duplicate members) the two decode alike
// (TestDecodeKeyLikeV1); a record v2 refuses for being stricter is decoded
// by encoding/json, so nothing v1 read is refused.
func decodeKey(b []byte, texts *policyTexts) (*Key, error) {
	k := new(Key)
	if err := jsonv2.Unmarshal(b, k); err != nil {
		k = new(Key)
		if err := json.Unmarshal(b, k); err != nil {
			return nil, err
		}
	}
	shareFields(k)
	switch {
	case k.Policy == "":
		k.Policy = texts.defaultPolicy(k.Account)
	case texts != nil:
		k.Policy = texts.share(k.Policy)
	}
	return k, nil
}
