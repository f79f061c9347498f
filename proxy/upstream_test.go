package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// callTimeout bounds every forward a test makes that is not about deadlines,
// so that a hang fails the test instead of the package.
const callTimeout = 10 * time.Second

// rawApp is an HTTP/1.1 app on a raw TCP listener whose answers the test
// scripts byte for byte: each request is read with http.ReadRequest and
// handed to handle, which writes the response on the connection itself and
// returns false to close the connection.
type rawApp struct {
	ln       net.Listener
	url      string
	handle   func(c *rawConn, r *rawRequest) bool
	done     chan struct{} // closed when the test ends; handlers that hang wait on it
	accepted atomic.Int64  // connections accepted
	closed   atomic.Int64  // connections ended, by either side
	garbage  atomic.Int64  // connections that ended inside a request (not at a request boundary)

	mu      sync.Mutex
	conns   []net.Conn
	reqs    []*rawRequest
	stopped bool
	wg      sync.WaitGroup
}

type rawConn struct {
	net.Conn
	app   *rawApp
	index int // 1-based, in order of acceptance
}

func (c *rawConn) send(s string) {
	_, _ = io.WriteString(c.Conn, s)
}

// rawRequest is one request the app read.
type rawRequest struct {
	*http.Request
	Payload []byte // the body
	Wire    string // the request's bytes as they arrived, head and body
	Conn    int    // the connection it arrived on
	N       int    // 1-based position on its connection
}

// head returns the values of the header lines named name (case-insensitive)
// in the request's head as written on the wire.
func (r *rawRequest) head(name string) []string {
	head, _, _ := strings.Cut(r.Wire, "\r\n\r\n")
	var vals []string
	for _, line := range strings.Split(head, "\r\n")[1:] {
		k, v, _ := strings.Cut(line, ":")
		if strings.EqualFold(k, name) {
			vals = append(vals, strings.TrimSpace(v))
		}
	}
	return vals
}

// recordingReader keeps every byte read through it.
type recordingReader struct {
	r   io.Reader
	buf bytes.Buffer
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	rr.buf.Write(p[:n])
	return n, err
}

func startRawApp(t testing.TB, handle func(c *rawConn, r *rawRequest) bool) *rawApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &rawApp{ln: ln, url: "http://" + ln.Addr().String(), handle: handle, done: make(chan struct{})}
	a.wg.Add(1)
	go a.accept()
	t.Cleanup(func() {
		close(a.done)
		ln.Close()
		a.mu.Lock()
		a.stopped = true
		for _, c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		a.wg.Wait()
	})
	return a
}

func (a *rawApp) accept() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		if a.stopped {
			a.mu.Unlock()
			c.Close()
			return
		}
		a.conns = append(a.conns, c)
		a.mu.Unlock()
		idx := int(a.accepted.Add(1))
		a.wg.Add(1)
		go a.serve(&rawConn{Conn: c, app: a, index: idx})
	}
}

func (a *rawApp) serve(c *rawConn) {
	defer a.wg.Done()
	defer a.closed.Add(1)
	defer c.Close()
	rec := &recordingReader{r: c.Conn}
	br := bufio.NewReader(rec)
	for n := 1; ; n++ {
		start := rec.buf.Len() - br.Buffered()
		req, err := http.ReadRequest(br)
		if err != nil {
			if err != io.EOF || rec.buf.Len() > start {
				a.garbage.Add(1)
			}
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			a.garbage.Add(1)
			return
		}
		end := rec.buf.Len() - br.Buffered()
		r := &rawRequest{Request: req, Payload: body, Wire: string(rec.buf.Bytes()[start:end]), Conn: c.index, N: n}
		a.mu.Lock()
		a.reqs = append(a.reqs, r)
		a.mu.Unlock()
		if !a.handle(c, r) {
			return
		}
	}
}

// requests returns the requests read so far.
func (a *rawApp) requests() []*rawRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*rawRequest(nil), a.reqs...)
}

// count is how many requests with method and path the app read.
func (a *rawApp) count(method, uri string) int {
	n := 0
	for _, r := range a.requests() {
		if r.Method == method && r.RequestURI == uri {
			n++
		}
	}
	return n
}

func (a *rawApp) last(t testing.TB) *rawRequest {
	t.Helper()
	reqs := a.requests()
	if len(reqs) == 0 {
		t.Fatal("the app read no request")
	}
	return reqs[len(reqs)-1]
}

// hang is a handler that never answers: it waits for the end of the test.
func hang(c *rawConn, _ *rawRequest) bool {
	<-c.app.done
	return false
}

// okResponse is a keep-alive response with body.
func okResponse(body string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s", len(body), body)
}

// echoPath answers every request with its path, keeping the connection
// (a HEAD gets the length only).
func echoPath(c *rawConn, r *rawRequest) bool {
	resp := okResponse(r.RequestURI)
	if r.Method == http.MethodHead {
		resp = strings.TrimSuffix(resp, r.RequestURI)
	}
	c.send(resp)
	return true
}

func newTestUpstream(t testing.TB, rawURL string, maxIdle int) *Upstream {
	t.Helper()
	u, err := NewUpstream(rawURL, maxIdle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Close)
	return u
}

// result is what forward gave.
type result struct {
	status int
	header http.Header
	body   string
	err    *bus.Error
}

func forwardCall(ctx context.Context, u *Upstream, deadline time.Time, method, uri, host string, hdr nats.Header, body string) result {
	w := &responseWriter{buf: new(bytes.Buffer), limit: 1 << 20}
	e := u.forward(ctx, deadline, method, uri, host, hdr, []byte(body), w)
	return result{status: w.status, header: w.header, body: w.buf.String(), err: e}
}

// call forwards a request with a deadline of callTimeout.
func call(u *Upstream, method, uri string, hdr nats.Header, body string) result {
	return forwardCall(context.Background(), u, time.Now().Add(callTimeout), method, uri, "", hdr, body)
}

// wantOK checks a successful call's status and body.
func wantOK(t testing.TB, what string, r result, status int, body string) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: error %v, want status %d", what, r.err, status)
	}
	if r.status != status || r.body != body {
		t.Fatalf("%s: status %d body %q, want %d %q", what, r.status, r.body, status, body)
	}
}

func wantCode(t testing.TB, what string, r result, code bus.Code) {
	t.Helper()
	if r.err == nil {
		t.Fatalf("%s: status %d body %q, want Mesh-Error %s", what, r.status, r.body, code)
	}
	if r.err.Code != code {
		t.Fatalf("%s: error %v, want code %s", what, r.err, code)
	}
}

// idleConns returns the pool's connections, bottom first.
func idleConns(u *Upstream) []*upstreamConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*upstreamConn(nil), u.idle...)
}

// ageIdle moves the last use of the pooled connection i back by d.
func ageIdle(u *Upstream, i int, d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.idle[i].lastUsed = time.Now().Add(-d)
}

func wantIdle(t testing.TB, u *Upstream, n int) {
	t.Helper()
	if got := len(idleConns(u)); got != n {
		t.Fatalf("%d idle connections in the pool, want %d", got, n)
	}
}

func wantAccepted(t testing.TB, a *rawApp, n int64) {
	t.Helper()
	if got := a.accepted.Load(); got != n {
		t.Fatalf("the app accepted %d connections, want %d", got, n)
	}
}

// waitPeerClosed polls until the app's close of pc has reached this side.
func waitPeerClosed(t testing.TB, pc *upstreamConn) {
	t.Helper()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if connAlive(pc.c) {
			return errors.New("connAlive still reports the connection the app closed as open")
		}
		return nil
	})
}

func waitClosed(t testing.TB, a *rawApp, n int64) {
	t.Helper()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if got := a.closed.Load(); got != n {
			return fmt.Errorf("%d of the app's connections ended, want %d", got, n)
		}
		return nil
	})
}

// 1. Connection reuse.

func TestUpstreamReusesConnection(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, echoPath)
	u := newTestUpstream(t, a.url, 0)
	for i := range 5 {
		uri := fmt.Sprintf("/seq/%d", i)
		wantOK(t, uri, call(u, http.MethodGet, uri, nil, ""), 200, uri)
	}
	wantAccepted(t, a, 1)
	wantIdle(t, u, 1)
	for i, r := range a.requests() {
		if r.Conn != 1 || r.N != i+1 {
			t.Fatalf("request %d arrived on connection %d as #%d, want all on connection 1", i+1, r.Conn, r.N)
		}
	}
}

func TestUpstreamConnectionCloseNotReused(t *testing.T) {
	t.Parallel()
	// The app asks for the close but keeps its side open: only the client's
	// respect for Connection: close keeps the connection out of the pool.
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbye!")
		return true
	})
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "first", call(u, http.MethodGet, "/1", nil, ""), 200, "bye!")
	wantIdle(t, u, 0)
	wantOK(t, "second", call(u, http.MethodGet, "/2", nil, ""), 200, "bye!")
	wantAccepted(t, a, 2)
	waitClosed(t, a, 2) // the client closed both
}

func TestUpstreamHTTP10BodyUntilClose(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB, many reads
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + big)
		return false // the close ends the body
	})
	u := newTestUpstream(t, a.url, 0)
	for i := range 2 {
		r := call(u, http.MethodGet, "/old", nil, "")
		if r.err != nil || r.status != 200 || r.body != big {
			t.Fatalf("call %d: status %d, %d body bytes, error %v; want 200 with the %d bytes sent before the close", i, r.status, len(r.body), r.err, len(big))
		}
		wantIdle(t, u, 0)
	}
	wantAccepted(t, a, 2)
}

func TestUpstreamHTTP11BodyUntilClose(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send("HTTP/1.1 200 OK\r\n\r\nno length")
		return false
	})
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "no length", call(u, http.MethodGet, "/", nil, ""), 200, "no length")
	wantIdle(t, u, 0)
}

func TestUpstreamLeftoverBytesNotReused(t *testing.T) {
	t.Parallel()
	// A broken app answers the first request twice, in one write. The
	// second answer must not be taken for the response to the next request.
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		if c.index == 1 && r.N == 1 {
			c.send(okResponse("first") + okResponse("stale"))
			return true
		}
		c.send(okResponse("fresh"))
		return true
	})
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "first", call(u, http.MethodGet, "/1", nil, ""), 200, "first")
	wantOK(t, "second", call(u, http.MethodGet, "/2", nil, ""), 200, "fresh")
	wantAccepted(t, a, 2)
}

func TestUpstreamHEADResponseHasNoBody(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		if r.Method == http.MethodHead {
			c.send("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
			return true
		}
		return echoPath(c, r)
	})
	u := newTestUpstream(t, a.url, 0)
	r := forwardCall(context.Background(), u, time.Now().Add(2*time.Second), http.MethodHead, "/h", "", nil, "")
	wantOK(t, "HEAD", r, 200, "")
	if got := r.header.Get("Content-Length"); got != "1000" {
		t.Errorf("HEAD: Content-Length %q, want the app's 1000", got)
	}
	wantOK(t, "GET after HEAD", call(u, http.MethodGet, "/g", nil, ""), 200, "/g")
	wantAccepted(t, a, 1)
}

// 2. Stale keep-alive connections.

func TestUpstreamStaleIdleConnectionRedialled(t *testing.T) {
	needPeek(t)
	t.Parallel()
	// The app answers, then closes the kept-alive connection (as apps do
	// after their idle timeout).
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send(okResponse(r.Method))
		return false
	})
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "first", call(u, http.MethodGet, "/", nil, ""), 200, "GET")
	idle := idleConns(u)
	if len(idle) != 1 {
		t.Fatalf("%d idle connections, want the kept-alive one", len(idle))
	}
	waitPeerClosed(t, idle[0])
	ageIdle(u, 0, upstreamCheckAfter+time.Second)
	wantOK(t, "POST after the app's close", call(u, http.MethodPost, "/post", nil, "data"), 200, "POST")
	wantAccepted(t, a, 2)
	if n := a.count(http.MethodPost, "/post"); n != 1 {
		t.Fatalf("the app read the POST %d times, want 1", n)
	}
}

func TestConnAlive(t *testing.T) {
	needPeek(t)
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if !connAlive(c) {
		t.Fatal("connAlive reports an open, quiet connection as closed")
	}
	if !connAlive(c) {
		t.Fatal("connAlive is not repeatable")
	}
	s.Close()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if connAlive(c) {
			return errors.New("connAlive reports a connection the peer closed as open")
		}
		return nil
	})
}

func TestUpstreamReusedConnectionClosedAfterRequest(t *testing.T) {
	t.Parallel()
	// Connection 1 answers its first request, then reads the second and
	// closes without answering: the race of a reuse with the app's idle
	// close. Later connections answer.
	script := func(c *rawConn, r *rawRequest) bool {
		if c.index == 1 && r.N == 2 {
			return false
		}
		c.send(okResponse(r.Method + " " + r.RequestURI))
		return true
	}

	t.Run("GET is sent again", func(t *testing.T) {
		t.Parallel()
		a := startRawApp(t, script)
		u := newTestUpstream(t, a.url, 0)
		wantOK(t, "first", call(u, http.MethodGet, "/warm", nil, ""), 200, "GET /warm")
		wantAccepted(t, a, 1)
		wantOK(t, "GET", call(u, http.MethodGet, "/again", nil, ""), 200, "GET /again")
		wantAccepted(t, a, 2)
		if n := a.count(http.MethodGet, "/again"); n != 2 {
			t.Fatalf("the app read the GET %d times, want 2 (unanswered, then on a new connection)", n)
		}
	})

	t.Run("POST is not sent again", func(t *testing.T) {
		t.Parallel()
		a := startRawApp(t, script)
		u := newTestUpstream(t, a.url, 0)
		wantOK(t, "first", call(u, http.MethodGet, "/warm", nil, ""), 200, "GET /warm")
		r := call(u, http.MethodPost, "/once", nil, "payment")
		wantCode(t, "POST", r, bus.UpstreamUnreachable)
		if n := a.count(http.MethodPost, "/once"); n != 1 {
			t.Fatalf("the app read the POST %d times, want exactly 1", n)
		}
		wantAccepted(t, a, 1)
		wantIdle(t, u, 0)
	})
}

func TestUpstreamRetryDialsNewConnection(t *testing.T) {
	needPeek(t)
	t.Parallel()
	g := newHold()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		if !g.wait(c, r) {
			return false
		}
		c.send(okResponse(r.RequestURI))
		return c.index > 2 // connections 1 and 2 close after their answer
	})
	u := newTestUpstream(t, a.url, 0)
	fillPool(t, a, g, u, 2)
	for _, pc := range idleConns(u) {
		waitPeerClosed(t, pc)
	}
	// Recently used, so get does not check them.
	for i := range 2 {
		ageIdle(u, i, 0)
	}
	wantOK(t, "GET after the app closed its connections", call(u, http.MethodGet, "/x", nil, ""), 200, "/x")
	wantAccepted(t, a, 3)
}

// hold keeps requests for /fill/... in the app until as many as a test
// wants have arrived, so that each is on a connection of its own.
type hold struct {
	arrived atomic.Int64
	release chan struct{}
	once    sync.Once
}

func newHold() *hold { return &hold{release: make(chan struct{})} }

func (h *hold) open() { h.once.Do(func() { close(h.release) }) }

// wait holds a /fill/ request until open; false when the test ended first.
func (h *hold) wait(c *rawConn, r *rawRequest) bool {
	if !strings.HasPrefix(r.RequestURI, "/fill/") {
		return true
	}
	h.arrived.Add(1)
	select {
	case <-h.release:
		return true
	case <-c.app.done:
		return false
	}
}

// fillPool makes n concurrent requests, held in the app until all arrived,
// so that n connections end in the pool (when it has room).
func fillPool(t testing.TB, a *rawApp, h *hold, u *Upstream, n int) {
	t.Helper()
	defer h.open()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uri := fmt.Sprintf("/fill/%d", i)
			if r := call(u, http.MethodGet, uri, nil, ""); r.err != nil || r.body != uri {
				errs <- fmt.Errorf("%s: body %q, error %v", uri, r.body, r.err)
			}
		}()
	}
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if got := h.arrived.Load(); got != int64(n) {
			return fmt.Errorf("%d of %d requests reached the app", got, n)
		}
		return nil
	})
	h.open()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantAccepted(t, a, int64(n))
}

// needPeek skips a test that needs connAlive to see the app's close of an
// idle connection, which it does only on unix (conncheck_other.go).
func needPeek(t *testing.T) {
	t.Helper()
	switch runtime.GOOS {
	case "windows", "plan9", "js", "wasip1":
		t.Skip("connAlive cannot peek on " + runtime.GOOS)
	}
}

func TestUpstreamUnsolicitedResponseOnIdleConnection(t *testing.T) {
	needPeek(t)
	t.Parallel()
	pooled := make(chan struct{})
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		if c.index == 1 {
			c.send(okResponse("first"))
			select { // the 408 comes once the connection is idle in the pool
			case <-pooled:
			case <-c.app.done:
				return false
			}
			c.send("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			return false
		}
		c.send(okResponse("fresh"))
		return true
	})
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "first", call(u, http.MethodGet, "/1", nil, ""), 200, "first")
	wantIdle(t, u, 1)
	close(pooled)
	waitClosed(t, a, 1)
	ageIdle(u, 0, upstreamCheckAfter+time.Second)
	wantOK(t, "GET after the unsolicited 408", call(u, http.MethodGet, "/2", nil, ""), 200, "fresh")
	if n := a.count(http.MethodGet, "/2"); n != 1 {
		t.Fatalf("the app read the GET %d times, want 1", n)
	}
}

// 3. A stale deadline on a pooled connection.

func TestUpstreamReuseAfterDeadlinePassed(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, echoPath)
	u := newTestUpstream(t, a.url, 0)
	deadline := time.Now().Add(150 * time.Millisecond)
	wantOK(t, "with deadline", forwardCall(context.Background(), u, deadline, http.MethodGet, "/d", "", nil, ""), 200, "/d")
	<-time.After(time.Until(deadline) + 10*time.Millisecond)
	wantIdle(t, u, 1)
	ageIdle(u, 0, upstreamCheckAfter+time.Second) // so that get checks it with connAlive
	wantOK(t, "after the deadline", call(u, http.MethodGet, "/after", nil, ""), 200, "/after")
	wantAccepted(t, a, 1)
}

// 4. Deadlines.

func TestUpstreamDeadline(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, hang)
	u := newTestUpstream(t, a.url, 0)
	const wait = 150 * time.Millisecond
	start := time.Now()
	done := make(chan result, 1)
	go func() {
		done <- forwardCall(context.Background(), u, start.Add(wait), http.MethodGet, "/slow", "", nil, "")
	}()
	select {
	case r := <-done:
		wantCode(t, "app that never answers", r, bus.Timeout)
		if took := time.Since(start); took < wait || took > wait+2*time.Second {
			t.Fatalf("the timeout came after %v, want soon after the deadline of %v", took, wait)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("forward did not return 5s after its deadline")
	}
	wantIdle(t, u, 0)
	if n := a.count(http.MethodGet, "/slow"); n != 1 {
		t.Fatalf("the app read the request %d times, want 1 (a timeout is not retried)", n)
	}
}

func TestUpstreamCancel(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		arrived <- struct{}{}
		return hang(c, r)
	})
	u := newTestUpstream(t, a.url, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan result, 1)
	go func() {
		done <- forwardCall(ctx, u, time.Time{}, http.MethodGet, "/slow", "", nil, "")
	}()
	<-arrived
	cancel()
	select {
	case r := <-done:
		wantCode(t, "cancelled call", r, bus.UpstreamLost)
	case <-time.After(5 * time.Second):
		t.Fatal("forward did not return 5s after its context was cancelled")
	}
	wantIdle(t, u, 0)
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestServeRequestTimeout(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serve := func(t *testing.T, cfg ServeConfig) *Server {
		nc := meshtest.Connect(t, s)
		cfg.Logger = discardLogger()
		srv, err := Serve(nc, http.NotFoundHandler(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Stop)
		return srv
	}
	cases := []struct {
		name     string
		cfg      ServeConfig
		header   string
		want     time.Duration
		scenario string
	}{
		{"none", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "", 3 * time.Second, "no Mesh-Timeout"},
		{"garbage", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "soon", 3 * time.Second, "not a number"},
		{"zero", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "0", 3 * time.Second, "zero"},
		{"negative", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "-5", 3 * time.Second, "negative"},
		{"asked", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "2500", 2500 * time.Millisecond, "within the cap"},
		{"at cap", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "10000", 10 * time.Second, "at the cap"},
		{"huge", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "999999999999999", 10 * time.Second, "huge"},
		{"max int64", ServeConfig{Timeout: 3 * time.Second, MaxTimeout: 10 * time.Second}, "9223372036854775807", 10 * time.Second, "overflows a Duration"},
		{"defaults", ServeConfig{}, "", DefaultTimeout, "default Timeout"},
		{"default cap", ServeConfig{}, "999999999999999", DefaultMaxTimeout, "default MaxTimeout"},
		{"timeout over cap", ServeConfig{Timeout: time.Minute, MaxTimeout: 10 * time.Second}, "", 10 * time.Second, "Timeout above MaxTimeout"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Service = fmt.Sprintf("timeouts%d", i)
			srv := serve(t, tc.cfg)
			if got := srv.requestTimeout(tc.header); got != tc.want {
				t.Fatalf("%s: requestTimeout(%q) = %v, want %v", tc.scenario, tc.header, got, tc.want)
			}
		})
	}
}

// The sidecar path: Serve gives forward the deadline of requestTimeout.
func TestServeUpstreamDeadline(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	a := startRawApp(t, hang)
	u := newTestUpstream(t, a.url, 0)
	subj, err := bus.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		cfg     ServeConfig
		timeout string // Mesh-Timeout, "" for none
		want    time.Duration
	}{
		{"no Mesh-Timeout", ServeConfig{Service: "slow-default", Timeout: 200 * time.Millisecond, MaxTimeout: time.Minute}, "", 200 * time.Millisecond},
		{"huge Mesh-Timeout", ServeConfig{Service: "slow-capped", MaxTimeout: 300 * time.Millisecond}, "999999999999999", 300 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.cfg.Logger = discardLogger()
			srv, err := Serve(meshtest.Connect(t, s), u, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(srv.Stop)
			m := nats.NewMsg(subj.Call(tc.cfg.Service))
			m.Header[bus.HeaderMethod] = []string{http.MethodGet}
			m.Header[bus.HeaderPath] = []string{"/slow"}
			if tc.timeout != "" {
				m.Header[bus.HeaderTimeout] = []string{tc.timeout}
			}
			start := time.Now()
			resp, err := meshtest.Connect(t, s).RequestMsg(m, 5*time.Second)
			if err != nil {
				t.Fatalf("no reply within 5s (deadline not applied?): %v", err)
			}
			took := time.Since(start)
			if got := bus.First(resp.Header, bus.HeaderError); got != string(bus.Timeout) {
				t.Fatalf("Mesh-Error %q, want %s (body %q)", got, bus.Timeout, resp.Data)
			}
			if took < tc.want || took > tc.want+2*time.Second {
				t.Fatalf("timed out after %v, want soon after %v", took, tc.want)
			}
		})
	}
}

// A library handler that answers only once its context ends (here, with a
// 200) gets the caller a timeout, as an app behind a sidecar would.
func TestServeHandlerPastDeadline(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	srv, err := Serve(meshtest.Connect(t, s), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		w.Write([]byte("late"))
	}), ServeConfig{Service: "late", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	subj, err := bus.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subj.Call("late"))
	m.Header[bus.HeaderMethod] = []string{http.MethodGet}
	m.Header[bus.HeaderPath] = []string{"/"}
	m.Header[bus.HeaderTimeout] = []string{"50"}
	resp, err := meshtest.Connect(t, s).RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatalf("no reply within 5s: %v", err)
	}
	if got := bus.First(resp.Header, bus.HeaderError); got != string(bus.Timeout) {
		t.Fatalf("Mesh-Error %q, want %s (body %q)", got, bus.Timeout, resp.Data)
	}
}

// 5. Informational responses.

func TestUpstreamInformationalResponses(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		switch r.RequestURI {
		case "/upgrade":
			c.send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			return true
		case "/hints":
			c.send("HTTP/1.1 100 Continue\r\n\r\n" +
				"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" +
				"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 5\r\n\r\nhello")
			return true
		}
		return echoPath(c, r)
	})
	u := newTestUpstream(t, a.url, 0)

	r := call(u, http.MethodPost, "/hints", nil, "body")
	wantOK(t, "100 and 103 before 200", r, 200, "hello")
	if r.header.Get("X-Final") != "yes" || r.header.Get("Link") != "" {
		t.Fatalf("headers %v, want the final response's (X-Final) and not the 103's (Link)", r.header)
	}
	wantOK(t, "next on the same connection", call(u, http.MethodGet, "/next", nil, ""), 200, "/next")
	wantAccepted(t, a, 1)

	wantCode(t, "101", call(u, http.MethodGet, "/upgrade", nil, ""), bus.UpstreamUnreachable)
	wantIdle(t, u, 0)
}

// 6. Request smuggling guards.

var (
	badMethods = []string{"", "G ET", "GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET", "GET\r\n", "GET\n", "GE\x00T", "GET\t", "G\xc3\x89T", "GET/"}
	badURIs    = []string{"", "x", "http://a/b", "**", "/a b", "/a\r\nX: y", "/a\nb", "/a\rb", "/a\x00", "/a\x7f", "/a\tb", "/a\x01",
		"/ HTTP/1.1\r\nHost: a\r\n\r\nGET /smuggled"}
	badHosts = []string{"a\r\nb", "a\nX-Injected: 1", "a\rb", "a b", "a/b", "a\x00", "a\tb", "a\x7f",
		"a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a"}
)

func TestValidRequestLine(t *testing.T) {
	t.Parallel()
	for _, m := range []string{"GET", "POST", "PROPFIND", "M-SEARCH", "X_CUSTOM", "BREW!"} {
		if e := validRequestLine(m, "/", ""); e != nil {
			t.Errorf("method %q rejected: %v", m, e)
		}
	}
	for _, uri := range []string{"/", "*", "//double", "/a?b=c%20d&e", "/%0d%0a", "/caf\xc3\xa9"} {
		if e := validRequestLine("GET", uri, ""); e != nil {
			t.Errorf("URI %q rejected: %v", uri, e)
		}
	}
	for _, h := range []string{"", "example.com", "127.0.0.1:8080", "[::1]:80", "svc"} {
		if e := validRequestLine("GET", "/", h); e != nil {
			t.Errorf("host %q rejected: %v", h, e)
		}
	}
	check := func(kind, v string, e *bus.Error) {
		t.Helper()
		if e == nil || e.Code != bus.BadRequest {
			t.Errorf("%s %q: error %v, want bad-request", kind, v, e)
		}
	}
	for _, m := range badMethods {
		check("method", m, validRequestLine(m, "/", ""))
	}
	for _, uri := range badURIs {
		check("URI", uri, validRequestLine("GET", uri, ""))
	}
	for _, h := range badHosts {
		check("host", h, validRequestLine("GET", "/", h))
	}
}

var (
	badHeaderNames = []string{"", "Bad Name", "X-A:b", "X-A\r\nX-Injected", "X-A\n", "X(a)", "X-\xc3\x84", "X-A\x00", "Content-Length ", "Transfer-Encoding\t", "X@Y"}
	badValues      = []string{"a\r\nX-Injected: 1", "a\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", "a\nb", "a\rb", "a\x00b", "\x7f", "a\x01", "a\r\n b"}
)

func TestWriteRequestRejects(t *testing.T) {
	t.Parallel()
	try := func(kind string, hdr map[string][]string) {
		t.Helper()
		hdr["X-Good"] = []string{"fine"}
		var out bytes.Buffer
		err := writeRequest(bufio.NewWriter(&out), http.MethodGet, "/", "h", "d", hdr, nil)
		var be *bus.Error
		if !errors.As(err, &be) || be.Code != bus.BadRequest {
			t.Errorf("%s %q: error %v, want bad-request", kind, hdr, err)
		}
		if out.Len() != 0 {
			t.Errorf("%s %q: %q reached the connection", kind, hdr, out.String())
		}
	}
	for _, name := range badHeaderNames {
		try("name", map[string][]string{name: {"v"}})
	}
	for _, v := range badValues {
		try("value", map[string][]string{"X-Value": {"ok", v}})
	}
	// Tab, obs-text and empty values are valid.
	var out bytes.Buffer
	hdr := map[string][]string{"X-Tab": {"a\tb"}, "X-Text": {"caf\xc3\xa9"}, "X-Empty": {""}, "X-Tok": {"!#$%&'*+-.^_`|~"}}
	if err := writeRequest(bufio.NewWriter(&out), http.MethodGet, "/", "h", "d", hdr, nil); err != nil {
		t.Fatalf("valid values: %v", err)
	}
	req, err := http.ReadRequest(bufio.NewReader(&out))
	if err != nil {
		t.Fatalf("the request written does not parse: %v", err)
	}
	if req.Header.Get("X-Tab") != "a\tb" || req.Header.Get("X-Text") != "caf\xc3\xa9" {
		t.Fatalf("headers %q", req.Header)
	}
}

func TestUpstreamSmugglingNeverReachesApp(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, echoPath)
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "valid", call(u, http.MethodGet, "/valid", nil, ""), 200, "/valid")
	try := func(what string, method, uri, host string, hdr nats.Header) {
		t.Helper()
		r := forwardCall(context.Background(), u, time.Now().Add(callTimeout), method, uri, host, hdr, "")
		wantCode(t, what, r, bus.BadRequest)
	}
	for _, m := range badMethods {
		try(fmt.Sprintf("method %q", m), m, "/", "", nil)
	}
	for _, uri := range badURIs {
		try(fmt.Sprintf("URI %q", uri), http.MethodGet, uri, "", nil)
	}
	for _, h := range badHosts {
		try(fmt.Sprintf("host %q", h), http.MethodGet, "/", h, nil)
	}
	for _, name := range badHeaderNames {
		try(fmt.Sprintf("header name %q", name), http.MethodGet, "/", "", nats.Header{name: {"v"}, "X-Good": {"1"}})
	}
	for _, v := range badValues {
		try(fmt.Sprintf("header value %q", v), http.MethodGet, "/", "", nats.Header{"X-Value": {v}, "X-Good": {"1"}})
	}
	u.Close()
	meshtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if acc, cl := a.accepted.Load(), a.closed.Load(); acc != cl {
			return fmt.Errorf("%d of %d connections ended", cl, acc)
		}
		return nil
	})
	if reqs := a.requests(); len(reqs) != 1 {
		var wire []string
		for _, r := range reqs {
			wire = append(wire, r.Wire)
		}
		t.Fatalf("the app read %d requests, want only the valid one: %q", len(reqs), wire)
	}
	if n := a.garbage.Load(); n != 0 {
		t.Fatalf("%d connections carried part of a request", n)
	}
}

// 7. Request writing.

func TestUpstreamWritesRequest(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, echoPath)
	u := newTestUpstream(t, a.url, 0)
	appHost := strings.TrimPrefix(a.url, "http://")

	hdr := nats.Header{
		"X-Multi":              {"1", "2"},
		"x-lower":              {"lower"},
		"traceparent":          {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"Mesh-Esc-Status":      {"299 custom"},
		"Mesh-Esc-Nats-Thing":  {"escaped"},
		bus.HeaderCaller:       {"billing"},
		bus.HeaderMethod:       {"GET"},
		bus.HeaderPath:         {"/p"},
		bus.HeaderHost:         {"mesh-host"},
		bus.HeaderTimeout:      {"100"},
		"Mesh-Other":           {"x"},
		"Mesh-Esc-Mesh-Caller": {"impostor"},
		"Status":               {"503"},
		"Description":          {"nats"},
		"Nats-Msg-Id":          {"dedup"},
		"Host":                 {"evil.example"},
		"Content-Length":       {"99"},
		"content-length":       {"98"},
		"Transfer-Encoding":    {"chunked"},
		"Connection":           {"close"},
	}
	wantOK(t, "GET", call(u, http.MethodGet, "/p?q=1&r=%2F", hdr, ""), 200, "/p?q=1&r=%2F")
	r := a.last(t)
	if r.Host != appHost || len(r.head("Host")) != 1 {
		t.Errorf("Host lines %q, want one with the upstream's %s when no host is given", r.head("Host"), appHost)
	}
	want := map[string][]string{
		"X-Multi":        {"1", "2"},
		"X-Lower":        {"lower"},
		"Traceparent":    {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"Status":         {"299 custom"},
		"Nats-Thing":     {"escaped"},
		bus.HeaderCaller: {"billing"},
	}
	for k, v := range want {
		if got := r.head(k); strings.Join(got, "|") != strings.Join(v, "|") {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{bus.HeaderMethod, bus.HeaderPath, bus.HeaderHost, bus.HeaderTimeout, "Mesh-Other",
		"Mesh-Esc-Status", "Mesh-Esc-Mesh-Caller", "Description", "Nats-Msg-Id", "Content-Length", "Transfer-Encoding",
		"Connection", "Keep-Alive", "Te", "Upgrade", "Proxy-Connection"} {
		if got := r.head(k); len(got) > 0 {
			t.Errorf("%s: %q reached the app", k, got)
		}
	}
	if r.Close {
		t.Error("the app was asked to close the connection")
	}

	wantOK(t, "POST empty", forwardCall(context.Background(), u, time.Now().Add(callTimeout), http.MethodPost, "/post", "api.example", nil, ""), 200, "/post")
	r = a.last(t)
	if r.Host != "api.example" {
		t.Errorf("Host %q, want the given api.example", r.Host)
	}
	if got := r.head("Content-Length"); len(got) != 1 || got[0] != "0" {
		t.Errorf("POST with an empty body: Content-Length %q, want 0", got)
	}

	wantOK(t, "PUT", call(u, http.MethodPut, "/put", nats.Header{"Transfer-Encoding": {"chunked"}, "Content-Length": {"1"}}, "hello"), 200, "/put")
	r = a.last(t)
	if got := r.head("Content-Length"); len(got) != 1 || got[0] != "5" || string(r.Payload) != "hello" || len(r.head("Transfer-Encoding")) != 0 {
		t.Errorf("PUT: Content-Length %q Transfer-Encoding %q body %q, want 5, none, hello", got, r.head("Transfer-Encoding"), r.Payload)
	}

	wantOK(t, "DELETE with body", call(u, http.MethodDelete, "/del", nil, "x"), 200, "/del")
	if got := a.last(t).head("Content-Length"); len(got) != 1 || got[0] != "1" {
		t.Errorf("DELETE with a body: Content-Length %q, want 1", got)
	}

	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions} {
		forwardCall(context.Background(), u, time.Now().Add(callTimeout), m, "/nobody", "", nil, "")
		r = a.last(t)
		if r.Method != m {
			t.Fatalf("last request %s, want %s", r.Method, m)
		}
		if got := r.head("Content-Length"); len(got) != 0 {
			t.Errorf("%s without a body: Content-Length %q, want none", m, got)
		}
	}
	wantAccepted(t, a, 1)
}

// 8. Library mode: the Upstream as an http.Handler.

func TestUpstreamServeHTTP(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send("HTTP/1.1 201 Created\r\n" +
			"Keep-Alive: timeout=5\r\n" +
			"Connection: X-Resp-Secret\r\n" +
			"X-Resp-Secret: hidden\r\n" +
			"Status: 299 app\r\n" +
			"X-App: yes\r\n" +
			"Content-Length: 7\r\n\r\ncreated")
		return true
	})
	u := newTestUpstream(t, a.url, 0)
	front := httptest.NewServer(u)
	t.Cleanup(front.Close)
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: callTimeout}

	req, err := http.NewRequest(http.MethodPost, front.URL+"/lib?x=1", strings.NewReader("payload"))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "lib.example"
	req.Header.Set("TE", "trailers")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Keep-Alive", "timeout=9")
	req.Header.Set("Connection", "X-Secret")
	req.Header.Set("X-Secret", "hop")
	req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
	req.Header.Set("Status", "299 request")
	req.Header.Set("X-Normal", "end-to-end")
	req.Header.Set(bus.HeaderCaller, "frontend")
	req.Header.Set("Mesh-Other", "spoofed")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	r := a.last(t)
	if r.Method != http.MethodPost || r.RequestURI != "/lib?x=1" || r.Host != "lib.example" || string(r.Payload) != "payload" {
		t.Errorf("the app got %s %s Host %s body %q", r.Method, r.RequestURI, r.Host, r.Payload)
	}
	for _, k := range []string{"Te", "Upgrade", "Keep-Alive", "Connection", "X-Secret", "Proxy-Authorization", "Mesh-Other"} {
		if got := r.head(k); len(got) > 0 {
			t.Errorf("hop-by-hop or mesh request header %s: %q reached the app", k, got)
		}
	}
	for k, v := range map[string]string{"Status": "299 request", "X-Normal": "end-to-end", bus.HeaderCaller: "frontend"} {
		if got := r.head(k); len(got) != 1 || got[0] != v {
			t.Errorf("request header %s: %q, want %q", k, got, v)
		}
	}

	if resp.StatusCode != http.StatusCreated || string(body) != "created" {
		t.Errorf("response %d %q, want the app's 201 created", resp.StatusCode, body)
	}
	if resp.Header.Get("X-App") != "yes" || resp.Header.Get("Status") != "299 app" {
		t.Errorf("response headers %v lack the app's X-App and Status", resp.Header)
	}
	for _, k := range []string{"Keep-Alive", "X-Resp-Secret", bus.HeaderStatus, bus.HeaderError} {
		if got := resp.Header.Values(k); len(got) > 0 {
			t.Errorf("response header %s: %q, want none", k, got)
		}
	}
}

func TestUpstreamServeHTTPUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	u := newTestUpstream(t, "http://"+addr, 0)
	front := httptest.NewServer(u)
	t.Cleanup(front.Close)
	resp, err := front.Client().Get(front.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(bus.HeaderError) != string(bus.UpstreamUnreachable) {
		t.Fatalf("status %d Mesh-Error %q, want 502 upstream-unreachable", resp.StatusCode, resp.Header.Get(bus.HeaderError))
	}
}

// 9. Pool bounds.

func TestUpstreamPoolBounds(t *testing.T) {
	t.Parallel()
	const concurrent = 10
	g := newHold()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		return g.wait(c, r) && echoPath(c, r)
	})
	u := newTestUpstream(t, a.url, 2)
	fillPool(t, a, g, u, concurrent)
	wantIdle(t, u, 2)
	waitClosed(t, a, concurrent-2) // the excess connections were closed

	// The connection at the bottom of the stack grows old while the top
	// one serves: the next put retires it.
	idle := idleConns(u)
	bottom, top := idle[0], idle[1]
	ageIdle(u, 0, upstreamIdleTimeout+time.Second)
	wantOK(t, "after ageing", call(u, http.MethodGet, "/top", nil, ""), 200, "/top")
	idle = idleConns(u)
	if len(idle) != 1 || idle[0] != top {
		t.Fatalf("pool after the put: %d connections, want only the one just used", len(idle))
	}
	waitClosed(t, a, concurrent-1)
	if _, err := bottom.c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("writing on the retired connection: %v, want it closed", err)
	}
	wantAccepted(t, a, concurrent)
}

func TestUpstreamIdleTimeoutOnGet(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, echoPath)
	u := newTestUpstream(t, a.url, 0)
	wantOK(t, "first", call(u, http.MethodGet, "/1", nil, ""), 200, "/1")
	ageIdle(u, 0, upstreamIdleTimeout+time.Second)
	wantOK(t, "second", call(u, http.MethodGet, "/2", nil, ""), 200, "/2")
	wantAccepted(t, a, 2)
	waitClosed(t, a, 1)
	wantIdle(t, u, 1)
}

func TestUpstreamResponseTooLarge(t *testing.T) {
	t.Parallel()
	a := startRawApp(t, func(c *rawConn, r *rawRequest) bool {
		c.send(okResponse(strings.Repeat("x", 100)))
		return true
	})
	u := newTestUpstream(t, a.url, 0)
	w := &responseWriter{buf: new(bytes.Buffer), limit: 10}
	e := u.forward(context.Background(), time.Now().Add(callTimeout), http.MethodGet, "/", "", nil, nil, w)
	if e == nil || e.Code != bus.TooLarge {
		t.Fatalf("error %v, want too-large", e)
	}
	wantIdle(t, u, 0)
	if n := a.count(http.MethodGet, "/"); n != 1 {
		t.Fatalf("the app read the request %d times, want 1", n)
	}
}
