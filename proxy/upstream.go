package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// Upstream forwards requests to one local HTTP app over a pool of keep-alive
// HTTP/1.1 connections. The request URI goes out byte for byte, redirects are
// never followed and bodies are never decompressed.
//
// It writes requests and reads responses on the calling goroutine (responses
// are parsed by net/http's ReadResponse), rather than through net/http's
// Transport, whose per-connection reader and writer goroutines cost two
// goroutine hand-offs on every request of a sidecar's hottest path.
type Upstream struct {
	host    string // host:port of the app
	tls     *tls.Config
	dialer  net.Dialer
	maxIdle int

	mu   sync.Mutex
	idle []*upstreamConn // most recently used last
}

var _ http.Handler = (*Upstream)(nil)

type upstreamConn struct {
	c        net.Conn
	cw       *countingWriter
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
}

// countingWriter counts the bytes that reached the connection, so that a
// request is only sent again when none of it did.
type countingWriter struct {
	c net.Conn
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.c.Write(p)
	w.n += int64(n)
	return n, err
}

const (
	upstreamIdleTimeout = 90 * time.Second
	// A connection idle for longer than this is checked for a close by the
	// app before it is reused (apps commonly close idle connections after a
	// few seconds).
	upstreamCheckAfter = time.Second
)

// DefaultMaxIdle is how many idle connections to the app an Upstream keeps.
const DefaultMaxIdle = 64

// NewUpstream makes an Upstream for an app at rawURL (http://127.0.0.1:PORT),
// keeping up to maxIdle idle connections to it (0 means DefaultMaxIdle).
func NewUpstream(rawURL string, maxIdle int) (*Upstream, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("proxy: upstream %q is not an http:// or https:// URL with a host (for example http://127.0.0.1:8080)", rawURL)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("proxy: upstream %q has a path; give only scheme, host and port", rawURL)
	}
	if maxIdle <= 0 {
		maxIdle = DefaultMaxIdle
	}
	up := &Upstream{host: u.Host, maxIdle: maxIdle}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		up.host = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		up.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	up.dialer = net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return up, nil
}

// Close closes the idle connections to the app.
func (u *Upstream) Close() {
	u.mu.Lock()
	idle := u.idle
	u.idle = nil
	u.mu.Unlock()
	for _, pc := range idle {
		pc.c.Close()
	}
}

// ServeHTTP forwards r to the app, in library mode (the sidecar calls
// forward directly with the parts of the NATS message). Headers pass through
// the same codec as a proxied call: hop-by-hop headers are dropped both ways.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	buf := getBuf()
	defer putBuf(buf)
	if r.Body != nil {
		if _, err := buf.ReadFrom(r.Body); err != nil {
			WriteError(w, r, bus.Errorf(bus.BadRequest, "cannot read the request body: %v", err))
			return
		}
	}
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") && uri != "*" { // absent, or absolute-form
		uri = r.URL.RequestURI()
	}
	hdr := make(nats.Header, len(r.Header)+1)
	bus.PutHTTPHeader(hdr, r.Header)
	if c := r.Header.Values(bus.HeaderCaller); len(c) > 0 {
		hdr[bus.HeaderCaller] = c[:1]
	}
	rw, ours := w.(*responseWriter)
	if !ours {
		rw = &responseWriter{buf: getBuf(), limit: 1 << 62}
		defer putBuf(rw.buf)
	}
	deadline, _ := r.Context().Deadline()
	if e := u.forward(r.Context(), deadline, r.Method, uri, r.Host, hdr, buf.Bytes(), rw); e != nil {
		if ours {
			rw.setMeshError(e)
			return
		}
		WriteError(w, r, e)
		return
	}
	if !ours {
		end := make(nats.Header, len(rw.header))
		bus.PutHTTPHeader(end, rw.header)
		bus.CopyToHTTP(w.Header(), end)
		w.WriteHeader(rw.status)
		_, _ = w.Write(rw.buf.Bytes())
	}
}

// forward sends one request to the app and reads its response into w. hdr
// holds the request's headers as the codec puts them in a message: names are
// mapped back with bus.HTTPName, and Mesh-Caller is passed on so the app
// knows its caller.
// The deadline (zero: none) bounds the whole exchange through the
// connection's own deadline, which costs no timer or context per request;
// ctx is watched only when it can be cancelled.
func (u *Upstream) forward(ctx context.Context, deadline time.Time, method, uri, host string, hdr nats.Header, body []byte, w *responseWriter) *bus.Error {
	if e := validRequestLine(method, uri, host); e != nil {
		return e
	}
	for attempt := 0; ; attempt++ {
		// A streamed request body cannot be sent twice: it goes on a new
		// connection, which the app cannot have closed meanwhile.
		pc, reused, err := u.get(ctx, deadline, attempt > 0 || w.reqBody != nil)
		if err != nil {
			return u.failure(ctx, deadline, err)
		}
		sent, read, err := u.exchange(ctx, deadline, pc, method, uri, host, hdr, body, w)
		if err == nil {
			return nil
		}
		pc.c.Close()
		if w.err != nil {
			return w.err
		}
		if he, ok := err.(*bus.Error); ok {
			return he
		}
		// The app may have closed a kept-alive connection just as it was
		// reused. Send again on a new one when that cannot run the request
		// twice: not one byte of it reached the connection, or the method is
		// idempotent and no response had begun.
		if attempt == 0 && reused && !read && (sent == 0 || traffic.Idempotent(method, nil)) && ctx.Err() == nil && !isTimeout(err) {
			w.reset()
			continue
		}
		return u.failure(ctx, deadline, err)
	}
}

// exchange writes the request on pc and reads the response. It reports how
// many bytes of the request reached the connection and whether any response
// byte was read; pc goes back to the pool only on success.
//
// For a Server's call (w.srv set) a request body may stream in (w.reqBody)
// and the response body may stream out (see streamBody); a cancel by the
// caller closes the connection, and while a body streams each read or write
// on the connection is bounded by the call's timeout as an idle timeout
// instead of the call's deadline.
func (u *Upstream) exchange(ctx context.Context, deadline time.Time, pc *upstreamConn, method, uri, host string, hdr nats.Header, body []byte, w *responseWriter) (sent int64, read bool, err error) {
	_ = pc.c.SetDeadline(deadline)
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(aLongTimeAgo) })
		defer stop()
	}
	if w.cs != nil && w.cs.setHook(func() { pc.c.Close() }) {
		return 0, false, cancelledError()
	}
	pc.cw.n = 0
	partial, err := u.sendRequest(deadline, pc, method, uri, host, hdr, body, w)
	sent = pc.cw.n
	if err != nil {
		return sent, false, err
	}
	if _, err := pc.br.Peek(1); err != nil {
		return sent, false, err
	}
	resp, err := u.readResponse(pc, method, w)
	if err != nil {
		return sent, true, err
	}
	// Back to the pool only if the cancellation hooks can no longer fire
	// on it, and with no deadline left on it.
	if resp.Close || partial || !stop() || (w.cs != nil && w.cs.setHook(nil)) {
		pc.c.Close()
		return sent, true, nil
	}
	_ = pc.c.SetDeadline(time.Time{})
	u.put(pc)
	return sent, true, nil
}

// sendRequest writes the request to the app. partial: the app answered
// before the whole streamed body was sent.
func (u *Upstream) sendRequest(deadline time.Time, pc *upstreamConn, method, uri, host string, hdr nats.Header, body []byte, w *responseWriter) (partial bool, err error) {
	if w.reqBody == nil {
		return false, writeRequest(pc.bw, method, uri, host, u.host, hdr, body)
	}
	err = u.sendBody(pc, method, uri, host, hdr, w)
	if errors.Is(err, errEarlyAnswer) || err != nil && !isBusError(err) && answered(pc, earlyAnswerWait) {
		// The app answered without reading the whole body (its own 401 or
		// 413, say) and may have closed: its answer is what the client
		// gets, as from a direct call.
		_ = pc.c.SetDeadline(deadline)
		return true, nil
	}
	return false, err
}

// readResponse reads the app's response (past any 1xx) into w: inline, or
// streamed when its body does not fit one message or is an event stream.
func (u *Upstream) readResponse(pc *upstreamConn, method string, w *responseWriter) (*http.Response, error) {
	resp, err := http.ReadResponse(pc.br, requestFor(method))
	for err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 {
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, bus.Errorf(bus.UpstreamUnreachable, "the app switched protocols (%s), which the mesh does not carry", resp.Header.Get("Upgrade"))
		}
		resp, err = http.ReadResponse(pc.br, requestFor(method)) // skip 1xx
	}
	if err != nil {
		return nil, err
	}
	w.header = resp.Header
	w.WriteHeader(resp.StatusCode)
	if w.srv != nil && method != http.MethodHead && bodyAllowed(resp.StatusCode) &&
		(resp.ContentLength < 0 || isEventStream(resp.Header) || !fitsMessage(resp.Header, 0, resp.ContentLength, w.limit)) {
		return resp, u.streamBody(pc, resp, w)
	}
	_, err = w.readInline(resp.Body)
	return resp, err
}

// isEventStream reports whether a response is a stream of server-sent
// events, which always streams: each event goes as soon as the app sends it.
func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	return len(ct) >= len("text/event-stream") && strings.EqualFold(ct[:len("text/event-stream")], "text/event-stream")
}

// errEarlyAnswer stops sending a request body: the app has answered.
var errEarlyAnswer = errors.New("proxy: the app answered before reading the whole request body")

// earlyAnswerWait is how long a failed write of a request body waits for an
// answer the app may have sent before it closed the connection.
const earlyAnswerWait = 100 * time.Millisecond

// answered reports whether the app has sent response bytes on pc, waiting
// up to wait for them (0: a look at what has arrived, bounded by a few
// microseconds). It leaves the read deadline unset.
func answered(pc *upstreamConn, wait time.Duration) bool {
	if pc.br.Buffered() > 0 {
		return true
	}
	_ = pc.c.SetReadDeadline(time.Now().Add(max(wait, 20*time.Microsecond)))
	_, err := pc.br.Peek(1)
	_ = pc.c.SetReadDeadline(time.Time{})
	return err == nil
}

func isBusError(err error) bool {
	var e *bus.Error
	return errors.As(err, &e)
}

// sendBody writes a request whose body streams in: the head, then each
// chunk as it arrives (chunked encoding when its length is unknown), with
// each write bounded by the idle timeout. The call's timeout for the
// response counts from the body's end.
func (u *Upstream) sendBody(pc *upstreamConn, method, uri, host string, hdr nats.Header, w *responseWriter) error {
	_ = pc.c.SetDeadline(time.Now().Add(w.idle))
	if err := writeHead(pc.bw, method, uri, host, u.host, hdr, w.reqLen, w.reqLen < 0); err != nil {
		return err
	}
	if err := pc.bw.Flush(); err != nil {
		return err
	}
	var total int64
	var num [20]byte
	for {
		data, err := w.reqBody.nextChunk()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		total += int64(len(data))
		if w.reqLen >= 0 && total > w.reqLen {
			return bus.Errorf(bus.BadRequest, "the request body is longer than its Content-Length of %d", w.reqLen)
		}
		if answered(pc, 0) {
			return errEarlyAnswer
		}
		_ = pc.c.SetWriteDeadline(time.Now().Add(w.idle))
		if w.reqLen < 0 {
			pc.bw.Write(strconv.AppendInt(num[:0], int64(len(data)), 16))
			pc.bw.WriteString("\r\n")
		}
		pc.bw.Write(data)
		if w.reqLen < 0 {
			pc.bw.WriteString("\r\n")
		}
		if err := pc.bw.Flush(); err != nil {
			return err
		}
	}
	if w.reqLen >= 0 && total != w.reqLen {
		return bus.Errorf(bus.BadRequest, "the request body ended after %d of its %d bytes", total, w.reqLen)
	}
	if w.reqLen < 0 {
		pc.bw.WriteString("0\r\n\r\n")
	}
	if err := pc.bw.Flush(); err != nil {
		return err
	}
	_ = pc.c.SetDeadline(time.Now().Add(w.idle))
	return nil
}

// streamBody passes the app's response body on. A body of unknown length
// that ends within its first reads still goes inline; any other goes as a
// head with the first bytes, then a chunk per read, each read from the app
// bounded by the idle timeout rather than the call's deadline, so that a
// long download or event stream lives while it moves.
func (u *Upstream) streamBody(pc *upstreamConn, resp *http.Response, w *responseWriter) error {
	bp := getChunk()
	defer putChunk(bp)
	buf := (*bp)[:chunkSize(w.limit)]
	eof := false
	if !isEventStream(resp.Header) {
		// The first read, and what has arrived with it.
		n := 0
		for n < len(buf) {
			_ = pc.c.SetReadDeadline(time.Now().Add(w.idle))
			k, err := resp.Body.Read(buf[n:])
			n += k
			if err == io.EOF {
				eof = true
				break
			}
			if err != nil {
				return err
			}
			if pc.br.Buffered() == 0 {
				break
			}
		}
		if eof && resp.ContentLength < 0 && fitsMessage(resp.Header, 0, int64(n), w.limit) {
			w.buf.Write(buf[:n])
			return nil
		}
		w.buf.Write(buf[:n])
	}
	if e := w.startStream(); e != nil {
		return e
	}
	if w.cs.setHook(func() { pc.c.Close() }) {
		return cancelledError()
	}
	for !eof {
		_ = pc.c.SetReadDeadline(time.Now().Add(w.idle))
		n := 0
		var err error
		for n < len(buf) {
			var k int
			k, err = resp.Body.Read(buf[n:])
			n += k
			if err != nil || pc.br.Buffered() == 0 {
				break
			}
		}
		if n > 0 {
			if e := w.snd.write(buf[:n]); e != nil {
				return e
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return nil
}

var aLongTimeAgo = time.Unix(1, 0)

// Static requests for http.ReadResponse, which only looks at the method to
// know whether a body follows.
var (
	headRequest    = &http.Request{Method: http.MethodHead}
	connectRequest = &http.Request{Method: http.MethodConnect}
	otherRequest   = &http.Request{Method: http.MethodGet}
)

func requestFor(method string) *http.Request {
	switch method {
	case http.MethodHead:
		return headRequest
	case http.MethodConnect:
		return connectRequest
	}
	return otherRequest
}

func (u *Upstream) failure(ctx context.Context, deadline time.Time, err error) *bus.Error {
	switch {
	case !deadline.IsZero() && !time.Now().Before(deadline),
		errors.Is(ctx.Err(), context.DeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.Is(err, io.ErrNoProgress):
		return bus.Errorf(bus.Timeout, "the app at %s did not answer before the call's deadline", u.host)
	case ctx.Err() != nil:
		return bus.Errorf(bus.UpstreamLost, "the call was cancelled before the app at %s answered", u.host)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return bus.Errorf(bus.UpstreamUnreachable, "the app at %s closed the connection without a complete response", u.host)
	}
	if isTimeout(err) {
		return bus.Errorf(bus.Timeout, "the app at %s did not answer before the call's deadline", u.host)
	}
	var pe *net.OpError
	if errors.As(err, &pe) {
		return bus.Errorf(bus.UpstreamUnreachable, "the app at %s cannot be reached: %v", u.host, pe)
	}
	return bus.Errorf(bus.UpstreamUnreachable, "the app at %s sent no valid HTTP response: %v", u.host, err)
}

// get takes an idle connection (reused) or dials a new one.
func (u *Upstream) get(ctx context.Context, deadline time.Time, fresh bool) (*upstreamConn, bool, error) {
	now := time.Now()
	// A retry dials: the connections pooled beside the one that failed are
	// likely closed by the same restart of the app.
	for !fresh {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			break
		}
		pc := u.idle[n-1]
		u.idle[n-1] = nil
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		idle := now.Sub(pc.lastUsed)
		if idle > upstreamIdleTimeout || (idle > upstreamCheckAfter && !connAlive(pc.c)) || pc.br.Buffered() > 0 {
			pc.c.Close()
			continue
		}
		return pc, true, nil
	}
	d := u.dialer
	if !deadline.IsZero() {
		d.Deadline = deadline
	}
	c, err := d.DialContext(ctx, "tcp", u.host)
	if err != nil {
		return nil, false, err
	}
	if u.tls != nil {
		tc := tls.Client(c, u.tls)
		_ = tc.SetDeadline(deadline)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, false, err
		}
		c = tc
	}
	cw := &countingWriter{c: c}
	return &upstreamConn{c: c, cw: cw, br: bufio.NewReaderSize(c, 8<<10), bw: bufio.NewWriterSize(cw, 8<<10)}, false, nil
}

func (u *Upstream) put(pc *upstreamConn) {
	now := time.Now()
	pc.lastUsed = now
	var stale *upstreamConn
	u.mu.Lock()
	// The oldest idle connection is at the bottom of the stack, where get
	// never looks while traffic flows: retire it here once it is too old.
	if len(u.idle) > 0 && now.Sub(u.idle[0].lastUsed) > upstreamIdleTimeout {
		stale = u.idle[0]
		copy(u.idle, u.idle[1:])
		u.idle[len(u.idle)-1] = nil
		u.idle = u.idle[:len(u.idle)-1]
	}
	if len(u.idle) < u.maxIdle {
		u.idle = append(u.idle, pc)
		pc = nil
	}
	u.mu.Unlock()
	if stale != nil {
		stale.c.Close()
	}
	if pc != nil {
		pc.c.Close()
	}
}

// writeRequest writes an HTTP/1.1 request. Hop-by-hop headers were removed
// when the request entered the mesh; Host and Content-Length are written here.
func writeRequest(bw *bufio.Writer, method, uri, host, defaultHost string, hdr map[string][]string, body []byte) error {
	length := int64(len(body))
	if length == 0 && method != http.MethodPost && method != http.MethodPut && method != http.MethodPatch {
		length = -1
	}
	if err := writeHead(bw, method, uri, host, defaultHost, hdr, length, false); err != nil {
		return err
	}
	bw.Write(body)
	return bw.Flush()
}

// writeHead writes a request's line and headers, with Content-Length when
// length is not negative, else Transfer-Encoding: chunked if chunked.
func writeHead(bw *bufio.Writer, method, uri, host, defaultHost string, hdr map[string][]string, length int64, chunked bool) error {
	if host == "" {
		host = defaultHost
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vv := range hdr {
		name, ok := bus.HTTPName(k)
		if !ok {
			if k != bus.HeaderCaller {
				continue
			}
			name = k
		}
		if name == "Host" || name == "Content-Length" || bus.HopByHop(name) {
			continue
		}
		if !validHeaderName(name) {
			return bus.Errorf(bus.BadRequest, "header name %q is not valid HTTP", name)
		}
		for _, v := range vv {
			if !validHeaderValue(v) {
				return bus.Errorf(bus.BadRequest, "the value of header %s has a control character", name)
			}
			bw.WriteString(name)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	switch {
	case length >= 0:
		var num [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(num[:0], length, 10))
		bw.WriteString("\r\n")
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
	return nil
}

// validRequestLine guards against a message that would smuggle a second
// request into the app's connection.
func validRequestLine(method, uri, host string) *bus.Error {
	if !validHeaderName(method) {
		return bus.Errorf(bus.BadRequest, "method %q is not a valid HTTP method", method)
	}
	if uri == "" || (uri[0] != '/' && uri != "*") {
		return bus.Errorf(bus.BadRequest, "request URI %q must start with /", uri)
	}
	for i := 0; i < len(uri); i++ {
		if c := uri[i]; c <= ' ' || c == 0x7f {
			return bus.Errorf(bus.BadRequest, "request URI %q has a space or control character", uri)
		}
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c == 0x7f || c == '/' {
			return bus.Errorf(bus.BadRequest, "Host %q is not a valid host", host)
		}
	}
	return nil
}

// validHeaderName reports whether s is an HTTP token (RFC 9110 section 5.6.2).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || !tokenChar[c] {
			return false
		}
	}
	return true
}

var tokenChar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validHeaderValue rejects CR, LF, NUL and other controls except tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
