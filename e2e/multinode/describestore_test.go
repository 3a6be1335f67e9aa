package multinode

import (
	"errors"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// TestDescribeStoreThroughLaggingNode: node-1's change feed is held back
// (--cache-poll-interval 10m: after its first poll at start it does not
// read the feed again during the test). A custom key store made through
// node-0 is described through node-1 at once — by id, by name and in the
// list — and, deleted through node-0, is at once CustomKeyStoreNotFound
// through node-1: DescribeCustomKeyStores reads the database, not the
// node's cache (MULTINODE.md §4.7). Before, node-1 answered
// CustomKeyStoreNotFoundException until its feed brought the store.
func TestDescribeStoreThroughLaggingNode(t *testing.T) {
	ctx := t.Context()
	proxy, ca := startXKSProxy(t) // CreateCustomKeyStore checks that the proxy answers
	pg := startPG(t)
	c := newCluster(t, pg, clusterOpts{nodes: 2, extra: []string{"--xks-ca-bundle", ca}, nodeArgs: func(i int) []string {
		if i == 1 {
			return []string{"--cache-poll-interval", "10m", "--cache-max-staleness", "1h"}
		}
		return nil
	}})
	a, b := c.client(c.nodes[0]), c.client(c.nodes[1])
	created, err := a.CreateCustomKeyStore(ctx, &kms.CreateCustomKeyStoreInput{
		CustomKeyStoreName:               aws.String("made-on-node-0"),
		CustomKeyStoreType:               types.CustomKeyStoreTypeExternalKeyStore,
		XksProxyConnectivity:             types.XksProxyConnectivityTypePublicEndpoint,
		XksProxyUriEndpoint:              aws.String("https://localhost:" + proxy.Port()),
		XksProxyUriPath:                  aws.String("/kms/xks/v1"),
		XksProxyAuthenticationCredential: &types.XksProxyAuthenticationCredentialType{AccessKeyId: aws.String(xksAKID), RawSecretAccessKey: aws.String(xksSecret)},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(created.CustomKeyStoreId)
	for _, in := range []*kms.DescribeCustomKeyStoresInput{
		{CustomKeyStoreId: aws.String(id)},
		{CustomKeyStoreName: aws.String("made-on-node-0")},
		{},
	} {
		out, err := b.DescribeCustomKeyStores(ctx, in)
		if err != nil {
			t.Fatalf("DescribeCustomKeyStores(id %v, name %v) through node-1 right after the create through node-0: %v",
				aws.ToString(in.CustomKeyStoreId), aws.ToString(in.CustomKeyStoreName), err)
		}
		if !slices.ContainsFunc(out.CustomKeyStores, func(e types.CustomKeyStoresListEntry) bool {
			return aws.ToString(e.CustomKeyStoreId) == id && e.ConnectionState == types.ConnectionStateTypeDisconnected
		}) {
			t.Fatalf("DescribeCustomKeyStores(id %v, name %v) through node-1: %+v, want %s DISCONNECTED",
				aws.ToString(in.CustomKeyStoreId), aws.ToString(in.CustomKeyStoreName), out.CustomKeyStores, id)
		}
	}
	if _, err := a.DeleteCustomKeyStore(ctx, &kms.DeleteCustomKeyStoreInput{CustomKeyStoreId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	_, err = b.DescribeCustomKeyStores(ctx, &kms.DescribeCustomKeyStoresInput{CustomKeyStoreId: aws.String(id)})
	if nf := new(types.CustomKeyStoreNotFoundException); !errors.As(err, &nf) {
		t.Fatalf("DescribeCustomKeyStores through node-1 right after the delete through node-0: %v, want CustomKeyStoreNotFoundException", err)
	}
	out, err := b.DescribeCustomKeyStores(ctx, &kms.DescribeCustomKeyStoresInput{})
	if err != nil || len(out.CustomKeyStores) != 0 {
		t.Fatalf("the list through node-1 after the delete: %v %v, want empty", out, err)
	}
}
