// Package console holds the end-to-end tests of kmsd's web console: the
// real kmsd binary (with SoftHSM2 clusters and a real xks-proxy behind its
// key stores) and Debian's real Chromium, driven over the DevTools
// protocol by chromedp. The aws CLI v2 is the oracle for what the console
// did (or must not have done), and sets up what the console only shows.
//
// Screenshots of every page go to $KMSD_TEST_ARTIFACTS/console when that
// is set, else to a fresh directory under the system temp dir; the test
// logs where.
package console

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI   = "/usr/bin/aws" // Debian's aws CLI v2
	chromium = "/usr/bin/chromium"
	module   = "/usr/lib/softhsm/libsofthsm2.so"
	region   = "us-east-1"
)

var kmsdBin, kmsctlBin, proxyBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin, "xks-proxy": &proxyBin})
}

// requireTools fails (never skips) when a tool is missing: scripts/test.sh
// installs them.
func requireTools(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range append([]string{awsCLI, chromium}, paths...) {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages awscli, chromium, softhsm2, openssl)", p)
		}
	}
}

// kmsd is a running kmsd and what the aws CLI needs to reach it.
type kmsd struct {
	t          *testing.T
	p          *e2etest.KMSD
	env        []string
	akid, skey string // the administrator's access key
}

func startKMSD(t *testing.T, env []string, args ...string) *kmsd {
	t.Helper()
	p := e2etest.StartKMSD(t, e2etest.KMSDConfig{Bin: kmsdBin, Env: append(os.Environ(), env...), Args: args})
	k := &kmsd{t: t, p: p, env: p.CLIEnv(region)}
	b, err := os.ReadFile(p.Creds)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "aws_access_key_id = "); ok {
			k.akid = v
		}
		if v, ok := strings.CutPrefix(l, "aws_secret_access_key = "); ok {
			k.skey = v
		}
	}
	if k.akid == "" || k.skey == "" {
		t.Fatalf("no administrator key in %s", p.Creds)
	}
	return k
}

func run(t *testing.T, env []string, stdin, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out.String(), errb.String(), code
}

// awsEnv runs the aws CLI with env and decodes its JSON output; it
// returns stderr and the exit code too.
func (k *kmsd) awsEnv(env []string, args ...string) (map[string]any, string, int) {
	k.t.Helper()
	args = append([]string{"--endpoint-url", k.p.Endpoint, "--output", "json"}, args...)
	out, errs, code := run(k.t, env, "", awsCLI, args...)
	var v map[string]any
	if code == 0 && strings.TrimSpace(out) != "" {
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			k.t.Fatalf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return v, errs, code
}

// aws runs the aws CLI as the administrator; it must succeed.
func (k *kmsd) aws(args ...string) map[string]any {
	k.t.Helper()
	v, errs, code := k.awsEnv(k.env, args...)
	if code != 0 {
		k.t.Fatalf("aws %s: exit %d\n%s", strings.Join(args, " "), code, errs)
	}
	return v
}

// cli runs a kmsctl cloudhsm-cli command, which must succeed.
func (k *kmsd) cli(args ...string) {
	k.t.Helper()
	args = append([]string{"--endpoint-url", k.p.Endpoint, "cloudhsm-cli"}, args...)
	out, errs, _ := run(k.t, k.env, "", kmsctlBin, args...)
	var v struct {
		ErrorCode int `json:"error_code"`
		Data      any `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || v.ErrorCode != 0 {
		k.t.Fatalf("kmsctl cloudhsm-cli %s: %v %s %s", strings.Join(args, " "), err, out, errs)
	}
}

// browser is a headless Chromium with one tab, stopped when the test ends.
type browser struct {
	t   *testing.T
	ctx context.Context
	dir string // screenshots
}

// artifacts is the directory the test's screenshots go to.
func artifacts(t *testing.T) string {
	t.Helper()
	var dir string
	if base := os.Getenv("KMSD_TEST_ARTIFACTS"); base != "" {
		dir = filepath.Join(base, "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp("", "kmsd-console-screenshots-"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshots in %s", dir)
	return dir
}

// newBrowser starts Chromium headless with a fresh profile, no network of
// its own (no component updates, sync or QUIC), at 1280×800.
func newBrowser(t *testing.T, shots string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium's own temporary files (its singleton socket
		// directory among them) go where the test removes them.
		chromedp.Env("TMPDIR=" + t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() }) // closes the tab, then stops Chromium (by its process)
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, dir: shots}
}

// run runs actions with a deadline, failing the test on error.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	get(b, what, chromedp.Steps(actions...))
}

// get runs one action that returns a value, with a deadline, failing the
// test on error.
func get[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		b.t.Fatalf("%s: %v\npage %s:\n%s", what, err, loc, body)
	}
	return v
}

// text is the text of the first element sel (CSS) matches.
func (b *browser) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(get(b, "text of "+sel, chromedp.Text(chromedp.CSS(sel))))
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	return get(b, "evaluate "+expr, chromedp.Evaluate[T](expr))
}

// cookie is the browser's cookie name for url.
func (b *browser) cookie(url, name string) *network.Cookie {
	b.t.Helper()
	res := get(b, "cookies", chromedp.Action[network.GetCookiesResult](func(ctx context.Context, t *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, t, network.GetCookies, network.GetCookiesParams{URLs: []string{url}})
	}))
	for _, c := range res.Cookies {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// screenshot saves the whole page as name.png.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	png := get(b, "screenshot "+name, chromedp.FullScreenshot(100))
	p := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}

// waitText polls until the text of sel satisfies ok.
func (b *browser) waitText(what, sel string, ok func(string) bool) string {
	b.t.Helper()
	var s string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if eval[int](b, `document.querySelectorAll(`+jsString(sel)+`).length`) > 0 {
			if s = b.text(sel); ok(s) {
				return s
			}
		}
	}
	b.t.Fatalf("%s: %s is %q", what, sel, s)
	return ""
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// signIn signs in on the sign-in page with the keyboard only: the access
// key id field has focus, Tab moves to the secret, Enter submits.
func (b *browser) signIn(endpoint, akid, secret string) {
	b.t.Helper()
	b.run("sign in",
		chromedp.Navigate(endpoint+"/console/"),
		chromedp.WaitVisible(chromedp.ID("akid")),
		chromedp.Focus(chromedp.ID("akid")),
		chromedp.KeyEvent(akid),
		chromedp.KeyEvent("\t"),
		chromedp.KeyEvent(secret),
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.ID("principal")),
	)
}

// signOut presses Sign out.
func (b *browser) signOut() {
	b.t.Helper()
	b.run("sign out", chromedp.Click(chromedp.CSS(`form.who button`)), chromedp.WaitVisible(chromedp.ID("akid")))
}
