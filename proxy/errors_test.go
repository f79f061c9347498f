package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/sidecar"
)

// Every Mesh-Error this issue produces, with its HTTP status (DESIGN.md,
// "Wire format of a proxied call").

// okApp answers every request with "ok".
var okApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = io.WriteString(w, "ok\n")
})

// allForms returns a client of each form: through caller's outbound
// listener as a proxy and with a Host header, and a library Transport.
func allForms(t *testing.T, s *embedded.Server, caller *sidecar.Sidecar, libCfg proxy.TransportConfig) []meshClient {
	return []meshClient{
		sidecarClient(t, formProxy, caller, "frontend"),
		sidecarClient(t, formHost, caller, "frontend"),
		libraryClient(t, s, libCfg),
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app, callee := startCallee(t, s, "svc", okApp, nil)
	caller := startCaller(t, s, "frontend", nil)
	clients := allForms(t, s, caller, proxy.TransportConfig{})
	if resp, _ := clients[0].get(t, "svc", "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("before the app stops: status %d", resp.StatusCode)
	}
	app.Close()
	for _, c := range clients {
		resp, body := c.get(t, "svc", "/")
		wantMeshError(t, resp, body, http.StatusBadGateway, bus.UpstreamUnreachable)
		if got := resp.Header.Get(bus.HeaderInstance); got != callee.Instance() {
			t.Errorf("%s: Mesh-Instance %q, want the callee %q that failed to reach its app", c.form, got, callee.Instance())
		}
	}
}

func TestNoResponders(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	caller := startCaller(t, s, "frontend", nil)
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{}) {
		start := time.Now()
		resp, body := c.get(t, "ghost", "/")
		wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)
		if !strings.Contains(string(body), "ghost") {
			t.Errorf("%s: the explanation %q does not name the service", c.form, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: no-responders took %s; NATS answers it at once", c.form, d)
		}
	}
}

func TestTimeoutCancelsUpstream(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	s := meshtest.RunServer(t)
	g := newGate()
	defer g.open()
	var cancelled atomic.Int64 // when the app saw its request's context end, unix ns
	startCallee(t, s, "slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.wait(r.Context()) {
			cancelled.Store(time.Now().UnixNano())
		}
	}), nil)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = timeout })
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{Timeout: timeout}) {
		cancelled.Store(0)
		start := time.Now()
		resp, body := c.get(t, "slow", "/")
		elapsed := time.Since(start)
		wantMeshError(t, resp, body, http.StatusGatewayTimeout, bus.Timeout)
		if elapsed < timeout || elapsed > timeout+2*time.Second {
			t.Errorf("%s: timeout answered after %s, want about %s", c.form, elapsed, timeout)
		}
		// The callee stops the app's work when the call's time is up.
		meshtest.CheckFor(t, 3*time.Second, 5*time.Millisecond, func() error {
			if cancelled.Load() == 0 {
				return fmt.Errorf("%s: the app's request context has not ended", c.form)
			}
			return nil
		})
		if late := time.Unix(0, cancelled.Load()).Sub(start.Add(timeout)); late > time.Second {
			t.Errorf("%s: the app's request was cancelled %s after the deadline, want within 1s", c.form, late)
		}
	}
}

// The deadline travels as Mesh-Timeout and becomes the handler's context
// deadline at the callee.
func TestDeadlineReachesHandler(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.record(r, nil)
	}), proxy.ServeConfig{Service: "svc"})
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = 1500 * time.Millisecond })
	lib := libraryClient(t, s, proxy.TransportConfig{Timeout: 2 * time.Second})

	check := func(name string, c meshClient, ctxTimeout, want time.Duration) {
		t.Helper()
		ctx := context.Background()
		if ctxTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, ctxTimeout)
			defer cancel()
		}
		req := c.newRequest(t, http.MethodGet, "svc", "/deadline", nil).WithContext(ctx)
		id := newTestID()
		req.Header.Set("X-Test-Id", id)
		sent := time.Now()
		if resp, _ := c.do(t, req); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", name, resp.StatusCode)
		}
		seen := rec.one(t, id)
		if !seen.HasDeadline {
			t.Fatalf("%s: the handler's context has no deadline", name)
		}
		if left := seen.Deadline.Sub(sent); left <= want/2 || left > want+500*time.Millisecond {
			t.Fatalf("%s: the handler's deadline is %s after the call was sent, want about %s", name, left, want)
		}
	}
	check("sidecar --timeout", sidecarClient(t, formProxy, caller, "frontend"), 0, 1500*time.Millisecond)
	check("Transport timeout", lib, 0, 2*time.Second)
	check("request context", lib, 700*time.Millisecond, 700*time.Millisecond)
}

func TestOverloaded(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	g := newGate()
	defer g.open()
	_, callee := startCallee(t, s, "busy", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.wait(r.Context())
		_, _ = io.WriteString(w, "done\n")
	}), func(c *sidecar.Config) { c.Serve.MaxInflight = 2 })
	// overloaded proves the app never saw the request, so it is retried
	// for any method; the breaker is off so that every attempt is made.
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.DisableBreaker = true })
	c := sidecarClient(t, formProxy, caller, "frontend")

	held := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := c.hc.Get("http://busy/hold")
			if err != nil {
				held <- -1
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			held <- resp.StatusCode
		}()
	}
	g.waitArrived(t, 2)

	attempts := 1 + traffic.DefaultRetries
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{DisableBreaker: true}) {
		resp, body := c.get(t, "busy", "/third")
		wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.Overloaded)
		if got := resp.Header.Get(bus.HeaderAttempts); got != strconv.Itoa(attempts) {
			t.Errorf("%s: Mesh-Attempts %q, want %d", c.form, got, attempts)
		}
		if ra := resp.Header.Get("Retry-After"); ra == "" {
			t.Errorf("%s: overloaded without Retry-After", c.form)
		}
		if got := resp.Header.Get(bus.HeaderInstance); got != callee.Instance() {
			t.Errorf("%s: Mesh-Instance %q, want the full instance %q", c.form, got, callee.Instance())
		}
	}
	if got := g.arrived.Load(); got != 2 {
		t.Fatalf("%d requests reached the app, want only the 2 admitted", got)
	}
	g.open()
	for range 2 {
		if code := <-held; code != http.StatusOK {
			t.Fatalf("a held request ended with %d, want 200", code)
		}
	}
	if st := callee.Inbound().Stats(); st.Rejected != uint64(3*attempts) {
		t.Errorf("Stats().Rejected = %d, want %d", st.Rejected, 3*attempts)
	}
}

func TestBadServiceName(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	caller := startCaller(t, s, "frontend", nil)
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{}) {
		for _, host := range []string{"Bad_Name!", "x*y", strings.Repeat("a", 64), "a.b.mesh"} {
			resp, body := c.get(t, host, "/")
			wantMeshError(t, resp, body, http.StatusBadRequest, bus.BadRequest)
		}
	}
}

// TestBodiesAtTheMessageLimit: bodies at and just over what one message
// holds go through (the larger ones stream), and request bodies over
// max-body are answered 413 with the limit, the known-length ones before
// they reach the app.
func TestBodiesAtTheMessageLimit(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		rec.record(r, body)
		w.Header().Set("X-Got", strconv.Itoa(len(body)))
	}), nil)
	big := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		_, _ = w.Write(bytes.Repeat([]byte{'x'}, int(n))) // one Write
	})
	startCallee(t, s, "big", big, nil)                                // the sidecar copies the app's body
	serveHandler(t, s, big, proxy.ServeConfig{Service: "bighandler"}) // the handler writes itself
	limit := meshtest.Connect(t, s).MaxPayload()
	maxBody := 3 * limit
	maxText := strconv.FormatInt(maxBody, 10)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.MaxBody = maxBody })

	// onlyReader hides the body's length, so it is sent chunked.
	type onlyReader struct{ io.Reader }
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{MaxBody: maxBody}) {
		for _, tc := range []struct {
			name string
			n    int64
			hide bool
		}{
			{"at the limit", limit, false},
			{"one over", limit + 1, false},
			{"headers push it over", limit - 8, false},
			{"chunked, one over", limit + 1, true},
			{"at max-body", maxBody, false},
		} {
			var body io.Reader = bytes.NewReader(make([]byte, tc.n))
			if tc.hide {
				body = onlyReader{body}
			}
			req := c.newRequest(t, http.MethodPost, "svc", "/upload", body)
			id := newTestID()
			req.Header.Set("X-Test-Id", id)
			resp, got := c.do(t, req)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Got") != strconv.FormatInt(tc.n, 10) {
				t.Fatalf("%s, %s: status %d, the app got %q bytes of %d (%q)", c.form, tc.name, resp.StatusCode, resp.Header.Get("X-Got"), tc.n, got)
			}
		}
		for _, tc := range []struct {
			name string
			body func() io.Reader
		}{
			{"Content-Length", func() io.Reader { return bytes.NewReader(make([]byte, maxBody+1)) }},
			{"chunked", func() io.Reader { return onlyReader{bytes.NewReader(make([]byte, maxBody+1))} }},
		} {
			req := c.newRequest(t, http.MethodPost, "svc", "/upload", tc.body())
			id := newTestID()
			req.Header.Set("X-Test-Id", id)
			resp, body := c.do(t, req)
			wantMeshError(t, resp, body, http.StatusRequestEntityTooLarge, bus.TooLarge)
			if !strings.Contains(string(body), maxText) {
				t.Errorf("%s, %s: the explanation %q does not say the limit %s", c.form, tc.name, body, maxText)
			}
			if rec.count(id) != 0 {
				t.Errorf("%s, %s: the oversize request reached the app whole", c.form, tc.name)
			}
		}
		for _, svc := range []string{"big", "bighandler"} {
			for _, n := range []int64{limit + 1, limit, 4 * limit, limit / 2} { // limit: the headers push it over
				resp, body := c.get(t, svc, "/?n="+strconv.FormatInt(n, 10))
				if resp.StatusCode != http.StatusOK || int64(len(body)) != n || !bytes.Equal(body, bytes.Repeat([]byte{'x'}, int(n))) {
					t.Fatalf("%s, %s, %d bytes: status %d, %d bytes", c.form, svc, n, resp.StatusCode, len(body))
				}
			}
		}
	}
}

// callOK polls: nil when a call to service answers 200.
func callOK(c meshClient, service string) func() error {
	return func() error {
		req, err := http.NewRequest(http.MethodGet, "http://"+service+"/", nil)
		if err != nil {
			return err
		}
		if c.form == formHost {
			req.URL.Host = c.outbound
			req.Host = service
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d, Mesh-Error %q", resp.StatusCode, resp.Header.Get(bus.HeaderError))
		}
		return nil
	}
}

func TestMeshUnavailableWhenNATSDown(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startCallee(t, s, "svc", okApp, nil)
	// A GET sent just as the connection drops waits for the reconnect
	// within its timeout; keep that short.
	const timeout = 2 * time.Second
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = timeout })
	clients := allForms(t, s, caller, proxy.TransportConfig{Timeout: timeout})
	for _, c := range clients {
		if err := callOK(c, "svc")(); err != nil {
			t.Fatalf("%s before the server stops: %v", c.form, err)
		}
	}
	s.Shutdown()
	for _, c := range clients {
		meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			resp, body := c.get(t, "svc", "/")
			if code := resp.Header.Get(bus.HeaderError); code != string(bus.MeshUnavailable) {
				return fmt.Errorf("%s: status %d Mesh-Error %q %q", c.form, resp.StatusCode, code, body)
			}
			return nil
		})
		start := time.Now()
		resp, body := c.get(t, "svc", "/")
		elapsed := time.Since(start)
		wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.MeshUnavailable)
		if elapsed >= 100*time.Millisecond {
			t.Errorf("%s: mesh-unavailable took %s, want under 100ms", c.form, elapsed)
		}
	}
}

func TestInFlightWhenNATSDies(t *testing.T) {
	t.Parallel()
	const timeout = 10 * time.Second
	s := meshtest.RunServer(t)
	g := newGate()
	defer g.open()
	startCallee(t, s, "svc", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.wait(r.Context())
	}), nil)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = timeout })
	clients := allForms(t, s, caller, proxy.TransportConfig{Timeout: timeout})

	type result struct {
		form   string
		status int
		code   string
		err    error
	}
	results := make(chan result, len(clients))
	for _, c := range clients {
		req := c.newRequest(t, http.MethodPost, "svc", "/in-flight", strings.NewReader("x"))
		go func() {
			resp, err := c.hc.Do(req)
			r := result{form: c.form, err: err}
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.status, r.code = resp.StatusCode, resp.Header.Get(bus.HeaderError)
			}
			results <- r
		}()
	}
	g.waitArrived(t, int64(len(clients)))
	start := time.Now()
	s.Shutdown()
	for range clients {
		r := <-results
		elapsed := time.Since(start)
		if r.err != nil {
			t.Fatalf("%s: %v", r.form, r.err)
		}
		if r.status != http.StatusBadGateway || r.code != string(bus.UpstreamLost) {
			t.Errorf("%s: status %d Mesh-Error %q, want 502 upstream-lost", r.form, r.status, r.code)
		}
		if elapsed > 2*time.Second {
			t.Errorf("%s: answered %s after the server died, want well before the %s timeout", r.form, elapsed, timeout)
		}
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	port := s.Addr().(*net.TCPAddr).Port
	startCallee(t, s, "svc", okApp, nil)
	// A GET sent just as the connection drops waits for the reconnect
	// within its timeout; keep that short.
	const timeout = 2 * time.Second
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = timeout })
	clients := allForms(t, s, caller, proxy.TransportConfig{Timeout: timeout})
	for _, c := range clients {
		if err := callOK(c, "svc")(); err != nil {
			t.Fatalf("%s before the restart: %v", c.form, err)
		}
	}
	s.Shutdown()
	meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		code, err := meshErrorOf(clients[0].hc, clients[0].newRequest(t, http.MethodGet, "svc", "/", nil))
		if err != nil || code != string(bus.MeshUnavailable) {
			return fmt.Errorf("Mesh-Error %q, error %v; want mesh-unavailable while the server is down", code, err)
		}
		return nil
	})

	s2, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restart the server on port %d: %v", port, err)
	}
	t.Cleanup(s2.Shutdown)
	for _, c := range clients {
		meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, callOK(c, "svc"))
	}
}

// A sidecar may start before its NATS server: until the server is there,
// calls (with a body, too) get mesh-unavailable, never queued or mistaken for
// too-large; once it is up, the sidecar serves and calls without a restart.
func TestSidecarStartsBeforeNATS(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	nc, err := bus.Connect(bus.ConnectConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), WaitForServer: true})
	if err != nil {
		t.Fatalf("connect while no server runs: %v", err)
	}
	t.Cleanup(nc.Close)
	app := startApp(t, okApp)
	sc, err := sidecar.Start(nc, sidecar.Config{Service: "early", Upstream: app.URL, Listen: "127.0.0.1:0", Logger: testLogger()})
	if err != nil {
		t.Fatalf("start sidecar before NATS: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sc.Shutdown(ctx)
	})
	c := sidecarClient(t, formHost, sc, "early")
	req := c.newRequest(t, http.MethodPost, "early", "/", strings.NewReader("a body"))
	resp, body := c.do(t, req)
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.MeshUnavailable)

	s, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start the server on port %d: %v", port, err)
	}
	t.Cleanup(s.Shutdown)
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, callOK(c, "early"))
}
