package kms

import (
	"context"
	"strings"

	"github.com/kmsd/kmsd/internal/catalog"
	"github.com/kmsd/kmsd/internal/keys"
)

// checkAliasName applies AWS's rules for a new alias name, beyond the
// model's pattern ^[a-zA-Z0-9:/_-]+$ the decoder already applied: the
// "alias/" prefix, the reserved alias/aws/ namespace, and no colon,
// which the pattern allows but AWS refuses. [O] The colon's message is
// the one moto's tests pin (test__create_alias__raises_if_alias_has_colon_character,
// "colons are not accepted for an alias, even though they are accepted by
// regex"), written against AWS.
func checkAliasName(name string) error {
	if !strings.HasPrefix(name, "alias/") || len(name) == len("alias/") {
		return exc("ValidationException", `Alias must start with the prefix "alias/". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html`)
	}
	if reservedAlias(name) {
		return errAliasReserved
	}
	if strings.Contains(name, ":") {
		return exc("ValidationException", name+" contains invalid characters for an alias")
	}
	return nil
}

// aliasTarget resolves the TargetKeyId of CreateAlias/UpdateAlias: a key
// id or key ARN, never an alias.
func (s *Service) aliasTarget(ctx context.Context, c *Caller, target string) (*catalog.Key, error) {
	ref, err := keys.Parse(target)
	if err == nil && (ref.Kind == keys.KindAlias || ref.Kind == keys.KindAliasARN) {
		return nil, exc("ValidationException", "Aliases must refer to keys. Not aliases")
	}
	k, err := s.resolve(ctx, c, target)
	if err != nil {
		return nil, err
	}
	if err := notPendingDeletion(k); err != nil {
		return nil, err
	}
	return k, nil
}
