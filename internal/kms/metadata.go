package kms

import (
	"slices"
	"time"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
	"github.com/kmsd/kmsd/internal/kmsapi"
)

// metadata renders a key record as the KeyMetadata AWS returns.
func metadata(k *catalog.Key) *kmsapi.KeyMetadata {
	m := &kmsapi.KeyMetadata{
		AWSAccountId:          kmsapi.String(k.Account),
		KeyId:                 kmsapi.String(k.ID),
		Arn:                   kmsapi.String(k.ARN()),
		CreationDate:          kmsapi.NewTime(k.Created),
		Enabled:               kmsapi.Bool(k.State == keys.Enabled),
		Description:           kmsapi.String(k.Description),
		KeyUsage:              kmsapi.String(k.KeyUsage),
		KeyState:              kmsapi.String(string(k.State)),
		Origin:                kmsapi.String(k.Origin),
		KeyManager:            kmsapi.String("CUSTOMER"),
		CustomerMasterKeySpec: kmsapi.String(k.KeySpec),
		KeySpec:               kmsapi.String(k.KeySpec),
		MultiRegion:           kmsapi.Bool(false),
	}
	m.EncryptionAlgorithms, m.SigningAlgorithms, m.MacAlgorithms, m.KeyAgreementAlgorithms = algorithmLists(k)
	if k.Origin == originExternal {
		m.ExpirationModel, m.ValidTo = importedExpiry(k)
	}
	if k.DeletionDate != nil {
		m.DeletionDate = kmsapi.NewTime(*k.DeletionDate)
	}
	if k.State == keys.PendingReplicaDeletion {
		// The window starts when the last replica is deleted [M].
		m.PendingDeletionWindowInDays = kmsapi.Int32(k.PendingWindowInDays)
	}
	if k.MultiRegion() {
		m.MultiRegion = kmsapi.Bool(true)
		m.MultiRegionConfiguration = multiRegionConfiguration(k)
	}
	return m
}

// algorithmLists gives exactly one algorithm list, the one of the key's
// usage (spec §4); the others are nil, so they are left out of the JSON.
func algorithmLists(k *catalog.Key) (encryption, signing, mac, agreement []string) {
	info, _ := keys.Spec(k.KeySpec)
	algs := slices.Clone(info.Algorithms(k.KeyUsage))
	switch k.KeyUsage {
	case keys.EncryptDecrypt:
		encryption = algs
	case keys.SignVerify:
		signing = algs
	case keys.GenerateVerifyMAC:
		mac = algs
	case keys.KeyAgreement:
		agreement = algs
	}
	return
}

// importedExpiry is the ExpirationModel and ValidTo of an EXTERNAL key
// (spec §4): absent unless its current material is imported; ValidTo is
// the earliest expiry among the materials permanently associated with it.
func importedExpiry(k *catalog.Key) (*string, *kmsapi.Time) {
	cur := k.Version(k.Current)
	if cur == nil || cur.ImportState != importStateImported {
		return nil, nil
	}
	var earliest *time.Time
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.Number <= k.Current && v.ValidTo != nil && (earliest == nil || v.ValidTo.Before(*earliest)) {
			earliest = v.ValidTo
		}
	}
	if earliest == nil {
		return kmsapi.String(materialDoesNotExpire), nil
	}
	return kmsapi.String(materialExpires), kmsapi.NewTime(*earliest)
}
