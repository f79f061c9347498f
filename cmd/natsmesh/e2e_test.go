//go:build unix

package main

// End-to-end tests: they build the real natsmesh binary once and drive it as
// separate processes, exactly as a user would. The upstream apps are separate
// processes too: the test binary re-executes itself as a tiny HTTP app when
// NATSMESH_E2E_APP is set (see TestMain).
//
// Every process listens on 127.0.0.1 port 0 and the test reads the address it
// announces on stdout, so no port is ever picked and then raced for.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

const appEnv = "NATSMESH_E2E_APP" // set: this process is an upstream app of that name

func TestMain(m *testing.M) {
	if name := os.Getenv(appEnv); name != "" {
		runApp(name)
		return
	}
	// The children's state directory, where natsmesh demo keeps its trust
	// roots and commands find the admin's credentials: the test run's own,
	// never the machine's.
	state, err := os.MkdirTemp("", "natsmesh-e2e-state-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stateDir = state
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.RemoveAll(state)
	os.Exit(code)
}

// runApp is the upstream app: /work?ms=N answers after N ms with its name,
// the calling service and the request URI, and prints "begin" and "end" lines
// for requests of 100 ms or more; /healthz answers ok. POST /admin/fail?on=1
// makes /work fail at once with status 500 (or &code=N) until ?on=0, and
// GET /admin/count answers how many /work requests arrived; the endpoints
// for large and streaming bodies are addStreamRoutes's. It exits when its
// stdin closes, so it never outlives the test that started it.
func runApp(name string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "app %s: %v\n", name, err)
		os.Exit(1)
	}
	var (
		count    atomic.Int64 // /work requests that arrived
		failWith atomic.Int64 // status /work fails with; 0: it works
	)
	mux := http.NewServeMux()
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		if code := failWith.Load(); code != 0 {
			http.Error(w, "failing on purpose", int(code))
			return
		}
		if ms, _ := strconv.Atoi(r.URL.Query().Get("ms")); ms > 0 {
			if ms >= 100 {
				fmt.Printf("begin %s\n", r.RequestURI)
				defer fmt.Printf("end %s\n", r.RequestURI)
			}
			t := time.NewTimer(time.Duration(ms) * time.Millisecond) // the app's "work"
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		io.WriteString(w, appBody(name, r.Header.Get("Mesh-Caller"), r.RequestURI))
	})
	var sick atomic.Bool // set with POST /admin/sick?on=1: /healthz fails
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("POST /admin/sick", func(w http.ResponseWriter, r *http.Request) {
		sick.Store(r.URL.Query().Get("on") == "1")
	})
	mux.HandleFunc("POST /admin/fail", func(w http.ResponseWriter, r *http.Request) {
		code := int64(0)
		if r.URL.Query().Get("on") == "1" {
			code = http.StatusInternalServerError
			if c, err := strconv.Atoi(r.URL.Query().Get("code")); err == nil && c >= 500 && c <= 599 {
				code = int64(c)
			}
		}
		failWith.Store(code)
	})
	mux.HandleFunc("GET /admin/count", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", count.Load())
	})
	addStreamRoutes(mux)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("app %s listening on http://%s\n", name, ln.Addr())
	err = http.Serve(ln, mux)
	fmt.Fprintf(os.Stderr, "app %s: %v\n", name, err)
	os.Exit(1)
}

func appBody(name, caller, uri string) string {
	return fmt.Sprintf("app=%s caller=%s uri=%s\n", name, caller, uri)
}

// build holds the natsmesh binary, built once per test run.
var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// natsmeshBin builds the binary (with -race when the tests run with it, which
// also reuses the packages `go test -race` just compiled) and returns its path.
func natsmeshBin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test builds and runs the binary; skipped with -short")
	}
	build.once.Do(func() {
		goCmd, err := goTool()
		if err != nil {
			build.err = err
			return
		}
		if build.dir, err = os.MkdirTemp("", "natsmesh-e2e-"); err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(build.dir, "natsmesh")
		args := []string{"build", "-o", build.path}
		if raceEnabled() {
			args = append(args, "-race")
		}
		cmd := exec.Command(goCmd, append(args, ".")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
	})
	if build.err != nil {
		t.Fatalf("build natsmesh: %v", build.err)
	}
	return build.path
}

// goTool finds the go command: $GOROOT/bin/go when go test set GOROOT for
// this toolchain, else the one on PATH.
func goTool() (string, error) {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("go")
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// stateDir is the children's $XDG_STATE_HOME.
var stateDir string

// childEnv is the environment of every child: its own state directory, no
// NATSMESH_URL or NATSMESH_CREDS from the developer's shell, so a command only reaches the server the test names, and
// no 1 s pause of the race runtime at exit, so exit timings are natsmesh's own.
func childEnv() []string {
	env := []string{"XDG_STATE_HOME=" + stateDir}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATSMESH_URL=") && !strings.HasPrefix(kv, "NATSMESH_CREDS=") && !strings.HasPrefix(kv, "XDG_STATE_HOME=") && !strings.HasPrefix(kv, appEnv+"=") && !strings.HasPrefix(kv, "GORACE=") {
			env = append(env, kv)
		}
	}
	return append(env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// dieWithParent asks the kernel to kill the child if the test process dies
// before its cleanups run (a panic or the test timeout), where supported
// (Linux, FreeBSD: SysProcAttr.Pdeathsig).
func dieWithParent(cmd *exec.Cmd) {
	attr := &syscall.SysProcAttr{}
	if f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig"); f.IsValid() {
		f.Set(reflect.ValueOf(syscall.SIGKILL))
	}
	cmd.SysProcAttr = attr
}

// output collects a child's stdout or stderr and wakes waiters on each write.
type output struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{}
}

func newOutput() *output { return &output{notify: make(chan struct{}, 1)} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	select {
	case o.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// proc is a long-running child process.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdin          io.WriteCloser
	stdout, stderr *output
	done           chan struct{} // closed when the process has exited
	exitedAt       time.Time     // set before done is closed
	data           string        // a server's --data, whose admin credentials it writes
}

// credsByURL maps the port of each server a test started to its admin
// credentials, which commands given that server's URL connect with, as a
// user who exported NATSMESH_CREDS would.
var credsByURL sync.Map

// withCreds adds NATSMESH_CREDS to env when args name, with --nats, a
// server whose admin credentials are known, and neither args nor env say
// which credentials to use.
func withCreds(env, args []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "NATSMESH_CREDS=") {
			return env
		}
		if url, ok := strings.CutPrefix(kv, "NATSMESH_URL="); ok {
			args = append(slices.Clip(args), "--nats", url)
		}
	}
	for i, a := range args {
		if a == "--creds" || strings.HasPrefix(a, "--creds=") {
			return env
		}
		if a == "--nats" && i+1 < len(args) {
			url, _, _ := strings.Cut(args[i+1], ",")
			if f, ok := credsByURL.Load(credsKey(url)); ok {
				return append(env, "NATSMESH_CREDS="+f.(string))
			}
		}
	}
	return env
}

// credsKey is the port of a server URL: one URL a server printed
// (tls://0.0.0.0:4222) and another a client uses (nats://127.0.0.1:4222)
// name the same loopback server.
func credsKey(url string) string {
	return url[strings.LastIndexByte(url, ':')+1:]
}

// adminCreds is the admin credentials file of a server the test started.
func adminCreds(url string) string {
	f, ok := credsByURL.Load(credsKey(url))
	if !ok {
		panic("no credentials are known for " + url + ": start the server with startServer or start(..., \"server\", ..., \"--data\", DIR) and wait for serverReady")
	}
	return f.(string)
}

// serverData is the data directory of a `natsmesh server` command line
// that embeds NATS with credentials, "" for any other.
func serverData(args []string) string {
	if len(args) == 0 || args[0] != "server" || slices.Contains(args, "--nats") || slices.Contains(args, "--allow-anonymous") {
		return ""
	}
	if i := slices.Index(args, "--data"); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}

// start starts a long-running child process with extra environment
// variables. When the test ends the process is killed if still running, and
// its output is logged if the test failed.
func start(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), stdout: newOutput(), stderr: newOutput(), done: make(chan struct{}), data: serverData(args)}
	p.cmd.Env = withCreds(append(childEnv(), env...), args)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	dieWithParent(p.cmd)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.exitedAt = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("--- %s: %s %s (%s)\nstdout:\n%s\nstderr:\n%s", name, filepath.Base(bin), strings.Join(args, " "), p.cmd.ProcessState, p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitStdout waits until ok accepts the process's stdout so far.
func (p *proc) waitStdout(t *testing.T, what string, within time.Duration, ok func(stdout string) bool) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for !ok(p.stdout.String()) {
		select {
		case <-p.stdout.notify:
		case <-p.done:
			if ok(p.stdout.String()) {
				return
			}
			t.Fatalf("%s exited (%s) before it printed %s", p.name, p.cmd.ProcessState, what)
		case <-timer.C:
			t.Fatalf("%s did not print %s within %s", p.name, what, within)
		}
	}
}

// waitOutput waits until the process's stdout matches re and returns the
// first submatch.
func (p *proc) waitOutput(t *testing.T, re *regexp.Regexp, within time.Duration) string {
	t.Helper()
	var m []string
	p.waitStdout(t, fmt.Sprintf("%q", re), within, func(out string) bool {
		m = re.FindStringSubmatch(out)
		return m != nil
	})
	if p.data != "" && strings.Contains(m[1], "://") {
		credsByURL.Store(credsKey(m[1]), filepath.Join(p.data, "admin.creds"))
	}
	return m[1]
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-timer.C:
		t.Fatalf("%s did not exit within %s", p.name, within)
		return -1
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

var (
	serverReady  = regexp.MustCompile(`listening on (nats://\S+)`)
	sidecarReady = regexp.MustCompile(`outbound proxy on http://(\S+)`)
	appReady     = regexp.MustCompile(`listening on (http://\S+)`)
)

const startTimeout = 15 * time.Second

// startServer runs `natsmesh server` on a free loopback port and returns its
// URL once it accepts connections.
func startServer(t *testing.T) (*proc, string) {
	t.Helper()
	p := start(t, "server", nil, natsmeshBin(t), "server", "--listen", "127.0.0.1:0", "--data", t.TempDir())
	natsURL := p.waitOutput(t, serverReady, startTimeout)
	u, err := url.Parse(natsURL)
	if err != nil {
		t.Fatalf("server printed a bad URL %q: %v", natsURL, err)
	}
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", u.Host, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return p, natsURL
}

// startApp runs the test binary as upstream app name and returns its URL.
func startApp(t *testing.T, name string) (*proc, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, "app "+name, []string{appEnv + "=" + name}, exe, "-test.run=^$")
	return p, p.waitOutput(t, appReady, startTimeout)
}

// startSidecar runs `natsmesh sidecar` with its outbound listener on a free
// loopback port and returns its address once the sidecar is serving. extra
// flags are added to the command line.
func startSidecar(t *testing.T, natsURL, service, instance, upstream string, extra ...string) (*proc, string) {
	t.Helper()
	args := append([]string{"sidecar",
		"--service", service, "--instance", instance, "--upstream", upstream,
		"--listen", "127.0.0.1:0", "--nats", natsURL}, extra...)
	p := start(t, "sidecar "+instance, nil, natsmeshBin(t), args...)
	return p, p.waitOutput(t, sidecarReady, startTimeout)
}

// natsmesh runs a short natsmesh command to completion.
func natsmesh(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natsmeshBin(t), args...)
	cmd.Env = withCreds(childEnv(), args)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		t.Fatalf("natsmesh %s did not finish within 30s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), &o, &e)
	case errors.As(err, &ee):
	default:
		t.Fatalf("natsmesh %s: %v", strings.Join(args, " "), err)
	}
	if strings.Contains(e.String(), "WARNING: DATA RACE") {
		t.Errorf("natsmesh %s reported a data race:\n%s", strings.Join(args, " "), &e)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// freeAddr is a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// meshGet calls service through a sidecar's outbound listener in Host form.
func meshGet(c *http.Client, outbound, host, uri string) (status int, instance, body string, err error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+outbound+uri, nil)
	if err != nil {
		return 0, "", "", err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Mesh-Instance"), string(b), err
}

// result is one request of the load.
type result struct {
	start, end time.Time
	form       string // "host" or "proxy"
	uri        string
	status     int
	instance   string
	body       string
	err        error
}

// TestEndToEndDrainUnderLoad sends a steady load through a caller's sidecar to
// two callee sidecars and SIGTERMs one of them while it holds requests: no
// request may fail, the drained sidecar exits 0, and once it has exited every
// request goes to the other instance.
func TestEndToEndDrainUnderLoad(t *testing.T) {
	const (
		fastClients = 12   // /work?ms=5, half Host-form, half proxy-form
		slowClients = 4    // /work?ms=300, so the drained instance surely holds one when signalled
		minTotal    = 2000 // requests in all, at least
		minAfter    = 300  // requests started after the drained sidecar exited, at least
		fastURI     = "/work?ms=5"
		slowURI     = "/work?ms=300"
		loadBudget  = 45 * time.Second
	)
	_, natsURL := startServer(t)
	apps := map[string]string{} // instance -> app name
	callees := map[string]*proc{}
	var drainedApp *proc
	for _, inst := range []string{"work-a", "work-b"} {
		name := "app-" + strings.TrimPrefix(inst, "work-")
		app, appURL := startApp(t, name)
		if inst == "work-a" {
			drainedApp = app
		}
		apps[inst] = name
		callees[inst], _ = startSidecar(t, natsURL, "work", inst, appURL)
	}
	_, callerAppURL := startApp(t, "app-client")
	caller, outbound := startSidecar(t, natsURL, "client", "client-1", callerAppURL)
	want := func(inst, uri string) string { return appBody(apps[inst], "client", uri) }

	hostForm := &http.Transport{MaxIdleConnsPerHost: fastClients + slowClients}
	proxyForm := &http.Transport{MaxIdleConnsPerHost: fastClients + slowClients,
		Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: outbound})}
	t.Cleanup(hostForm.CloseIdleConnections)
	t.Cleanup(proxyForm.CloseIdleConnections)
	hostClient := &http.Client{Transport: hostForm, Timeout: 20 * time.Second}
	proxyClient := &http.Client{Transport: proxyForm, Timeout: 20 * time.Second}

	// Both callee instances serve before the load starts.
	seen := map[string]bool{}
	meshtest.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		status, inst, body, err := meshGet(hostClient, outbound, "work", "/work?ms=0")
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("status %d: %s", status, body)
		}
		seen[inst] = true
		if !seen["work-a"] || !seen["work-b"] {
			return fmt.Errorf("instances seen so far: %v", seen)
		}
		return nil
	})

	var (
		stop      atomic.Bool
		completed atomic.Int64
		after     atomic.Int64 // requests started after work-a exited
		exitNanos atomic.Int64 // when work-a exited; 0 until then
		quarter   = make(chan struct{})
		perClient = make([][]result, fastClients+slowClients)
		wg        sync.WaitGroup
	)
	defer func() { stop.Store(true); wg.Wait() }() // on an early Fatal too
	loadStart := time.Now()
	for i := range fastClients + slowClients {
		uri := fastURI
		if i >= fastClients {
			uri = slowURI
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				r := result{start: time.Now(), uri: uri}
				if e := exitNanos.Load(); e != 0 && r.start.UnixNano() > e {
					after.Add(1)
				}
				if i%2 == 0 {
					r.form = "host"
					r.status, r.instance, r.body, r.err = meshGet(hostClient, outbound, "work", uri)
				} else {
					r.form = "proxy"
					r.status, r.instance, r.body, r.err = meshGet(proxyClient, "work", "work", uri)
				}
				r.end = time.Now()
				perClient[i] = append(perClient[i], r)
				if completed.Add(1) == minTotal/4 {
					close(quarter)
				}
			}
		}()
	}

	// SIGTERM work-a after a quarter of the load, at a moment its app holds a
	// slow request, which the drain must let finish.
	select {
	case <-quarter:
	case <-time.After(loadBudget):
		t.Fatalf("only %d requests completed within %s", completed.Load(), loadBudget)
	}
	drainedApp.waitStdout(t, "a slow request in progress", 10*time.Second, func(out string) bool {
		return strings.Count(out, "begin "+slowURI) > strings.Count(out, "end "+slowURI)
	})
	drained := callees["work-a"]
	sigAt := time.Now()
	drained.signal(t, syscall.SIGTERM)
	if code := drained.wait(t, 10*time.Second); code != 0 {
		t.Errorf("SIGTERMed sidecar exited with status %d, want 0", code)
	}
	exitAt := drained.exitedAt
	exitNanos.Store(exitAt.UnixNano())
	if d := exitAt.Sub(sigAt); d > 5*time.Second {
		t.Errorf("SIGTERMed sidecar took %s to exit, want at most 5s", d)
	}
	meshtest.CheckFor(t, loadBudget, 5*time.Millisecond, func() error {
		if n, a := completed.Load(), after.Load(); n < minTotal || a < minAfter {
			return fmt.Errorf("%d requests completed (want %d), %d started after the drained sidecar exited (want %d)", n, minTotal, a, minAfter)
		}
		return nil
	})
	stop.Store(true)
	wg.Wait()
	elapsed := time.Since(loadStart)

	var (
		total, failed int
		byInst        = map[string]int{}
		afterExit     int
		heldAtSignal  int // served by work-a, finished after the SIGTERM
	)
	for _, rs := range perClient {
		for _, r := range rs {
			total++
			byInst[r.instance]++
			bad := ""
			switch {
			case r.err != nil:
				bad = r.err.Error()
			case r.status != http.StatusOK:
				bad = fmt.Sprintf("status %d, body %q", r.status, r.body)
			case apps[r.instance] == "":
				bad = fmt.Sprintf("unknown Mesh-Instance %q", r.instance)
			case r.body != want(r.instance, r.uri):
				bad = fmt.Sprintf("instance %s answered %q, want %q", r.instance, r.body, want(r.instance, r.uri))
			case r.start.After(exitAt) && r.instance != "work-b":
				bad = fmt.Sprintf("started %s after work-a exited but served by %s", r.start.Sub(exitAt), r.instance)
			}
			if r.start.After(exitAt) {
				afterExit++
			}
			if r.instance == "work-a" && r.end.After(sigAt) {
				heldAtSignal++
			}
			if bad != "" {
				failed++
				if failed <= 10 {
					t.Errorf("%s-form %s at +%s: %s", r.form, r.uri, r.start.Sub(loadStart).Round(time.Millisecond), bad)
				}
			}
		}
	}
	t.Logf("%d requests from %d clients in %s; per instance %v; SIGTERM at +%s, work-a exited %s later; %d served by work-a after the SIGTERM, %d started after its exit",
		total, fastClients+slowClients, elapsed.Round(time.Millisecond), byInst, sigAt.Sub(loadStart).Round(time.Millisecond),
		exitAt.Sub(sigAt).Round(time.Millisecond), heldAtSignal, afterExit)
	if failed > 0 {
		t.Errorf("%d of %d requests failed", failed, total)
	}
	if total < minTotal {
		t.Errorf("%d requests, want at least %d", total, minTotal)
	}
	if heldAtSignal == 0 {
		t.Errorf("no request served by work-a finished after its SIGTERM, though its app held one")
	}
	if !strings.Contains(drained.stderr.String(), "stopped") {
		t.Errorf("drained sidecar did not log that it stopped")
	}

	// The caller's sidecar still serves, now from work-b alone.
	for range 5 {
		status, inst, body, err := meshGet(hostClient, outbound, "work", fastURI)
		if err != nil || status != http.StatusOK || inst != "work-b" || body != want("work-b", fastURI) {
			t.Fatalf("after the load: status %d, instance %q, body %q, err %v", status, inst, body, err)
		}
	}

	// The other sidecars shut down cleanly too.
	rest := []*proc{caller, callees["work-b"]}
	for _, p := range rest {
		p.signal(t, syscall.SIGTERM)
	}
	for _, p := range rest {
		if code := p.wait(t, 10*time.Second); code != 0 {
			t.Errorf("%s exited with status %d after SIGTERM, want 0", p.name, code)
		}
	}
}

func TestEndToEndCallCommand(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	_, appURL := startApp(t, "app-1")
	startSidecar(t, natsURL, "work", "work-1", appURL)

	stdout, stderr, code := natsmesh(t, "call", "work", "/work?ms=0", "--nats", natsURL)
	if code != 0 || stdout != appBody("app-1", "", "/work?ms=0") {
		t.Errorf("call work: exit %d, stdout %q, want 0 and %q; stderr:\n%s", code, stdout, appBody("app-1", "", "/work?ms=0"), stderr)
	}

	stdout, stderr, code = natsmesh(t, "call", "nobody", "/", "--nats", natsURL)
	if code != 1 || !strings.Contains(stderr, "no-responders") {
		t.Errorf("call of a service with no instance: exit %d, stderr %q; want 1 and no-responders (stdout %q)", code, stderr, stdout)
	}

	stdout, stderr, code = natsmesh(t, "call", "Bad.Name", "/", "--nats", natsURL)
	if code != 2 || !strings.Contains(stderr, `"Bad.Name"`) || !strings.Contains(stderr, "lowercase") {
		t.Errorf("call Bad.Name: exit %d, stderr %q; want 2 and a message naming the bad name and the rule (stdout %q)", code, stderr, stdout)
	}
}

func TestHelpTexts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args  []string
		flags []string // listed as flags
		words []string // mentioned anywhere
	}{
		{args: []string{"--help"}, words: []string{"server", "sidecar", "call"}},
		{args: []string{"server", "--help"}, flags: []string{"listen", "data", "log-level"}},
		{args: []string{"sidecar", "--help"}, flags: []string{"service", "upstream", "listen", "max-inflight", "timeout", "egress", "nats", "drain-timeout"}, words: []string{"HTTP_PROXY", "SIGTERM"}},
		{args: []string{"call", "--help"}, flags: []string{"nats", "method", "data", "timeout", "header"}, words: []string{"NAME PATH"}},
		{args: []string{"--help"}, words: []string{"identity"}},
		{args: []string{"server", "--help"}, flags: []string{"name", "cluster", "cluster-name", "routes", "trust"}},
		{args: []string{"server", "--help"}, flags: []string{"allow-anonymous", "tls-auto"}, words: []string{"admin.creds", "NATSMESH_CREDS", "natsmesh identity issue"}},
		{args: []string{"identity", "--help"}, words: []string{"issue NAME", "revoke NAME", "server-config"}},
		{args: []string{"identity", "issue", "--help"}, flags: []string{"out", "role", "data", "force"}, words: []string{"--creds reviews.creds"}},
		{args: []string{"identity", "revoke", "--help"}, flags: []string{"data", "nats"}},
		{args: []string{"sidecar", "--help"}, flags: []string{"creds"}, words: []string{"NATSMESH_CREDS"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, code := natsmesh(t, tc.args...)
			help := stdout + stderr
			if code != 0 {
				t.Errorf("exit %d, want 0", code)
			}
			for _, f := range tc.flags {
				if !regexp.MustCompile(`(?m)^\s+--?` + regexp.QuoteMeta(f) + `\b`).MatchString(help) {
					t.Errorf("help does not list the --%s flag", f)
				}
			}
			for _, w := range tc.words {
				if !strings.Contains(help, w) {
					t.Errorf("help does not mention %q", w)
				}
			}
			if t.Failed() {
				t.Logf("help:\n%s", help)
			}
		})
	}
	t.Run("unknown command", func(t *testing.T) {
		_, stderr, code := natsmesh(t, "frobnicate")
		if code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
			t.Errorf("exit %d, stderr %q; want 2 and unknown command", code, stderr)
		}
	})
}

func TestSidecarBadFlags(t *testing.T) {
	t.Parallel()
	noNATS := "nats://" + freeAddr(t) // nothing listens: no test reaches a stray server
	t.Run("bad service name", func(t *testing.T) {
		_, stderr, code := natsmesh(t, "sidecar", "--service", "Bad.Name", "--upstream", "http://127.0.0.1:1", "--nats", noNATS)
		msg := strings.TrimSpace(stderr)
		if code == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "--service") || !strings.Contains(msg, "Bad.Name") {
			t.Errorf("exit %d, stderr %q; want non-zero and one line naming --service and the bad name", code, stderr)
		}
	})
	t.Run("missing upstream", func(t *testing.T) {
		_, stderr, code := natsmesh(t, "sidecar", "--service", "work", "--nats", noNATS)
		if code != 2 || !strings.Contains(stderr, "--upstream") {
			t.Errorf("exit %d, stderr %q; want 2 and a message naming --upstream", code, stderr)
		}
	})
	t.Run("listen address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, stderr, code := natsmesh(t, "sidecar", "--service", "work", "--upstream", "http://127.0.0.1:1",
			"--listen", ln.Addr().String(), "--nats", noNATS)
		if code == 0 || !strings.Contains(stderr, "--listen") || !strings.Contains(stderr, ln.Addr().String()) {
			t.Errorf("exit %d, stderr %q; want non-zero and a message naming --listen and the address", code, stderr)
		}
	})
}

func TestServerPortInUse(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	u, _ := url.Parse(natsURL)
	_, stderr, code := natsmesh(t, "server", "--listen", u.Host, "--data", t.TempDir())
	if code == 0 || !strings.Contains(stderr, "--listen") {
		t.Errorf("second server on %s: exit %d, stderr %q; want non-zero and a message naming --listen", u.Host, code, stderr)
	}
}

// Connection flags given to a server that embeds NATS are refused, not
// silently ignored.
func TestServerRefusesConnectFlagsWithoutNATS(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--token", "secret"}, {"--user", "u", "--password", "p"}, {"--creds", "x.creds"}, {"--tls-ca", "ca.pem"}} {
		full := append([]string{"server", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, args...)
		_, stderr, code := natsmesh(t, full...)
		if code != 2 || !strings.Contains(stderr, args[0]) || !strings.Contains(stderr, "--nats") {
			t.Errorf("server %v: exit %d, stderr %q; want 2 and a message naming %s and --nats", args, code, stderr, args[0])
		}
	}
}

func TestServerInterruptExitsZero(t *testing.T) {
	t.Parallel()
	srv, _ := startServer(t)
	srv.signal(t, os.Interrupt)
	if code := srv.wait(t, 10*time.Second); code != 0 {
		t.Errorf("server exited with status %d after SIGINT, want 0", code)
	}
}
