package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

var materialIDPattern = regexp.MustCompile(`^[a-f0-9]{64}$`)

// TestFidelityDetails drives the details AWS users' tests check (issue #14
// item 5) through the real clients: the aws CLI v2 for what its model
// knows, aws-sdk-go-v2 for the KeyMaterialId members, which the Debian
// CLI's model (2.9.19) predates and so drops from its output.
func TestFidelityDetails(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	c := newCLI(t, s)
	sdk := profileClient(t, s)
	ctx := testContext(t)

	id := str(t, c.ok("create-key", "--description", "fidelity"), "KeyMetadata", "KeyId")
	arn := keyARN(id)

	t.Run("KeyMaterialId", func(t *testing.T) {
		current := func() string {
			t.Helper()
			d, err := sdk.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
			if err != nil {
				t.Fatalf("DescribeKey: %v", err)
			}
			return aws.ToString(d.KeyMetadata.CurrentKeyMaterialId)
		}
		first := current()
		if !materialIDPattern.MatchString(first) {
			t.Fatalf("DescribeKey: CurrentKeyMaterialId = %q, want 64 lowercase hex digits", first)
		}
		blob := blobOf(t, c.ok("encrypt", "--key-id", id, "--plaintext", c.file("pt", []byte("fidelity"))))
		rot := c.ok("rotate-key-on-demand", "--key-id", id)
		if got := str(t, rot, "KeyId"); got != arn {
			t.Errorf("rotate-key-on-demand: KeyId = %q, want the key ARN %q", got, arn)
		}
		second := current()
		if !materialIDPattern.MatchString(second) || second == first {
			t.Fatalf("after rotate-key-on-demand: CurrentKeyMaterialId = %q, want a new id (was %q)", second, first)
		}
		dec, err := sdk.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blob})
		if err != nil {
			t.Fatalf("Decrypt: %v", err)
		}
		if got := aws.ToString(dec.KeyMaterialId); got != first {
			t.Errorf("Decrypt of a blob made before the rotation: KeyMaterialId = %q, want %q", got, first)
		}
		enc, err := sdk.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("after")})
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		dec, err = sdk.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob})
		if err != nil {
			t.Fatalf("Decrypt: %v", err)
		}
		if got := aws.ToString(dec.KeyMaterialId); got != second {
			t.Errorf("Decrypt of a blob made after the rotation: KeyMaterialId = %q, want %q", got, second)
		}
		gdk, err := sdk.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: aws.String(id), NumberOfBytes: aws.Int32(32)})
		if err != nil {
			t.Fatalf("GenerateDataKey: %v", err)
		}
		if got := aws.ToString(gdk.KeyMaterialId); got != second {
			t.Errorf("GenerateDataKey: KeyMaterialId = %q, want %q", got, second)
		}
		re, err := sdk.ReEncrypt(ctx, &kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyId: aws.String(id)})
		if err != nil {
			t.Fatalf("ReEncrypt: %v", err)
		}
		if aws.ToString(re.SourceKeyMaterialId) != first || aws.ToString(re.DestinationKeyMaterialId) != second {
			t.Errorf("ReEncrypt: SourceKeyMaterialId %q, DestinationKeyMaterialId %q; want %q, %q",
				aws.ToString(re.SourceKeyMaterialId), aws.ToString(re.DestinationKeyMaterialId), first, second)
		}
	})

	t.Run("tags", func(t *testing.T) {
		tagErr := func(op, msg string) string { return cliError("TagException", op, msg) }
		c.fails(tagErr("TagResource", "Duplicate tag keys"),
			"tag-resource", "--key-id", id, "--tags", "TagKey=a,TagValue=1", "TagKey=a,TagValue=2")
		c.fails(tagErr("TagResource", "Tags beginning with aws: are reserved"),
			"tag-resource", "--key-id", id, "--tags", "TagKey=AWS:owner,TagValue=x")
		c.fails(tagErr("CreateKey", "Tags beginning with aws: are reserved"),
			"create-key", "--tags", "TagKey=aws:owner,TagValue=x")
		var many []string
		for i := range 51 {
			many = append(many, fmt.Sprintf("TagKey=k%d,TagValue=v", i))
		}
		c.fails(tagErr("CreateKey", "Too many tags"), append([]string{"create-key", "--tags"}, many...)...)
		c.ok("tag-resource", "--key-id", id, "--tags", "TagKey=awsome,TagValue=ok")
	})

	t.Run("generate-random without bytes", func(t *testing.T) {
		c.fails(cliError("ValidationException", "GenerateRandom", "NumberOfBytes is required."), "generate-random")
	})

	t.Run("aliases", func(t *testing.T) {
		c.ok("create-alias", "--alias-name", "alias/fidelity", "--target-key-id", id)
		all, _ := field(t, c.ok("list-aliases"), "Aliases").([]any)
		var names []string
		for _, a := range all {
			name := str(t, a, "AliasName")
			names = append(names, name)
			if strings.HasPrefix(name, "alias/aws/") {
				if m := a.(map[string]any); m["TargetKeyId"] != nil || str(t, a, "AliasArn") != aliasARN(name) {
					t.Errorf("list-aliases: %v, want an AWS managed alias with its ARN and no TargetKeyId", a)
				}
			}
		}
		for _, want := range []string{"alias/aws/ebs", "alias/aws/s3", "alias/aws/rds", "alias/fidelity"} {
			if !strings.Contains(strings.Join(names, " ")+" ", want+" ") {
				t.Errorf("list-aliases: %v, want %s among them", names, want)
			}
		}
		// The CLI's paginator pages by Marker through the merged list.
		paged := c.text("list-aliases", "--page-size", "3", "--output", "text", "--query", "Aliases[].AliasName")
		if got := strings.Fields(paged); strings.Join(got, " ") != strings.Join(names, " ") {
			t.Errorf("list-aliases in pages of 3: %v, want %v", got, names)
		}
		mine, _ := field(t, c.ok("list-aliases", "--key-id", id), "Aliases").([]any)
		if len(mine) != 1 || str(t, mine[0], "AliasName") != "alias/fidelity" {
			t.Errorf("list-aliases --key-id: %v, want only alias/fidelity", mine)
		}
		c.fails(cliError("NotAuthorizedException", "CreateAlias", ""),
			"create-alias", "--alias-name", "alias/aws/x", "--target-key-id", id)
		c.fails(cliError("NotAuthorizedException", "DeleteAlias", ""), "delete-alias", "--alias-name", "alias/aws/ebs")
		c.fails(cliError("ValidationException", "CreateAlias", "alias/a:b contains invalid characters for an alias"),
			"create-alias", "--alias-name", "alias/a:b", "--target-key-id", id)
	})
}
