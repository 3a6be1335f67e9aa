package hsm

import "context"

// tokens is what the service needs from a PKCS#11 module: the tokens of
// one module, addressed by label. The cgo build implements it on
// github.com/miekg/pkcs11; the !cgo build's implementation reports
// ErrUnavailable for everything. Errors are mapped to this package's
// sentinels (ErrUnreachable, ErrInvalidCredentials, ErrKeyNotFound, …).
type tokens interface {
	// InitToken initialises a free slot's token as label with soPIN
	// (C_InitToken), a free slot being one of free.Slots (any slot when
	// empty) whose token is not initialised.
	InitToken(ctx context.Context, label, soPIN string, free FreeSlots) error
	// DeleteToken removes the token (SoftHSM2: its directory).
	DeleteToken(ctx context.Context, label string) error
	// Present reports ErrUnreachable when no initialised token is label.
	Present(ctx context.Context, label string) error
	// Refresh is Present, but finds a token that went away and came back:
	// the module is re-initialised when label is not found (at most every
	// 50ms; the health probe calls it once per interval and HSM).
	Refresh(ctx context.Context, label string) error
	// SetSOPIN changes the SO PIN (C_Login as SO, C_SetPIN).
	SetSOPIN(ctx context.Context, label, oldPIN, newPIN string) error
	// InitUserPIN sets the user PIN as the SO (C_Login as SO, C_InitPIN):
	// creates the user, or resets its password.
	InitUserPIN(ctx context.Context, label, soPIN, pin string) error
	// UserPINInitialized reports whether the token has a user.
	UserPINInitialized(ctx context.Context, label string) (bool, error)
	// SetUserPIN changes the user PIN from oldPIN (C_SetPIN); a wrong
	// oldPIN is ErrInvalidCredentials.
	SetUserPIN(ctx context.Context, label, oldPIN, newPIN string) error
	// Login logs the user in with pin (C_Login) and keeps the token logged
	// in until Logout; when this process is logged in already, the PIN is
	// still checked. A wrong pin is ErrInvalidCredentials.
	Login(ctx context.Context, label, pin string) error
	// Logout ends the user's login (C_Logout).
	Logout(ctx context.Context, label string) error
	// ImportMasking creates the cluster masking key from material unless
	// the token has it. Needs the user logged in.
	ImportMasking(ctx context.Context, label string, material []byte) error
	// GenerateKey generates a non-extractable AES-256 key labelled
	// keyLabel in the token and returns it wrapped under the masking key,
	// whose material is masking (used as by UnwrapKey).
	GenerateKey(ctx context.Context, label, keyLabel string, masking []byte) ([]byte, error)
	// UnwrapKey creates keyLabel (sensitive, non-extractable) from its
	// wrapped form, unless the token has it. masking is the material of
	// the cluster's masking key, for a module whose C_UnwrapKey ignores
	// the template (mech.go, unwrapProtected).
	UnwrapKey(ctx context.Context, label, keyLabel string, wrapped, masking []byte) error
	// HasKey reports whether the token holds keyLabel.
	HasKey(ctx context.Context, label, keyLabel string) (bool, error)
	// DestroyKey destroys keyLabel; a missing key is ErrKeyNotFound.
	DestroyKey(ctx context.Context, label, keyLabel string) error
	// ListKeys lists the labels of the user's secret keys (not the
	// masking key).
	ListKeys(ctx context.Context, label string) ([]string, error)
	// Encrypt and Decrypt run CKM_AES_GCM with a 128-bit tag; the
	// ciphertext carries the tag at its end.
	Encrypt(ctx context.Context, label, keyLabel string, iv, plaintext, aad []byte) ([]byte, error)
	Decrypt(ctx context.Context, label, keyLabel string, iv, ciphertext, aad []byte) ([]byte, error)
	// Random draws n bytes from the token's generator (C_GenerateRandom).
	Random(ctx context.Context, label string, n int) ([]byte, error)
	// Close releases sessions and the module.
	Close() error
}

// maskingLabel labels the cluster masking key in every token.
const maskingLabel = "kmsd-cluster-masking-key"

// FreeSlots says which slots of a module kmsd may take for the tokens of
// the HSMs it creates (CreateHsm), and how.
type FreeSlots struct {
	// Slots, when not empty, are the only slots kmsd takes: a module whose
	// slots are fixed by its own configuration (openCryptoki) may hold
	// tokens of others in the rest.
	Slots []uint
	// FactorySOPIN, when set, is the SO PIN the module's uninitialised
	// tokens take at C_InitToken (openCryptoki's software token checks it
	// against the PIN it ships with); the token's SO PIN is changed to the
	// cluster's right after (C_Login as SO, C_SetPIN).
	FactorySOPIN string
}
