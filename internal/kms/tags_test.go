package kms

import (
	"context"
	"fmt"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

func tagList(kv ...string) []kmsapi.Tag {
	var out []kmsapi.Tag
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, kmsapi.Tag{TagKey: kmsapi.String(kv[i]), TagValue: kmsapi.String(kv[i+1])})
	}
	return out
}

func manyTags(prefix string, n int) []kmsapi.Tag {
	var kv []string
	for i := range n {
		kv = append(kv, fmt.Sprintf("%s%d", prefix, i), "v")
	}
	return tagList(kv...)
}

// TestTagRules checks AWS's tag rules and messages in CreateKey and
// TagResource: duplicate keys in one request, the reserved aws: prefix in
// any letter case, and the limit of 50 tags on a key.
func TestTagRules(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tests := []struct {
		name     string
		existing []kmsapi.Tag // on the key before TagResource
		tags     []kmsapi.Tag
		msg      string // TagException message, "" for success
	}{
		{"duplicate keys", nil, tagList("a", "1", "b", "2", "a", "3"), "Duplicate tag keys"},
		{"duplicate keys even with the same value", nil, tagList("a", "1", "a", "1"), "Duplicate tag keys"},
		{"keys differing in case are distinct", nil, tagList("a", "1", "A", "2"), ""},
		{"aws: prefix", nil, tagList("aws:owner", "x"), "Tags beginning with aws: are reserved"},
		{"AWS: prefix", nil, tagList("ok", "1", "AWS:owner", "x"), "Tags beginning with aws: are reserved"},
		{"Aws: prefix", nil, tagList("Aws:", "x"), "Tags beginning with aws: are reserved"},
		{"aws without colon", nil, tagList("awsome", "x", "aws", "y"), ""},
		{"50 tags", nil, manyTags("k", 50), ""},
		{"51 tags", nil, manyTags("k", 51), "Too many tags"},
		{"51 with those on the key", manyTags("old", 49), manyTags("new", 2), "Too many tags"},
		{"replacing tags on the key stays at 50", manyTags("k", 50), manyTags("k", 3), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(op string, err error) {
				t.Helper()
				if tt.msg == "" {
					if err != nil {
						t.Fatalf("%s: %v", op, err)
					}
					return
				}
				wantMessage(t, err, "TagException", tt.msg)
			}
			if tt.existing == nil {
				_, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Tags: tt.tags})
				check("CreateKey", err)
			}
			out, err := f.svc.CreateKey(ctx, f.caller, &kmsapi.CreateKeyRequest{Tags: tt.existing})
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.svc.TagResource(ctx, f.caller, &kmsapi.TagResourceRequest{KeyId: out.KeyMetadata.KeyId, Tags: tt.tags})
			check("TagResource", err)
			if tt.msg != "" {
				// A refused request changes nothing.
				lt, err := f.svc.ListResourceTags(ctx, f.caller, &kmsapi.ListResourceTagsRequest{KeyId: out.KeyMetadata.KeyId})
				if err != nil || len(lt.Tags) != len(tt.existing) {
					t.Errorf("tags after a refused TagResource: %d, %v; want %d", len(lt.Tags), err, len(tt.existing))
				}
			}
		})
	}
}
