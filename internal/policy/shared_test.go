package policy

import (
	"slices"
	"sort"
	"testing"
)

// layered is r with its condition keys dealt round-robin (in sorted
// order) among Context and two Shared maps: evaluation must not tell it
// from r.
func layered(r *Request) *Request {
	keys := make([]string, 0, len(r.Context))
	for k := range r.Context {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := &Request{Principal: r.Principal, Action: r.Action, Resource: r.Resource, Context: map[string][]string{},
		Shared: []map[string][]string{{}, {}}}
	for i, k := range keys {
		if i%3 == 0 {
			out.Context[k] = r.Context[k]
		} else {
			out.Shared[i%3-1][k] = r.Context[k]
		}
	}
	return out
}

// TestSharedLayers: every evaluation case decides the same with its
// condition keys spread over Context and Shared as with all in Context.
func TestSharedLayers(t *testing.T) {
	for _, c := range loadEvalCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			kind := parseKind(t, c.Kind)
			p := mustParse(t, c.document(t, kind), kind)
			r := c.request(t)
			if got, want := p.Evaluate(layered(r)), p.Evaluate(r); got != want {
				t.Fatalf("layered decision = %s, flat %s", got, want)
			}
		})
	}
}

// TestSharedLookup: the first of Context and the Shared maps that holds a
// key spelled the same decides, even with no values; spellings that
// differ in case only are one key whose values join, wherever they are.
func TestSharedLookup(t *testing.T) {
	principal := map[string][]string{"aws:PrincipalAccount": {"111122223333"}, "aws:username": {"alice"}, "kms:ViaService": {"s3.amazonaws.com"}, "aws:PrincipalTag/Team": {"red"}}
	env := map[string][]string{"aws:PrincipalAccount": {"999999999999"}, "aws:SecureTransport": {"true"}, "Aws:SecureTransport": {"false"}}
	r := &Request{Shared: []map[string][]string{principal, env}}
	get := func(key string) ([]string, bool) {
		t.Helper()
		return r.lookup(key, lowerASCII(key))
	}
	if v, ok := get("aws:PrincipalAccount"); !ok || !slices.Equal(v, []string{"111122223333"}) {
		t.Errorf("aws:PrincipalAccount = %v, %v; want the first shared map's", v, ok)
	}
	if v, ok := get("AWS:USERNAME"); !ok || !slices.Equal(v, []string{"alice"}) {
		t.Errorf("AWS:USERNAME = %v, %v; want alice (nil Context)", v, ok)
	}
	if v, ok := get("AWS:SECURETRANSPORT"); !ok || len(v) != 2 {
		t.Errorf("AWS:SECURETRANSPORT = %v, %v; want both spellings' values", v, ok)
	}
	r.Set("kms:ViaService")
	if v, ok := get("kms:ViaService"); ok {
		t.Errorf("kms:ViaService = %v after Set with no values; want absent", v)
	}
	if v, ok := get("KMS:VIASERVICE"); ok {
		t.Errorf("KMS:VIASERVICE = %v after Set with no values; want absent", v)
	}
	r.Set("aws:username", "bob")
	if v, _ := get("aws:username"); !slices.Equal(v, []string{"bob"}) {
		t.Errorf("aws:username = %v, want Context's bob", v)
	}
	if v, _ := get("AWS:Username"); !slices.Equal(v, []string{"bob"}) {
		t.Errorf("AWS:Username = %v, want Context's bob alone (the shared one is hidden)", v)
	}
	r.Set("aws:PrincipalTag/Team", "blue")
	if v, _ := get("AWS:PRINCIPALTAG/TEAM"); !slices.Equal(v, []string{"blue"}) {
		t.Errorf("AWS:PRINCIPALTAG/TEAM = %v, want Context's blue alone (found by scan; the shared one is hidden)", v)
	}
	r.Set("aws:nothere")
	if _, ok := r.Context["aws:nothere"]; ok {
		t.Error("Set with no values of a key no map holds left an entry")
	}
	if principal["kms:ViaService"] == nil || principal["aws:username"][0] != "alice" {
		t.Error("a Shared map was modified")
	}
}

// TestSharedEvaluateDoesNotAllocate: looking keys up through the Shared
// maps costs no allocation either.
func TestSharedEvaluateDoesNotAllocate(t *testing.T) {
	p := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*",
		"Condition":{"StringEquals":{"aws:PrincipalAccount":"111122223333","kms:CallerAccount":"111122223333"},"Bool":{"aws:SecureTransport":"true"},
		"StringEqualsIfExists":{"kms:ViaService":"s3.us-east-1.amazonaws.com"}}}]}`, KeyPolicy)
	r := layered(benchRequest())
	r.Set(KeySecureTransport, "true")
	if d := p.Evaluate(r); d != Allow {
		t.Fatalf("decision %v", d)
	}
	if n := testing.AllocsPerRun(100, func() { p.Evaluate(r) }); n != 0 {
		t.Errorf("Evaluate allocates %v times per run", n)
	}
}
