//go:build unix

package main

// Failure tests: the mesh's resilience with every part a real process — a
// sidecar killed with SIGKILL, a rolling restart, apps that fail, a NATS
// server that goes away and comes back, a retry storm held back by the
// budget. Each runs a modest load (a handful of client goroutines, a few
// seconds) that stops by itself, and none runs in parallel with the others,
// since they measure how fast failures are answered.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/internal/procstat"
	"github.com/natsmesh/natsmesh/registry"
)

// adminClient calls the apps' /admin endpoints directly, not through the mesh.
var adminClient = &http.Client{Timeout: 5 * time.Second}

// instance is one callee: an app process and its sidecar.
type instance struct {
	id      string
	app     *proc
	appURL  string
	sidecar *proc
}

// startInstance starts app "app-<id>" and its sidecar as instance id of
// service; extra flags go to the sidecar.
func startInstance(t *testing.T, natsURL, service, id string, extra ...string) *instance {
	t.Helper()
	app, appURL := startApp(t, "app-"+id)
	sc, _ := startSidecar(t, natsURL, service, id, appURL, extra...)
	return &instance{id: id, app: app, appURL: appURL, sidecar: sc}
}

// startInstances starts instances <service>-a, -b, ... of service.
func startInstances(t *testing.T, natsURL, service string, n int, extra ...string) []*instance {
	t.Helper()
	var insts []*instance
	for i := range n {
		insts = append(insts, startInstance(t, natsURL, service, fmt.Sprintf("%s-%c", service, 'a'+i), extra...))
	}
	return insts
}

// setFail makes the instance's app answer /work with status code at once,
// or work again with code 0.
func (in *instance) setFail(t *testing.T, code int) {
	t.Helper()
	u := in.appURL + "/admin/fail?on=0"
	if code != 0 {
		u = fmt.Sprintf("%s/admin/fail?on=1&code=%d", in.appURL, code)
	}
	resp, err := adminClient.Post(u, "text/plain", nil)
	if err != nil {
		t.Fatalf("app of %s: %v", in.id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("app of %s: POST /admin/fail: status %d", in.id, resp.StatusCode)
	}
}

// count is how many /work requests the instance's app has had.
func (in *instance) count(t *testing.T) int {
	t.Helper()
	resp, err := adminClient.Get(in.appURL + "/admin/count")
	if err != nil {
		t.Fatalf("app of %s: %v", in.id, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	n, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || perr != nil {
		t.Fatalf("app of %s: GET /admin/count: %q, %v, %v", in.id, b, err, perr)
	}
	return n
}

// totalCount is the /work requests all the instances' apps have had.
func totalCount(t *testing.T, insts []*instance) int {
	t.Helper()
	n := 0
	for _, in := range insts {
		n += in.count(t)
	}
	return n
}

// call is the outcome of one request sent through a sidecar.
type call struct {
	method, uri string
	start       time.Time
	took        time.Duration
	err         error // no response at all
	status      int
	body        string
	instance    string // Mesh-Instance
	code        string // Mesh-Error
	attempts    int    // Mesh-Attempts; 0 when absent
	ejected     string // Mesh-Ejected
	breaker     string // Mesh-Breaker
	fault       string // Mesh-Fault
}

func (c call) ok() bool       { return c.err == nil && c.status == http.StatusOK }
func (c call) end() time.Time { return c.start.Add(c.took) }

func (c call) String() string {
	if c.err != nil {
		return fmt.Sprintf("%s %s: no response after %s: %v", c.method, c.uri, c.took.Round(time.Millisecond), c.err)
	}
	return fmt.Sprintf("%s %s: status %d, Mesh-Error %q, instance %q, attempts %d, breaker %q, after %s, body %q",
		c.method, c.uri, c.status, c.code, c.instance, c.attempts, c.breaker, c.took.Round(time.Millisecond), c.body)
}

// meshCall sends one request to service through a sidecar's outbound
// listener, in Host form; a POST carries a small body.
func meshCall(hc *http.Client, outbound, service, method, uri string) call {
	c := call{method: method, uri: uri, start: time.Now()}
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("order")
	}
	req, err := http.NewRequest(method, "http://"+outbound+uri, body)
	if err != nil {
		c.err = err
		return c
	}
	req.Host = service
	resp, err := hc.Do(req)
	if err != nil {
		c.took, c.err = time.Since(c.start), err
		return c
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.took = time.Since(c.start)
	c.err = err
	c.status, c.body = resp.StatusCode, string(b)
	c.instance = resp.Header.Get(bus.HeaderInstance)
	c.code = resp.Header.Get(bus.HeaderError)
	c.attempts, _ = strconv.Atoi(resp.Header.Get(bus.HeaderAttempts))
	c.ejected = resp.Header.Get(bus.HeaderEjected)
	c.breaker = resp.Header.Get(bus.HeaderBreaker)
	c.fault = resp.Header.Get("Mesh-Fault")
	return c
}

// flow is one client goroutine of a load: the request it sends in a loop.
type flow struct{ method, uri string }

// Bounds of every load, so that it ends by itself whatever happens.
const (
	loadMaxRun   = 60 * time.Second
	loadMaxCalls = 5000 // per flow
)

// load sends its flows' requests through a sidecar, one goroutine per flow,
// until halted, at most loadMaxCalls per flow and for at most loadMaxRun.
type load struct {
	hc   *http.Client
	stop atomic.Bool
	wg   sync.WaitGroup

	mu    sync.Mutex
	calls []call
}

func startLoad(t *testing.T, outbound, service string, flows []flow) *load {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: len(flows)}
	l := &load{hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	deadline := time.Now().Add(loadMaxRun)
	for _, f := range flows {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < loadMaxCalls && !l.stop.Load() && time.Now().Before(deadline); n++ {
				c := meshCall(l.hc, outbound, service, f.method, f.uri)
				l.mu.Lock()
				l.calls = append(l.calls, c)
				l.mu.Unlock()
				if !c.ok() {
					time.Sleep(5 * time.Millisecond) // a client pacing itself after a failure
				}
			}
		}()
	}
	t.Cleanup(func() {
		l.halt()
		tr.CloseIdleConnections()
	})
	return l
}

// halt stops the load and waits for the requests in flight. Safe to call
// twice.
func (l *load) halt() {
	l.stop.Store(true)
	l.wg.Wait()
}

// snapshot is a copy of the calls completed so far.
func (l *load) snapshot() []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]call(nil), l.calls...)
}

// waitFor polls the completed calls until check accepts them.
func (l *load) waitFor(t *testing.T, within time.Duration, check func([]call) error) {
	t.Helper()
	meshtest.CheckFor(t, within, 5*time.Millisecond, func() error { return check(l.snapshot()) })
}

// startedAfter is a check that some call of each method started after from
// and succeeded.
func startedAfter(from time.Time, methods ...string) func([]call) error {
	return func(calls []call) error {
		ok := map[string]bool{}
		for _, c := range calls {
			if c.start.After(from) && c.ok() {
				ok[c.method] = true
			}
		}
		for _, m := range methods {
			if !ok[m] {
				return fmt.Errorf("no %s started since %s has succeeded yet", m, from.Format("15:04:05.000"))
			}
		}
		return nil
	}
}

// completedAfter is a check that some call of each method started after
// from has been answered, successfully or not.
func completedAfter(from time.Time, methods ...string) func([]call) error {
	return func(calls []call) error {
		done := map[string]bool{}
		for _, c := range calls {
			if c.start.After(from) {
				done[c.method] = true
			}
		}
		for _, m := range methods {
			if !done[m] {
				return fmt.Errorf("no %s started since %s has been answered yet", m, from.Format("15:04:05.000"))
			}
		}
		return nil
	}
}

// servedBy is a check that a call started after from succeeded on instance.
func servedBy(instance string, from time.Time) func([]call) error {
	return func(calls []call) error {
		for _, c := range calls {
			if c.ok() && c.instance == instance && c.start.After(from) {
				return nil
			}
		}
		return fmt.Errorf("no call started since %s has been served by %s yet", from.Format("15:04:05.000"), instance)
	}
}

// waitServing waits until calls through outbound have reached every instance.
func waitServing(t *testing.T, outbound, service string, insts []*instance) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	seen := map[string]bool{}
	meshtest.CheckFor(t, 15*time.Second, 5*time.Millisecond, func() error {
		c := meshCall(hc, outbound, service, http.MethodGet, "/work?ms=0")
		if !c.ok() {
			return fmt.Errorf("%s", c)
		}
		seen[c.instance] = true
		for _, in := range insts {
			if !seen[in.id] {
				return fmt.Errorf("instances seen so far: %v", seen)
			}
		}
		return nil
	})
}

// instancesOf is what `natsmesh instances service --json` lists.
func instancesOf(t *testing.T, natsURL, service string) ([]registry.Instance, error) {
	t.Helper()
	out, errOut, code := natsmesh(t, "instances", service, "--json", "--nats", natsURL)
	if code != 0 {
		return nil, fmt.Errorf("instances exited %d: %s", code, errOut)
	}
	var snap registry.Snapshot
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		return nil, fmt.Errorf("instances --json: %v: %q", err, out)
	}
	return snap.Services[service], nil
}

// healthIs is a poll that `natsmesh instances` shows each instance with the
// health given.
func healthIs(t *testing.T, natsURL, service string, want map[string]registry.Health) func() error {
	return func() error {
		list, err := instancesOf(t, natsURL, service)
		if err != nil {
			return err
		}
		got := map[string]registry.Health{}
		for _, in := range list {
			got[in.Instance] = in.Health
		}
		for id, h := range want {
			if got[id] != h {
				return fmt.Errorf("instances shows %v, want %s %s", got, id, h)
			}
		}
		return nil
	}
}

// Kill -9 of one of three instances under GET and POST load, while it holds
// a slow GET and a slow POST: no GET fails (the held one is retried on
// another instance), and the POSTs it held fail with upstream-lost within
// about a second of being sent — the caller learns of the death by probing
// or by the missing acknowledgement, not by its 10 s timeout.
func TestFailureKillInstance(t *testing.T) {
	const (
		fastGet, fastPost = "/work?ms=50&m=get", "/work?ms=50&m=post"
		slowGet, slowPost = "/work?ms=300&m=get", "/work?ms=300&m=post"
		lostWithin        = 1500 * time.Millisecond // a failed POST is answered within this
		anyWithin         = 3 * time.Second         // every call is answered within this; --timeout is 10s
		probedWithin      = 750 * time.Millisecond  // an acknowledged call is lost within this of the kill
	)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--heartbeat", "200ms")
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--timeout", "10s")
	waitServing(t, outbound, "work", insts)

	flows := []flow{
		{http.MethodGet, fastGet}, {http.MethodGet, fastGet}, {http.MethodGet, slowGet}, {http.MethodGet, slowGet},
		{http.MethodPost, fastPost}, {http.MethodPost, fastPost}, {http.MethodPost, slowPost}, {http.MethodPost, slowPost},
	}
	postFlows := 4
	l := startLoad(t, outbound, "work", flows)
	l.waitFor(t, 10*time.Second, func(calls []call) error {
		if len(calls) < 50 {
			return fmt.Errorf("%d calls so far", len(calls))
		}
		return nil
	})

	// Kill the victim while its app holds a slow GET and a slow POST, both
	// for longer than AckAfter (100 ms), so that the caller has their
	// acknowledgements and finds the death by probing.
	victim := insts[0]
	held := func(out, uri string) bool { return strings.Count(out, "begin "+uri) > strings.Count(out, "end "+uri) }
	deadline := time.Now().Add(20 * time.Second)
	for {
		victim.app.waitStdout(t, "a slow GET and a slow POST in progress", time.Until(deadline), func(out string) bool {
			return held(out, slowGet) && held(out, slowPost)
		})
		ends := strings.Count(victim.app.stdout.String(), "end ")
		time.Sleep(150 * time.Millisecond) // past AckAfter: both are acknowledged
		if strings.Count(victim.app.stdout.String(), "end ") == ends {
			break // no request ended meanwhile: those held then still are
		}
	}
	killedAt := time.Now()
	victim.sidecar.signal(t, syscall.SIGKILL)
	victim.sidecar.wait(t, 5*time.Second)
	// About 2 s more of load, of both methods, on the two instances left.
	l.waitFor(t, 15*time.Second, completedAfter(killedAt.Add(2*time.Second), http.MethodGet, http.MethodPost))
	l.halt()

	calls := l.snapshot()
	var (
		failedPosts, retriedGets, heldGets int
		maxLost, heldLost                  time.Duration
		byInst                             = map[string]int{}
	)
	for _, c := range calls {
		byInst[c.instance]++
		if c.took >= anyWithin {
			t.Errorf("%s at +%s: took %s, want under %s", c, c.start.Sub(killedAt), c.took, anyWithin)
		}
		switch {
		case c.ok():
			if want := appBody("app-"+c.instance, "client", c.uri); c.body != want {
				t.Errorf("%s: body %q, want %q", c, c.body, want)
			}
			if c.method == http.MethodGet && c.attempts > 1 {
				retriedGets++
				if c.start.Before(killedAt) && c.end().After(killedAt) {
					heldGets++
				}
			}
		case c.method == http.MethodPost && c.status == http.StatusBadGateway && c.code == string(bus.UpstreamLost):
			failedPosts++
			maxLost = max(maxLost, c.took)
			if c.took > lostWithin {
				t.Errorf("%s at +%s: upstream-lost after %s, want within %s of being sent", c, c.start.Sub(killedAt), c.took, lostWithin)
			}
			if c.uri == slowPost && c.start.Before(killedAt.Add(-150*time.Millisecond)) {
				heldLost = max(heldLost, c.end().Sub(killedAt))
			}
		default:
			t.Errorf("%s at +%s: want 200, or for a POST 502 upstream-lost", c, c.start.Sub(killedAt))
		}
	}
	t.Logf("%d calls, per instance %v; %d POSTs lost (the slowest answered in %s; the acknowledged one %s after the kill), %d GETs retried (%d of them in flight at the kill)",
		len(calls), byInst, failedPosts, maxLost.Round(time.Millisecond), heldLost.Round(time.Millisecond), retriedGets, heldGets)
	switch {
	case failedPosts == 0:
		t.Errorf("no POST failed, though the killed instance held one")
	case heldLost == 0:
		t.Errorf("the slow POST the killed instance held for 150 ms did not fail")
	case heldLost > probedWithin:
		t.Errorf("the acknowledged POST the killed instance held failed %s after the kill, want within %s (probes every 250 ms)", heldLost, probedWithin)
	}
	if failedPosts > postFlows {
		t.Errorf("%d POSTs failed; the killed instance held at most %d (one per POST client)", failedPosts, postFlows)
	}
	if heldGets == 0 {
		t.Errorf("no GET in flight at the kill took more than one attempt, though the killed instance held one")
	}
}

// Kill -9 of one of three instances while it holds several acknowledged
// GETs: the caller learns of the death for all of them at once (one probe)
// and retries each on the other instances, so no GET fails; the healthy
// instances keep serving, so the destination's breaker has no reason to
// refuse calls. With the breaker off, as a control, only the retries are at
// work.
func TestFailureKillInstanceHoldingMany(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"breaker on", nil},
		{"breaker off", []string{"--breaker", "off"}},
	} {
		t.Run(tc.name, func(t *testing.T) { killHoldingMany(t, tc.flags...) })
	}
}

func killHoldingMany(t *testing.T, callerFlags ...string) {
	const (
		slow    = "/work?ms=1000"
		flows   = 15
		holding = 5 // acknowledged, at least, when killed; as many as --breaker-failures
	)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--heartbeat", "200ms")
	_, callerApp := startApp(t, "app-client")
	caller, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, append([]string{"--timeout", "10s"}, callerFlags...)...)
	waitServing(t, outbound, "work", insts)
	var fs []flow
	for range flows {
		fs = append(fs, flow{http.MethodGet, slow})
	}
	l := startLoad(t, outbound, "work", fs)
	victim := insts[0]
	inFlight := func() int {
		out := victim.app.stdout.String()
		return strings.Count(out, "begin "+slow) - strings.Count(out, "end "+slow)
	}
	deadline := time.Now().Add(20 * time.Second)
	held := 0 // in flight for 150 ms at least, so acknowledged
	for held < holding {
		victim.app.waitStdout(t, fmt.Sprintf("%d requests in progress", holding), time.Until(deadline), func(string) bool { return inFlight() >= holding })
		before, ends := inFlight(), strings.Count(victim.app.stdout.String(), "end ")
		time.Sleep(150 * time.Millisecond) // past AckAfter
		held = before - (strings.Count(victim.app.stdout.String(), "end ") - ends)
	}
	killedAt := time.Now()
	victim.sidecar.signal(t, syscall.SIGKILL)
	l.waitFor(t, 20*time.Second, completedAfter(killedAt.Add(2*time.Second), http.MethodGet))
	l.halt()

	calls := l.snapshot()
	failed, retried := 0, 0
	for _, c := range calls {
		if c.ok() {
			if c.attempts > 1 {
				retried++
			}
			continue
		}
		failed++
		if failed <= 5 {
			t.Errorf("at +%s from the kill: %s; want 200", c.start.Sub(killedAt).Round(time.Millisecond), c)
		}
	}
	t.Logf("%d calls, %d retried; the killed instance held %d", len(calls), retried, held)
	if failed > 0 {
		t.Errorf("%d of %d GETs failed after kill -9 of one of three instances holding %d of them", failed, len(calls), held)
		if strings.Contains(caller.stderr.String(), "to=open") {
			t.Errorf("the caller's breaker for the whole service opened:\n%s", caller.stderr)
		}
	}
}

// A rolling restart under GET and POST load: each instance in turn is
// SIGTERMed, exits 0 once drained, and is replaced by a new instance (app and
// sidecar) that takes traffic before the next one goes. No call fails.
func TestFailureRollingRestart(t *testing.T) {
	_, natsURL := startServer(t)
	flags := []string{"--heartbeat", "200ms"}
	insts := startInstances(t, natsURL, "work", 3, flags...)
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--timeout", "10s")
	waitServing(t, outbound, "work", insts)

	const slowGet, slowPost = "/work?ms=300&m=get", "/work?ms=300&m=post"
	l := startLoad(t, outbound, "work", []flow{
		{http.MethodGet, "/work?ms=20"}, {http.MethodGet, "/work?ms=20"}, {http.MethodGet, slowGet},
		{http.MethodPost, "/work?ms=20"}, {http.MethodPost, "/work?ms=20"}, {http.MethodPost, slowPost},
	})
	l.waitFor(t, 10*time.Second, startedAfter(time.Now(), http.MethodGet, http.MethodPost))

	exited := map[string]time.Time{}
	signalled := map[string]time.Time{}
	for i, old := range insts {
		// SIGTERM it while its app holds a slow request, which the drain
		// must let finish.
		old.app.waitStdout(t, "a slow request in progress", 15*time.Second, func(out string) bool {
			return strings.Count(out, "begin /work?ms=300") > strings.Count(out, "end /work?ms=300")
		})
		sig := time.Now()
		signalled[old.id] = sig
		old.sidecar.signal(t, syscall.SIGTERM)
		if code := old.sidecar.wait(t, 15*time.Second); code != 0 {
			t.Errorf("%s exited with status %d after SIGTERM, want 0", old.id, code)
		}
		exited[old.id] = old.sidecar.exitedAt
		old.app.stdin.Close() // the app goes too, as in a real rollout
		repl := startInstance(t, natsURL, "work", fmt.Sprintf("work-%d", i+1), flags...)
		started := time.Now()
		l.waitFor(t, 10*time.Second, servedBy(repl.id, started))
		t.Logf("%s drained and exited %s after SIGTERM; %s served %s after it started",
			old.id, old.sidecar.exitedAt.Sub(sig).Round(time.Millisecond), repl.id, time.Since(started).Round(time.Millisecond))
	}
	l.waitFor(t, 10*time.Second, startedAfter(time.Now(), http.MethodGet, http.MethodPost))
	l.halt()

	calls := l.snapshot()
	byInst := map[string]int{}
	heldAtSignal := map[string]int{} // calls an instance answered after its SIGTERM
	failed := 0
	for _, c := range calls {
		byInst[c.instance]++
		if sig, ok := signalled[c.instance]; ok && c.ok() && c.end().After(sig) {
			heldAtSignal[c.instance]++
		}
		bad := ""
		switch {
		case !c.ok():
			bad = "failed"
		case c.body != appBody("app-"+c.instance, "client", c.uri):
			bad = "wrong body"
		case !exited[c.instance].IsZero() && c.start.After(exited[c.instance]):
			bad = "served by an instance that had exited before the call started"
		}
		if bad != "" {
			failed++
			if failed <= 10 {
				t.Errorf("%s: %s", c, bad)
			}
		}
	}
	t.Logf("%d calls, per instance %v; answered by the drained instances after their SIGTERM: %v", len(calls), byInst, heldAtSignal)
	if failed > 0 {
		t.Errorf("%d of %d calls went wrong during the rolling restart", failed, len(calls))
	}
	for _, in := range insts {
		if heldAtSignal[in.id] == 0 {
			t.Errorf("%s answered no call after its SIGTERM, though its app held one", in.id)
		}
	}
}

// One of three apps starts failing every request with 500: its instance
// ejects itself after 3 failures in a row (the response that tipped it says
// Mesh-Ejected, the registry shows it ejected), gets no traffic while out,
// and after its 2 s ejection rejoins and serves again, its app recovered.
func TestFailureOutlierEjection(t *testing.T) {
	const (
		consecutive = 3
		ejection    = 2 * time.Second
		settle      = 150 * time.Millisecond // for requests the instance took before it left
		observe     = 1500 * time.Millisecond
	)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--heartbeat", "200ms",
		"--outlier-failures", strconv.Itoa(consecutive), "--outlier-ejection", ejection.String())
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--breaker", "off")
	waitServing(t, outbound, "work", insts)
	// Each instance must see the others pass, or the last-passing rule
	// keeps it in rotation.
	allPassing := map[string]registry.Health{}
	for _, in := range insts {
		allPassing[in.id] = registry.Passing
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, healthIs(t, natsURL, "work", allPassing))

	const workers = 4
	var flows []flow
	for range workers {
		flows = append(flows, flow{http.MethodGet, "/work?ms=10"})
	}
	l := startLoad(t, outbound, "work", flows)
	l.waitFor(t, 10*time.Second, startedAfter(time.Now(), http.MethodGet))

	victim := insts[0]
	failFrom := time.Now()
	victim.setFail(t, http.StatusInternalServerError)
	var tipped call
	l.waitFor(t, 5*time.Second, func(calls []call) error {
		for _, c := range calls {
			if c.ejected != "" {
				tipped = c
				return nil
			}
		}
		return fmt.Errorf("no response has carried %s yet", bus.HeaderEjected)
	})
	ejectedAt := tipped.end()
	if tipped.instance != victim.id || tipped.status != http.StatusInternalServerError || tipped.ejected != ejection.String() {
		t.Errorf("the response with %s: %s, %s %q; want a 500 from %s with %s %s",
			bus.HeaderEjected, tipped, bus.HeaderEjected, tipped.ejected, victim.id, bus.HeaderEjected, ejection)
	}

	// While out, it takes no traffic: its app's count stays put while the
	// others serve every call.
	time.Sleep(time.Until(ejectedAt.Add(settle)))
	before := victim.count(t)
	meshtest.CheckFor(t, observe-settle, 20*time.Millisecond, healthIs(t, natsURL, "work", map[string]registry.Health{victim.id: registry.Ejected}))
	out, _, _ := natsmesh(t, "services", "--nats", natsURL)
	if !containsFields(out, "work", "3", "2", "0", "0", "1") {
		t.Errorf("services printed:\n%s\nwant a row: work 3 2 0 0 1", out)
	}
	if d := time.Until(ejectedAt.Add(observe)); d > 0 {
		time.Sleep(d) // the rest of the observation window
	} else {
		t.Logf("the registry checks took the whole observation window")
	}
	after := victim.count(t)
	observed := time.Now()
	if after != before {
		t.Errorf("%s's app had %d requests while the instance was ejected, want none", victim.id, after-before)
	}
	victim.setFail(t, 0)

	// It rejoins by itself after its ejection, and serves again.
	l.waitFor(t, 5*time.Second, servedBy(victim.id, observed))
	rejoined := time.Now()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, healthIs(t, natsURL, "work", allPassing))
	l.waitFor(t, 5*time.Second, startedAfter(time.Now(), http.MethodGet))
	l.halt()
	if victim.count(t) <= after {
		t.Errorf("%s's app got no request after the instance rejoined", victim.id)
	}

	calls := l.snapshot()
	failures, during := 0, 0
	for _, c := range calls {
		switch {
		case c.start.After(ejectedAt.Add(settle)) && c.start.Before(observed):
			during++
			if !c.ok() || c.instance == victim.id {
				t.Errorf("%s at +%s after the ejection: want 200 from another instance", c, c.start.Sub(ejectedAt))
			}
		case c.ok():
		case c.status == http.StatusInternalServerError && c.instance == victim.id && c.end().After(failFrom) && c.start.Before(ejectedAt):
			failures++
		default:
			t.Errorf("%s at +%s from the failure: want 200, or 500 from %s before it was ejected", c, c.start.Sub(failFrom), victim.id)
		}
	}
	t.Logf("%d calls; %d failed before the ejection %s after the app began to fail; %d while ejected; back in rotation %s after the ejection",
		len(calls), failures, ejectedAt.Sub(failFrom).Round(time.Millisecond), during, rejoined.Sub(ejectedAt).Round(time.Millisecond))
	// The instance decides after a random pause of up to 50 ms (so that
	// instances failing together see each other's heartbeats first); each
	// worker may finish a few 10 ms calls in it, more on a loaded machine.
	if most := consecutive + 6*workers; failures < consecutive || failures > most {
		t.Errorf("%d calls failed before the ejection, want %d to %d (%d in a row, plus those in flight and in the decision's pause)", failures, consecutive, most, consecutive)
	}
	if during < 10 {
		t.Errorf("only %d calls while the instance was out; the load did not run through the ejection", during)
	}
	if rejoined.Sub(ejectedAt) < ejection-100*time.Millisecond {
		t.Errorf("served by %s again %s after its ejection, want no sooner than %s", victim.id, rejoined.Sub(ejectedAt), ejection)
	}
	for _, want := range []string{"ejecting this instance", "rejoining the queue groups"} {
		if !strings.Contains(victim.sidecar.stderr.String(), want) {
			t.Errorf("%s's sidecar did not log %q", victim.id, want)
		}
	}
}

// Every app fails: the caller's breaker opens after 5 failures in a row and
// answers circuit-open at once without sending anything; after 1 s a probe
// goes through, fails, and opens it again; once the apps recover, the next
// probes succeed and it closes. The last-passing rule keeps an instance in
// rotation throughout, so the failures are the apps' 500s, not
// no-responders.
func TestFailureCircuitBreaker(t *testing.T) {
	const (
		trip     = 5 // --breaker-failures default
		open     = time.Second
		fastOpen = 50 * time.Millisecond
	)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--heartbeat", "200ms", "--outlier-failures", "3", "--outlier-ejection", "2s")
	_, callerApp := startApp(t, "app-client")
	caller, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp,
		"--breaker", "on", "--breaker-open", open.String(), "--retries", "0")
	waitServing(t, outbound, "work", insts)
	hc := &http.Client{Timeout: 15 * time.Second}
	get := func() call { return meshCall(hc, outbound, "work", http.MethodGet, "/work?ms=0") }

	for _, in := range insts {
		in.setFail(t, http.StatusInternalServerError)
	}
	// One call at a time, so the failures are counted in order.
	var c call
	for n := 1; ; n++ {
		c = get()
		if c.code == string(bus.CircuitOpen) {
			if n != trip+1 {
				t.Errorf("call %d was the first refused, want call %d after %d failures", n, trip+1, trip)
			}
			break
		}
		if c.status != http.StatusInternalServerError || c.code != "" {
			t.Fatalf("call %d while every app fails: %s; want the app's 500", n, c)
		}
		if n == trip && c.breaker != "open" {
			t.Errorf("failure %d, which opens the breaker: %s %q, want open", n, bus.HeaderBreaker, c.breaker)
		}
		if n > 3*trip {
			t.Fatalf("the breaker did not open after %d failures in a row", n)
		}
	}
	openedAt := c.start

	// While open: refused at once, nothing reaches the apps.
	sent := totalCount(t, insts)
	refused := 0
	for time.Since(openedAt) < open*7/10 {
		if c.status != http.StatusServiceUnavailable || c.code != string(bus.CircuitOpen) || c.breaker != "open" {
			t.Fatalf("%s while the breaker is open; want 503 circuit-open, %s open", c, bus.HeaderBreaker)
		}
		if c.took >= fastOpen {
			t.Errorf("circuit-open answered after %s, want under %s", c.took, fastOpen)
		}
		refused++
		time.Sleep(10 * time.Millisecond) // a client's pace
		c = get()
	}
	if n := totalCount(t, insts) - sent; n != 0 {
		t.Errorf("the apps got %d requests while the breaker was open, want none", n)
	}

	// Half-open with the apps still failing: a probe goes through, fails and
	// opens the breaker again.
	var probe call
	meshtest.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		probe = get()
		if probe.code == string(bus.CircuitOpen) {
			return fmt.Errorf("still refused: %s", probe)
		}
		return nil
	})
	if probe.status != http.StatusInternalServerError || probe.breaker != "open" {
		t.Errorf("the failed probe: %s; want the app's 500 with %s open", probe, bus.HeaderBreaker)
	}
	if d := probe.start.Sub(openedAt); d < open*9/10 {
		t.Errorf("a call went through %s after the breaker opened, want no sooner than %s", d, open)
	}
	if c := get(); c.code != string(bus.CircuitOpen) {
		t.Errorf("after the failed probe: %s, want circuit-open again", c)
	}

	// The apps recover: after another second the probes succeed and the
	// breaker closes.
	for _, in := range insts {
		in.setFail(t, 0)
	}
	var first call
	meshtest.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
		first = get()
		if !first.ok() {
			return fmt.Errorf("%s", first)
		}
		return nil
	})
	if d := first.start.Sub(probe.start); d < open*9/10 {
		t.Errorf("a call went through %s after the failed probe, want no sooner than %s", d, open)
	}
	for i := range 20 {
		if c := get(); !c.ok() {
			t.Fatalf("call %d after recovery: %s", i, c)
		}
	}
	transitions := []string{"from=closed to=open", "from=open to=half-open", "from=half-open to=open", "from=half-open to=closed"}
	meshtest.CheckFor(t, 2*time.Second, 20*time.Millisecond, func() error {
		logs := caller.stderr.String()
		for _, tr := range transitions {
			if !strings.Contains(logs, tr) {
				return fmt.Errorf("the caller did not log the breaker change %q", tr)
			}
		}
		return nil
	})
	t.Logf("%d calls refused while open; probe through %s after opening; first success %s after recovery began",
		refused, probe.start.Sub(openedAt).Round(time.Millisecond), first.start.Sub(probe.start).Round(time.Millisecond))
}

// procStatus is a field of /proc/<pid>/status as a number; 0 if unknown
// (no /proc on this system).
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n
		}
	}
	return 0
}

// startServerAt runs `natsmesh server` on listen with JetStream data in dir.
func startServerAt(t *testing.T, name, listen, dir string) (*proc, string) {
	t.Helper()
	p := start(t, name, nil, natsmeshBin(t), "server", "--listen", listen, "--data", dir)
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

// The NATS server (with the registry) stops for 2 s under GET and POST load
// and comes back on the same port and data directory: calls during the gap
// fail fast with mesh-unavailable (a POST caught in flight with
// upstream-lost) or succeed within their timeout; traffic is back within 2 s
// of the server's return without restarting a sidecar, the registry lists
// the instances again, and the sidecars' threads and memory do not balloon.
// (Goroutines are counted by the in-process test in proxy.) The server is
// stopped with SIGTERM, and killed with SIGKILL.
func TestFailureNATSRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGKILL", syscall.SIGKILL}} {
		t.Run(tc.name, func(t *testing.T) { natsRestart(t, tc.sig) })
	}
}

func natsRestart(t *testing.T, sig syscall.Signal) {
	const (
		outage   = 2 * time.Second
		failFast = time.Second
		timeout  = 10 * time.Second
	)
	dir := t.TempDir()
	srv, natsURL := startServerAt(t, "server", "127.0.0.1:0", dir)
	u, _ := url.Parse(natsURL)
	insts := startInstances(t, natsURL, "work", 2, "--heartbeat", "200ms")
	_, callerApp := startApp(t, "app-client")
	caller, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--timeout", timeout.String())
	waitServing(t, outbound, "work", insts)
	sidecars := []*proc{caller, insts[0].sidecar, insts[1].sidecar}

	l := startLoad(t, outbound, "work", []flow{
		{http.MethodGet, "/work?ms=20"}, {http.MethodGet, "/work?ms=20"},
		{http.MethodPost, "/work?ms=20"}, {http.MethodPost, "/work?ms=20"},
	})
	l.waitFor(t, 10*time.Second, func(calls []call) error {
		if len(calls) < 100 {
			return fmt.Errorf("%d calls so far", len(calls))
		}
		return nil
	})
	type usage struct{ threads, rssKB int64 }
	measure := func() []usage {
		var us []usage
		for _, p := range sidecars {
			us = append(us, usage{procStatus(p.cmd.Process.Pid, "Threads"), procstat.RSS(p.cmd.Process.Pid) / 1024})
		}
		return us
	}
	base := measure()

	stoppedAt := time.Now()
	srv.signal(t, sig)
	if code := srv.wait(t, 10*time.Second); sig == syscall.SIGTERM && code != 0 {
		t.Errorf("server exited with status %d after SIGTERM, want 0", code)
	}
	downFor := time.Since(stoppedAt)
	time.Sleep(time.Until(stoppedAt.Add(outage))) // the outage itself
	startServerAt(t, "server again", u.Host, dir)
	back := time.Now()
	// Traffic is back within 2 s: a call of each method that started after
	// the server returned has succeeded by then.
	l.waitFor(t, 2*time.Second, startedAfter(back, http.MethodGet, http.MethodPost))
	resumed := time.Since(back)
	// Some steady traffic after the return.
	l.waitFor(t, 10*time.Second, startedAfter(time.Now().Add(300*time.Millisecond), http.MethodGet, http.MethodPost))
	l.halt()

	calls := l.snapshot()
	failed, slowOK := 0, 0
	for _, c := range calls {
		at := c.start.Sub(stoppedAt).Round(time.Millisecond)
		switch {
		case c.err != nil:
			t.Errorf("at %+v: %s", at, c)
		case c.ok():
			if c.took > timeout {
				t.Errorf("at %+v: %s, beyond its timeout", at, c)
			}
			if c.took > failFast {
				slowOK++
			}
		case c.status == http.StatusServiceUnavailable && c.code == string(bus.MeshUnavailable),
			c.method == http.MethodPost && c.status == http.StatusBadGateway && c.code == string(bus.UpstreamLost) && c.start.Before(stoppedAt.Add(downFor)):
			failed++
			if c.took >= failFast {
				t.Errorf("at %+v: %s, want it within %s", at, c, failFast)
			}
		case c.code == string(bus.NoResponders):
			// Seen when the caller's sidecar reconnects before the callees'
			// have: its retries (25 ms, 50 ms) end before theirs (every
			// 150-250 ms), and a GET that waited out the outage fails too.
			t.Errorf("at %+v: %s; want success or mesh-unavailable: the callees had not resubscribed when the caller was back", at, c)
		default:
			t.Errorf("at %+v: %s; want success, mesh-unavailable, or for a POST in flight at the stop upstream-lost", at, c)
		}
	}
	for _, p := range sidecars {
		if p.exited() {
			t.Errorf("%s exited during the outage (%s)", p.name, p.cmd.ProcessState)
		}
	}
	// The registry knows the instances again, from their heartbeats.
	want := map[string]registry.Health{}
	for _, in := range insts {
		want[in.id] = registry.Passing
	}
	meshtest.CheckFor(t, 5*time.Second, 50*time.Millisecond, healthIs(t, natsURL, "work", want))
	now := measure()
	for i, p := range sidecars {
		b, n := base[i], now[i]
		t.Logf("%s: %d threads and %d MiB resident before the outage, %d and %d MiB after", p.name, b.threads, b.rssKB>>10, n.threads, n.rssKB>>10)
		if b.threads > 0 && n.threads > 2*b.threads+10 {
			t.Errorf("%s has %d threads after the outage, %d before", p.name, n.threads, b.threads)
		}
		if b.rssKB > 0 && n.rssKB > 2*b.rssKB+64<<10 {
			t.Errorf("%s has %d MiB resident after the outage, %d before", p.name, n.rssKB>>10, b.rssKB>>10)
		}
	}
	t.Logf("%d calls; the server took %s to stop; %d failed fast during the outage, %d succeeded after more than %s; traffic back %s after the server's return",
		len(calls), downFor.Round(time.Millisecond), failed, slowOK, failFast, resumed.Round(time.Millisecond))
	if failed == 0 {
		t.Errorf("no call failed during a %s outage; the load did not run through it", outage)
	}
}

// Every app answers 503 and the caller may retry each call 3 times: the
// retry budget (20 % of the calls plus 10 a second over 10 s) keeps the
// attempts the apps see near the calls made, far from 4 times as many.
func TestFailureRetryBudget(t *testing.T) {
	const (
		calls   = 400
		over    = 2 * time.Second
		workers = 8
		retries = 3
		ratio   = 0.2
		floor   = 10 * 10 // --retry-budget-min 10/s over the 10 s window
		slack   = 5
	)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--outlier-failures", "0")
	_, callerApp := startApp(t, "app-client")
	caller, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp,
		"--retries", strconv.Itoa(retries), "--breaker", "off")
	waitServing(t, outbound, "work", insts)
	for _, in := range insts {
		in.setFail(t, http.StatusServiceUnavailable)
	}
	base := totalCount(t, insts)

	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	jobs := make(chan struct{})
	go func() {
		defer close(jobs)
		tick := time.NewTicker(over / calls)
		defer tick.Stop()
		for range calls {
			<-tick.C
			jobs <- struct{}{}
		}
	}()
	var (
		mu      sync.Mutex
		results []call
		wg      sync.WaitGroup
	)
	begin := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				c := meshCall(hc, outbound, "work", http.MethodGet, "/work?ms=0")
				mu.Lock()
				results = append(results, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	took := time.Since(begin)

	attempts, retried := 0, 0
	for _, c := range results {
		if c.status != http.StatusServiceUnavailable || c.code != "" || c.attempts < 1 || c.attempts > retries+1 {
			t.Errorf("%s; want the app's 503 after 1 to %d attempts", c, retries+1)
		}
		attempts += c.attempts
		if c.attempts > 1 {
			retried++
		}
	}
	seen := totalCount(t, insts) - base
	// The warm-up calls (base, one attempt each) count in the budget's
	// window too.
	limit := calls + int(ratio*float64(calls+base)) + floor + slack
	t.Logf("%d calls in %s: %d attempts reached the apps (%d by Mesh-Attempts), %d calls retried; budget limit %d, without a budget %d",
		len(results), took.Round(time.Millisecond), seen, attempts, retried, limit, calls*(retries+1))
	if seen != attempts {
		t.Errorf("the apps saw %d requests, the responses' %s add up to %d", seen, bus.HeaderAttempts, attempts)
	}
	if seen > limit {
		t.Errorf("%d attempts for %d calls, want at most %d", seen, calls, limit)
	}
	if seen < calls+floor {
		t.Errorf("%d attempts for %d calls, want at least %d: the budget always allows %d retries", seen, calls, calls+floor, floor)
	}
	if !strings.Contains(caller.stderr.String(), "retry budget exhausted") {
		t.Errorf("the caller did not log that the retry budget was exhausted")
	}
}

// A sidecar SIGTERMed while it holds requests for longer than AckAfter plus a
// probe interval finishes them, and their callers get those answers: a POST
// it holds is answered 200 by it, not upstream-lost, and a GET it holds is
// not sent to another instance as well. So the draining instance must keep
// answering the callers' liveness probes until it has answered them.
func TestFailureDrainHeldRequest(t *testing.T) {
	const hold = time.Second // longer than AckAfter + a probe interval (350 ms)
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 2, "--heartbeat", "200ms")
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--timeout", "10s")
	waitServing(t, outbound, "work", insts)
	hc := &http.Client{Timeout: 15 * time.Second}
	drained := insts[0]
	begun := func(uri string) []string { // the instances whose apps began uri
		var ids []string
		for _, in := range insts {
			if strings.Contains(in.app.stdout.String(), "begin "+uri+"\n") {
				ids = append(ids, in.id)
			}
		}
		return ids
	}

	// Batches of 4 GETs and 4 POSTs at once, each with a URI of its own,
	// until the instance to drain holds at least one of each.
	type sent struct {
		method, uri string
		res         chan call
	}
	var batch []sent
	for try := 0; ; try++ {
		batch = batch[:0]
		for i := range 8 {
			b := sent{method: http.MethodGet, uri: fmt.Sprintf("/work?ms=%d&try=%d&i=%d", hold.Milliseconds(), try, i), res: make(chan call, 1)}
			if i%2 == 1 {
				b.method = http.MethodPost
			}
			go func() { b.res <- meshCall(hc, outbound, "work", b.method, b.uri) }()
			batch = append(batch, b)
		}
		meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			for _, b := range batch {
				if len(begun(b.uri)) == 0 {
					return fmt.Errorf("no app has begun %s %s yet", b.method, b.uri)
				}
			}
			return nil
		})
		held := map[string]bool{}
		for _, b := range batch {
			if begun(b.uri)[0] == drained.id {
				held[b.method] = true
			}
		}
		if held[http.MethodGet] && held[http.MethodPost] {
			break
		}
		for _, b := range batch {
			<-b.res
		}
		if try == 5 {
			t.Fatalf("in %d batches, %s never held a GET and a POST at once", try+1, drained.id)
		}
	}
	time.Sleep(150 * time.Millisecond) // past AckAfter: the caller has the acknowledgements and probes
	sig := time.Now()
	drained.sidecar.signal(t, syscall.SIGTERM)
	var results []call
	for _, b := range batch {
		results = append(results, <-b.res)
	}
	if code := drained.sidecar.wait(t, 10*time.Second); code != 0 {
		t.Errorf("%s exited with status %d after SIGTERM, want 0", drained.id, code)
	}
	for _, c := range results {
		on := begun(c.uri)
		switch {
		case !c.ok():
			t.Errorf("%s, answered %s after the SIGTERM of %s; the apps that ran it: %v; want 200 from %s",
				c, c.end().Sub(sig).Round(time.Millisecond), drained.id, on, on[0])
		case len(on) != 1 || c.attempts != 1:
			t.Errorf("%s: run by the apps of %v, in %d attempts; want once, by %s", c, on, c.attempts, on[0])
		case c.instance != on[0]:
			t.Errorf("%s: answered by %s, but run by %s", c, c.instance, on[0])
		}
	}
	if t.Failed() {
		t.Logf("%s was SIGTERMed while holding requests of %s, and exited %s later", drained.id, hold, drained.sidecar.exitedAt.Sub(sig).Round(time.Millisecond))
	}
}

// Every app fails at once: instances eject themselves, but never the last
// one passing, so every call is still answered by an app, with its 500,
// never no-responders; once the apps recover, calls succeed again.
func TestFailureOutlierLastPassing(t *testing.T) {
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 3, "--heartbeat", "200ms", "--outlier-failures", "3", "--outlier-ejection", "2s")
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--breaker", "off")
	waitServing(t, outbound, "work", insts)
	allPassing := map[string]registry.Health{}
	for _, in := range insts {
		allPassing[in.id] = registry.Passing
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, healthIs(t, natsURL, "work", allPassing))

	l := startLoad(t, outbound, "work", []flow{
		{http.MethodGet, "/work?ms=10"}, {http.MethodGet, "/work?ms=10"}, {http.MethodGet, "/work?ms=10"}, {http.MethodGet, "/work?ms=10"},
	})
	l.waitFor(t, 10*time.Second, startedAfter(time.Now(), http.MethodGet))
	failFrom := time.Now()
	for _, in := range insts {
		in.setFail(t, http.StatusInternalServerError)
	}
	// 1.5 s of failures: by then two instances are out, the last one stays.
	l.waitFor(t, 10*time.Second, func(calls []call) error {
		for _, c := range calls {
			if c.start.After(failFrom.Add(1500 * time.Millisecond)) {
				return nil
			}
		}
		return fmt.Errorf("no call started 1.5 s after the apps began to fail yet")
	})
	list, err := instancesOf(t, natsURL, "work")
	if err != nil {
		t.Fatal(err)
	}
	health := map[registry.Health]int{}
	for _, in := range list {
		health[in.Health]++
	}
	if health[registry.Ejected] == 0 || health[registry.Passing] == 0 {
		t.Errorf("with every app failing, instances shows %v; want some ejected and one passing", health)
	}
	for _, in := range insts {
		in.setFail(t, 0)
	}
	recovered := time.Now()
	l.waitFor(t, 5*time.Second, startedAfter(time.Now(), http.MethodGet))
	l.halt()

	calls := l.snapshot()
	failed := 0
	for _, c := range calls {
		switch {
		case c.ok():
		case c.end().Before(failFrom) || c.start.After(recovered):
			t.Errorf("%s at +%s from the failure: want 200 before the apps failed and after they recovered", c, c.start.Sub(failFrom))
		case c.status != http.StatusInternalServerError || c.code != "":
			t.Errorf("%s at +%s from the failure: want an app's 500, which proves an instance is still in rotation", c, c.start.Sub(failFrom))
		default:
			failed++
		}
	}
	stayed := 0
	for _, in := range insts {
		if strings.Contains(in.sidecar.stderr.String(), "last passing instance") {
			stayed++
		}
	}
	t.Logf("%d calls, %d answered by an app's 500 while every app failed; instances then: %v; %d sidecars logged staying in rotation as the last passing one",
		len(calls), failed, health, stayed)
	if stayed == 0 {
		t.Errorf("no sidecar logged that it stays in rotation as the last passing instance")
	}
}

// An ejected instance rejoins before its ejection is over when no other
// instance of its service passes any more: here the only other one is
// drained, and the ejected one, its app recovered, takes the traffic within
// a second instead of after its 10 s ejection.
func TestFailureOutlierEarlyRejoin(t *testing.T) {
	const rejoinWithin = 1500 * time.Millisecond
	_, natsURL := startServer(t)
	insts := startInstances(t, natsURL, "work", 2, "--heartbeat", "200ms", "--outlier-failures", "3", "--outlier-ejection", "10s")
	_, callerApp := startApp(t, "app-client")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp, "--breaker", "off")
	waitServing(t, outbound, "work", insts)
	ejected, other := insts[0], insts[1]
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, healthIs(t, natsURL, "work",
		map[string]registry.Health{ejected.id: registry.Passing, other.id: registry.Passing}))

	l := startLoad(t, outbound, "work", []flow{{http.MethodGet, "/work?ms=10"}, {http.MethodGet, "/work?ms=10"}})
	l.waitFor(t, 10*time.Second, startedAfter(time.Now(), http.MethodGet))
	ejected.setFail(t, http.StatusInternalServerError)
	l.waitFor(t, 5*time.Second, func(calls []call) error {
		for _, c := range calls {
			if c.ejected != "" && c.instance == ejected.id {
				return nil
			}
		}
		return fmt.Errorf("%s has not been ejected yet", ejected.id)
	})
	ejected.setFail(t, 0)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, healthIs(t, natsURL, "work", map[string]registry.Health{ejected.id: registry.Ejected}))

	sig := time.Now()
	other.sidecar.signal(t, syscall.SIGTERM)
	if code := other.sidecar.wait(t, 10*time.Second); code != 0 {
		t.Errorf("%s exited with status %d after SIGTERM, want 0", other.id, code)
	}
	l.waitFor(t, 5*time.Second, servedBy(ejected.id, sig))
	l.waitFor(t, 5*time.Second, startedAfter(time.Now(), http.MethodGet))
	l.halt()

	var back time.Time // when the first call after the SIGTERM was answered by the ejected instance
	calls := l.snapshot()
	for _, c := range calls {
		if c.ok() && c.instance == ejected.id && c.start.After(sig) && (back.IsZero() || c.end().Before(back)) {
			back = c.end()
		}
	}
	gap := 0
	for _, c := range calls {
		switch {
		case c.ok():
		case c.start.After(sig) && c.start.Before(back):
			gap++
			if c.code != string(bus.NoResponders) {
				t.Errorf("%s at +%s from the SIGTERM: want 200, or no-responders while no instance was in rotation", c, c.start.Sub(sig))
			}
		case c.start.After(sig):
			t.Errorf("%s at +%s from the SIGTERM, after %s was back: want 200", c, c.start.Sub(sig), ejected.id)
		}
	}
	t.Logf("%s served again %s after %s's SIGTERM; %d calls failed (no-responders) in between", ejected.id, back.Sub(sig).Round(time.Millisecond), other.id, gap)
	if d := back.Sub(sig); d > rejoinWithin {
		t.Errorf("%s served again %s after the other instance's SIGTERM, want within %s (its ejection was 10 s)", ejected.id, d, rejoinWithin)
	}
	if !strings.Contains(ejected.sidecar.stderr.String(), "before the ejection is over") {
		t.Errorf("%s's sidecar did not log an early rejoin", ejected.id)
	}
}
