package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
)

// subsetApp is an instance of a service in a subset, served in library
// mode; it answers with its subset's name and counts what it served.
type subsetApp struct {
	name   string
	served atomic.Int64
}

// serveSubset serves an instance of service in subset ("" for none) that
// answers "<subset>\n", or "<subset> <deadline-ms>\n" at /deadline.
func serveSubset(t testing.TB, s *embedded.Server, service, subset string) *subsetApp {
	t.Helper()
	a := &subsetApp{name: subset}
	if a.name == "" {
		a.name = "none"
	}
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		if r.URL.Path == "/deadline" {
			dl, _ := r.Context().Deadline()
			fmt.Fprintf(w, "%s %d\n", a.name, time.Until(dl).Milliseconds())
			return
		}
		fmt.Fprintf(w, "%s\n", a.name)
	}), proxy.ServeConfig{Service: service, Subset: subset})
	return a
}

// configClient is a library-mode Transport whose service configs come from
// cfgs.
func configClient(t testing.TB, s *embedded.Server, cfgs *memConfigs, mod func(*proxy.TransportConfig)) *http.Client {
	cfg := proxy.TransportConfig{Caller: "productpage", Configs: cfgs}
	if mod != nil {
		mod(&cfg)
	}
	return httpClient(t, newTransport(t, s, cfg))
}

// callBody calls url with the headers kv and returns the status and body.
func callBody(t testing.TB, hc *http.Client, url string, kv ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	resp, body := doRequest(t, hc, req)
	return resp.StatusCode, string(body), resp.Header
}

// parallel runs n calls of fn over workers goroutines.
func parallel(n, workers int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// A 90/10 split lands within 3 % of its weights over 10,000 requests.
func TestRouteSplit(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	v1, v2 := serveSubset(t, s, "reviews", "v1"), serveSubset(t, s, "reviews", "v2")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nroutes:\n  - split: {v1: 90, v2: 10}\n")
	hc := configClient(t, s, cfgs, nil)
	const n = 10_000
	var got [2]atomic.Int64
	var failed, retries atomic.Int64
	parallel(n, 16, func(int) {
		resp, err := hc.Get("http://reviews/")
		if err != nil {
			failed.Add(1)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if a, _ := strconv.Atoi(resp.Header.Get(bus.HeaderAttempts)); a > 1 {
			retries.Add(int64(a - 1)) // a slow machine can make a call look lost
		}
		switch string(body) {
		case "v1\n":
			got[0].Add(1)
		case "v2\n":
			got[1].Add(1)
		default:
			failed.Add(1)
		}
	})
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d requests failed", f, n)
	}
	share := float64(got[1].Load()) / n * 100
	if share < 7 || share > 13 {
		t.Fatalf("v2 took %.1f %% of the calls (v1 %d, v2 %d), want 10 ± 3", share, got[0].Load(), got[1].Load())
	}
	if served := v1.served.Load() + v2.served.Load(); served < n || served > n+retries.Load() {
		t.Fatalf("the apps served %d + %d requests, want %d (plus at most the %d retries)", v1.served.Load(), v2.served.Load(), n, retries.Load())
	}
	t.Logf("v1 %d, v2 %d (%.2f %%)", got[0].Load(), got[1].Load(), share)
}

// A header match (x-user: jason → v2, as in bookinfo) takes every matching
// request and no other; through sidecars whose instances join subsets with
// --subset.
func TestRouteHeaderMatchSidecars(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	for _, subset := range []string{"v1", "v2"} {
		startCallee(t, s, "reviews", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, subset+"\n")
		}), func(c *sidecar.Config) { c.Subset = subset })
	}
	cfgs := newMemConfigs()
	cfgs.apply(t, `
service: reviews
routes:
  - name: jason
    match: {headers: {x-user: jason}}
    split: {v2: 100}
  - split: {v1: 100}
`)
	caller := startCaller(t, s, "productpage", func(c *sidecar.Config) { c.Transport.Configs = cfgs })
	c := sidecarClient(t, formProxy, caller, "productpage")
	users := []string{"jason", "bob", "", "Jason", "jason2"}
	var failed atomic.Int64
	var wrong atomic.Value
	parallel(500, 8, func(i int) {
		user := users[i%len(users)]
		req := c.newRequest(t, http.MethodGet, "reviews", "/reviews/1", nil)
		if user != "" {
			req.Header.Set("X-User", user)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			failed.Add(1)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "v1\n"
		if user == "jason" {
			want = "v2\n"
		}
		if string(body) != want {
			wrong.Store(fmt.Sprintf("x-user %q reached %q, want %q", user, body, want))
		}
	})
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed", failed.Load())
	}
	if w := wrong.Load(); w != nil {
		t.Fatal(w)
	}
}

// A new revision applied under load changes routing at once, with no failed
// request, and no request sees half of each revision: revision A sends to
// v1 with a 10 s timeout, B to v2 with a 2 s one, and each instance reports
// the deadline it was given.
func TestConfigSwapUnderLoad(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveSubset(t, s, "reviews", "v1")
	serveSubset(t, s, "reviews", "v2")
	cfgs := newMemConfigs()
	revA := "service: reviews\ntimeout: 10s\nroutes:\n  - split: {v1: 100}\n"
	revB := "service: reviews\ntimeout: 2s\nroutes:\n  - split: {v2: 100}\n"
	cfgs.apply(t, revA)
	hc := configClient(t, s, cfgs, nil)

	var (
		stop       atomic.Bool
		calls, bad atomic.Int64
		seen       [2]atomic.Int64
		mu         sync.Mutex
		firstBad   string
		wg         sync.WaitGroup
		applied    atomic.Int64
	)
	record := func(format string, args ...any) {
		bad.Add(1)
		mu.Lock()
		if firstBad == "" {
			firstBad = fmt.Sprintf(format, args...)
		}
		mu.Unlock()
	}
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				calls.Add(1)
				resp, err := hc.Get("http://reviews/deadline")
				if err != nil {
					record("call failed: %v", err)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var subset string
				var ms int64
				if resp.StatusCode != http.StatusOK {
					record("status %d: %s", resp.StatusCode, body)
					continue
				}
				if _, err := fmt.Sscanf(string(body), "%s %d", &subset, &ms); err != nil {
					record("body %q", body)
					continue
				}
				switch {
				case subset == "v1" && ms > 5000:
					seen[0].Add(1)
				case subset == "v2" && ms <= 2000:
					seen[1].Add(1)
				default:
					record("%s was given %d ms: half of one revision, half of the other", subset, ms)
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		time.Sleep(10 * time.Millisecond) // let calls run under each revision
		if i%2 == 0 {
			cfgs.apply(t, revB)
		} else {
			cfgs.apply(t, revA)
		}
		applied.Add(1)
	}
	// The last revision is A: from now on every call goes to v1.
	before, v2Before := seen[0].Load(), seen[1].Load()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if n := seen[0].Load() - before; n < 100 {
			return fmt.Errorf("only %d calls to v1 since the last revision", n)
		}
		return nil
	})
	stop.Store(true)
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d calls failed or mixed revisions; first: %s", bad.Load(), calls.Load(), firstBad)
	}
	if seen[1].Load() == 0 {
		t.Fatal("no call went to v2 while revision B applied")
	}
	// Calls in flight when the last revision applied may still finish on
	// v2; a few at most, one per worker.
	if extra := seen[1].Load() - v2Before; extra > 6 {
		t.Fatalf("%d calls went to v2 after revision A was back", extra)
	}
	t.Logf("%d calls over %d revisions: v1 %d, v2 %d", calls.Load(), applied.Load(), seen[0].Load(), seen[1].Load())
}

// Deleting a service's document sends its calls to every instance again,
// whatever its subset.
func TestConfigDelete(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	apps := []*subsetApp{serveSubset(t, s, "reviews", "v1"), serveSubset(t, s, "reviews", "v2"), serveSubset(t, s, "reviews", "")}
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nroutes:\n  - split: {v2: 100}\n")
	hc := configClient(t, s, cfgs, nil)
	for i := 0; i < 30; i++ {
		if _, body, _ := callBody(t, hc, "http://reviews/"); body != "v2\n" {
			t.Fatalf("with the route, a call reached %q", body)
		}
	}
	if cfgs.watches("reviews") != 1 {
		t.Fatalf("%d watches of reviews, want 1", cfgs.watches("reviews"))
	}
	cfgs.del("reviews")
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if _, _, _ = callBody(t, hc, "http://reviews/"); apps[0].served.Load() == 0 || apps[2].served.Load() == 0 {
			return fmt.Errorf("served: v1 %d, v2 %d, no subset %d", apps[0].served.Load(), apps[1].served.Load(), apps[2].served.Load())
		}
		return nil
	})
}

// A route to a subset no instance serves says so, and how to start one.
func TestSubsetNoResponders(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveSubset(t, s, "reviews", "v1")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nroutes:\n  - match: {pathPrefix: /new}\n    split: {v3: 100}\n")
	hc := configClient(t, s, cfgs, func(c *proxy.TransportConfig) { c.Retry.Retries = -1 })
	if _, body, _ := callBody(t, hc, "http://reviews/old"); body != "v1\n" {
		t.Fatalf("an unrouted call reached %q", body)
	}
	resp, body := doRequest(t, hc, mustRequest(t, "http://reviews/new"))
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)
	for _, want := range []string{"subset v3", `"reviews"`, "natsmesh sidecar --service reviews --subset v3"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no-responders %q does not say %q", body, want)
		}
	}
}

func mustRequest(t testing.TB, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// An instance's subset subscription follows its rotation: paused, it leaves
// both queue groups; resumed, it is back in both; drained, it leaves both.
func TestSubsetFollowsRotation(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	srv := serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "v2\n")
	}), proxy.ServeConfig{Service: "reviews", Subset: "v2"})
	if srv.Subset() != "v2" {
		t.Fatalf("Subset() = %q", srv.Subset())
	}
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nroutes:\n  - match: {pathPrefix: /v2}\n    split: {v2: 100}\n")
	hc := configClient(t, s, cfgs, func(c *proxy.TransportConfig) { c.Retry.Retries = -1 })
	// Leaving and joining queue groups takes effect when the server has
	// processed it: poll.
	check := func(uri, want string) {
		t.Helper()
		meshtest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
			resp, body := doRequest(t, hc, mustRequest(t, "http://reviews"+uri))
			got := resp.Header.Get(bus.HeaderError)
			if got == "" {
				got = strings.TrimSpace(string(body))
			}
			if got != want {
				return fmt.Errorf("%s: got %q, want %q", uri, got, want)
			}
			return nil
		})
	}
	check("/v2", "v2")
	check("/", "v2")
	srv.Pause()
	check("/v2", string(bus.NoResponders))
	check("/", string(bus.NoResponders))
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	check("/v2", "v2")
	check("/", "v2")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	check("/v2", string(bus.NoResponders))
	check("/", string(bus.NoResponders))
}

// The first call to a service waits for its watch to deliver the document;
// a Transport watches each service once, and stops its watches on Close.
func TestConfigWatchLifecycle(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveSubset(t, s, "reviews", "v2")
	serveSubset(t, s, "reviews", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nroutes:\n  - split: {v2: 100}\n")
	tr := newTransport(t, s, proxy.TransportConfig{Configs: cfgs})
	hc := httpClient(t, tr)
	parallel(50, 8, func(int) {
		// Even the first calls see the document: every one goes to v2.
		if _, body, _ := callBody(t, hc, "http://reviews/"); body != "v2\n" {
			t.Errorf("a call reached %q before the document applied", body)
		}
	})
	if n := cfgs.watches("reviews"); n != 1 {
		t.Fatalf("%d watches of reviews, want 1", n)
	}
	if n := cfgs.watches("ratings"); n != 0 {
		t.Fatalf("%d watches of ratings, which was never called", n)
	}
	tr.Close()
	if n := cfgs.watches("reviews"); n != 0 {
		t.Fatalf("%d watches left after Close", n)
	}
}

// Subset names are checked like every other name before they reach a
// subject.
func TestSubsetNameValidated(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, bad := range []string{"V2", "v2.x", "*", ">", "a b"} {
		_, err := sidecar.Start(nc, sidecar.Config{Service: "reviews", Subset: bad, Upstream: "http://127.0.0.1:1", Listen: "127.0.0.1:0"})
		// A library names the config field; only the command names flags.
		if err == nil || !strings.Contains(err.Error(), "Config.Subset") || !errors.Is(err, sidecar.ErrInvalidConfig) {
			t.Errorf("sidecar subset %q: err = %v, want an ErrInvalidConfig naming Config.Subset", bad, err)
		}
		if _, err := proxy.Serve(nc, http.NotFoundHandler(), proxy.ServeConfig{Service: "reviews", Subset: bad}); err == nil {
			t.Errorf("Serve accepted subset %q", bad)
		}
	}
}

// The last passing instance of a subset does not eject itself while other
// subsets' instances pass: a route may send its calls there only.
func TestOutlierLastOfSubsetStays(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	view := registry.NewView(registry.ViewConfig{})
	f, err := registry.Follow(meshtest.Connect(t, s), view, "", "reviews")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	startCallee(t, s, "reviews", okApp, func(c *sidecar.Config) { c.Subset = "v1"; c.Heartbeat = 100 * time.Millisecond })
	_, v2 := startCallee(t, s, "reviews", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}), func(c *sidecar.Config) {
		c.Subset, c.Heartbeat, c.Outlier.Consecutive = "v2", 100*time.Millisecond, 3
	})
	// Both pass in the registry (the v2 sidecar's own view hears the same
	// heartbeats): before the fix, v2 counted v1 as another passing one.
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		n := 0
		for _, in := range view.Snapshot("reviews").Services["reviews"] {
			if in.Health == registry.Passing {
				n++
			}
		}
		if n != 2 {
			return fmt.Errorf("%d passing instances, want 2", n)
		}
		return nil
	})
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nretries: {attempts: 0}\nbreaker: {enabled: false}\nroutes:\n  - match: {headers: {x-user: jason}}\n    split: {v2: 100}\n")
	hc := configClient(t, s, cfgs, nil)
	for i := range 8 {
		status, _, h := callBody(t, hc, "http://reviews/", "x-user", "jason")
		if status != http.StatusServiceUnavailable || h.Get(bus.HeaderError) != "" || h.Get(bus.HeaderEjected) != "" {
			t.Fatalf("call %d: status %d Mesh-Error %q Mesh-Ejected %q, want the app's own 503 and no ejection", i, status, h.Get(bus.HeaderError), h.Get(bus.HeaderEjected))
		}
	}
	if v2.Inbound().Paused() {
		t.Fatal("the only v2 instance left its queue groups")
	}
}

// A service whose config watch failed (JetStream missing or not answering
// for a moment) runs on the defaults, and is watched again a while later:
// it does not stay on the defaults for the Transport's lifetime.
//
// Not parallel: it changes how long that while is.
func TestConfigWatchRetried(t *testing.T) {
	defer proxy.SetRewatchAfter(100 * time.Millisecond)()
	s := meshtest.RunServer(t)
	serveHandler(t, s, okApp, proxy.ServeConfig{Service: "reviews"})
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: reviews\nfault:\n  abort: {percent: 100, status: 418}\n")
	cfgs.mu.Lock()
	cfgs.failing = errors.New("the NATS server has no JetStream")
	cfgs.mu.Unlock()
	hc := configClient(t, s, cfgs, nil)
	if status, body, _ := callBody(t, hc, "http://reviews/"); status != http.StatusOK {
		t.Fatalf("with the watch failing: %d %q, want the defaults (200)", status, body)
	}
	cfgs.mu.Lock()
	cfgs.failing = nil
	cfgs.mu.Unlock()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if status, _, h := callBody(t, hc, "http://reviews/"); status != http.StatusTeapot || h.Get(bus.HeaderFault) != "abort" {
			return fmt.Errorf("status %d, Mesh-Fault %q: the document is not applied yet", status, h.Get(bus.HeaderFault))
		}
		return nil
	})
}
