package audit

import (
	"encoding/json"
	"testing"
)

func TestFilterKey(t *testing.T) {
	const id = "1234abcd-12ab-34cd-56ef-1234567890ab"
	arn := "arn:aws:kms:us-east-1:111122223333:key/" + id
	for _, c := range []struct {
		name, record string
		want         bool
	}{
		{"resource ARN", `{"resources":[{"ARN":"` + arn + `"}]}`, true},
		{"request parameter", `{"requestParameters":{"keyId":"` + arn + `"}}`, true},
		{"CreateKey's response", `{"eventName":"CreateKey","responseElements":{"keyMetadata":{"keyId":"` + id + `","arn":"` + arn + `"}}}`, true},
		{"ReplicateKey's response", `{"responseElements":{"replicaKeyMetadata":{"arn":"` + arn + `"}}}`, true},
		{"another key's response", `{"responseElements":{"keyMetadata":{"keyId":"other","arn":"arn:aws:kms:us-east-1:111122223333:key/other"}}}`, false},
		{"nothing", `{"eventName":"ListKeys"}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r map[string]any
			if err := json.Unmarshal([]byte(c.record), &r); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{id, arn} {
				if got := (&Filter{Key: key}).Match(r); got != c.want {
					t.Fatalf("Key %s: %v, want %v", key, got, c.want)
				}
			}
		})
	}
}
