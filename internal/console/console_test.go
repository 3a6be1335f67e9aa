package console

import (
	"math"
	"testing"

	"github.com/kmsd/kmsd/internal/kmsapi"
)

// Every ConnectionErrorCode of the model has AWS's repair hint, for both
// store types.
func TestHintForEveryCode(t *testing.T) {
	for _, code := range kmsapi.EnumConnectionErrorCodeType {
		for _, typ := range []string{"AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"} {
			if Hint(typ, code) == "" {
				t.Errorf("no hint for %s %s", typ, code)
			}
		}
	}
	if Hint("AWS_CLOUDHSM", "") != "" {
		t.Error("a hint without an error code")
	}
	if Hint("AWS_CLOUDHSM", "INVALID_CREDENTIALS") == Hint("EXTERNAL_KEY_STORE", "INVALID_CREDENTIALS") {
		t.Error("INVALID_CREDENTIALS: one hint for both store types")
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	// 100 requests: 50 up to 1 ms, 40 more up to 10 ms, 10 more up to 100 ms.
	bs := []Bucket{{0.001, 50}, {0.01, 90}, {0.1, 100}, {inf, 100}}
	for _, c := range []struct {
		name string
		q    float64
		want float64
	}{
		{"p50 at the first bucket's top", 0.5, 0.001},
		{"p70 halfway in the second", 0.7, 0.0055},
		{"p99 in the third", 0.99, 0.091},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := quantile(bs, c.q); math.Abs(got-c.want) > 1e-9 {
				t.Fatalf("quantile(%v) = %v, want %v", c.q, got, c.want)
			}
		})
	}
	t.Run("beyond the last finite bound", func(t *testing.T) {
		if got := quantile([]Bucket{{0.001, 0}, {inf, 5}}, 0.5); got != 0.001 {
			t.Fatalf("got %v", got)
		}
	})
	t.Run("delta of two snapshots", func(t *testing.T) {
		d := delta(bs, []Bucket{{0.001, 50}, {0.01, 50}, {0.1, 50}, {inf, 50}})
		if d[0].Count != 0 || d[1].Count != 40 || d[3].Count != 50 {
			t.Fatalf("delta %v", d)
		}
	})
}
