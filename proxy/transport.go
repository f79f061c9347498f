package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// ErrTransportClosed is returned for calls made after Close.
var ErrTransportClosed = errors.New("proxy: the transport is closed")

// DefaultTimeout bounds a call when neither the config nor the request's
// context set a shorter deadline.
const DefaultTimeout = 15 * time.Second

// TransportConfig configures a Transport. The zero value is usable.
type TransportConfig struct {
	// Caller is stamped on every request as Mesh-Caller; empty sends none.
	Caller string
	// Prefix is the subject prefix; defaults to bus.DefaultPrefix.
	Prefix string
	// Timeout bounds each call; defaults to DefaultTimeout.
	Timeout time.Duration
	// Egress carries requests for hosts that are not mesh services. Nil
	// refuses them with a forbidden error.
	Egress http.RoundTripper
}

// Transport is an http.RoundTripper that carries requests for mesh services
// (http://ratings/..., http://ratings.mesh/...) over NATS request-reply.
//
// Failures made by the mesh (no instance, timeout, ...) come back as responses
// with a Mesh-Error header and the status in the error table, exactly as the
// sidecar answers them; a deadline of the request's context is such a
// timeout. RoundTrip returns an error when the request's context is
// cancelled, after Close, and for egress requests whose Egress fails.
type Transport struct {
	nc      *nats.Conn
	subj    bus.Subjects
	caller  []string
	timeout time.Duration
	egress  http.RoundTripper

	mux     *replyMux
	callees *callees // set by the sidecar; nil in library mode
	status  chan nats.Status
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport makes a Transport on a caller-owned connection. Close it to
// release its inbox subscription.
func NewTransport(nc *nats.Conn, cfg TransportConfig) (*Transport, error) {
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	t := &Transport{nc: nc, subj: subj, timeout: cfg.Timeout, egress: cfg.Egress, done: make(chan struct{})}
	if t.timeout <= 0 {
		t.timeout = DefaultTimeout
	}
	if cfg.Caller != "" {
		if err := bus.ValidateName("caller", cfg.Caller); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		t.caller = []string{cfg.Caller}
	}
	if t.mux, err = newReplyMux(nc); err != nil {
		return nil, fmt.Errorf("proxy: subscribe to reply inbox: %w", err)
	}
	// When the connection drops, waiting calls can no longer get their
	// replies: fail them at once instead of letting them wait out the timeout.
	t.status = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	t.wg.Add(1)
	go t.watchStatus()
	return t, nil
}

func (t *Transport) isClosed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

func (t *Transport) watchStatus() {
	defer t.wg.Done()
	for {
		select {
		case _, ok := <-t.status:
			if !ok {
				return
			}
			t.mux.failAll()
		case <-t.done:
			return
		}
	}
}

// Close stops the transport. Calls in flight fail. Safe to call twice.
func (t *Transport) Close() error {
	t.once.Do(func() {
		close(t.done)
		t.nc.RemoveStatusListener(t.status)
		t.wg.Wait()
		t.mux.close()
		t.mux.failAll()
		if t.callees != nil {
			t.callees.stop()
		}
	})
	return nil
}

// call is one request to a service, as raw parts, returning the reply message
// or the mesh failure. ctx ending returns ctx's error as a Go error.
func (t *Transport) call(ctx context.Context, service, method, uri, host string, hdr http.Header, body []byte) (*nats.Msg, *bus.Error, error) {
	// The callers (RoundTrip, Outbound) have answered mesh-unavailable
	// already, before reading the body; a drop from here on fails the
	// publish or, once sent, the wait.
	select {
	case <-t.done:
		return nil, nil, ErrTransportClosed
	default:
	}
	now := time.Now()
	deadline := now.Add(t.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	left := deadline.Sub(now)
	if left <= 0 {
		return nil, bus.Errorf(bus.Timeout, "the call to %s had no time left before it was sent", service), nil
	}

	if t.callees != nil {
		t.callees.note(service)
	}
	reply, ch, id := t.mux.register()
	defer t.mux.release(id, ch)

	h := make(nats.Header, len(hdr)+6)
	bus.EncodeRequest(h, method, uri, host, hdr)
	if t.caller != nil {
		h[bus.HeaderCaller] = t.caller
	}
	h[bus.HeaderTimeout] = []string{strconv.FormatInt(max(left.Milliseconds(), 1), 10)}
	msg := &nats.Msg{Subject: t.subj.RPC(service), Reply: reply, Header: h, Data: body}
	if err := t.nc.PublishMsg(msg); err != nil {
		return nil, publishError(err, service, t.nc.MaxPayload()), nil
	}

	timer := time.NewTimer(left)
	defer timer.Stop()
	select {
	case m := <-ch:
		switch {
		case m == nil && t.isClosed():
			return nil, nil, ErrTransportClosed
		case m == nil:
			return nil, bus.Errorf(bus.UpstreamLost, "the NATS connection dropped while waiting for %s to answer; the request may or may not have been processed", service), nil
		case bus.IsNoResponders(m):
			if t.callees != nil {
				if why := t.callees.explain(service); why != "" {
					return nil, bus.Errorf(bus.NoResponders, "no instance of service %q is taking calls%s", service, why), nil
				}
			}
			return nil, bus.Errorf(bus.NoResponders, "no instance of service %q is running; start one with `natsmesh sidecar --service %s`", service, service), nil
		}
		return m, nil, nil
	case <-timer.C:
		return nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, left.Round(time.Millisecond)), nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, left.Round(time.Millisecond)), nil
		}
		return nil, nil, ctx.Err()
	}
}

// unavailable answers mesh-unavailable while the connection is down: the
// request is refused at once, before its body is read, never queued.
func (t *Transport) unavailable() *bus.Error {
	if t.nc.Status() == nats.CONNECTED {
		return nil
	}
	return bus.Errorf(bus.MeshUnavailable, "the proxy is not connected to NATS right now; it reconnects by itself, so retry shortly")
}

func publishError(err error, service string, maxPayload int64) *bus.Error {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return tooLargeRequest(maxPayload)
	case errors.Is(err, nats.ErrBadHeaderMsg):
		return bus.Errorf(bus.BadRequest, "the request has a header NATS cannot carry: %v", err)
	}
	return bus.Errorf(bus.MeshUnavailable, "cannot send the request to %s over NATS (%v); retry shortly", service, err)
}

func tooLargeRequest(maxPayload int64) *bus.Error {
	return bus.Errorf(bus.TooLarge, "the request's headers and body exceed the NATS message limit of %d bytes", maxPayload)
}

// bufPool holds request and response body buffers.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuf() *bytes.Buffer { return bufPool.Get().(*bytes.Buffer) }

func putBuf(b *bytes.Buffer) {
	if b.Cap() > 1<<20 { // keep the pool from pinning large bodies
		return
	}
	b.Reset()
	bufPool.Put(b)
}

// readBody reads r's body into buf, refusing bodies over limit bytes.
func readBody(r *http.Request, buf *bytes.Buffer, limit int64) *bus.Error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	if r.ContentLength > limit {
		return tooLargeRequest(limit)
	}
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return bus.Errorf(bus.BadRequest, "cannot read the request body: %v", err)
	}
	if n > limit {
		return tooLargeRequest(limit)
	}
	return nil
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	if host == "" {
		host = req.Host
	}
	service, isMesh, herr := ServiceFromHost(host)
	if herr == nil && !isMesh {
		if t.egress == nil {
			closeBody(req)
			herr = bus.Errorf(bus.Forbidden, "host %q is not a mesh service and this transport has no egress", host)
		} else {
			return t.egress.RoundTrip(req)
		}
	}
	if herr != nil {
		closeBody(req)
		return errorResponse(req, herr, ""), nil
	}
	if e := t.unavailable(); e != nil {
		closeBody(req)
		return errorResponse(req, e, ""), nil
	}
	buf := getBuf()
	defer putBuf(buf)
	if berr := readBody(req, buf, t.nc.MaxPayload()); berr != nil {
		closeBody(req)
		return errorResponse(req, berr, ""), nil
	}
	closeBody(req)
	reqHost := req.Host
	if reqHost == "" {
		reqHost = req.URL.Host
	}
	m, merr, err := t.call(req.Context(), service, req.Method, req.URL.RequestURI(), reqHost, req.Header, buf.Bytes())
	if err != nil {
		return nil, err
	}
	if merr != nil {
		return errorResponse(req, merr, ""), nil
	}
	return messageResponse(req, m), nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// messageResponse turns a reply message into an *http.Response.
func messageResponse(req *http.Request, m *nats.Msg) *http.Response {
	code, err := strconv.Atoi(bus.First(m.Header, bus.HeaderStatus))
	if err != nil || code < 100 || code > 999 {
		return errorResponse(req, badStatus(), "")
	}
	h := make(http.Header, len(m.Header))
	bus.CopyToHTTP(h, m.Header)
	if inst := bus.First(m.Header, bus.HeaderInstance); inst != "" {
		h[bus.HeaderInstance] = []string{inst}
	}
	if e := bus.First(m.Header, bus.HeaderError); e != "" {
		h[bus.HeaderError] = []string{e}
	}
	resp := &http.Response{
		Status:        bus.StatusText(code) + " " + http.StatusText(code),
		StatusCode:    code,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		ContentLength: int64(len(m.Data)),
		Body:          io.NopCloser(bytes.NewReader(m.Data)),
		Request:       req,
	}
	if req.Method == http.MethodHead {
		resp.ContentLength = -1
		if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil {
			resp.ContentLength = n
		}
		resp.Body = http.NoBody
	}
	return resp
}

// badStatus is the failure for a reply without a valid Mesh-Status.
func badStatus() *bus.Error {
	return bus.Errorf(bus.UpstreamLost, "the reply from the service had no valid %s", bus.HeaderStatus)
}

func errorResponse(req *http.Request, e *bus.Error, instance string) *http.Response {
	h, body := bus.ErrorResponse(e, instance)
	return messageResponse(req, &nats.Msg{Header: h, Data: body})
}
