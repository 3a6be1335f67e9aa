package kms

import (
	"strings"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// awsManagedAliases are the predefined aliases of AWS managed keys that
// ListAliases shows in every account and Region, even a fresh one, with no
// TargetKeyId until a service first uses its key (model documentation of
// ListAliases: "aliases that have no TargetKeyId field … predefined
// aliases that Amazon Web Services has created but has not yet associated
// with a KMS key"). The list is the one emulators settled on: moto's
// RESERVED_ALIASES (moto/kms/utils.py) and LocalStack's
// (localstack-core/localstack/services/kms/models.py), the same 14 names.
// Sorted, as ListAliases merges them by name.
var awsManagedAliases = []string{
	"alias/aws/acm",
	"alias/aws/dynamodb",
	"alias/aws/ebs",
	"alias/aws/elasticfilesystem",
	"alias/aws/es",
	"alias/aws/glue",
	"alias/aws/kinesisvideo",
	"alias/aws/lambda",
	"alias/aws/rds",
	"alias/aws/redshift",
	"alias/aws/s3",
	"alias/aws/secretsmanager",
	"alias/aws/ssm",
	"alias/aws/xray",
}

// reservedAlias says whether name is in the namespace AWS keeps for its
// managed keys, which callers can neither create, repoint nor delete.
func reservedAlias(name string) bool { return strings.HasPrefix(name, "alias/aws/") }

// errAliasReserved answers CreateAlias, UpdateAlias and DeleteAlias on a
// name in alias/aws/. [O] NotAuthorizedException without a message is
// what moto (moto/kms/responses.py, NotAuthorizedException()) and
// local-kms send; neither AWS's text nor whether it has one is recorded.
var errAliasReserved = kmsapi.NewException("NotAuthorizedException", "")
