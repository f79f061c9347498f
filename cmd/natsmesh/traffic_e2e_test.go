package main

import (
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// trafficEnv is a mesh for the traffic-management tests: greeter instances
// in subsets v1 (two) and v2 (one), and a caller sidecar to send through.
type trafficEnv struct {
	natsURL  string
	outbound string
	v1, v2   []*instance
	hc       *http.Client
}

func newTrafficEnv(t *testing.T) *trafficEnv {
	t.Helper()
	_, natsURL := startServer(t)
	e := &trafficEnv{natsURL: natsURL, hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}}
	e.v1 = []*instance{
		startInstance(t, natsURL, "greeter", "greeter-v1-a", "--subset", "v1", "--heartbeat", "200ms"),
		startInstance(t, natsURL, "greeter", "greeter-v1-b", "--subset", "v1", "--heartbeat", "200ms"),
	}
	e.v2 = []*instance{startInstance(t, natsURL, "greeter", "greeter-v2-a", "--subset", "v2", "--heartbeat", "200ms")}
	_, appURL := startApp(t, "web")
	_, e.outbound = startSidecar(t, natsURL, "web", "web-a", appURL)
	waitServing(t, e.outbound, "greeter", append(append([]*instance{}, e.v1...), e.v2...))
	return e
}

// subsetOf is the subset of the instance that served a call.
func subsetOf(instance string) string {
	switch {
	case strings.HasPrefix(instance, "greeter-v1-"):
		return "v1"
	case strings.HasPrefix(instance, "greeter-v2-"):
		return "v2"
	}
	return "?" + instance
}

// get sends a GET to greeter through the caller sidecar with extra headers.
func (e *trafficEnv) get(hdr ...string) call {
	c := call{method: http.MethodGet, uri: "/work?ms=0", start: time.Now()}
	req, err := http.NewRequest(http.MethodGet, "http://"+e.outbound+c.uri, nil)
	if err != nil {
		c.err = err
		return c
	}
	req.Host = "greeter"
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.hc.Do(req)
	c.took = time.Since(c.start)
	if err != nil {
		c.err = err
		return c
	}
	resp.Body.Close()
	c.status, c.instance, c.code = resp.StatusCode, resp.Header.Get("Mesh-Instance"), resp.Header.Get("Mesh-Error")
	c.fault = resp.Header.Get("Mesh-Fault")
	return c
}

// many sends n GETs over 8 connections and returns them all.
func (e *trafficEnv) many(n int, hdr func(i int) []string) []call {
	calls := make([]call, n)
	var wg sync.WaitGroup
	const workers = 8
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				var h []string
				if hdr != nil {
					h = hdr(i)
				}
				calls[i] = e.get(h...)
			}
		}()
	}
	wg.Wait()
	return calls
}

// apply runs `natsmesh apply -f file` and returns the revision it printed.
func (e *trafficEnv) apply(t *testing.T, file string) uint64 {
	t.Helper()
	out, errOut, code := natsmesh(t, "apply", "-f", file, "--nats", e.natsURL)
	if code != 0 {
		t.Fatalf("natsmesh apply -f %s exited %d:\n%s%s", file, code, out, errOut)
	}
	m := regexp.MustCompile(`greeter: applied revision (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("natsmesh apply -f %s printed %q, want the revision it applied", file, out)
	}
	rev, _ := strconv.ParseUint(m[1], 10, 64)
	return rev
}

// writeConfig writes a config file for the test and returns its path.
func writeConfig(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitRouting polls until every call of a probe batch satisfies ok.
func (e *trafficEnv) waitRouting(t *testing.T, what string, hdr []string, ok func(call) bool) {
	t.Helper()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		for range 20 {
			if c := e.get(hdr...); !ok(c) {
				return fmt.Errorf("%s: not yet: %s", what, c)
			}
		}
		return nil
	})
}

const examples = "../../examples/traffic/"

// Splits, header matches, new revisions under load and rollback, end to end
// with processes: `natsmesh apply` writes the config, the caller's sidecar
// applies it from its watch.
func TestTrafficRoutes(t *testing.T) {
	e := newTrafficEnv(t)

	// 90/10 over 10,000 requests lands within ±3 % of the weights.
	canary := e.apply(t, examples+"greeter-canary.yaml")
	e.waitRouting(t, "jason to v2", []string{"x-user", "jason"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v2" })
	calls := e.many(10_000, nil)
	bySubset := map[string]int{}
	for _, c := range calls {
		if !c.ok() {
			t.Fatalf("a call failed under the canary config: %s", c)
		}
		bySubset[subsetOf(c.instance)]++
	}
	share := float64(bySubset["v2"]) / float64(len(calls))
	t.Logf("canary (revision %d): %v, v2 share %.2f %%", canary, bySubset, 100*share)
	if math.Abs(share-0.10) > 0.03 || bySubset["v1"]+bySubset["v2"] != len(calls) {
		t.Errorf("v2 got %.2f %% of 10,000 calls (%v), want 10 %% ± 3", 100*share, bySubset)
	}

	// A header match routes every matching request and no other.
	sticky := writeConfig(t, "jason.yaml", `
service: greeter
routes:
  - match:
      headers: {x-user: jason}
    split: {v2: 100}
  - split: {v1: 100}
`)
	jasonRev := e.apply(t, sticky)
	e.waitRouting(t, "others to v1", []string{"x-user", "alice"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v1" })
	calls = e.many(400, func(i int) []string {
		if i%2 == 0 {
			return []string{"X-User", "jason"}
		}
		return []string{"x-user", "jason-not"}
	})
	for i, c := range calls {
		want := "v1"
		if i%2 == 0 {
			want = "v2"
		}
		if !c.ok() || subsetOf(c.instance) != want {
			t.Fatalf("call %d (jason: %v): %s, want it served by %s", i, i%2 == 0, c, want)
		}
	}

	// A new revision applied under load changes routing with no failed
	// request: all to v1, then the canary again.
	l := startLoad(t, e.outbound, "greeter", []flow{{"GET", "/work?ms=1"}, {"GET", "/work?ms=1"}, {"POST", "/work?ms=1"}, {"POST", "/work?ms=1"}})
	l.waitFor(t, 5*time.Second, startedAfter(time.Now(), "GET", "POST"))
	e.apply(t, examples+"greeter-v1.yaml")
	applied := time.Now()
	e.waitRouting(t, "jason to v1 after greeter-v1.yaml", []string{"x-user", "jason"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v1" })
	e.apply(t, examples+"greeter-canary.yaml")
	e.waitRouting(t, "jason to v2 again", []string{"x-user", "jason"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v2" })
	l.waitFor(t, 5*time.Second, startedAfter(time.Now(), "GET", "POST"))
	l.halt()
	load := l.snapshot()
	var failed []call
	for _, c := range load {
		if !c.ok() {
			failed = append(failed, c)
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d calls failed while revisions were applied, the first: %s", len(failed), len(load), failed[0])
	}
	t.Logf("%d calls under load across two new revisions (the first applied at %s), none failed", len(load), applied.Format("15:04:05.000"))

	// Rollback restores the earlier revision's behaviour: jason to v2, the
	// others to v1, as a new revision.
	out, errOut, code := natsmesh(t, "config", "rollback", "greeter", strconv.FormatUint(jasonRev, 10), "--nats", e.natsURL)
	if code != 0 {
		t.Fatalf("config rollback exited %d:\n%s%s", code, out, errOut)
	}
	e.waitRouting(t, "others to v1 after the rollback", []string{"x-user", "bob"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v1" })
	e.waitRouting(t, "jason to v2 after the rollback", []string{"x-user", "jason"}, func(c call) bool { return c.ok() && subsetOf(c.instance) == "v2" })

	// Deleted, the config no longer routes: calls reach every instance.
	if out, errOut, code := natsmesh(t, "config", "delete", "greeter", "--nats", e.natsURL); code != 0 {
		t.Fatalf("config delete exited %d:\n%s%s", code, out, errOut)
	}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		seen := map[string]int{}
		for _, c := range e.many(60, func(int) []string { return []string{"x-user", "bob"} }) {
			seen[subsetOf(c.instance)]++
		}
		if seen["v2"] == 0 || seen["v1"] == 0 {
			return fmt.Errorf("calls reached %v, want both subsets", seen)
		}
		return nil
	})
}

// Ring-hash keeps each key on its instance, and when an instance leaves only
// its keys move. Fault injection hits its percentages.
func TestTrafficRingHashAndFaults(t *testing.T) {
	e := newTrafficEnv(t)
	e.apply(t, examples+"greeter-sticky.yaml")
	const keys = 300
	user := func(i int) []string { return []string{"x-user", fmt.Sprintf("user-%d", i)} }
	// The config applies: the same key keeps reaching one instance.
	var first map[int]string
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		a, b := e.many(keys, user), e.many(keys, user)
		first = map[int]string{}
		for i := range keys {
			if !a[i].ok() || !b[i].ok() {
				return fmt.Errorf("key %d: %s / %s", i, a[i], b[i])
			}
			if a[i].instance != b[i].instance {
				return fmt.Errorf("key %d went to %s, then %s", i, a[i].instance, b[i].instance)
			}
			first[i] = a[i].instance
		}
		return nil
	})
	per := map[string]int{}
	for _, in := range first {
		per[in]++
	}
	t.Logf("keys per instance: %v", per)
	if len(per) != 3 {
		t.Fatalf("%d keys spread over %v, want all three instances", keys, per)
	}

	// One instance leaves: its keys move, no other key does.
	gone := e.v1[1]
	gone.sidecar.signal(t, syscall.SIGTERM)
	if code := gone.sidecar.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("the stopped sidecar exited %d", code)
	}
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		after := e.many(keys, user)
		for i := range keys {
			c := after[i]
			switch {
			case !c.ok():
				return fmt.Errorf("key %d: %s", i, c)
			case first[i] != gone.id && c.instance != first[i]:
				return fmt.Errorf("key %d moved from %s to %s, though its instance is up", i, first[i], c.instance)
			case first[i] == gone.id && c.instance == gone.id:
				return fmt.Errorf("key %d still reaches the stopped %s", i, gone.id)
			}
		}
		return nil
	})

	// Fault injection: 20 % of calls aborted with 503 before they are sent.
	faults := writeConfig(t, "faults.yaml", `
service: greeter
fault:
  abort: {percent: 20, status: 503}
`)
	e.apply(t, faults)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if c := e.get(); c.fault != "abort" {
			return fmt.Errorf("no abort yet: %s", c)
		}
		return nil
	})
	before := totalCount(t, append(append([]*instance{}, e.v1[0]), e.v2...))
	const n = 2000
	aborted := 0
	for _, c := range e.many(n, nil) {
		switch {
		case c.fault == "abort" && c.status == http.StatusServiceUnavailable:
			aborted++
		case !c.ok():
			t.Fatalf("a call neither succeeded nor was aborted: %s", c)
		}
	}
	reached := totalCount(t, append(append([]*instance{}, e.v1[0]), e.v2...)) - before
	t.Logf("%d of %d calls aborted; %d reached an app", aborted, n, reached)
	if share := float64(aborted) / n; math.Abs(share-0.20) > 0.03 {
		t.Errorf("%.1f %% of calls aborted, want 20 %% ± 3", 100*share)
	}
	if reached != n-aborted {
		t.Errorf("%d calls reached an app, want the %d that were not aborted", reached, n-aborted)
	}

	// The chaos example: some calls delayed by a second, some aborted.
	e.apply(t, examples+"greeter-chaos.yaml")
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if c := e.get(); !strings.Contains(c.fault, "delay") {
			return fmt.Errorf("no delay yet: %s", c)
		}
		return nil
	})
	faulted := map[string]int{}
	for _, c := range e.many(80, nil) {
		switch {
		case strings.Contains(c.fault, "abort") && c.status == http.StatusServiceUnavailable:
			faulted["abort"]++
		case !c.ok():
			t.Fatalf("under greeter-chaos.yaml a call neither succeeded nor was aborted: %s", c)
		case c.fault == "delay":
			faulted["delay"]++
			if c.took < time.Second {
				t.Errorf("a delayed call took %s, want at least the 1s delay", c.took)
			}
		}
	}
	t.Logf("greeter-chaos.yaml: %v of 80 calls", faulted)
	if faulted["abort"] == 0 || faulted["delay"] == 0 {
		t.Errorf("greeter-chaos.yaml: %v of 80 calls faulted, want some delayed and some aborted", faulted)
	}
}

// Against a NATS server without JetStream, sidecars run on their flags:
// calls to several services work, and the caller says once that it cannot
// watch configs.
func TestTrafficWithoutJetStream(t *testing.T) {
	natsURL := runNATSWithoutJetStream(t)
	var insts []*instance
	for _, svc := range []string{"alpha", "beta"} {
		insts = append(insts, startInstance(t, natsURL, svc, svc+"-a"))
	}
	_, appURL := startApp(t, "web")
	caller, outbound := startSidecar(t, natsURL, "web", "web-a", appURL)
	waitServing(t, outbound, "alpha", insts[:1])
	waitServing(t, outbound, "beta", insts[1:])
	hc := &http.Client{Timeout: 10 * time.Second}
	for range 20 {
		for _, svc := range []string{"alpha", "beta"} {
			if c := meshCall(hc, outbound, svc, http.MethodGet, "/work?ms=0"); !c.ok() {
				t.Fatalf("without JetStream: %s", c)
			}
		}
	}
	logs := caller.stderr.String()
	if n := strings.Count(logs, "cannot watch service configs"); n != 1 {
		t.Errorf("the caller said %d times that it cannot watch configs, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, "has no JetStream") {
		t.Errorf("the caller's warning does not say JetStream is missing:\n%s", logs)
	}
}
