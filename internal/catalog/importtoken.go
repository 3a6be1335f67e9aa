package catalog

import (
	"encoding/json"
	"errors"
	"time"
)

// ImportToken is what an import token of GetParametersForImport carries
// (spec §7.2): the key it is for, how the material must be wrapped, when it
// was issued, and the private half of the wrapping key pair. Tokens are
// stateless: the wrapping private key exists only inside tokens, sealed by
// the barrier, so there is nothing to store or to clean up, and a token
// may be used again until it expires.
type ImportToken struct {
	Account           string    `json:"a"`
	Region            string    `json:"r"`
	KeyID             string    `json:"k"`
	WrappingAlgorithm string    `json:"wa"`
	WrappingKeySpec   string    `json:"ws"`
	Issued            time.Time `json:"t"`
	Private           []byte    `json:"p"` // DER PKCS #8 of the wrapping key
}

// ErrImportToken is returned by OpenImportToken for bytes that are no
// token of this deployment (forged, corrupted, truncated, or sealed under
// another root key).
var ErrImportToken = errors.New("catalog: invalid import token")

// importTokenAAD binds sealed tokens to their purpose: no other sealed
// value of kmsd opens as a token, and no token as anything else.
const importTokenAAD = "import-token"

// SealImportToken seals t as an opaque token for the caller.
func (c *Catalog) SealImportToken(t *ImportToken) ([]byte, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	return c.barrier.Seal(importTokenAAD, b)
}

// OpenImportToken opens a token made by SealImportToken. The caller
// checks what it is for and its age, and clears Private after use.
func (c *Catalog) OpenImportToken(token []byte) (*ImportToken, error) {
	b, err := c.barrier.Open(importTokenAAD, token)
	if err != nil {
		return nil, ErrImportToken
	}
	defer clear(b)
	t := new(ImportToken)
	if err := json.Unmarshal(b, t); err != nil || t.KeyID == "" || len(t.Private) == 0 {
		return nil, ErrImportToken
	}
	return t, nil
}
