package e2etest

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Scrape reads one unlabelled sample, name, from the Prometheus text page
// at url, failing t if the page or the sample is missing.
func Scrape(t testing.TB, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: sample %q: %v", url, line, err)
			}
			return f
		}
	}
	t.Fatalf("%s: no %s in\n%s", url, name, b)
	return 0
}
