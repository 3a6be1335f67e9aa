package console

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

// TestConsoleKeys: sign in with the keyboard; create a key with an alias;
// the key page and its policy editor; a user whose policies do not allow
// kms:DisableKey presses Disable and reads AWS's AccessDeniedException,
// the very message the aws CLI gets; a cross-site POST and POSTs without
// the session's CSRF token are refused and change nothing.
func TestConsoleKeys(t *testing.T) {
	requireTools(t)
	k := startKMSD(t, nil)
	b := newBrowser(t, artifacts(t))

	// A wrong secret is refused.
	b.run("wrong secret",
		chromedp.Navigate(k.p.Endpoint+"/console/keys"),
		chromedp.WaitVisible(chromedp.ID("akid")),
		chromedp.SendKeys(chromedp.ID("akid"), k.akid),
		chromedp.SendKeys(chromedp.ID("secret"), "not-the-secret"),
		chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("error")))
	if got := b.text("#error"); got != "The access key ID or secret access key is not valid." {
		t.Fatalf("wrong secret: %q", got)
	}
	b.screenshot("sign-in")
	b.signIn(k.p.Endpoint, k.akid, k.skey)
	admin := "arn:aws:iam::111122223333:user/kmsd-admin"
	if got := b.text("#principal"); got != admin {
		t.Fatalf("signed in as %q", got)
	}
	// The session cookie: HttpOnly, SameSite=Strict, not Secure over
	// plain HTTP.
	session := b.cookie(k.p.Endpoint+"/console/", "kmsd_console")
	if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict || session.Secure || session.Path != "/console/" {
		t.Fatalf("session cookie %+v", session)
	}

	// Create a key.
	b.run("create key",
		chromedp.Navigate(k.p.Endpoint+"/console/keys"),
		chromedp.WaitVisible(chromedp.ID("create-key")),
		chromedp.SendKeys(chromedp.ID("new-alias"), "console-made"),
		chromedp.SendKeys(chromedp.ID("new-description"), "made in the console"),
		chromedp.Click(chromedp.ID("create-key")),
		chromedp.WaitVisible(chromedp.ID("flash")))
	flash := b.text("#flash")
	if !strings.Contains(flash, "created with alias alias/console-made") {
		t.Fatalf("create: %q", flash)
	}
	md := k.aws("kms", "describe-key", "--key-id", "alias/console-made")["KeyMetadata"].(map[string]any)
	keyID := md["KeyId"].(string)
	if md["Description"] != "made in the console" || md["KeyState"] != "Enabled" || !strings.Contains(flash, keyID) {
		t.Fatalf("the key the console made: %v (flash %q)", md, flash)
	}
	if got := b.text(`#metadata dd[data-field="KeyState"]`); got != "Enabled" {
		t.Fatalf("key page state %q", got)
	}
	b.screenshot("key")

	// The keys page lists it, and filters.
	b.run("keys", chromedp.Navigate(k.p.Endpoint+"/console/keys?alias=console-made&state=Enabled"), chromedp.WaitVisible(chromedp.ID("keys")))
	if got := b.text(`#keys tr[data-key="` + keyID + `"] td.state`); got != "Enabled" {
		t.Fatalf("keys page row: %q", got)
	}
	b.screenshot("keys")
	b.run("keys filtered out", chromedp.Navigate(k.p.Endpoint+"/console/keys?state=Disabled"), chromedp.WaitVisible(chromedp.ID("keys")))
	if got := b.text("#keys tbody"); got != "No keys match." {
		t.Fatalf("filter state=Disabled: %q", got)
	}
	b.run("phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("metadata")))
	b.screenshot("key-phone")
	if w := eval[[]int](b, `[document.documentElement.scrollWidth, window.innerWidth]`); w[0] > w[1] {
		t.Fatalf("at phone width the key page is %dpx wide in a %dpx window", w[0], w[1])
	}
	b.run("desktop width", chromedp.EmulateViewport(1280, 800))

	// The policy editor: JSON that does not parse cannot be sent; a
	// policy kmsd refuses shows AWS's exception and keeps the draft.
	b.run("bad JSON", chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("policy")),
		chromedp.SetValue(chromedp.ID("policy"), `{"Statement": [`), chromedp.SendKeys(chromedp.ID("policy"), " "))
	disabled := eval[bool](b, `document.getElementById("save-policy").disabled`)
	if !disabled || !strings.HasPrefix(b.text("#policy-check"), "Not valid JSON") {
		t.Fatalf("bad JSON: save disabled %v, %q", disabled, b.text("#policy-check"))
	}
	bad := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*","Condition":{"Bogus":{"a":"b"}}}]}`
	b.run("refused policy", chromedp.SetValue(chromedp.ID("policy"), bad), chromedp.SendKeys(chromedp.ID("policy"), " "),
		chromedp.Click(chromedp.ID("save-policy")), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#flash"); !strings.HasPrefix(got, "MalformedPolicyDocumentException: ") {
		t.Fatalf("refused policy: %q", got)
	}
	draft := get(b, "draft kept", chromedp.Value(chromedp.ID("policy")))
	if strings.TrimSpace(draft) != bad {
		t.Fatalf("draft after refusal: %q", draft)
	}

	// Tags, and the keys page's tag filter.
	b.run("tag", chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("tags")),
		chromedp.SendKeys(chromedp.CSS(`input[name="tag_key"]`), "team"), chromedp.SendKeys(chromedp.CSS(`input[name="tag_value"]`), "crypto"),
		chromedp.Submit(chromedp.CSS(`input[name="tag_key"]`)), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#tags tbody"); b.text("#flash") != "Tag saved." || !strings.Contains(got, "team") || !strings.Contains(got, "crypto") {
		t.Fatalf("tag: %q, tags %q", b.text("#flash"), got)
	}
	if tags := k.aws("kms", "list-resource-tags", "--key-id", keyID)["Tags"].([]any); len(tags) != 1 {
		t.Fatalf("aws list-resource-tags: %v", tags)
	}
	b.run("filter by tag", chromedp.Navigate(k.p.Endpoint+"/console/keys?tag=team=crypto"), chromedp.WaitVisible(chromedp.ID("keys")))
	if got := b.text(`#keys tbody`); !strings.Contains(got, keyID) {
		t.Fatalf("tag filter team=crypto: %q", got)
	}
	b.run("filter by another tag", chromedp.Navigate(k.p.Endpoint+"/console/keys?tag=team=other"), chromedp.WaitVisible(chromedp.ID("keys")))
	if got := b.text(`#keys tbody`); got != "No keys match." {
		t.Fatalf("tag filter team=other: %q", got)
	}
	// Schedule deletion (7 days), cancel it, enable the key again.
	for _, step := range []struct{ button, flash, state string }{
		{"schedule-deletion", "Key deletion scheduled.", "PendingDeletion"},
		{"cancel-deletion", "Key deletion cancelled; the key is disabled until you enable it.", "Disabled"},
		{"enable", "Key enabled.", "Enabled"},
	} {
		b.run(step.button, chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID(step.button)))
		if step.button == "schedule-deletion" {
			b.run("7 days", chromedp.SetValue(chromedp.CSS(`input[name="days"]`), "7"))
		}
		b.run(step.button, chromedp.Click(chromedp.ID(step.button)), chromedp.WaitVisible(chromedp.ID("flash")))
		if got := b.text("#flash"); got != step.flash {
			t.Fatalf("%s: %q", step.button, got)
		}
		md := k.aws("kms", "describe-key", "--key-id", keyID)["KeyMetadata"].(map[string]any)
		if md["KeyState"] != step.state {
			t.Fatalf("after %s: %v", step.button, md)
		}
		if step.state == "PendingDeletion" {
			d, err := time.Parse(time.RFC3339, md["DeletionDate"].(string))
			if days := time.Until(d).Hours() / 24; err != nil || days < 6.9 || days > 7.1 {
				t.Fatalf("deletion date %v (%v): want in 7 days", md["DeletionDate"], err)
			}
		}
	}

	// A user whose identity policy does not allow kms:DisableKey.
	k.aws("iam", "create-user", "--user-name", "viewer")
	k.aws("iam", "put-user-policy", "--user-name", "viewer", "--policy-name", "view", "--policy-document",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:Describe*","kms:List*","kms:Get*"],"Resource":"*"}]}`)
	ak := k.aws("iam", "create-access-key", "--user-name", "viewer")["AccessKey"].(map[string]any)
	var viewerEnv []string
	for _, e := range k.env {
		if !strings.HasPrefix(e, "AWS_PROFILE=") {
			viewerEnv = append(viewerEnv, e)
		}
	}
	viewerEnv = append(viewerEnv, "AWS_ACCESS_KEY_ID="+ak["AccessKeyId"].(string), "AWS_SECRET_ACCESS_KEY="+ak["SecretAccessKey"].(string))
	_, cliErr, code := k.awsEnv(viewerEnv, "kms", "disable-key", "--key-id", keyID)
	if code == 0 || !strings.Contains(cliErr, "(AccessDeniedException)") {
		t.Fatalf("aws kms disable-key as viewer: exit %d %s", code, cliErr)
	}
	want := strings.TrimSpace(cliErr[strings.Index(cliErr, "operation: ")+len("operation: "):])

	b.signOut()
	b.signIn(k.p.Endpoint, ak["AccessKeyId"].(string), ak["SecretAccessKey"].(string))
	b.run("viewer presses Disable", chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("disable")),
		chromedp.Click(chromedp.ID("disable")), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#flash"); got != "AccessDeniedException: "+want {
		t.Fatalf("viewer's Disable: %q, want AccessDeniedException: %q", got, want)
	}
	b.screenshot("access-denied")
	if st := k.aws("kms", "describe-key", "--key-id", keyID)["KeyMetadata"].(map[string]any)["KeyState"]; st != "Enabled" {
		t.Fatalf("after the refused Disable the key is %v", st)
	}
	b.signOut()

	// CSRF. The administrator, signed in, visits another site whose page
	// posts the Disable form to kmsd: refused for its Origin.
	b.signIn(k.p.Endpoint, k.akid, k.skey)
	evil := evilSite(t, k.p.Endpoint+"/console/keys/"+keyID)
	b.run("cross-site POST", chromedp.Navigate(evil), chromedp.WaitVisible(chromedp.ID("refused")))
	if got := b.text("#refused"); !strings.Contains(got, "another site") {
		t.Fatalf("cross-site POST: %q", got)
	}
	b.screenshot("csrf-refused")
	// The same POST with the session cookie and no Origin (as an older
	// browser might send it): without the session's CSRF token, or with
	// another, it is refused as well.
	session = b.cookie(k.p.Endpoint+"/console/", "kmsd_console")
	for _, csrf := range []string{"", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"} {
		form := url.Values{"action": {"disable"}, "csrf": {csrf}}
		req, _ := http.NewRequest(http.MethodPost, k.p.Endpoint+"/console/keys/"+keyID, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: session.Name, Value: session.Value})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "CSRF token is missing or wrong") {
			t.Fatalf("POST with csrf %q: %d %s", csrf, resp.StatusCode, body)
		}
	}
	if st := k.aws("kms", "describe-key", "--key-id", keyID)["KeyMetadata"].(map[string]any)["KeyState"]; st != "Enabled" {
		t.Fatalf("after the refused cross-site POSTs the key is %v", st)
	}
	// The session still works, with its token: the administrator disables
	// the key from its page.
	b.run("admin disables", chromedp.Navigate(k.p.Endpoint+"/console/keys/"+keyID), chromedp.WaitVisible(chromedp.ID("disable")),
		chromedp.Click(chromedp.ID("disable")), chromedp.WaitVisible(chromedp.ID("flash")))
	if got := b.text("#flash"); got != "Key disabled." {
		t.Fatalf("admin's Disable: %q", got)
	}
	if st := k.aws("kms", "describe-key", "--key-id", keyID)["KeyMetadata"].(map[string]any)["KeyState"]; st != "Disabled" {
		t.Fatalf("after the admin's Disable the key is %v", st)
	}
}

// evilSite serves, on another loopback port (another origin), a page
// that posts the Disable form to target as soon as it loads. It is
// stopped when the test ends.
func evilSite(t *testing.T, target string) string {
	t.Helper()
	addr := e2etest.FreeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s"><input name="action" value="disable"></form>
<script>document.forms[0].submit()</script>`, target)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + addr + "/"
}
