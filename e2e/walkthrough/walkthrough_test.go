package walkthrough

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsd/kmsd/e2e/e2etest"
)

const (
	awsCLI = "/usr/bin/aws" // Debian's aws CLI v2 (the `aws` on PATH may be pip's v1)
	module = "/usr/lib/softhsm/libsofthsm2.so"
	// stepTimeout bounds one step, waits included (kmsctl's waiter polls
	// every 5 s).
	stepTimeout = 2 * time.Minute
)

var kmsdBin, kmsctlBin, proxyBin string

func TestMain(m *testing.M) {
	e2etest.Main(m, map[string]*string{"kmsd": &kmsdBin, "kmsctl": &kmsctlBin, "xks-proxy": &proxyBin})
}

// requireTools fails (never skips) when a tool the walkthrough uses is
// missing: scripts/test.sh installs them.
func requireTools(t *testing.T) {
	t.Helper()
	for _, p := range []string{awsCLI, module} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages awscli, softhsm2)", p)
		}
	}
	for _, tool := range []string{"bash", "openssl", "curl", "softhsm2-util", "base64"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing; run scripts/test.sh (Debian packages bash, openssl, curl, softhsm2, coreutils)", tool)
		}
	}
}

// The walkthrough must go all the way: an HSM key store with a key in it
// and an external key store with a key in it. These fragments keep a
// README edit from dropping a part (or the markers) unnoticed.
var mustRun = []string{
	"cloudhsmv2 create-cluster", "cloudhsmv2 create-hsm", "cloudhsmv2 initialize-cluster",
	"cloudhsm-cli cluster activate", "cloudhsm-cli user create", "--username kmsuser",
	"create-custom-key-store", "connect-custom-key-store", "wait custom-key-store-connected",
	"--origin AWS_CLOUDHSM", "xks-proxy keys create", "xks-proxy serve", "--custom-key-store-type EXTERNAL_KEY_STORE",
	"--origin EXTERNAL_KEY_STORE", "kms encrypt", "kms decrypt",
}

// TestWalkthrough runs README.md's walkthrough: every ```sh block between
// its markers, in order, each with bash in one fresh directory against the
// kmsd and xks-proxy the walkthrough itself starts, with the ports it names
// (127.0.0.1:7480, localhost:8443) replaced by free loopback ones. It fails
// when a command fails or its output differs from the README's.
func TestWalkthrough(t *testing.T) {
	requireTools(t)
	md, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	steps, err := Parse(md)
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	var all strings.Builder
	for _, s := range steps {
		all.WriteString(strings.Join(strings.Fields(strings.ReplaceAll(s.Script, "\\\n", " ")), " ") + "\n")
	}
	for _, f := range mustRun {
		if !strings.Contains(all.String(), f) {
			t.Errorf("the README's walkthrough never runs %q", f)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	kmsdAddr, proxyAddr := e2etest.FreeAddr(t), e2etest.FreeAddr(t)
	_, proxyPort, _ := strings.Cut(proxyAddr, ":")
	ports := strings.NewReplacer("127.0.0.1:7480", kmsdAddr, "localhost:8443", "localhost:"+proxyPort, "127.0.0.1:8443", proxyAddr)
	r := newRunner(t, filepath.Dir(kmsdBin))
	t0 := time.Now()
	for i, s := range steps {
		script, want := ports.Replace(s.Script), ports.Replace(s.Want)
		start := time.Now()
		out, err := r.run(script)
		if err != nil {
			t.Fatalf("README.md:%d (step %d of %d): %v\n--- commands\n%s\n--- output\n%s", s.Line, i+1, len(steps), err, script, out)
		}
		if err := Match(want, out); err != nil {
			t.Fatalf("README.md:%d (step %d of %d): %v\n--- commands\n%s\n--- output\n%s\n--- README's output\n%s", s.Line, i+1, len(steps), err, script, out, want)
		}
		t.Logf("README.md:%d ok in %v", s.Line, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("%d steps in %v", len(steps), time.Since(t0).Round(time.Millisecond))
}

// runner runs steps with bash in one directory, carrying the shell
// variables (and the working directory) of each step to the next, and
// records the background processes the steps start so that they are
// stopped when the test ends.
type runner struct {
	t                            *testing.T
	dir                          string // the walkthrough's directory
	binDir                       string // where the project's binaries are
	env                          []string
	timeout                      time.Duration // per step
	prelude, state, pids, oldVar string
}

func newRunner(t *testing.T, binDir string) *runner {
	root := t.TempDir()
	r := &runner{t: t, dir: filepath.Join(root, "walk"), binDir: binDir, timeout: stepTimeout,
		state: filepath.Join(root, "state.sh"), pids: filepath.Join(root, "pids"), oldVar: filepath.Join(root, "baseline")}
	home := filepath.Join(root, "home")
	for _, d := range []string{r.dir, home} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing from the host's AWS, kmsd, xks-proxy or SoftHSM2
	// configuration; HOME empty; the project's binaries and Debian's aws
	// first on PATH. The HSM delays are shortened (2 s by default) to keep
	// CI short; the walkthrough's waits do not depend on them.
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "KMSD_") || strings.HasPrefix(k, "XKS_PROXY_") ||
			k == "SOFTHSM2_CONF" || k == "HOME" || k == "PATH" || k == "BASH_ENV" || k == "ENV" || k == "CDPATH" {
			continue
		}
		r.env = append(r.env, kv)
	}
	r.env = append(r.env, "HOME="+home, "PATH="+binDir+":/usr/bin:"+os.Getenv("PATH"),
		"KMSD_HSM_CREATE_DELAY=200ms", "KMSD_HSM_INITIALIZE_DELAY=200ms")

	// The variables a fresh bash has are not carried (nor are the
	// runner's own, __walk*).
	base := exec.Command("bash", "-c", "compgen -v")
	base.Env, base.Dir = r.env, r.dir
	b, err := base.Output()
	if err != nil {
		t.Fatalf("bash -c compgen -v: %v", err)
	}
	if err := os.WriteFile(r.oldVar, b, 0o600); err != nil {
		t.Fatal(err)
	}
	q := strconv.Quote
	r.prelude = fmt.Sprintf(`__walk_save() {
	__walk_rc=$?
	set +e
	jobs -p >> %s
	__walk_vars=$(compgen -v | grep -vxF -f %s | grep -vE '^(__walk|BASH_|FUNCNAME$|PIPESTATUS$|_$)')
	{ [ -z "$__walk_vars" ] || declare -p $__walk_vars; printf 'cd %%q\n' "$PWD"; } > %s.new && mv %s.new %s
	exit $__walk_rc
}
[ ! -e %s ] || . %s 2>/dev/null
trap __walk_save EXIT
set -eo pipefail
`, q(r.pids), q(r.oldVar), q(r.state), q(r.state), q(r.state), q(r.state), q(r.state))
	t.Cleanup(r.stopBackground)
	return r
}

// run runs script and returns what it printed, stdout and stderr in the
// order written, as a terminal would show them.
func (r *runner) run(script string) (string, error) {
	out, err := os.CreateTemp(r.t.TempDir(), "out")
	if err != nil {
		r.t.Fatal(err)
	}
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", r.prelude+script)
	cmd.Dir, cmd.Env = r.dir, r.env
	cmd.Stdin = nil
	// The same file for both, so the order is kept; a file, so that
	// background processes a step leaves running do not hold up Wait.
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a step timing out is stopped with
	// everything it started (by the group's id).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	runErr := cmd.Run()
	b, _ := os.ReadFile(out.Name())
	if ctx.Err() != nil {
		return string(b), fmt.Errorf("no end after %v", r.timeout)
	}
	if runErr != nil {
		return string(b), runErr
	}
	return string(b), nil
}

// stopBackground stops the processes the steps left running, by pid:
// SIGTERM, SIGKILL after 10 s. A pid is only signalled while it is one of
// the project's binaries, so a pid reused since is left alone. When the
// test failed it shows the end of every log the walkthrough wrote.
func (r *runner) stopBackground() {
	b, _ := os.ReadFile(r.pids)
	seen := map[int]bool{}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	binDir := r.binDir
	if d, err := filepath.EvalSymlinks(binDir); err == nil {
		binDir = d // /proc/<pid>/exe has no symbolic links
	}
	ours := func(pid int) bool {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || filepath.Dir(exe) != binDir {
			return false
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		// A zombie (state Z, after the command's name in parentheses) has
		// exited already.
		return err == nil && !strings.HasPrefix(strings.TrimSpace(string(st[strings.LastIndexByte(string(st), ')')+1:])), "Z")
	}
	for i := len(pids) - 1; i >= 0; i-- {
		pid := pids[i]
		if !ours(pid) {
			continue
		}
		syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for ours(pid) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if ours(pid) {
			r.t.Logf("pid %d ignored SIGTERM for 10 s: SIGKILL", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if !r.t.Failed() {
		return
	}
	logs, _ := filepath.Glob(filepath.Join(r.dir, "*.log"))
	sort.Strings(logs)
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 8<<10 {
			b = b[len(b)-8<<10:]
		}
		r.t.Logf("--- %s (end)\n%s", filepath.Base(l), b)
	}
}

// TestRunner checks the runner itself: variables and the directory carry
// from step to step, a failing command fails its step even mid-script,
// a step that does not end is stopped, and what a step leaves running in
// the background is stopped when the test ends.
func TestRunner(t *testing.T) {
	binDir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	// A copy of sleep stands for a project binary left running.
	if err := os.WriteFile(filepath.Join(binDir, "sleep"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	var pid int
	t.Run("steps", func(t *testing.T) {
		r := newRunner(t, binDir)
		r.timeout = 2 * time.Second
		for _, c := range []struct {
			script, want string
			fails        bool
		}{
			{script: "A=one; export B='two words'; C=(x y); mkdir sub; cd sub", want: ""},
			{script: `echo "$A|$B|${C[1]}|${PWD##*/}"; bash -c 'echo "$B"'; echo err >&2`, want: "one|two words|y|sub\ntwo words\nerr\n"},
			{script: "false; echo not reached", fails: true},
			{script: "false | cat", fails: true},
			{script: "echo still $A", want: "still one\n"},
			{script: "sleep 30", fails: true},
			{script: "sleep 300 >/dev/null 2>&1 & echo $! > ../bg.pid", want: ""},
		} {
			out, err := r.run(c.script)
			if (err != nil) != c.fails || (!c.fails && out != c.want) {
				t.Fatalf("%q: %q, %v; want %q (fails: %v)", c.script, out, err, c.want, c.fails)
			}
		}
		b, err := os.ReadFile(filepath.Join(r.dir, "bg.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("the background sleep (pid %d) is not running", pid)
		}
	})
	// The subtest's cleanup has run: the background process is gone (or a
	// zombie waiting for its reaper).
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil && !strings.Contains(string(st), ") Z") {
		t.Fatalf("the background sleep (pid %d) still runs after the test: %s", pid, st)
	}
}
