//go:build unix

package main

// End-to-end tests of large and streaming bodies (docs/architecture.md,
// "Large and streaming bodies"), every part a real process: a client in the
// test, the caller's sidecar, natsmesh server, the callee's sidecar and the
// app (the test binary run as an app, see runApp and addStreamRoutes below).
// Bodies are a deterministic pattern, made and hashed as they are sent and
// received, so no test holds a large body in memory.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/internal/procstat"
)

// streamService is the service the streaming app serves.
const streamService = "files"

const mib = 1 << 20

// streamPattern is the content of every body of these tests: 1,000,003
// pseudo-random bytes, repeated. Its period is a prime, so no chunk or
// buffer size lines up with it: a chunk lost, repeated or reordered changes
// the body's SHA-256.
var streamPattern = sync.OnceValue(func() []byte {
	b := make([]byte, 1_000_003)
	_, _ = rand.NewChaCha8([32]byte{'n', 'a', 't', 's', 'm', 'e', 's', 'h'}).Read(b)
	return b
})

// patternReader reads the first n bytes of the repeated pattern.
type patternReader struct{ off, left int64 }

func newPattern(n int64) *patternReader { return &patternReader{left: n} }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	pat := streamPattern()
	n := copy(b[:min(int64(len(b)), p.left)], pat[p.off%int64(len(pat)):])
	p.off += int64(n)
	p.left -= int64(n)
	return n, nil
}

var patternSums sync.Map // int64 -> string

// patternSum is the hex SHA-256 of the first n bytes of the pattern.
func patternSum(n int64) string {
	if s, ok := patternSums.Load(n); ok {
		return s.(string)
	}
	h := sha256.New()
	_, _ = io.Copy(h, newPattern(n))
	s := hex.EncodeToString(h.Sum(nil))
	patternSums.Store(n, s)
	return s
}

// ---- The app's side: endpoints of runApp for bodies that stream.

// streamRecord is what the app knows of one request to its /stream/
// endpoints, by the request's id query parameter.
type streamRecord struct {
	Path    string `json:"path"`
	Started int64  `json:"started"`       // Unix ns
	Ended   int64  `json:"ended"`         // Unix ns the handler ended; 0 while it runs
	N       int64  `json:"n"`             // body bytes read (upload) or written (download), events sent (sse)
	Err     string `json:"err,omitempty"` // reading or writing the body failed
	Ctx     string `json:"ctx,omitempty"` // the request's context error when the handler ended
	SHA256  string `json:"sha256,omitempty"`
}

type streamApp struct {
	mu      sync.Mutex
	recs    map[string]*streamRecord
	release sync.Map // id -> chan struct{}: POST /admin/release lets /stream/sse send its next event
}

// addStreamRoutes adds the app's endpoints for large and streaming bodies:
//
//   - POST /stream/upload?id=ID reads the body and answers
//     "sha256=<hex> n=<bytes>" (400 if reading it failed).
//   - GET /stream/download?id=ID&size=N[&chunked=1] sends the first N bytes
//     of the pattern, with Content-Length, or chunked.
//   - GET /stream/sse?id=ID&n=N sends N server-sent events, "id: i" and
//     "data: <Unix ns when sent>", each flushed; every event after the first
//     waits for a POST /admin/release?id=ID.
//   - GET /stream/crash?size=N&after=M[&chunked=1] answers 200 with
//     Content-Length N (or chunked), sends M bytes of the pattern and closes
//     the connection, as an app that crashes mid-body.
//   - GET /admin/stream?id=ID answers the streamRecord of ID as JSON (404
//     if no such request arrived).
func addStreamRoutes(mux *http.ServeMux) {
	a := &streamApp{recs: map[string]*streamRecord{}}
	mux.HandleFunc("POST /stream/upload", a.upload)
	mux.HandleFunc("GET /stream/download", a.download)
	mux.HandleFunc("GET /stream/sse", a.sse)
	mux.HandleFunc("GET /stream/crash", a.crash)
	mux.HandleFunc("POST /admin/release", func(w http.ResponseWriter, r *http.Request) {
		select {
		case a.releases(r.URL.Query().Get("id")) <- struct{}{}:
		default:
			http.Error(w, "too many releases", http.StatusConflict)
		}
	})
	mux.HandleFunc("GET /admin/stream", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		rec, ok := a.recs[r.URL.Query().Get("id")]
		var b []byte
		if ok {
			b, _ = json.Marshal(rec)
		}
		a.mu.Unlock()
		if !ok {
			http.Error(w, "no such request", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
}

func (a *streamApp) releases(id string) chan struct{} {
	ch, _ := a.release.LoadOrStore(id, make(chan struct{}, 10_000))
	return ch.(chan struct{})
}

func (a *streamApp) begin(r *http.Request) *streamRecord {
	rec := &streamRecord{Path: r.URL.Path, Started: time.Now().UnixNano()}
	if id := r.URL.Query().Get("id"); id != "" {
		a.mu.Lock()
		a.recs[id] = rec
		a.mu.Unlock()
	}
	return rec
}

func (a *streamApp) end(rec *streamRecord, r *http.Request, n int64, err error, sum string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rec.N, rec.SHA256 = n, sum
	if err != nil {
		rec.Err = err.Error()
	}
	if cerr := r.Context().Err(); cerr != nil {
		rec.Ctx = cerr.Error()
	}
	rec.Ended = time.Now().UnixNano()
}

func (a *streamApp) upload(w http.ResponseWriter, r *http.Request) {
	rec := a.begin(r)
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	sum := hex.EncodeToString(h.Sum(nil))
	a.end(rec, r, n, err, sum)
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "sha256=%s n=%d\n", sum, n)
}

func (a *streamApp) download(w http.ResponseWriter, r *http.Request) {
	rec := a.begin(r)
	size, _ := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.URL.Query().Get("chunked") == "1" {
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush() // no Content-Length, whatever the size
	} else {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	n, err := io.Copy(w, newPattern(size))
	a.end(rec, r, n, err, "")
}

func (a *streamApp) sse(w http.ResponseWriter, r *http.Request) {
	rec := a.begin(r)
	n, _ := strconv.Atoi(r.URL.Query().Get("n"))
	rel := a.releases(r.URL.Query().Get("id"))
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var sent int64
	for i := range n {
		if i > 0 {
			t := time.NewTimer(30 * time.Second)
			select {
			case <-rel:
				t.Stop()
			case <-r.Context().Done():
				t.Stop()
				a.end(rec, r, sent, nil, "")
				return
			case <-t.C:
				a.end(rec, r, sent, errors.New("event not released within 30s"), "")
				return
			}
		}
		_, err := fmt.Fprintf(w, "id: %d\ndata: %d\n\n", i, time.Now().UnixNano())
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			a.end(rec, r, sent, err, "")
			return
		}
		sent++
	}
	a.end(rec, r, sent, nil, "")
}

func (a *streamApp) crash(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	size, _ := strconv.ParseInt(q.Get("size"), 10, 64)
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	chunked := q.Get("chunked") == "1"
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close() // the crash: the body ends here, short
	if chunked {
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
	} else {
		fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", size)
	}
	src, buf := newPattern(after), make([]byte, 32<<10)
	for {
		n, _ := src.Read(buf)
		if n == 0 {
			break
		}
		if chunked {
			fmt.Fprintf(bw, "%x\r\n", n)
		}
		if _, err := bw.Write(buf[:n]); err != nil {
			return
		}
		if chunked {
			bw.WriteString("\r\n")
		}
	}
	_ = bw.Flush()
}

// ---- The test's side.

var plainBuild struct {
	once sync.Once
	path string
	err  error
}

// plainNatsmeshBin is the natsmesh binary built without the race detector,
// for the tests that move 100 MiB and measure the sidecars' memory: the race
// runtime multiplies both their time and their memory. Without -race it is
// natsmeshBin's binary.
func plainNatsmeshBin(t *testing.T) (string, error) {
	t.Helper()
	bin := natsmeshBin(t)
	if !raceEnabled() {
		return bin, nil
	}
	plainBuild.once.Do(func() {
		goCmd, err := goTool()
		if err != nil {
			plainBuild.err = err
			return
		}
		path := filepath.Join(filepath.Dir(bin), "natsmesh-norace")
		cmd := exec.Command(goCmd, "build", "-o", path, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			plainBuild.err = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
			return
		}
		plainBuild.path = path
	})
	return plainBuild.path, plainBuild.err
}

// streamMesh is a server, the streaming app, its sidecar (instance files-1
// of service files) and a caller's sidecar, all of one natsmesh binary.
type streamMesh struct {
	natsURL  string
	app      *proc
	appURL   string
	callee   *proc
	caller   *proc
	outbound string
	hc       *http.Client // to the caller's outbound listener
}

// startStreamMesh starts the processes with the natsmesh binary bin and
// returns once a call through the mesh reaches the app. extra flags go to
// both sidecars.
func startStreamMesh(t *testing.T, bin string, extra ...string) *streamMesh {
	t.Helper()
	m := &streamMesh{}
	srv := start(t, "server", nil, bin, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir())
	m.natsURL = srv.waitOutput(t, serverReady, startTimeout)
	m.app, m.appURL = startApp(t, "files-1")
	sidecar := func(service, instance string) (*proc, string) {
		args := append([]string{"sidecar", "--service", service, "--instance", instance, "--upstream", m.appURL,
			"--listen", "127.0.0.1:0", "--nats", m.natsURL}, extra...)
		p := start(t, "sidecar "+instance, nil, bin, args...)
		return p, p.waitOutput(t, sidecarReady, startTimeout)
	}
	m.callee, _ = sidecar(streamService, "files-1")
	m.caller, m.outbound = sidecar("client", "client-1")
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}
	t.Cleanup(tr.CloseIdleConnections)
	m.hc = &http.Client{Transport: tr, Timeout: 60 * time.Second}
	meshtest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		status, _, body, err := meshGet(m.hc, m.outbound, streamService, "/healthz")
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("status %d: %s", status, body)
		}
		return nil
	})
	return m
}

// request is a request to the streaming service through the caller's
// sidecar, in Host form. A body of length -1 is sent chunked.
func (m *streamMesh) request(ctx context.Context, method, uri string, body io.Reader, length int64) *http.Request {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+m.outbound+uri, body)
	if err != nil {
		panic(err)
	}
	req.Host = streamService
	if body != nil {
		req.ContentLength = length
	}
	return req
}

// upload sends size bytes of the pattern to /stream/upload through the mesh,
// with Content-Length or chunked, and checks that the app received them
// whole. It returns how long the exchange took.
func (m *streamMesh) upload(t *testing.T, id string, size int64, chunked bool) time.Duration {
	t.Helper()
	length := size
	if chunked {
		length = -1
	}
	sent := sha256.New()
	body := io.TeeReader(newPattern(size), sent) // hashed as it is sent
	start := time.Now()
	resp, err := m.hc.Do(m.request(context.Background(), http.MethodPost, "/stream/upload?id="+id, body, length))
	if err != nil {
		t.Fatalf("upload %s of %d bytes: %v", id, size, err)
	}
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("upload %s of %d bytes: reading the answer: %v", id, size, err)
	}
	want := fmt.Sprintf("sha256=%s n=%d\n", hex.EncodeToString(sent.Sum(nil)), size)
	if resp.StatusCode != http.StatusOK || string(answer) != want {
		t.Fatalf("upload %s of %d bytes (chunked %v): status %d, Mesh-Error %q, app answered %q, want %q",
			id, size, chunked, resp.StatusCode, resp.Header.Get("Mesh-Error"), trimForLog(answer), want)
	}
	return took
}

// download gets size bytes of the pattern from /stream/download through the
// mesh, with Content-Length or chunked, and checks them. It returns how long
// the exchange took.
func (m *streamMesh) download(t *testing.T, uri string, size int64, chunked bool) time.Duration {
	t.Helper()
	start := time.Now()
	resp, err := m.hc.Do(m.request(context.Background(), http.MethodGet, uri, nil, 0))
	if err != nil {
		t.Fatalf("download %s: %v", uri, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("download %s: status %d, Mesh-Error %q, body %q", uri, resp.StatusCode, resp.Header.Get("Mesh-Error"), b)
	}
	if !chunked && resp.ContentLength != size {
		t.Errorf("download %s: Content-Length %d, want the app's %d", uri, resp.ContentLength, size)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body) // hashed as it is received
	took := time.Since(start)
	if err != nil {
		t.Fatalf("download %s: after %d of %d bytes: %v", uri, n, size, err)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), patternSum(size); n != size || got != want {
		t.Fatalf("download %s: received %d bytes with SHA-256 %s, want %d bytes with %s", uri, n, got, size, want)
	}
	return took
}

// record is the app's record of request id; ok false if none arrived.
func (m *streamMesh) record(t *testing.T, id string) (rec streamRecord, ok bool) {
	t.Helper()
	resp, err := adminClient.Get(m.appURL + "/admin/stream?id=" + id)
	if err != nil {
		t.Fatalf("app: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return rec, false
	}
	if err := json.NewDecoder(resp.Body).Decode(&rec); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("app: GET /admin/stream?id=%s: status %d, %v", id, resp.StatusCode, err)
	}
	return rec, true
}

// waitEnded polls the app until its handler of request id has ended.
func (m *streamMesh) waitEnded(t *testing.T, id string, within time.Duration) streamRecord {
	t.Helper()
	var rec streamRecord
	meshtest.CheckFor(t, within, 5*time.Millisecond, func() error {
		r, ok := m.record(t, id)
		switch {
		case !ok:
			return fmt.Errorf("request %s did not reach the app", id)
		case r.Ended == 0:
			return fmt.Errorf("the app's handler of %s still runs (%d bytes so far)", id, r.N)
		}
		rec = r
		return nil
	})
	return rec
}

// rawResponse is what rawExchange got back.
type rawResponse struct {
	resp     *http.Response // nil: no response (err says why)
	body     string         // its body, up to 64 KiB
	err      error          // reading the response failed
	took     time.Duration  // from sending the head to the response's head
	writeErr error          // sending the body failed
}

// rawExchange sends a request on a connection of its own to addr: head (the
// request line and headers, each ending in CRLF), an empty line, then the
// body written by body on another goroutine while the response is read, so a
// response that comes before the body is all sent is seen.
func rawExchange(t *testing.T, addr, head string, body func(w io.Writer) error) rawResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		t.Fatalf("send request head: %v", err)
	}
	wrote := make(chan error, 1)
	go func() {
		if body == nil {
			wrote <- nil
			return
		}
		wrote <- body(conn)
	}()
	var r rawResponse
	r.resp, r.err = http.ReadResponse(bufio.NewReader(conn), nil)
	r.took = time.Since(start)
	if r.err == nil {
		b, err := io.ReadAll(io.LimitReader(r.resp.Body, 64<<10))
		r.body, r.err = string(b), err
	}
	conn.Close() // ends a body still being written
	r.writeErr = <-wrote
	return r
}

// writeChunked writes size bytes of the pattern in the chunked encoding, in
// chunks of 64 KiB, and the last chunk.
func writeChunked(w io.Writer, size int64) error {
	if err := writeChunkedPart(w, size); err != nil {
		return err
	}
	_, err := io.WriteString(w, "0\r\n\r\n")
	return err
}

// writeChunkedPart writes size bytes of the pattern in the chunked encoding,
// in chunks of 64 KiB, without the last chunk.
func writeChunkedPart(w io.Writer, size int64) error {
	bw := bufio.NewWriterSize(w, 70<<10)
	src, buf := newPattern(size), make([]byte, 64<<10)
	for {
		n, _ := src.Read(buf)
		if n == 0 {
			break
		}
		fmt.Fprintf(bw, "%x\r\n", n)
		bw.Write(buf[:n])
		if _, err := bw.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return bw.Flush()
}

func trimForLog(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(b)
}

// rssSampler samples the resident memory of processes every 50 ms.
type rssSampler struct {
	pids    []int
	stop    chan struct{}
	done    chan struct{}
	peaks   []int64
	samples int
}

func sampleRSS(pids ...int) *rssSampler {
	s := &rssSampler{pids: pids, stop: make(chan struct{}), done: make(chan struct{}), peaks: make([]int64, len(pids))}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, pid := range s.pids {
				s.peaks[i] = max(s.peaks[i], procstat.RSS(pid))
			}
			s.samples++
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns each process's peak.
func (s *rssSampler) Stop() []int64 {
	close(s.stop)
	<-s.done
	for i, pid := range s.pids { // and a last sample
		s.peaks[i] = max(s.peaks[i], procstat.RSS(pid))
	}
	return s.peaks
}

func mibs(n int64, d time.Duration) float64 { return float64(n) / mib / d.Seconds() }

// TestStreamLargeBodies sends a 100 MiB upload (with Content-Length, and
// chunked) and a 100 MiB download (with Content-Length, and chunked) through
// the mesh: each arrives whole, its SHA-256 equal to the original's, while
// the resident memory of both sidecars, sampled every 50 ms, stays under
// 64 MiB. The sidecars run a natsmesh built without -race even when the tests
// run with it, both for speed and because the race runtime's memory would
// swamp theirs; if that build fails, they run the race binary and the memory
// is reported but not checked.
func TestStreamLargeBodies(t *testing.T) {
	const (
		size    = 100 * mib
		maxBody = 200 * mib
		maxRSS  = 64 * mib
	)
	bin, plainErr := plainNatsmeshBin(t)
	if plainErr != nil {
		t.Logf("natsmesh without -race did not build, so memory is not checked: %v", plainErr)
		bin = natsmeshBin(t)
	}
	m := startStreamMesh(t, bin, "--max-body", strconv.Itoa(maxBody))
	sampler := sampleRSS(m.caller.cmd.Process.Pid, m.callee.cmd.Process.Pid)
	for _, tc := range []struct {
		name    string
		upload  bool
		chunked bool
	}{
		{"upload with Content-Length", true, false},
		{"upload chunked", true, true},
		{"download with Content-Length", false, false},
		{"download chunked", false, true},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			var took time.Duration
			if tc.upload {
				took = m.upload(t, "big-"+strconv.FormatBool(tc.chunked), size, tc.chunked)
			} else {
				uri := fmt.Sprintf("/stream/download?size=%d", size)
				if tc.chunked {
					uri += "&chunked=1"
				}
				took = m.download(t, uri, size, tc.chunked)
			}
			t.Logf("%s: 100 MiB in %s, %.0f MiB/s", tc.name, took.Round(time.Millisecond), mibs(size, took))
		})
	}
	peaks := sampler.Stop()
	t.Logf("peak RSS over %d samples: caller sidecar %.1f MiB, callee sidecar %.1f MiB",
		sampler.samples, float64(peaks[0])/mib, float64(peaks[1])/mib)
	if plainErr != nil {
		return
	}
	for i, name := range []string{"caller", "callee"} {
		if peaks[i] == 0 {
			t.Errorf("the %s sidecar's memory could not be read", name)
		} else if peaks[i] >= maxRSS {
			t.Errorf("the %s sidecar's resident memory peaked at %.1f MiB, want under %d MiB", name, float64(peaks[i])/mib, maxRSS/mib)
		}
	}
}

// TestStreamServerSentEvents streams 100 server-sent events through the mesh
// in lockstep: the app sends event i only once the test, having received
// event i-1, releases it. A mesh that held back any part of the stream (to
// fill a chunk, or until the end) would stall it. Each event's latency, from
// the app writing it to the client reading it, must stay under 1 s.
func TestStreamServerSentEvents(t *testing.T) {
	const (
		events     = 100
		maxLatency = time.Second
		id         = "sse-1"
	)
	m := startStreamMesh(t, natsmeshBin(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchdog := time.AfterFunc(10*time.Second, cancel)
	defer watchdog.Stop()
	resp, err := m.hc.Do(m.request(ctx, http.MethodGet, fmt.Sprintf("/stream/sse?id=%s&n=%d", id, events), nil, 0))
	if err != nil {
		t.Fatalf("no response head: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		t.Fatalf("status %d, Content-Type %q, Mesh-Error %q, body %q; want 200 text/event-stream",
			resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Mesh-Error"), b)
	}
	br := bufio.NewReader(resp.Body)
	lat := make([]time.Duration, 0, events)
	for i := range events {
		if i > 0 {
			r, err := adminClient.Post(m.appURL+"/admin/release?id="+id, "text/plain", nil)
			if err != nil {
				t.Fatalf("release event %d: %v", i, err)
			}
			r.Body.Close()
		}
		watchdog.Reset(2 * time.Second)
		evID, data, err := readEvent(br)
		recv := time.Now()
		if err != nil {
			t.Fatalf("event %d did not arrive within 2s of its release (the app sends it at once): %v", i, err)
		}
		sent, perr := strconv.ParseInt(data, 10, 64)
		if evID != strconv.Itoa(i) || perr != nil {
			t.Fatalf("event %d: got id %q, data %q", i, evID, data)
		}
		lat = append(lat, recv.Sub(time.Unix(0, sent)))
	}
	watchdog.Reset(5 * time.Second)
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Errorf("after the last event: %q, %v; want the end of the stream", rest, err)
	}
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	t.Logf("%d events, latency from the app's write to the client's read: p50 %s, p90 %s, max %s",
		events, sorted[len(sorted)/2], sorted[len(sorted)*9/10], sorted[len(sorted)-1])
	for i, d := range lat {
		if d > maxLatency {
			t.Errorf("event %d took %s from the app to the client, want under %s", i, d, maxLatency)
		}
	}
}

// readEvent reads one server-sent event and returns its id and data.
func readEvent(br *bufio.Reader) (id, data string, err error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return id, data, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			return id, data, nil
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		}
	}
}

// TestStreamClientDisconnect closes the client's connection in the middle of
// a response and checks that the app's handler ends within 1 s: while it is
// writing a 1 GiB download (its write fails), and while it waits in an event
// stream that has nothing to send (its request's context ends). Then in the
// middle of a request body, declared or chunked: the app's read of the body
// fails within 1 s.
func TestStreamClientDisconnect(t *testing.T) {
	const within = time.Second
	m := startStreamMesh(t, natsmeshBin(t))
	for _, tc := range []struct {
		name, id, uri string
		read          int64 // bytes of the body the client reads before it goes away
	}{
		{"download", "dc-download", "/stream/download?size=1073741824&id=dc-download", 4 * mib},
		{"idle event stream", "dc-sse", "/stream/sse?n=1000&id=dc-sse", 1},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", m.outbound, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.uri, streamService)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no response head: %v", err)
			}
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				t.Fatalf("status %d, Mesh-Error %q, body %q", resp.StatusCode, resp.Header.Get("Mesh-Error"), b)
			}
			if n, err := io.CopyN(io.Discard, resp.Body, tc.read); err != nil {
				t.Fatalf("read %d of the first %d bytes of the body: %v", n, tc.read, err)
			}
			if rec, ok := m.record(t, tc.id); !ok || rec.Ended != 0 {
				t.Fatalf("before the client went away, the app's record is %+v (found %v); want its handler running", rec, ok)
			}
			closed := time.Now()
			conn.Close()
			rec := m.waitEnded(t, tc.id, 10*time.Second)
			took := time.Unix(0, rec.Ended).Sub(closed)
			t.Logf("the app's handler ended %s after the client went away (%d written; write error %q, context %q)",
				took.Round(time.Millisecond), rec.N, rec.Err, rec.Ctx)
			if took > within {
				t.Errorf("the app's handler ended %s after the client went away, want within %s", took.Round(time.Millisecond), within)
			}
		})
	}
	// The other way: the client goes away in the middle of a request body
	// the app is reading (declared 50 MiB, or chunked); the app's body must
	// fail (never end as if complete) within 1 s.
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("upload_chunked_%v", chunked), func(t *testing.T) {
			id := fmt.Sprintf("dc-upload-%v", chunked)
			conn, err := net.DialTimeout("tcp", m.outbound, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
			if chunked {
				fmt.Fprintf(conn, "POST /stream/upload?id=%s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n", id, streamService)
				err = writeChunkedPart(conn, 4*mib)
			} else {
				fmt.Fprintf(conn, "POST /stream/upload?id=%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", id, streamService, 50*mib)
				_, err = io.Copy(conn, newPattern(4*mib))
			}
			if err != nil {
				t.Fatalf("send the first 4 MiB of the body: %v", err)
			}
			meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if _, ok := m.record(t, id); !ok {
					return fmt.Errorf("request %s did not reach the app", id)
				}
				return nil
			})
			closed := time.Now()
			conn.Close()
			rec := m.waitEnded(t, id, 10*time.Second)
			took := time.Unix(0, rec.Ended).Sub(closed)
			t.Logf("the app's handler ended %s after the client went away (%d bytes read; body error %q, context %q)",
				took.Round(time.Millisecond), rec.N, rec.Err, rec.Ctx)
			if rec.Err == "" {
				t.Errorf("the app read %d bytes and its body ended without an error, want it to fail", rec.N)
			}
			if took > within {
				t.Errorf("the app's handler ended %s after the client went away, want within %s", took.Round(time.Millisecond), within)
			}
		})
	}
	// The mesh still serves.
	m.download(t, "/stream/download?size=3145728", 3*mib, false)
}

// TestStreamUpstreamCrash has the app close its connection in the middle of
// a response body, declared by Content-Length or chunked, large (streamed
// through the mesh) or small (one message): the client must see an error (a
// failed status, or a body that ends in a read error), never a complete-
// looking 200 with a short body.
func TestStreamUpstreamCrash(t *testing.T) {
	// The breaker off: these failures are on purpose, and the mesh is to
	// serve again right after them.
	m := startStreamMesh(t, natsmeshBin(t), "--breaker", "off")
	for _, tc := range []struct {
		name          string
		size, after   int64
		chunked       bool
		wantMidStream bool // the 200 head reached the client before the crash could be known
	}{
		{"large with Content-Length", 4 * mib, 2 * mib, false, true},
		{"large chunked", 0, 2 * mib, true, true},
		{"small with Content-Length", 1000, 500, false, false},
		{"small chunked", 0, 500, true, false},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			uri := fmt.Sprintf("/stream/crash?size=%d&after=%d", tc.size, tc.after)
			if tc.chunked {
				uri += "&chunked=1"
			}
			resp, err := m.hc.Do(m.request(context.Background(), http.MethodGet, uri, nil, 0))
			if err != nil {
				t.Logf("no response: %v", err)
				return
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			t.Logf("status %d, Mesh-Error %q, %d body bytes, read error %v", resp.StatusCode, resp.Header.Get("Mesh-Error"), n, err)
			if resp.StatusCode == http.StatusOK && err == nil {
				t.Errorf("the app crashed after %d bytes, but the client got a complete-looking 200 with %d bytes", tc.after, n)
			}
		})
	}
	// The mesh still serves.
	m.download(t, "/stream/download?size=3145728&chunked=1", 3*mib, true)
}

// wireWatch records, from a NATS subscription of its own, whether the head
// of each request and of its response carried Mesh-Stream: 1, that is,
// whether its body went inline or as a stream (docs/architecture.md, "Large
// and streaming bodies").
type wireWatch struct {
	mu        sync.Mutex
	requests  map[string]wireHead // by Mesh-Path
	responses map[string]string   // reply subject -> Mesh-Stream of the response head
}

type wireHead struct{ reply, stream string }

func watchWire(t *testing.T, natsURL string) *wireWatch {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.UserCredentials(adminCreds(natsURL)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	w := &wireWatch{requests: map[string]wireHead{}, responses: map[string]string{}}
	handle := func(msg *nats.Msg) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if path := msg.Header.Get("Mesh-Path"); path != "" && msg.Header.Get("Mesh-Method") != "" {
			if _, ok := w.requests[path]; !ok {
				w.requests[path] = wireHead{reply: msg.Reply, stream: msg.Header.Get("Mesh-Stream")}
			}
		}
		if msg.Header.Get("Mesh-Status") != "" {
			if _, ok := w.responses[msg.Subject]; !ok {
				w.responses[msg.Subject] = msg.Header.Get("Mesh-Stream")
			}
		}
	}
	for _, subj := range []string{"mesh.>", "_INBOX.>"} {
		if _, err := nc.Subscribe(subj, handle); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return w
}

// streamed reports whether the request with path, or its response, went as
// a stream, waiting for the subscription to see it.
func (w *wireWatch) streamed(t *testing.T, path string, response bool) bool {
	t.Helper()
	var streamed bool
	meshtest.CheckFor(t, 5*time.Second, 2*time.Millisecond, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		req, ok := w.requests[path]
		if !ok {
			return fmt.Errorf("the request head of %s was not seen on NATS", path)
		}
		if !response {
			streamed = req.stream == "1"
			return nil
		}
		s, ok := w.responses[req.reply]
		if !ok {
			return fmt.Errorf("the response head of %s was not seen on NATS", path)
		}
		streamed = s == "1"
		return nil
	})
	return streamed
}

// TestStreamMessageLimit sends bodies around the one-message limit: the
// largest body that still goes inside the request (or response) message, as
// found on the wire by bisection (a subscription of the test's own sees
// whether a head carries Mesh-Stream: 1), and one byte more, upload and
// download; then max_payload - 4 KiB, max_payload, max_payload + 1 and
// 3 MiB, and chunked uploads and downloads around one 128 KiB chunk. Each
// must arrive whole.
func TestStreamMessageLimit(t *testing.T) {
	m := startStreamMesh(t, natsmeshBin(t))
	nc, err := nats.Connect(m.natsURL, nats.UserCredentials(adminCreds(m.natsURL)))
	if err != nil {
		t.Fatal(err)
	}
	maxPayload := nc.MaxPayload()
	nc.Close()
	wire := watchWire(t, m.natsURL)

	// Paths of one length for every size near the limit, so that the heads
	// of all the probes are of one size.
	upPath := func(size int64, tag string) string { return fmt.Sprintf("/stream/upload?id=%s-%08d", tag, size) }
	downPath := func(size int64, tag string, chunked bool) string {
		p := fmt.Sprintf("/stream/download?size=%08d&id=%s-%08d", size, tag, size)
		if chunked {
			p += "&chunked=1"
		}
		return p
	}
	probeUp := func(size int64, tag string, chunked bool) bool {
		p := upPath(size, tag)
		m.upload(t, strings.TrimPrefix(p, "/stream/upload?id="), size, chunked)
		return wire.streamed(t, p, false)
	}
	probeDown := func(size int64, tag string, chunked bool) bool {
		p := downPath(size, tag, chunked)
		m.download(t, p, size, chunked)
		return wire.streamed(t, p, true)
	}
	// largestInline bisects for the largest size that goes inline, checking
	// every probe's round trip.
	largestInline := func(what string, probe func(size int64) bool) int64 {
		lo, hi := maxPayload-64<<10, maxPayload+1
		if probe(lo) {
			t.Fatalf("%s: a body of %d bytes streamed, want it inline", what, lo)
		}
		if !probe(hi) {
			t.Fatalf("%s: a body of %d bytes went inline, over max_payload %d", what, hi, maxPayload)
		}
		for hi-lo > 1 {
			mid := (lo + hi) / 2
			if probe(mid) {
				hi = mid
			} else {
				lo = mid
			}
		}
		return lo
	}
	upLimit := largestInline("upload", func(size int64) bool { return probeUp(size, "lu", false) })
	downLimit := largestInline("download", func(size int64) bool { return probeDown(size, "ld", false) })
	t.Logf("max_payload %d: the largest inline body is %d bytes for an upload (head %d bytes), %d for a download (head %d bytes)",
		maxPayload, upLimit, maxPayload-upLimit, downLimit, maxPayload-downLimit)

	// Again at the limit and one byte over, then the sizes around max_payload.
	for _, size := range []int64{upLimit, upLimit + 1, maxPayload - 4<<10, maxPayload, maxPayload + 1, 3 * mib} {
		streamed := probeUp(size, "su", false)
		if size == upLimit && streamed || size == upLimit+1 && !streamed {
			t.Errorf("an upload of %d bytes went inline %v, but the bisection found %d the largest inline size", size, !streamed, upLimit)
		}
	}
	for _, size := range []int64{downLimit, downLimit + 1, maxPayload - 4<<10, maxPayload, maxPayload + 1, 3 * mib} {
		streamed := probeDown(size, "sd", false)
		if size == downLimit && streamed || size == downLimit+1 && !streamed {
			t.Errorf("a download of %d bytes went inline %v, but the bisection found %d the largest inline size", size, !streamed, downLimit)
		}
	}
	// Chunked: a body shorter than a chunk may go inline, a longer one streams.
	for _, size := range []int64{0, 1, 128<<10 - 1, 128 << 10, 128<<10 + 1, maxPayload - 4<<10, maxPayload + 1, 3 * mib} {
		up := probeUp(size, "cu", true)
		down := probeDown(size, "cd", true)
		t.Logf("chunked body of %d bytes: upload streamed %v, download streamed %v", size, up, down)
		if size > maxPayload && !up {
			t.Errorf("a chunked upload of %d bytes went inline, over max_payload %d", size, maxPayload)
		}
	}
}

// TestStreamMaxBody runs sidecars with --max-body 2 MiB: a Content-Length
// over it is answered 413 too-large, with the limit in the body, at once and
// without the app seeing the request; a chunked body that grows past it is
// answered 413 too-large and the app sees its body fail; bodies of exactly
// the limit go through.
func TestStreamMaxBody(t *testing.T) {
	const limit = 2 * mib
	m := startStreamMesh(t, natsmeshBin(t), "--max-body", strconv.Itoa(limit))
	mentionsLimit := func(body string) bool {
		for _, s := range []string{"2097152", "2 MiB", "2MiB", "2.0 MiB", "2 MB"} {
			if strings.Contains(body, s) {
				return true
			}
		}
		return false
	}

	t.Run("Content-Length_over", func(t *testing.T) {
		// Only the head is sent: the answer must not wait for the body.
		r := rawExchange(t, m.outbound, fmt.Sprintf("POST /stream/upload?id=mb-over HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n",
			streamService, limit+1), nil)
		if r.resp == nil {
			t.Fatalf("no response to a Content-Length of %d with --max-body %d: %v", limit+1, limit, r.err)
		}
		t.Logf("answered in %s: status %d, Mesh-Error %q, body %q", r.took.Round(time.Microsecond), r.resp.StatusCode, r.resp.Header.Get("Mesh-Error"), r.body)
		if r.resp.StatusCode != http.StatusRequestEntityTooLarge || r.resp.Header.Get("Mesh-Error") != "too-large" || !mentionsLimit(r.body) {
			t.Errorf("status %d, Mesh-Error %q, body %q; want 413, too-large and the limit (%d bytes) in the body",
				r.resp.StatusCode, r.resp.Header.Get("Mesh-Error"), r.body, limit)
		}
		if r.took > time.Second {
			t.Errorf("answered after %s, want at once", r.took)
		}
		// A request sent after it reaches the app; the refused one never did.
		m.upload(t, "mb-after", 1000, false)
		if rec, ok := m.record(t, "mb-over"); ok {
			t.Errorf("the app saw the refused request: %+v", rec)
		}
	})

	t.Run("Content-Length_at_the_limit", func(t *testing.T) {
		m.upload(t, "mb-at", limit, false)
	})

	t.Run("chunked_at_the_limit", func(t *testing.T) {
		m.upload(t, "mb-at-chunked", limit, true)
	})

	t.Run("chunked_over", func(t *testing.T) {
		const id, size = "mb-chunked-over", 4 * mib
		r := rawExchange(t, m.outbound, fmt.Sprintf("POST /stream/upload?id=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n",
			id, streamService), func(w io.Writer) error { return writeChunked(w, size) })
		if r.resp == nil {
			t.Errorf("no response to a chunked body of %d bytes with --max-body %d: %v (sending the body: %v)", size, limit, r.err, r.writeErr)
		} else {
			t.Logf("status %d, Mesh-Error %q, body %q (sending the body: %v)", r.resp.StatusCode, r.resp.Header.Get("Mesh-Error"), r.body, r.writeErr)
			if r.resp.StatusCode != http.StatusRequestEntityTooLarge || r.resp.Header.Get("Mesh-Error") != "too-large" || !mentionsLimit(r.body) {
				t.Errorf("status %d, Mesh-Error %q, body %q; want 413, too-large and the limit (%d bytes) in the body",
					r.resp.StatusCode, r.resp.Header.Get("Mesh-Error"), r.body, limit)
			}
		}
		rec := m.waitEnded(t, id, 5*time.Second)
		t.Logf("the app read %d bytes of the body: %q", rec.N, rec.Err)
		if rec.Err == "" || rec.N > limit {
			t.Errorf("the app read %d bytes and its body ended without an error (%q), want it to fail at %d bytes at most", rec.N, rec.Err, limit)
		}
	})
}

// TestStreamUpgrade sends a WebSocket upgrade request through the caller's
// sidecar: it is answered 501 with one sentence saying that upgrades are not
// supported yet.
func TestStreamUpgrade(t *testing.T) {
	m := startStreamMesh(t, natsmeshBin(t))
	r := rawExchange(t, m.outbound, "GET /chat HTTP/1.1\r\nHost: "+streamService+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", nil)
	if r.resp == nil {
		t.Fatalf("no response: %v", r.err)
	}
	body := strings.TrimSpace(r.body)
	low := strings.ToLower(body)
	t.Logf("status %d, Mesh-Error %q, body %q", r.resp.StatusCode, r.resp.Header.Get("Mesh-Error"), body)
	if r.resp.StatusCode != http.StatusNotImplemented || strings.Contains(body, "\n") ||
		!strings.Contains(low, "upgrade") || !strings.Contains(low, "not supported") {
		t.Errorf("status %d, body %q; want 501 and one sentence saying upgrades are not supported yet", r.resp.StatusCode, body)
	}
}
