package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
)

// Tests of the resilience features: retries and their budget, the circuit
// breaker, acknowledgements and liveness probes of held calls, reconnects,
// and outlier ejection at the callee.

// startSidecarConn is startSidecar that also returns the sidecar's own NATS
// connection, so a test can close it to simulate the instance's death.
func startSidecarConn(t testing.TB, s *embedded.Server, cfg sidecar.Config) (*sidecar.Sidecar, *nats.Conn) {
	t.Helper()
	nc := meshtest.Connect(t, s)
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	sc, err := sidecar.Start(nc, cfg)
	if err != nil {
		t.Fatalf("start sidecar %s: %v", cfg.Service, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sc.Shutdown(ctx); err != nil {
			t.Logf("shutdown of sidecar %s: %v", cfg.Service, err)
		}
	})
	return sc, nc
}

// callerForms returns two clients with a Transport each (so with breakers
// and budgets of their own): through the outbound listener of a new caller
// sidecar "frontend" configured by mod, and a library Transport configured
// by lib.
func callerForms(t *testing.T, s *embedded.Server, mod func(*sidecar.Config), lib proxy.TransportConfig) []meshClient {
	caller := startCaller(t, s, "frontend", mod)
	return []meshClient{sidecarClient(t, formProxy, caller, "frontend"), libraryClient(t, s, lib)}
}

// attemptsOf is a response's Mesh-Attempts as a number, -1 if missing.
func attemptsOf(resp *http.Response) int {
	n, err := strconv.Atoi(resp.Header.Get(bus.HeaderAttempts))
	if err != nil {
		return -1
	}
	return n
}

// failFirstApp fails the first request of each X-Test-Id with the status in
// its X-Fail header and answers 200 to every later one, so that a 200 proves
// a retry reached it again.
func failFirstApp(rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.record(r, body)
		if rec.count(r.Header.Get("X-Test-Id")) == 1 {
			code, _ := strconv.Atoi(r.Header.Get("X-Fail"))
			w.WriteHeader(code)
			_, _ = io.WriteString(w, "first attempt fails\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
}

// An app's 502, 503 and 504 are retried for idempotent requests only (GET,
// HEAD, PUT, DELETE, or one with an Idempotency-Key); a 500 or a 4xx never.
// The app fails the first attempt of each request and answers the second,
// so "retried" is seen exactly: 200 with Mesh-Attempts 2 and two requests at
// the app, or the failure with Mesh-Attempts 1 and one.
func TestRetryRules(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	startCallee(t, s, "svc", failFirstApp(rec), noOutlier)
	// Short backoffs keep the test fast; they do not change what is retried.
	fast := traffic.RetryPolicy{BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond}
	mod := func(c *sidecar.Config) { c.Transport.DisableBreaker, c.Transport.Retry = true, fast }
	clients := callerForms(t, s, mod, proxy.TransportConfig{DisableBreaker: true, Retry: fast})

	methods := []retryMethod{
		{"GET", http.MethodGet, "", true},
		{"HEAD", http.MethodHead, "", true},
		{"PUT", http.MethodPut, "", true},
		{"DELETE", http.MethodDelete, "", true},
		{"POST", http.MethodPost, "", false},
		{"PATCH", http.MethodPatch, "", false},
		{"POST+Idempotency-Key", http.MethodPost, "Idempotency-Key", true},
		{"PATCH+X-Idempotency-Key", http.MethodPatch, "X-Idempotency-Key", true},
	}
	for _, c := range clients {
		t.Run(c.form, func(t *testing.T) {
			t.Parallel()
			testRetryRules(t, c, rec, methods)
		})
	}
}

type retryMethod struct {
	name, method, header string
	idempotent           bool
}

func testRetryRules(t *testing.T, c meshClient, rec *recorder, methods []retryMethod) {
	for _, m := range methods {
		for _, status := range []int{500, 502, 503, 504, 429} {
			name := fmt.Sprintf("%s/%d", m.name, status)
			var body io.Reader
			if m.method == http.MethodPost || m.method == http.MethodPatch || m.method == http.MethodPut {
				body = strings.NewReader("payload")
			}
			req := c.newRequest(t, m.method, "svc", "/r", body)
			id := newTestID()
			req.Header.Set("X-Test-Id", id)
			req.Header.Set("X-Fail", strconv.Itoa(status))
			if m.header != "" {
				req.Header.Set(m.header, id)
			}
			resp, _ := c.do(t, req)
			retried := m.idempotent && status >= 502 && status <= 504
			wantStatus, wantAttempts := status, 1
			if retried {
				wantStatus, wantAttempts = http.StatusOK, 2
			}
			if resp.StatusCode != wantStatus || attemptsOf(resp) != wantAttempts || rec.count(id) != wantAttempts {
				t.Errorf("%s: status %d, Mesh-Attempts %q, %d requests at the app; want %d, %d, %d",
					name, resp.StatusCode, resp.Header.Get(bus.HeaderAttempts), rec.count(id), wantStatus, wantAttempts, wantAttempts)
			}
			if resp.Header.Get(bus.HeaderError) != "" {
				t.Errorf("%s: an app's answer came with Mesh-Error %q", name, resp.Header.Get(bus.HeaderError))
			}
			rec.mu.Lock()
			seen := rec.reqs[id]
			rec.mu.Unlock()
			if len(seen) == 2 {
				first, second := seen[0], seen[1]
				if string(first.Body) != string(second.Body) || first.Method != second.Method {
					t.Errorf("%s: the retry differs from the first attempt: %s %q, then %s %q", name, first.Method, first.Body, second.Method, second.Body)
				}
			}
		}
	}
}

// Mesh failures that may mean the app saw the request (the app unreachable,
// an attempt timing out) are retried for idempotent requests only.
func TestRetryRulesMeshFailures(t *testing.T) {
	t.Parallel()
	t.Run("upstream-unreachable", func(t *testing.T) {
		t.Parallel()
		s := meshtest.RunServer(t)
		app, _ := startCallee(t, s, "svc", okApp, noOutlier)
		app.Close()
		noBreaker := func(c *sidecar.Config) { c.Transport.DisableBreaker = true }
		for _, c := range callerForms(t, s, noBreaker, proxy.TransportConfig{DisableBreaker: true}) {
			for _, tc := range []struct {
				method, header string
				attempts       int
			}{
				{http.MethodGet, "", 3},
				{http.MethodPost, "", 1},
				{http.MethodPost, "Idempotency-Key", 3},
			} {
				req := c.newRequest(t, tc.method, "svc", "/", strings.NewReader("x"))
				if tc.header != "" {
					req.Header.Set(tc.header, "k")
				}
				resp, body := c.do(t, req)
				wantMeshError(t, resp, body, http.StatusBadGateway, bus.UpstreamUnreachable)
				if got := attemptsOf(resp); got != tc.attempts {
					t.Errorf("%s: %s %s: Mesh-Attempts %d, want %d", c.form, tc.method, tc.header, got, tc.attempts)
				}
			}
		}
	})
	t.Run("per-try timeout", func(t *testing.T) {
		t.Parallel()
		s := meshtest.RunServer(t)
		release := make(chan struct{})
		arrivals := newRecorder() // the first attempt of each X-Test-Id hangs
		startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrivals.record(r, nil)
			if arrivals.count(r.Header.Get("X-Test-Id")) == 1 {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return
			}
			_, _ = io.WriteString(w, "second attempt\n")
		}), noOutlier)
		// After the parallel subtests, before the sidecar's shutdown.
		t.Cleanup(func() { close(release) })
		const perTry = 200 * time.Millisecond
		retry := traffic.RetryPolicy{PerTryTimeout: perTry}
		mod := func(c *sidecar.Config) {
			c.Transport.DisableBreaker, c.Transport.Retry, c.Transport.Timeout = true, retry, 10*time.Second
		}
		for _, c := range callerForms(t, s, mod, proxy.TransportConfig{DisableBreaker: true, Retry: retry, Timeout: 10 * time.Second}) {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				t.Run(c.form+"/"+method, func(t *testing.T) {
					t.Parallel()
					id := newTestID()
					req := c.newRequest(t, method, "svc", "/", strings.NewReader("x"))
					req.Header.Set("X-Test-Id", id)
					start := time.Now()
					resp, body := c.do(t, req)
					took := time.Since(start)
					if method == http.MethodGet {
						if resp.StatusCode != http.StatusOK || attemptsOf(resp) != 2 {
							t.Errorf("%s: GET after a timed-out attempt: status %d, Mesh-Attempts %d, %q; want 200 on the second attempt", c.form, resp.StatusCode, attemptsOf(resp), body)
						}
					} else {
						wantMeshError(t, resp, body, http.StatusGatewayTimeout, bus.Timeout)
						if got := attemptsOf(resp); got != 1 {
							t.Errorf("%s: POST timed out with Mesh-Attempts %d, want 1", c.form, got)
						}
						if got := arrivals.count(id); got != 1 {
							t.Errorf("%s: the POST reached the app %d times, want 1", c.form, got)
						}
					}
					if took < perTry || took > 3*time.Second {
						t.Errorf("%s: %s took %s, want one per-try timeout (%s) and well under the call's 10s", c.form, method, took, perTry)
					}
				})
			}
		}
	})
}

// no-responders proves no app saw the request, so even a POST is retried:
// Mesh-Attempts is 1 + Retries. A body over RetryBodyLimit is not kept for
// a second attempt, so such a call is made once.
func TestNoRespondersRetriedForAnyMethod(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	// The sidecar keeps the default backoff; short ones keep the rest fast.
	clients := callerForms(t, s, nil, proxy.TransportConfig{Retry: traffic.RetryPolicy{BackoffBase: time.Millisecond}})
	clients = append(clients, libraryClient(t, s, proxy.TransportConfig{Retry: traffic.RetryPolicy{Retries: 4, BackoffBase: time.Millisecond}}))
	wantRetries := []int{traffic.DefaultRetries, traffic.DefaultRetries, 4}
	for i, c := range clients {
		for _, tc := range []struct {
			name     string
			size     int
			attempts int
		}{
			{"small body", 10, 1 + wantRetries[i]},
			{"body at the limit", traffic.RetryBodyLimit, 1 + wantRetries[i]},
			{"body over the limit", traffic.RetryBodyLimit + 1, 1},
		} {
			req := c.newRequest(t, http.MethodPost, "ghost", "/orders", strings.NewReader(strings.Repeat("x", tc.size)))
			resp, body := c.do(t, req)
			wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)
			if got := attemptsOf(resp); got != tc.attempts {
				t.Errorf("%s #%d, POST with %s (%d bytes): Mesh-Attempts %d, want %d", c.form, i, tc.name, tc.size, got, tc.attempts)
			}
		}
	}
}

// With every instance failing, retries are bounded by the destination's
// budget: at most 20 % of the calls plus 10 per second of the 10 s window,
// instead of doubling or tripling the load. The budget is per destination.
func TestRetryBudgetBoundsAttempts(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var attempts, otherAttempts atomic.Int64
	failing := func(n *atomic.Int64) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		})
	}
	startCallee(t, s, "svc", failing(&attempts), noOutlier)
	startCallee(t, s, "svc", failing(&attempts), noOutlier)
	startCallee(t, s, "other", failing(&otherAttempts), noOutlier)
	// Short backoffs keep the test fast; they do not change the budget.
	c := libraryClient(t, s, proxy.TransportConfig{
		DisableBreaker: true,
		Retry:          traffic.RetryPolicy{Retries: 2, BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond},
	})
	const calls = 300
	start := time.Now()
	lastAttempts := 0
	for i := range calls {
		resp, _ := c.get(t, "svc", "/")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("call %d: status %d, want the app's 503", i, resp.StatusCode)
		}
		if i == calls-1 {
			lastAttempts = attemptsOf(resp)
		}
	}
	took := time.Since(start)
	if took > 9*time.Second {
		t.Skipf("the calls took %s, beyond the budget's 10 s window; the bound does not hold across windows", took)
	}
	got := int(attempts.Load())
	// The budget allows retries while retries+1 <= 0.2 × calls + 10/s × 10 s.
	limit := calls + calls/5 + 100
	t.Logf("%d calls made %d attempts at the apps in %s (limit %d, %d without a budget)", calls, got, took.Round(time.Millisecond), limit, 3*calls)
	if got > limit+1 {
		t.Errorf("%d attempts for %d calls, want at most %d", got, calls, limit)
	}
	if got < limit-5 {
		t.Errorf("%d attempts for %d calls, want about %d: the budget's floor and ratio should be used up", got, calls, limit)
	}
	if lastAttempts > 2 {
		t.Errorf("the last call, with the budget spent, took %d attempts", lastAttempts)
	}
	// Another destination has a budget of its own.
	resp, _ := c.get(t, "other", "/")
	if got := attemptsOf(resp); got != 3 || otherAttempts.Load() != 3 {
		t.Errorf("the first call to another service: Mesh-Attempts %d, %d at its app; want 3, 3", got, otherAttempts.Load())
	}
}

// transitions records a breaker's state changes.
type transitions struct {
	mu  sync.Mutex
	all []string
}

func (tr *transitions) record(name string, from, to breaker.State) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.all = append(tr.all, name+":"+from.String()+"->"+to.String())
}

func (tr *transitions) get() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.all...)
}

// The breaker of a destination opens after ConsecutiveFailures failures:
// calls are then refused at once with circuit-open and Mesh-Breaker: open,
// without reaching the app; after OpenTimeout it lets probes through; a
// failed probe opens it again, HalfOpenProbes successful ones close it.
func TestBreakerOpensAndRecovers(t *testing.T) {
	t.Parallel()
	for _, form := range []string{formProxy, formLibrary} {
		t.Run(form, func(t *testing.T) {
			t.Parallel()
			s := meshtest.RunServer(t)
			var failing atomic.Bool
			failing.Store(true)
			var arrivals atomic.Int64
			startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				arrivals.Add(1)
				if failing.Load() {
					w.WriteHeader(http.StatusInternalServerError)
					return
				}
				_, _ = io.WriteString(w, "ok\n")
			}), noOutlier)
			startCallee(t, s, "healthy", okApp, noOutlier)
			tr := &transitions{}
			settings := breaker.Settings{ConsecutiveFailures: 3, OpenTimeout: 300 * time.Millisecond, HalfOpenProbes: 2, OnStateChange: tr.record}
			never := traffic.RetryPolicy{Retries: -1}
			var c meshClient
			if form == formLibrary {
				c = libraryClient(t, s, proxy.TransportConfig{Retry: never, Breaker: settings})
			} else {
				caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Retry, c.Transport.Breaker = never, settings })
				c = sidecarClient(t, formProxy, caller, "frontend")
			}

			for i := 1; i <= 3; i++ {
				resp, _ := c.get(t, "svc", "/")
				want := ""
				if i == 3 {
					want = "open" // this failure tripped it
				}
				if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get(bus.HeaderBreaker) != want {
					t.Fatalf("failure %d: status %d, Mesh-Breaker %q; want the app's 500 with Mesh-Breaker %q", i, resp.StatusCode, resp.Header.Get(bus.HeaderBreaker), want)
				}
			}
			wantOpen := func(when string) {
				t.Helper()
				before := arrivals.Load()
				for _, method := range []string{http.MethodGet, http.MethodPost} {
					start := time.Now()
					resp, body := c.do(t, c.newRequest(t, method, "svc", "/", strings.NewReader("x")))
					took := time.Since(start)
					wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.CircuitOpen)
					if got := resp.Header.Get(bus.HeaderBreaker); got != "open" {
						t.Errorf("%s: circuit-open with Mesh-Breaker %q, want open", when, got)
					}
					if took > 50*time.Millisecond {
						t.Errorf("%s: circuit-open took %s, want it at once", when, took)
					}
				}
				if got := arrivals.Load() - before; got != 0 {
					t.Errorf("%s: %d calls reached the app while the breaker is open", when, got)
				}
			}
			wantOpen("after 3 failures")
			// Other destinations are not affected.
			if resp, _ := c.get(t, "healthy", "/"); resp.StatusCode != http.StatusOK {
				t.Fatalf("another service while svc's breaker is open: status %d", resp.StatusCode)
			}

			// After OpenTimeout a probe gets through; it fails, and the
			// breaker opens again.
			before := arrivals.Load()
			meshtest.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
				resp, _ := c.get(t, "svc", "/")
				if resp.StatusCode == http.StatusInternalServerError {
					if got := resp.Header.Get(bus.HeaderBreaker); got != "open" {
						return fmt.Errorf("a failed probe came with Mesh-Breaker %q, want open", got)
					}
					return nil
				}
				return fmt.Errorf("status %d Mesh-Error %q", resp.StatusCode, resp.Header.Get(bus.HeaderError))
			})
			if got := arrivals.Load() - before; got != 1 {
				t.Fatalf("%d probes reached the app, want 1", got)
			}
			wantOpen("after a failed probe")

			// The app recovers: a probe succeeds, HalfOpenProbes successes
			// close the breaker, and calls flow again.
			failing.Store(false)
			meshtest.CheckFor(t, 3*time.Second, 10*time.Millisecond, func() error {
				resp, _ := c.get(t, "svc", "/")
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("status %d Mesh-Error %q", resp.StatusCode, resp.Header.Get(bus.HeaderError))
				}
				return nil
			})
			before = arrivals.Load()
			for i := range 10 {
				if resp, _ := c.get(t, "svc", "/"); resp.StatusCode != http.StatusOK || resp.Header.Get(bus.HeaderBreaker) != "" {
					t.Fatalf("call %d after recovery: status %d, Mesh-Breaker %q", i, resp.StatusCode, resp.Header.Get(bus.HeaderBreaker))
				}
			}
			if got := arrivals.Load() - before; got != 10 {
				t.Fatalf("%d of 10 calls reached the app after recovery", got)
			}
			want := []string{
				"svc:closed->open", "svc:open->half-open", "svc:half-open->open",
				"svc:open->half-open", "svc:half-open->closed",
			}
			meshtest.CheckFor(t, time.Second, 5*time.Millisecond, func() error {
				if got := tr.get(); fmt.Sprint(got) != fmt.Sprint(want) {
					return fmt.Errorf("breaker transitions %v, want %v", got, want)
				}
				return nil
			})
		})
	}
}

// What counts against the breaker: timeouts, an unreachable app, 5xx; and
// what does not: a missing service, 4xx, calls the caller cancelled.
func TestBreakerCountsOnlyTheDestinationsFailures(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	release := make(chan struct{})
	defer close(release)
	var held atomic.Int64
	startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/404":
			http.NotFound(w, r)
		case "/503":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/hang":
			held.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			_, _ = io.WriteString(w, "ok\n")
		}
	}), noOutlier)
	gone, _ := startCallee(t, s, "gone", okApp, noOutlier)
	gone.Close()

	const trip = 2
	settings := breaker.Settings{ConsecutiveFailures: trip, FailureRatio: -1}
	newClient := func(cfg proxy.TransportConfig) meshClient {
		cfg.Retry, cfg.Breaker = traffic.RetryPolicy{Retries: -1}, settings
		return libraryClient(t, s, cfg)
	}
	callN := func(c meshClient, n int, service, path string) (codes []string) {
		for range n {
			resp, _ := c.get(t, service, path)
			codes = append(codes, fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get(bus.HeaderError)))
		}
		return codes
	}
	circuitOpen := func(c meshClient, service string) bool {
		resp, _ := c.get(t, service, "/")
		return resp.Header.Get(bus.HeaderError) == string(bus.CircuitOpen)
	}

	t.Run("ignored", func(t *testing.T) {
		c := newClient(proxy.TransportConfig{})
		callN(c, 5, "ghost", "/")
		if circuitOpen(c, "ghost") {
			t.Errorf("no-responders opened the breaker")
		}
		callN(c, 5, "svc", "/404")
		if circuitOpen(c, "svc") {
			t.Errorf("404s opened the breaker")
		}
		for range 5 {
			ctx, cancel := context.WithCancel(context.Background())
			before := held.Load()
			done := make(chan error, 1)
			go func() {
				req := c.newRequest(t, http.MethodGet, "svc", "/hang", nil).WithContext(ctx)
				resp, err := c.hc.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				done <- err
			}()
			meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
				if held.Load() == before {
					return errors.New("the request has not reached the app")
				}
				return nil
			})
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("a cancelled call returned %v, want context.Canceled", err)
			}
		}
		if circuitOpen(c, "svc") {
			t.Errorf("cancelled calls opened the breaker")
		}
	})
	t.Run("counted", func(t *testing.T) {
		for _, tc := range []struct {
			name, service, path string
			cfg                 proxy.TransportConfig
		}{
			{"app 503", "svc", "/503", proxy.TransportConfig{}},
			{"timeout", "svc", "/hang", proxy.TransportConfig{Timeout: 200 * time.Millisecond}},
			{"upstream-unreachable", "gone", "/", proxy.TransportConfig{}},
		} {
			c := newClient(tc.cfg)
			codes := callN(c, trip, tc.service, tc.path)
			if !circuitOpen(c, tc.service) {
				t.Errorf("%s: %d failures (%v) left the breaker closed", tc.name, trip, codes)
			}
		}
	})
	t.Run("disabled", func(t *testing.T) {
		c := libraryClient(t, s, proxy.TransportConfig{Retry: traffic.RetryPolicy{Retries: -1}, Breaker: settings, DisableBreaker: true})
		callN(c, 10, "svc", "/503")
		if circuitOpen(c, "svc") {
			t.Errorf("DisableBreaker: 10 failures opened the breaker")
		}
	})
}

// inboxReplies subscribes to every reply inbox: a test's window on the
// acknowledgements that reach callers.
func inboxReplies(t *testing.T, s *embedded.Server) <-chan *nats.Msg {
	ch := make(chan *nats.Msg, 4096)
	meshtest.Subscribe(t, s, "_INBOX.>", ch)
	return ch
}

// waitAck waits for an acknowledgement from instance.
func waitAck(t *testing.T, replies <-chan *nats.Msg, instance string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m := <-replies:
			if m.Header.Get(bus.HeaderAck) != "" && m.Header.Get(bus.HeaderInstance) == instance {
				return
			}
		case <-timeout:
			t.Fatalf("no acknowledgement from %s", instance)
		}
	}
}

type callResult struct {
	resp *http.Response
	body []byte
	err  error
	at   time.Time
}

func goDo(c meshClient, req *http.Request) <-chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		resp, err := c.hc.Do(req)
		r := callResult{resp: resp, err: err}
		if err == nil {
			r.body, r.err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		r.at = time.Now()
		ch <- r
	}()
	return ch
}

// The instance holding a request dies (its NATS connection closes): the
// caller, which got its acknowledgement, learns it from a probe within a
// probe interval, not at its deadline. A GET is then retried on the other
// instance and succeeds; a POST is answered upstream-lost.
func TestHolderDeathDetectedByProbe(t *testing.T) {
	t.Parallel()
	const timeout = 10 * time.Second
	for _, form := range []string{formProxy, formLibrary} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(form+"/"+method, func(t *testing.T) {
				t.Parallel()
				s := meshtest.RunServer(t)
				replies := inboxReplies(t, s)
				release := make(chan struct{})
				defer close(release)
				var first atomic.Bool // the first request, wherever it lands, is held
				type instance struct {
					sc       *sidecar.Sidecar
					nc       *nats.Conn
					held     atomic.Bool
					requests atomic.Int64
				}
				var insts [2]*instance
				for i := range insts {
					in := &instance{}
					app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						in.requests.Add(1)
						if first.CompareAndSwap(false, true) {
							in.held.Store(true)
							select {
							case <-release:
							case <-r.Context().Done():
							}
							return
						}
						_, _ = io.WriteString(w, "served\n")
					}))
					in.sc, in.nc = startSidecarConn(t, s, sidecar.Config{Service: "svc", Upstream: app.URL, Outlier: sidecar.OutlierConfig{Consecutive: -1}})
					insts[i] = in
				}
				var c meshClient
				if form == formLibrary {
					c = libraryClient(t, s, proxy.TransportConfig{Timeout: timeout})
				} else {
					caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = timeout })
					c = sidecarClient(t, formProxy, caller, "frontend")
				}

				res := goDo(c, c.newRequest(t, method, "svc", "/slow", strings.NewReader("order")))
				var holder, other *instance
				meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
					for i, in := range insts {
						if in.held.Load() {
							holder, other = in, insts[1-i]
							return nil
						}
					}
					return errors.New("the request has not reached an app")
				})
				waitAck(t, replies, holder.sc.Instance())
				select {
				case r := <-res:
					t.Fatalf("answered before the holder died: %v %v", r.resp, r.err)
				default:
				}
				died := time.Now()
				holder.nc.Close()
				r := <-res
				if r.err != nil {
					t.Fatalf("%s: %v", method, r.err)
				}
				took := r.at.Sub(died)
				t.Logf("%s answered %s after the holder died: %d %s", method, took.Round(time.Millisecond), r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError))
				if method == http.MethodGet {
					if r.resp.StatusCode != http.StatusOK || string(r.body) != "served\n" {
						t.Fatalf("GET: status %d Mesh-Error %q %q, want 200 from the other instance", r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError), r.body)
					}
					if got := r.resp.Header.Get(bus.HeaderInstance); got != other.sc.Instance() {
						t.Errorf("GET served by %q, want the surviving %q", got, other.sc.Instance())
					}
					if got := attemptsOf(r.resp); got != 2 {
						t.Errorf("GET: Mesh-Attempts %d, want 2", got)
					}
					if took > 2*time.Second {
						t.Errorf("GET: answered %s after the holder died, want well within a few probe intervals", took)
					}
				} else {
					wantMeshError(t, r.resp, r.body, http.StatusBadGateway, bus.UpstreamLost)
					if got := attemptsOf(r.resp); got != 1 {
						t.Errorf("POST: Mesh-Attempts %d, want 1", got)
					}
					if got := other.requests.Load(); got != 0 {
						t.Errorf("POST: the other instance's app received %d requests, want none (not retried)", got)
					}
					if took > 1500*time.Millisecond {
						t.Errorf("POST: upstream-lost %s after the holder died, want within a few probe intervals", took)
					}
				}
			})
		}
	}
}

// An instance that takes a request and never acknowledges it (dead before
// it could) is presumed gone after AckWait: the call is answered
// upstream-lost then, not at its timeout; an idempotent call is retried.
func TestUnacknowledgedRequestIsLost(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	subj, err := bus.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		received = map[string]int{} // by Mesh-Path
	)
	nc := meshtest.Connect(t, s)
	if _, err := nc.QueueSubscribe(subj.Calls("mute"), subj.QueueGroup("mute"), func(m *nats.Msg) {
		mu.Lock()
		received[m.Header.Get(bus.HeaderPath)]++
		if got := m.Header.Get(bus.HeaderAck); got != "100" {
			received["bad Mesh-Ack "+got]++ // every request asks for an ack after 100 ms
		}
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const ackWait = 200 * time.Millisecond
	clients := callerForms(t, s,
		func(c *sidecar.Config) {
			c.Transport.AckWait, c.Transport.Timeout, c.Transport.DisableBreaker = ackWait, 10*time.Second, true
		},
		proxy.TransportConfig{AckWait: ackWait, Timeout: 10 * time.Second, DisableBreaker: true})
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for k, n := range received {
			if strings.HasPrefix(k, "bad Mesh-Ack") {
				t.Errorf("%d requests came with %s, want 100", n, k)
			}
		}
	})
	for _, c := range clients {
		for _, tc := range []struct {
			method   string
			attempts int
			max      time.Duration
		}{
			{http.MethodPost, 1, 1500 * time.Millisecond},
			{http.MethodGet, 3, 2 * time.Second},
		} {
			t.Run(c.form+"/"+tc.method, func(t *testing.T) {
				t.Parallel()
				path := "/" + newTestID()
				start := time.Now()
				resp, body := c.do(t, c.newRequest(t, tc.method, "mute", path, strings.NewReader("x")))
				took := time.Since(start)
				wantMeshError(t, resp, body, http.StatusBadGateway, bus.UpstreamLost)
				if got := attemptsOf(resp); got != tc.attempts {
					t.Errorf("Mesh-Attempts %d, want %d", got, tc.attempts)
				}
				mu.Lock()
				got := received[path]
				mu.Unlock()
				if got != tc.attempts {
					t.Errorf("the instance received %d requests, want %d", got, tc.attempts)
				}
				if min := time.Duration(tc.attempts) * ackWait; took < min || took > tc.max {
					t.Errorf("upstream-lost after %s, want between %s and %s", took, min, tc.max)
				}
			})
		}
	}
}

// A GET in flight when the NATS connection drops waits for the reconnect,
// within its timeout, and is retried; calls made while disconnected are
// answered mesh-unavailable at once.
func TestIdempotentCallSurvivesReconnect(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	port := s.Addr().(*net.TCPAddr).Port
	// The restarted server stops after the sidecars (cleanups run last in,
	// first out), so that they drain on a live connection.
	var restarted atomic.Pointer[embedded.Server]
	t.Cleanup(func() {
		if s2 := restarted.Load(); s2 != nil {
			s2.Shutdown()
		}
	})
	release := make(chan struct{})
	defer close(release)
	var arrivals atomic.Int64
	startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrivals.Add(1) == 1 {
			select { // the first attempt is held until the connection drops
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		_, _ = io.WriteString(w, "after the reconnect\n")
	}), noOutlier)
	// The caller and the callee reconnect independently, up to 250 ms
	// apart; the default retries are enough even if the callee comes back
	// second (see TestNoRespondersRightAfterReconnect).
	nc := meshtest.Connect(t, s)
	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Timeout: 10 * time.Second, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := meshClient{form: formLibrary, hc: httpClient(t, tr)}

	res := goDo(c, c.newRequest(t, http.MethodGet, "svc", "/", nil))
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if arrivals.Load() == 0 {
			return errors.New("the GET has not reached the app")
		}
		return nil
	})
	s.Shutdown()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if nc.Status() == nats.CONNECTED {
			return errors.New("the caller has not noticed the drop yet")
		}
		return nil
	})
	start := time.Now()
	resp, body := c.get(t, "svc", "/")
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.MeshUnavailable)
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("a new call while disconnected: mesh-unavailable after %s, want it at once", took)
	}
	select {
	case r := <-res:
		t.Fatalf("the GET in flight was answered while the server is down: %v %v", r.resp, r.err)
	default:
	}
	s2, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restart the server on port %d: %v", port, err)
	}
	back := time.Now()
	restarted.Store(s2)
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.resp.StatusCode != http.StatusOK || string(r.body) != "after the reconnect\n" {
		t.Fatalf("the GET in flight: status %d Mesh-Error %q %q, want 200 after the reconnect", r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError), r.body)
	}
	t.Logf("the GET in flight succeeded %s after the server's return, in %d attempts", r.at.Sub(back).Round(time.Millisecond), attemptsOf(r.resp))
	if got := attemptsOf(r.resp); got < 2 {
		t.Errorf("Mesh-Attempts %d, want at least 2", got)
	}
}

// Right after the caller's NATS connection comes back, the callees may not be
// back yet (clients reconnect up to a reconnect wait apart): "no responders"
// is then retried, with backoff, beyond the retry count, until the callees
// have had a second to return. After that second it is final again, after
// the usual retries.
func TestNoRespondersRightAfterReconnect(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	port := s.Addr().(*net.TCPAddr).Port
	nc := meshtest.Connect(t, s)
	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	c := meshClient{form: formLibrary, hc: httpClient(t, tr)}

	s.Shutdown()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if nc.Status() == nats.CONNECTED {
			return errors.New("the caller has not noticed the drop yet")
		}
		return nil
	})
	s2, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restart the server on port %d: %v", port, err)
	}
	t.Cleanup(s2.Shutdown)
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if nc.Status() != nats.CONNECTED {
			return errors.New("the caller has not reconnected yet")
		}
		return nil
	})
	reconnected := time.Now()
	// The callee comes back 300 ms after the caller: longer than the
	// default retries' backoff (25 + 50 ms, jittered) would wait.
	calleeBack := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		close(calleeBack)
	}()
	var res []<-chan callResult
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		res = append(res, goDo(c, c.newRequest(t, method, "svc", "/", strings.NewReader("x"))))
	}
	<-calleeBack
	serveHandler(t, s2, okApp, proxy.ServeConfig{Service: "svc"})
	for _, ch := range res {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.resp.StatusCode != http.StatusOK {
			t.Fatalf("%s right after the reconnect: status %d Mesh-Error %q (Mesh-Attempts %s), want 200 once the callee is back",
				r.resp.Request.Method, r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError), r.resp.Header.Get(bus.HeaderAttempts))
		}
		if got := attemptsOf(r.resp); got <= 1+traffic.DefaultRetries {
			t.Errorf("%s: Mesh-Attempts %d, want more than the %d of the usual retries", r.resp.Request.Method, got, 1+traffic.DefaultRetries)
		}
		t.Logf("%s succeeded %s after the reconnect, in %d attempts", r.resp.Request.Method, r.at.Sub(reconnected).Round(time.Millisecond), attemptsOf(r.resp))
	}

	// A second after the reconnect, a missing service is missing again.
	time.Sleep(time.Until(reconnected.Add(1100 * time.Millisecond)))
	resp, body := c.get(t, "ghost", "/")
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)
	if got := attemptsOf(resp); got != 1+traffic.DefaultRetries {
		t.Errorf("ghost, long after the reconnect: Mesh-Attempts %d, want %d", got, 1+traffic.DefaultRetries)
	}
}

// outlierEnv is a service of instances whose apps fail while told to.
type outlierEnv struct {
	s     *embedded.Server
	view  *registry.View
	scs   []*sidecar.Sidecar
	fails []*atomic.Bool
	c     meshClient
}

func newOutlierEnv(t *testing.T, n int, cfg sidecar.OutlierConfig) *outlierEnv {
	e := &outlierEnv{s: meshtest.RunServer(t), view: registry.NewView(registry.ViewConfig{})}
	f, err := registry.Follow(meshtest.Connect(t, e.s), e.view, "", "svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	for i := range n {
		fail := &atomic.Bool{}
		name := fmt.Sprintf("app-%d", i)
		app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				w.WriteHeader(http.StatusInternalServerError)
			}
			_, _ = io.WriteString(w, name)
		}))
		sc := startSidecar(t, e.s, sidecar.Config{
			Service: "svc", Instance: fmt.Sprintf("svc-%d", i), Upstream: app.URL,
			Heartbeat: 100 * time.Millisecond, Outlier: cfg,
		})
		e.scs, e.fails = append(e.scs, sc), append(e.fails, fail)
	}
	// Retries on (they never retry a 500), the breaker off.
	e.c = libraryClient(t, e.s, proxy.TransportConfig{DisableBreaker: true})
	e.waitHealth(t, 5*time.Second, func(map[string]registry.Health) error { return nil })
	return e
}

// waitHealth waits until the view knows every instance and check accepts
// their health.
func (e *outlierEnv) waitHealth(t *testing.T, total time.Duration, check func(map[string]registry.Health) error) {
	t.Helper()
	meshtest.CheckFor(t, total, 5*time.Millisecond, func() error {
		health := map[string]registry.Health{}
		for _, in := range e.view.Snapshot("svc").Services["svc"] {
			health[in.Instance] = in.Health
		}
		if len(health) != len(e.scs) {
			return fmt.Errorf("the registry shows %v, want %d instances", health, len(e.scs))
		}
		return check(health)
	})
}

// callUntilEjected calls the service until a response says it ejected its
// instance, and returns that response.
func (e *outlierEnv) callUntilEjected(t *testing.T) *http.Response {
	t.Helper()
	var ejected *http.Response
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		resp, _ := e.c.get(t, "svc", "/")
		if resp.Header.Get(bus.HeaderEjected) != "" {
			ejected = resp
			return nil
		}
		return errors.New("no response said Mesh-Ejected")
	})
	return ejected
}

// An instance whose app fails Consecutive requests in a row leaves its
// queue group for BaseEjection, reports health ejected, and says so on the
// failing response; the others serve every call meanwhile. It rejoins by
// itself, and its next ejection lasts twice as long.
func TestOutlierEjection(t *testing.T) {
	t.Parallel()
	const base = 500 * time.Millisecond
	e := newOutlierEnv(t, 3, sidecar.OutlierConfig{Consecutive: 3, BaseEjection: base})
	bad := e.scs[0]
	e.fails[0].Store(true)
	e.waitHealth(t, 5*time.Second, func(h map[string]registry.Health) error {
		for in, st := range h {
			if st != registry.Passing {
				return fmt.Errorf("%s is %s", in, st)
			}
		}
		return nil
	})

	for n, want := range []time.Duration{base, 2 * base} {
		resp := e.callUntilEjected(t)
		ejectedAt := time.Now()
		if got := resp.Header.Get(bus.HeaderEjected); got != want.String() {
			t.Errorf("ejection %d: Mesh-Ejected %q, want %q", n+1, got, want)
		}
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get(bus.HeaderInstance) != bad.Instance() {
			t.Errorf("ejection %d: Mesh-Ejected on a %d from %q, want the 500 of %q", n+1, resp.StatusCode, resp.Header.Get(bus.HeaderInstance), bad.Instance())
		}
		if !bad.Inbound().Paused() {
			t.Fatalf("ejection %d: the failing instance is still in its queue group", n+1)
		}
		// Once the registry shows it ejected, its queue subscription is
		// gone (the heartbeat follows the unsubscribe on its connection).
		e.waitHealth(t, 2*time.Second, func(h map[string]registry.Health) error {
			if h[bad.Instance()] != registry.Ejected {
				return fmt.Errorf("the failing instance is %s", h[bad.Instance()])
			}
			return nil
		})
		for i := range 20 {
			resp, body := e.c.get(t, "svc", "/")
			if resp.StatusCode != http.StatusOK || resp.Header.Get(bus.HeaderInstance) == bad.Instance() {
				t.Fatalf("ejection %d, call %d: status %d from %q (%q), want 200 from another instance", n+1, i, resp.StatusCode, resp.Header.Get(bus.HeaderInstance), body)
			}
		}
		if n == 1 {
			e.fails[0].Store(false) // the app recovers during its second ejection
		}
		meshtest.CheckFor(t, want+2*time.Second, 5*time.Millisecond, func() error {
			if bad.Inbound().Paused() {
				return errors.New("still ejected")
			}
			return nil
		})
		if out := time.Since(ejectedAt); out < want-50*time.Millisecond {
			t.Errorf("ejection %d: back after %s, want %s", n+1, out, want)
		}
	}
	// Recovered, it is passing and serves again.
	e.waitHealth(t, 2*time.Second, func(h map[string]registry.Health) error {
		if h[bad.Instance()] != registry.Passing {
			return fmt.Errorf("the recovered instance is %s", h[bad.Instance()])
		}
		return nil
	})
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		resp, _ := e.c.get(t, "svc", "/")
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d from %q", resp.StatusCode, resp.Header.Get(bus.HeaderInstance))
		}
		if resp.Header.Get(bus.HeaderInstance) != bad.Instance() {
			return errors.New("not served by the recovered instance yet")
		}
		return nil
	})
}

// The last passing instance of a service never ejects itself, however its
// app fails: with no other instance, ejecting would only turn 500s into
// no-responders.
func TestOutlierLastPassingInstanceStays(t *testing.T) {
	t.Parallel()
	e := newOutlierEnv(t, 1, sidecar.OutlierConfig{Consecutive: 3, BaseEjection: 10 * time.Second})
	e.fails[0].Store(true)
	for i := range 10 {
		resp, _ := e.c.get(t, "svc", "/")
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get(bus.HeaderEjected) != "" {
			t.Fatalf("call %d: status %d Mesh-Ejected %q, want the app's 500 and no ejection", i, resp.StatusCode, resp.Header.Get(bus.HeaderEjected))
		}
	}
	if e.scs[0].Inbound().Paused() {
		t.Fatalf("the only instance left its queue group")
	}
	e.waitHealth(t, time.Second, func(h map[string]registry.Health) error {
		if h[e.scs[0].Instance()] != registry.Passing {
			return fmt.Errorf("the only instance is %s", h[e.scs[0].Instance()])
		}
		return nil
	})
}

// An ejected instance rejoins before its ejection is over when no other
// instance of its service passes any more, and then stays in (last passing).
func TestOutlierRejoinsWhenOthersAreGone(t *testing.T) {
	t.Parallel()
	e := newOutlierEnv(t, 2, sidecar.OutlierConfig{Consecutive: 3, BaseEjection: 30 * time.Second})
	bad, good := e.scs[0], e.scs[1]
	e.fails[0].Store(true)
	e.waitHealth(t, 5*time.Second, func(h map[string]registry.Health) error {
		if h[good.Instance()] != registry.Passing || h[bad.Instance()] != registry.Passing {
			return fmt.Errorf("health %v", h)
		}
		return nil
	})
	e.callUntilEjected(t)
	if !bad.Inbound().Paused() {
		t.Fatalf("the failing instance did not leave its queue group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := good.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown of the good instance: %v", err)
	}
	start := time.Now()
	meshtest.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		if bad.Inbound().Paused() {
			return errors.New("still ejected")
		}
		return nil
	})
	t.Logf("rejoined %s after the last other instance left (ejection of 30s)", time.Since(start).Round(time.Millisecond))
	// Its heartbeat follows the new subscription on its connection: once
	// the registry shows it passing, calls reach it.
	meshtest.CheckFor(t, 2*time.Second, 5*time.Millisecond, func() error {
		for _, in := range e.view.Snapshot("svc").Services["svc"] {
			if in.Instance == bad.Instance() && in.Health == registry.Passing {
				return nil
			}
		}
		return errors.New("the rejoined instance is not passing in the registry yet")
	})
	for i := range 10 {
		resp, _ := e.c.get(t, "svc", "/")
		if resp.StatusCode != http.StatusInternalServerError || resp.Header.Get(bus.HeaderInstance) != bad.Instance() || resp.Header.Get(bus.HeaderEjected) != "" {
			t.Fatalf("call %d: status %d from %q, Mesh-Ejected %q; want the failing app's 500 and no new ejection", i, resp.StatusCode, resp.Header.Get(bus.HeaderInstance), resp.Header.Get(bus.HeaderEjected))
		}
	}
}

// An instance draining for shutdown still holds the requests it took and
// finishes them; callers probing it must not take it for dead meanwhile.
func TestDrainingHolderIsAlive(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	replies := inboxReplies(t, s)
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	defer open()
	var arrivals atomic.Int64
	_, callee := startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			_, _ = io.WriteString(w, "quick\n")
			return
		}
		arrivals.Add(1)
		select {
		case <-release:
			_, _ = io.WriteString(w, "finished while draining\n")
		case <-r.Context().Done():
		}
	}), noOutlier)
	// Probes every 50 ms: a false death shows within a few of them.
	const probe = 50 * time.Millisecond
	c := libraryClient(t, s, proxy.TransportConfig{Timeout: 10 * time.Second, ProbeInterval: probe})

	res := goDo(c, c.newRequest(t, http.MethodPost, "svc", "/slow", strings.NewReader("order")))
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if arrivals.Load() == 0 {
			return errors.New("the POST has not reached the app")
		}
		return nil
	})
	waitAck(t, replies, callee.Instance())
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- callee.Shutdown(ctx)
	}()
	// The instance has left its queue group: new calls find no one.
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		resp, _ := c.get(t, "svc", "/new")
		if resp.Header.Get(bus.HeaderError) != string(bus.NoResponders) {
			return fmt.Errorf("a new call got %d %q, want no-responders while svc drains", resp.StatusCode, resp.Header.Get(bus.HeaderError))
		}
		return nil
	})
	// A caller that picked the instance before hearing it leave (an
	// instance-aware balancer sends to its own subject) is answered
	// no-responders at once, which any method retries elsewhere.
	direct := meshtest.Connect(t, s)
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		msg := &nats.Msg{Subject: bus.Subjects{}.Inst("svc", callee.Instance()), Header: nats.Header{}}
		bus.EncodeRequest(msg.Header, http.MethodPost, "/late", "svc", http.Header{})
		m, err := direct.RequestMsg(msg, 200*time.Millisecond)
		if err != nil {
			return fmt.Errorf("a request to the draining instance's own subject: %v", err)
		}
		if got := m.Header.Get(bus.HeaderError); got != string(bus.NoResponders) {
			return fmt.Errorf("a request to the draining instance's own subject got Mesh-Error %q, want no-responders", got)
		}
		return nil
	})
	// The held call is not answered while the app works on it, however
	// many probes its caller sends (10 probe intervals here).
	select {
	case r := <-res:
		t.Fatalf("the call held by the draining instance was answered before its app finished: %d %s %q",
			r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError), r.body)
	case <-time.After(10 * probe):
	}
	open()
	r := <-res
	if r.err != nil || r.resp.StatusCode != http.StatusOK || string(r.body) != "finished while draining\n" {
		t.Fatalf("the call held by the draining instance: %v %v %q, want 200 from its app", r.resp, r.err, r.body)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// An instance a caller once found dead can come back under the same name
// (a restarted sidecar with a fixed --instance): the caller's probes must see
// it alive again, not remember it dead.
func TestProbedDeathIsNotRemembered(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	replies := inboxReplies(t, s)
	releaseFirst, releaseSecond := make(chan struct{}), make(chan struct{})
	var once sync.Once
	openSecond := func() { once.Do(func() { close(releaseSecond) }) }
	defer close(releaseFirst)
	defer openSecond()
	var arrivals atomic.Int64
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrivals.Add(1)
		release := releaseFirst
		if r.URL.Path == "/second" {
			release = releaseSecond
		}
		select {
		case <-release:
			_, _ = io.WriteString(w, "done\n")
		case <-r.Context().Done():
		}
	}))
	cfg := sidecar.Config{Service: "svc", Instance: "svc-fixed", Upstream: app.URL, Outlier: sidecar.OutlierConfig{Consecutive: -1}}
	_, nc := startSidecarConn(t, s, cfg)
	const probe = 50 * time.Millisecond
	c := libraryClient(t, s, proxy.TransportConfig{Timeout: 10 * time.Second, ProbeInterval: probe})
	hold := func(path string) <-chan callResult {
		t.Helper()
		before := arrivals.Load()
		res := goDo(c, c.newRequest(t, http.MethodPost, "svc", path, strings.NewReader("x")))
		meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
			if arrivals.Load() == before {
				return errors.New("the POST has not reached the app")
			}
			return nil
		})
		waitAck(t, replies, "svc-fixed")
		return res
	}

	// The instance dies holding a call: its caller finds out by a probe.
	res := hold("/first")
	nc.Close()
	if r := <-res; r.err != nil || r.resp.Header.Get(bus.HeaderError) != string(bus.UpstreamLost) {
		t.Fatalf("the call held by the dead instance: %v %v, want upstream-lost", r.resp, r.err)
	}

	// It comes back under the same name and takes a long call.
	startSidecar(t, s, cfg)
	res = hold("/second")
	select {
	case r := <-res:
		t.Fatalf("the call held by the restarted instance was answered before its app finished: %d %s %q",
			r.resp.StatusCode, r.resp.Header.Get(bus.HeaderError), r.body)
	case <-time.After(10 * probe):
	}
	openSecond()
	if r := <-res; r.err != nil || r.resp.StatusCode != http.StatusOK {
		t.Fatalf("the call held by the restarted instance: %v %v, want 200", r.resp, r.err)
	}
}
