package console

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsoleLoginURL: kmsctl console-login prints a one-time URL that
// signs Chromium in as the principal of kmsctl's credentials; the URL
// does not work twice; a session ends after --console-idle-timeout without
// requests.
func TestConsoleLoginURL(t *testing.T) {
	requireTools(t)
	k := startKMSD(t, nil, "--console-idle-timeout", "3s")
	out, errs, code := run(t, k.env, "", kmsctlBin, "--endpoint-url", k.p.Endpoint, "console-login")
	if code != 0 {
		t.Fatalf("kmsctl console-login: exit %d %s", code, errs)
	}
	url := strings.TrimSpace(out)
	if !strings.HasPrefix(url, k.p.Endpoint+"/console/login/token?token=") {
		t.Fatalf("console-login printed %q", url)
	}
	b := newBrowser(t, artifacts(t))
	b.run("open the URL", chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("principal")))
	if got := b.text("#principal"); got != "arn:aws:iam::111122223333:user/kmsd-admin" {
		t.Fatalf("signed in as %q", got)
	}
	// The audit log holds the request, not the URL (a credential).
	b.run("audit", chromedp.Navigate(k.p.Endpoint+"/console/audit?operation=CreateConsoleLoginUrl"), chromedp.WaitVisible(chromedp.ID("audit-count")))
	if got := b.text("#audit-count"); !strings.HasPrefix(got, "1 records") {
		t.Fatalf("audit search for CreateConsoleLoginUrl: %q", got)
	}
	token := url[strings.Index(url, "token=")+len("token="):]
	b.run("record", chromedp.Click(chromedp.CSS("#audit tbody a")), chromedp.WaitVisible(chromedp.ID("record")))
	if rec := b.text("#record"); strings.Contains(rec, token) || !strings.Contains(rec, `"eventName": "CreateConsoleLoginUrl"`) {
		t.Fatalf("audit record of console-login:\n%s", rec)
	}

	// Used once: a second browser (another profile) cannot.
	b2 := newBrowser(t, b.dir)
	b2.run("the URL again", chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("error")))
	if got := b2.text("#error"); !strings.Contains(got, "has been used or has expired") {
		t.Fatalf("URL used twice: %q", got)
	}

	// Idle timeout: after 3s without requests the session is over.
	time.Sleep(3500 * time.Millisecond)
	b.run("after the idle timeout", chromedp.Navigate(k.p.Endpoint+"/console/keys"), chromedp.WaitVisible(chromedp.ID("akid")))
}

// TestConsoleOff: with --console off kmsd serves no console, and
// console-login says so in AWS's error shape.
func TestConsoleOff(t *testing.T) {
	requireTools(t)
	k := startKMSD(t, nil, "--console", "off")
	resp, err := http.Get(k.p.Endpoint + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "UnknownOperationException") {
		t.Fatalf("GET /console/ with the console off: %d %s", resp.StatusCode, body)
	}
	_, errs, code := run(t, k.env, "", kmsctlBin, "--endpoint-url", k.p.Endpoint, "console-login")
	if code == 0 || !strings.Contains(errs, "(UnsupportedOperationException)") || !strings.Contains(errs, "The web console is off") {
		t.Fatalf("console-login with the console off: exit %d %s", code, errs)
	}
}
