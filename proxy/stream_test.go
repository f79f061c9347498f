package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// streamApp serves the endpoints the stream tests use.
//
//	POST /sha      the SHA-256 of the body, in hex
//	GET  /blob?n=  n pseudo-random bytes (seed 1), chunked
//	GET  /sse?n=   n server-sent events, each sent once the test has seen
//	               the one before (next), else failing after 5 s
//	GET  /forever  bytes until the client goes away; records when (gone)
//	GET  /die      a 200 with a Content-Length, half a body, then a closed connection
type streamApp struct {
	next chan int
	gone chan time.Time
}

func newStreamApp() *streamApp {
	return &streamApp{next: make(chan int, 1), gone: make(chan time.Time, 4)}
}

func blob(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func (a *streamApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	switch r.URL.Path {
	case "/sha":
		h := sha256.New()
		if _, err := io.Copy(h, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x", h.Sum(nil))
	case "/blob":
		b := blob(n)
		for len(b) > 0 {
			k := min(len(b), 100_000)
			if _, err := w.Write(b[:k]); err != nil {
				return
			}
			b = b[k:]
		}
	case "/sse":
		w.Header().Set("Content-Type", "text/event-stream")
		f := w.(http.Flusher)
		for i := range n {
			fmt.Fprintf(w, "data: event %d\n\n", i)
			f.Flush()
			if i == n-1 {
				return
			}
			select {
			case got := <-a.next:
				if got != i {
					return
				}
			case <-time.After(5 * time.Second):
				return // the event did not arrive before the next was due
			case <-r.Context().Done():
				return
			}
		}
	case "/forever":
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		f, _ := w.(http.Flusher)
		for {
			if _, err := w.Write(chunk); err != nil {
				break
			}
			if f != nil {
				f.Flush()
			}
			if r.Context().Err() != nil {
				break
			}
		}
		<-r.Context().Done()
		a.gone <- time.Now()
	case "/die":
		c, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 4<<20)
		bw.Write(make([]byte, 2<<20))
		bw.Flush()
		c.Close()
	default:
		http.NotFound(w, r)
	}
}

// streamClients are the ways of reaching service "files": through two
// sidecars (the callee's app is a plain HTTP server), and in library mode
// (a Transport calling a handler served with Serve).
func streamClients(t *testing.T, s *embedded.Server, app *streamApp) []meshClient {
	startCallee(t, s, "files", app, noOutlier)
	serveHandler(t, s, app, proxy.ServeConfig{Service: "fileslib"})
	caller := startCaller(t, s, "frontend", singleAttempt)
	return []meshClient{
		sidecarClient(t, formProxy, caller, "frontend"),
		libraryClient(t, s, proxy.TransportConfig{Caller: "frontend"}),
	}
}

func serviceFor(c meshClient) string {
	if c.form == formLibrary {
		return "fileslib"
	}
	return "files"
}

func TestStreamLargeUploadAndDownload(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	const size = 20 << 20
	data := blob(size)
	sum := fmt.Sprintf("%x", sha256.Sum256(data))
	type onlyReader struct{ io.Reader }
	for _, c := range streamClients(t, s, newStreamApp()) {
		svc := serviceFor(c)
		for _, chunked := range []bool{false, true} {
			var body io.Reader = bytes.NewReader(data)
			if chunked {
				body = onlyReader{body}
			}
			resp, got := c.do(t, c.newRequest(t, http.MethodPost, svc, "/sha", body))
			if resp.StatusCode != http.StatusOK || string(got) != sum {
				t.Fatalf("%s, %s upload (chunked %v): status %d, SHA-256 %q, want %s", c.form, svc, chunked, resp.StatusCode, got, sum)
			}
		}
		resp, got := c.get(t, svc, "/blob?n="+strconv.Itoa(size))
		if resp.StatusCode != http.StatusOK || fmt.Sprintf("%x", sha256.Sum256(got)) != sum {
			t.Fatalf("%s, %s download: status %d, %d bytes, SHA-256 differs", c.form, svc, resp.StatusCode, len(got))
		}
	}
}

// Each server-sent event reaches the client before the app sends the next.
func TestStreamServerSentEvents(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := newStreamApp()
	for _, c := range streamClients(t, s, app) {
		const n = 20
		req := c.newRequest(t, http.MethodGet, serviceFor(c), "/sse?n="+strconv.Itoa(n), nil)
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("%s: Content-Type %q", c.form, ct)
		}
		br := bufio.NewReader(resp.Body)
		for i := range n {
			start := time.Now()
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: event %d: %v", c.form, i, err)
			}
			if want := fmt.Sprintf("data: event %d\n", i); line != want {
				t.Fatalf("%s: read %q, want %q", c.form, line, want)
			}
			if el := time.Since(start); el > time.Second {
				t.Fatalf("%s: event %d took %s", c.form, i, el)
			}
			br.ReadString('\n') // the blank line
			if i < n-1 {
				app.next <- i
			}
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
			t.Fatalf("%s: after the last event: %q, %v", c.form, rest, err)
		}
		resp.Body.Close()
	}
}

// A client going away mid-download ends the app's request within a second.
func TestStreamClientCancelStopsUpstream(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := newStreamApp()
	for _, c := range streamClients(t, s, app) {
		ctx, cancel := context.WithCancel(context.Background())
		req := c.newRequest(t, http.MethodGet, serviceFor(c), "/forever", nil).WithContext(ctx)
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 3<<20)); err != nil {
			t.Fatalf("%s: %v", c.form, err)
		}
		left := time.Now()
		cancel()
		resp.Body.Close()
		select {
		case at := <-app.gone:
			if d := at.Sub(left); d > time.Second {
				t.Fatalf("%s: the app's request ended %s after the client left", c.form, d)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("%s: the app's request did not end after the client left", c.form)
		}
	}
}

// An app failing mid-body gives the client an error, never a short body
// taken for complete.
func TestStreamUpstreamDiesMidBody(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := newStreamApp()
	startCallee(t, s, "files", app, noOutlier)
	caller := startCaller(t, s, "frontend", singleAttempt)
	for _, c := range []meshClient{
		sidecarClient(t, formProxy, caller, "frontend"),
		sidecarClient(t, formHost, caller, "frontend"),
	} {
		resp, err := c.hc.Do(c.newRequest(t, http.MethodGet, "files", "/die", nil))
		if err != nil {
			t.Fatalf("%s: %v", c.form, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("%s: status %d and %d bytes read without an error", c.form, resp.StatusCode, len(got))
		}
	}
	// In library mode, the body's Read fails.
	tr := newTransport(t, s, proxy.TransportConfig{})
	resp, err := httpClient(t, tr).Get("http://files/die")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e *bus.Error
	if !errors.As(err, &e) {
		t.Fatalf("library: %d bytes read, error %v; want a mesh error", len(got), err)
	}
}

func TestStreamUpgradeNotSupported(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startCallee(t, s, "files", newStreamApp(), nil)
	caller := startCaller(t, s, "frontend", nil)
	for _, c := range allForms(t, s, caller, proxy.TransportConfig{}) {
		req := c.newRequest(t, http.MethodGet, "files", "/ws", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		resp, body := c.do(t, req)
		wantMeshError(t, resp, body, http.StatusNotImplemented, bus.NotSupported)
		if !strings.Contains(string(body), "not supported") {
			t.Fatalf("%s: %q", c.form, body)
		}
	}
}

// A streamed PUT whose holder dies mid-body fails upstream-lost and is not
// retried, though PUT is idempotent and another instance is up.
func TestStreamHolderDiesNotRetried(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var arrived atomic.Int64
	hold := newGate()
	defer hold.open()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		io.ReadFull(r.Body, make([]byte, 1<<20))
		hold.wait(r.Context())
	})
	app := startApp(t, h)
	nc := meshtest.Connect(t, s)
	dying, err := sidecar.Start(nc, sidecar.Config{Service: "files", Upstream: app.URL, Listen: "127.0.0.1:0", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// The dead instance's request waits for chunks that never come
		// until its idle timeout; do not wait for it.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		hold.open()
		_ = dying.Shutdown(ctx)
	}()
	// A short timeout: the dead instance's request waits for chunks that
	// never come for as long (its app's server waits for the rest of the
	// body until then).
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Transport.Timeout = 2 * time.Second })
	c := sidecarClient(t, formProxy, caller, "frontend")
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 12<<20)) // more than the app reads and a window (4 MiB): the caller waits for credit
		<-hold.release
		pw.Close()
	}()
	req := c.newRequest(t, http.MethodPut, "files", "/up", pr)
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := c.hc.Do(req)
		if err != nil {
			done <- nil
			return
		}
		resp.Body.Close()
		done <- resp
	}()
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if arrived.Load() == 0 {
			return errors.New("the request has not reached the app")
		}
		return nil
	})
	// Another instance comes up, then the holder dies.
	startCallee(t, s, "files", h, nil)
	nc.Close()
	select {
	case resp := <-done:
		if resp == nil || resp.StatusCode != http.StatusBadGateway || resp.Header.Get(bus.HeaderError) != string(bus.UpstreamLost) {
			t.Fatalf("response %+v, want 502 upstream-lost", resp)
		}
		if resp.Header.Get(bus.HeaderAttempts) != "1" || arrived.Load() != 1 {
			t.Fatalf("Mesh-Attempts %q, the apps saw %d requests; want 1", resp.Header.Get(bus.HeaderAttempts), arrived.Load())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call did not end after its holder died")
	}
}

// Streams leave no goroutine behind: finished, cancelled and aborted ones.
func TestStreamNoGoroutinesLeft(t *testing.T) {
	s := meshtest.RunServer(t)
	app := newStreamApp()
	serveHandler(t, s, app, proxy.ServeConfig{Service: "fileslib"})
	hc := httpClient(t, newTransport(t, s, proxy.TransportConfig{}))
	get := func(path string) {
		resp, err := hc.Get("http://fileslib" + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("/blob?n=10") // warm up
	base := runtime.NumGoroutine()
	for range 3 {
		get("/blob?n=" + strconv.Itoa(3<<20))
		resp, err := hc.Post("http://fileslib/sha", "application/octet-stream", bytes.NewReader(blob(3<<20)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		resp, err = hc.Get("http://fileslib/forever")
		if err != nil {
			t.Fatal(err)
		}
		io.ReadFull(resp.Body, make([]byte, 1<<20))
		resp.Body.Close()
		<-app.gone
	}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return fmt.Errorf("%d goroutines, %d before the streams", n, base)
		}
		return nil
	})
}
