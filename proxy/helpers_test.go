package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// clientTimeout bounds every HTTP call a test makes, so a hang fails the
// test instead of the whole package.
const clientTimeout = 20 * time.Second

// testLogger discards the proxies' logs unless NATSMESH_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("NATSMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startApp starts an HTTP app on a random port, closed when the test ends.
// A handler that blocks must return when the test's release channel closes
// or its request's context ends, or the close waits for it.
func startApp(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// startSidecar starts a sidecar on a connection of its own, with its
// outbound listener on a random port, shut down when the test ends.
func startSidecar(t testing.TB, s *embedded.Server, cfg sidecar.Config) *sidecar.Sidecar {
	t.Helper()
	sc, _ := startSidecarConn(t, s, cfg)
	return sc
}

// singleAttempt makes a caller's sidecar try each call once, with no breaker.
func singleAttempt(c *sidecar.Config) {
	c.Transport.Retry.Retries = -1
	c.Transport.DisableBreaker = true
}

// noOutlier keeps a callee in rotation however its app answers.
func noOutlier(c *sidecar.Config) { c.Outlier.Consecutive = -1 }

// startCallee serves app h as service through a sidecar. mod, if not nil,
// adjusts the sidecar's config.
func startCallee(t testing.TB, s *embedded.Server, service string, h http.Handler, mod func(*sidecar.Config)) (*httptest.Server, *sidecar.Sidecar) {
	t.Helper()
	app := startApp(t, h)
	cfg := sidecar.Config{Service: service, Upstream: app.URL}
	if mod != nil {
		mod(&cfg)
	}
	return app, startSidecar(t, s, cfg)
}

// startCaller starts the sidecar of a calling service, whose own app is a
// dummy; tests talk to its outbound listener.
func startCaller(t testing.TB, s *embedded.Server, service string, mod func(*sidecar.Config)) *sidecar.Sidecar {
	t.Helper()
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "the caller's own app\n")
	}))
	cfg := sidecar.Config{Service: service, Upstream: app.URL}
	if mod != nil {
		mod(&cfg)
	}
	return startSidecar(t, s, cfg)
}

// serveHandler serves h as service in library mode, on a connection of its
// own, stopped when the test ends.
func serveHandler(t testing.TB, s *embedded.Server, h http.Handler, cfg proxy.ServeConfig) *proxy.Server {
	t.Helper()
	nc := meshtest.Connect(t, s)
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	srv, err := proxy.Serve(nc, h, cfg)
	if err != nil {
		t.Fatalf("serve %s: %v", cfg.Service, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Drain(ctx); err != nil {
			t.Logf("drain of %s: %v", cfg.Service, err)
		}
		srv.Stop()
	})
	return srv
}

// newTransport makes a library-mode Transport on a connection of its own.
func newTransport(t testing.TB, s *embedded.Server, cfg proxy.TransportConfig) *proxy.Transport {
	t.Helper()
	nc := meshtest.Connect(t, s)
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	tr, err := proxy.NewTransport(nc, cfg)
	if err != nil {
		t.Fatalf("new transport: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// httpClient wraps a transport the way tests use it: redirects are never
// followed and every call is bounded.
func httpClient(t testing.TB, rt http.RoundTripper) *http.Client {
	if ht, ok := rt.(*http.Transport); ok {
		t.Cleanup(ht.CloseIdleConnections)
	}
	return &http.Client{Transport: rt, CheckRedirect: noRedirect, Timeout: clientTimeout}
}

// proxyTransport uses addr as the HTTP proxy (HTTP_PROXY style), without
// asking for compressed responses.
func proxyTransport(addr string) *http.Transport {
	return &http.Transport{
		Proxy:              http.ProxyURL(&url.URL{Scheme: "http", Host: addr}),
		DisableCompression: true,
	}
}

// Forms of reaching a mesh service.
const (
	formProxy   = "proxy-form"   // HTTP_PROXY=outbound, http://<service>/...
	formHost    = "host-form"    // http://<outbound>/... with Host: <service>
	formLibrary = "library-form" // proxy.Transport as the client's RoundTripper
)

// meshClient calls mesh services in one of the three forms.
type meshClient struct {
	form     string
	outbound string // the caller sidecar's outbound address (proxy and host forms)
	caller   string // the Mesh-Caller the callee should see
	hc       *http.Client
}

func sidecarClient(t testing.TB, form string, caller *sidecar.Sidecar, callerName string) meshClient {
	addr := caller.OutboundAddr().String()
	c := meshClient{form: form, outbound: addr, caller: callerName}
	switch form {
	case formProxy:
		c.hc = httpClient(t, proxyTransport(addr))
	case formHost:
		c.hc = httpClient(t, &http.Transport{DisableCompression: true})
	default:
		t.Fatalf("sidecarClient: form %q", form)
	}
	return c
}

func libraryClient(t testing.TB, s *embedded.Server, cfg proxy.TransportConfig) meshClient {
	tr := newTransport(t, s, cfg)
	return meshClient{form: formLibrary, caller: cfg.Caller, hc: httpClient(t, tr)}
}

// newRequest makes a request for host (a service, as the app would name it)
// and the raw request URI uri.
func (c meshClient) newRequest(t testing.TB, method, host, uri string, body io.Reader) *http.Request {
	t.Helper()
	target := "http://" + host + uri
	if c.form == formHost {
		target = "http://" + c.outbound + uri
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, target, err)
	}
	if c.form == formHost {
		req.Host = host
	}
	return req
}

// setRawURI makes net/http send uri exactly as written: a path in URL.Opaque
// goes out verbatim ("//host/path" is sent in absolute form, as a proxy wants).
func (c meshClient) setRawURI(req *http.Request, host, uri string) {
	path, query, hasQuery := strings.Cut(uri, "?")
	req.URL.RawQuery = query
	req.URL.ForceQuery = hasQuery && query == ""
	req.URL.Opaque = path
	if c.form == formProxy {
		req.URL.Opaque = "//" + host + path
	}
}

// do sends req and returns the response with its body read.
func (c meshClient) do(t testing.TB, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	return doRequest(t, c.hc, req)
}

func (c meshClient) get(t testing.TB, host, uri string) (*http.Response, []byte) {
	t.Helper()
	return c.do(t, c.newRequest(t, http.MethodGet, host, uri, nil))
}

func doRequest(t testing.TB, hc *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

// wantMeshError checks that a response is the mesh failure code with its
// HTTP status and a one-line human explanation.
func wantMeshError(t testing.TB, resp *http.Response, body []byte, status int, code bus.Code) {
	t.Helper()
	if got := resp.Header.Get(bus.HeaderError); got != string(code) {
		t.Fatalf("Mesh-Error = %q, want %q (status %d, body %q)", got, code, resp.StatusCode, body)
	}
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d for %s (body %q)", resp.StatusCode, status, code, body)
	}
	msg := strings.TrimSuffix(string(body), "\n")
	if len(msg) < 10 || strings.Contains(msg, "\n") {
		t.Fatalf("%s: body %q is not a one-line explanation", code, body)
	}
}

// meshErrorOf returns the Mesh-Error of req's response, for polling.
func meshErrorOf(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Header.Get(bus.HeaderError), nil
}

var testIDs atomic.Uint64

// newTestID returns a value unique in the test binary, to find the request an
// app received.
func newTestID() string { return fmt.Sprintf("req-%d", testIDs.Add(1)) }

// seenRequest is what an app received.
type seenRequest struct {
	Method        string
	RequestURI    string
	Host          string
	Header        http.Header
	Body          []byte
	ContentLength int64
	Deadline      time.Time
	HasDeadline   bool
}

// recorder keeps the requests an app received, by their X-Test-Id header.
type recorder struct {
	mu   sync.Mutex
	reqs map[string][]seenRequest
}

func newRecorder() *recorder { return &recorder{reqs: make(map[string][]seenRequest)} }

func (rc *recorder) record(r *http.Request, body []byte) {
	dl, ok := r.Context().Deadline()
	s := seenRequest{
		Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Header: r.Header.Clone(),
		Body: body, ContentLength: r.ContentLength, Deadline: dl, HasDeadline: ok,
	}
	id := r.Header.Get("X-Test-Id")
	rc.mu.Lock()
	rc.reqs[id] = append(rc.reqs[id], s)
	rc.mu.Unlock()
}

// count is how many requests with id the app received; "" counts all.
func (rc *recorder) count(id string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if id != "" {
		return len(rc.reqs[id])
	}
	n := 0
	for _, r := range rc.reqs {
		n += len(r)
	}
	return n
}

// one returns the single request the app received with id.
func (rc *recorder) one(t testing.TB, id string) seenRequest {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	got := rc.reqs[id]
	if len(got) != 1 {
		t.Fatalf("the app received %d requests with X-Test-Id %s, want 1", len(got), id)
	}
	return got[0]
}

// gate holds requests in an app until released, counting arrivals. Tests
// `defer g.open()`: deferred calls run before the cleanups that stop the
// apps and sidecars, which wait for the requests they hold.
type gate struct {
	arrived atomic.Int64
	release chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{release: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// wait blocks until the gate opens or ctx ends, and says which.
func (g *gate) wait(ctx context.Context) bool {
	g.arrived.Add(1)
	select {
	case <-g.release:
		return true
	case <-ctx.Done():
		return false
	}
}

func (g *gate) waitArrived(t testing.TB, n int64) {
	t.Helper()
	meshtest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		if got := g.arrived.Load(); got < n {
			return fmt.Errorf("%d requests reached the app, want %d", got, n)
		}
		return nil
	})
}
