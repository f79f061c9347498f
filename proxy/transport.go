package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// ErrTransportClosed is returned for calls made after Close.
var ErrTransportClosed = errors.New("proxy: the transport is closed")

// ErrInvalidConfig is wrapped by the errors of a TransportConfig or a
// ServeConfig that NewTransport or Serve refuses; the error names the field.
var ErrInvalidConfig = errors.New("proxy: invalid config")

// invalid is an error of config field f.
func invalid(f string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, f, err)
}

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
	// Retry says when failed calls are tried again; the zero value is the
	// default policy.
	Retry traffic.RetryPolicy
	// Breaker configures the circuit breaker kept per destination service;
	// zero values are the breaker package's defaults. DisableBreaker turns
	// breakers off.
	Breaker        breaker.Settings
	DisableBreaker bool
	// AckWait is how long a call waits for an answer or an acknowledgement
	// from the instance that took it before the request counts as lost
	// (default DefaultAckWait); ProbeInterval is how often the instance
	// holding an acknowledged call is probed (default DefaultProbeInterval).
	AckWait, ProbeInterval time.Duration
	// Logger receives one line per retry, timeout and breaker transition
	// (at most a few per second; the rest are counted); defaults to
	// slog.Default().
	Logger *slog.Logger
	// TracerProvider, if set, records a client span per call, whose trace
	// context the request carries; nil records nothing.
	TracerProvider trace.TracerProvider
	// Configs, if set, delivers the config documents of the services the
	// Transport calls: their routes, load-balancing policy, faults, timeout,
	// retries and breaker, which override the fields above service by
	// service. The first call to a service starts watching its document;
	// nil uses the fields above for every service.
	Configs ConfigSource
	// MaxBody limits request bodies (default DefaultMaxBody): a larger
	// Content-Length is answered 413 too-large before the body is read, and
	// a body of unknown length that grows past it is aborted.
	MaxBody int64
	// Follow keeps a registry view of the services the Transport calls
	// (their heartbeats, from the first call to each on), as a sidecar
	// does: the round-robin, least-request and ring-hash policies pick
	// instances from it, and a no-responders failure says what it knows.
	// Without it those policies fall back to the queue group.
	Follow bool
	// Zone is where the caller runs (a name like a service's; "" for
	// none): with Follow, the round-robin, least-request, ring-hash and
	// random policies pick among the passing instances whose heartbeats
	// name the same zone, and among all only when none of those is usable.
	// The queue policy ignores it: NATS picks.
	Zone string
	// Metrics, if set, records every call on its outbound edge to the
	// service (and subset) it went to: status class and Mesh-Error code,
	// retries, latency to the response's head, calls in flight, and the
	// state of each breaker.
	Metrics *metrics.Set
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
	timeout time.Duration
	egress  http.RoundTripper
	maxBody int64

	tracer        *tracer
	metrics       *metrics.Set
	base          traffic.Base
	defaults      *traffic.Policy // of services without a config
	ackWait       time.Duration
	probeInterval time.Duration
	probes        *prober
	logs          *limitedLog

	configs     ConfigSource
	cfgs        sync.Map // service → *serviceConfig
	cfgCount    atomic.Int64
	watchCtx    context.Context
	watchCancel context.CancelFunc
	watchMu     sync.Mutex
	watchStops  []func()
	watchErr    sync.Once

	mux     *replyMux
	callees *callees // with Follow; nil otherwise
	status  chan nats.Status
	upMu    sync.Mutex
	up      chan struct{} // closed while the connection is up
	// reconnected is when the connection last came back (unix nanoseconds),
	// 0 before the first reconnect.
	reconnected atomic.Int64
	done        chan struct{}
	wg          sync.WaitGroup
	once        sync.Once
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport makes a Transport on a caller-owned connection. Close it to
// release its inbox subscription.
func NewTransport(nc *nats.Conn, cfg TransportConfig) (*Transport, error) {
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, invalid("TransportConfig.Prefix", err)
	}
	if cfg.Caller != "" {
		if err := bus.ValidateName("caller", cfg.Caller); err != nil {
			return nil, invalid("TransportConfig.Caller", err)
		}
		subj.Caller = cfg.Caller
	}
	if cfg.Zone != "" {
		if err := bus.ValidateName("zone", cfg.Zone); err != nil {
			return nil, invalid("TransportConfig.Zone", err)
		}
	}
	t := &Transport{nc: nc, subj: subj, timeout: cfg.Timeout, egress: cfg.Egress, maxBody: cfg.MaxBody, done: make(chan struct{})}
	if t.timeout <= 0 {
		t.timeout = DefaultTimeout
	}
	if t.maxBody <= 0 {
		t.maxBody = DefaultMaxBody
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t.logs = newLimitedLog(cfg.Logger, logLinesPerSecond)
	t.tracer = newTracer(cfg.TracerProvider)
	retry := cfg.Retry.WithDefaults()
	t.ackWait, t.probeInterval = cfg.AckWait, cfg.ProbeInterval
	if t.ackWait <= 0 {
		t.ackWait = DefaultAckWait
	}
	if t.probeInterval <= 0 {
		t.probeInterval = DefaultProbeInterval
	}
	t.probes = newProber(nc, subj, t.probeInterval)
	t.metrics = cfg.Metrics
	bs := cfg.Breaker
	user := bs.OnStateChange
	bs.OnStateChange = func(name string, from, to breaker.State) {
		t.logs.always(slog.LevelWarn, "circuit breaker changed state", "service", name, "from", from.String(), "to", to.String())
		if t.metrics != nil {
			t.metrics.SetBreaker(name, to)
		}
		if user != nil {
			user(name, from, to)
		}
	}
	t.base = traffic.Base{Timeout: t.timeout, Retry: retry, Breaker: bs, DisableBreaker: cfg.DisableBreaker}
	t.defaults = traffic.Defaults(&t.base, breaker.DefaultMaxBreakers)
	if cfg.Configs != nil {
		t.configs = cfg.Configs
		t.watchCtx, t.watchCancel = context.WithCancel(context.Background())
	}
	t.up = make(chan struct{})
	close(t.up)
	if t.mux, err = newReplyMux(nc); err != nil {
		return nil, fmt.Errorf("proxy: subscribe to reply inbox: %w", err)
	}
	if cfg.Follow {
		if t.callees, err = newCallees(nc, subj, cfg.Zone); err != nil {
			t.mux.close()
			return nil, err
		}
	}
	// When the connection drops, waiting calls can no longer get their
	// replies: fail them at once instead of letting them wait out the timeout.
	t.status = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	t.wg.Go(t.watchStatus)
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
	for {
		select {
		case st, ok := <-t.status:
			if !ok {
				return
			}
			if st == nats.CONNECTED {
				t.reconnected.Store(time.Now().UnixNano())
			}
			t.setUp(st == nats.CONNECTED)
			if st != nats.CONNECTED {
				t.mux.failAll()
			}
		case <-t.done:
			return
		}
	}
}

// setUp records whether the connection is up: calls waiting to retry wait on
// t.up, which is closed while it is.
func (t *Transport) setUp(up bool) {
	t.upMu.Lock()
	defer t.upMu.Unlock()
	select {
	case <-t.up:
		if !up {
			t.up = make(chan struct{})
		}
	default:
		if up {
			close(t.up)
		}
	}
}

// upSignal is closed when the connection is up.
func (t *Transport) upSignal() <-chan struct{} {
	t.upMu.Lock()
	defer t.upMu.Unlock()
	return t.up
}

// Close stops the transport. Calls in flight fail. Safe to call twice.
func (t *Transport) Close() error {
	t.once.Do(func() {
		close(t.done)
		t.stopWatches()
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

func (t *Transport) noResponders(service, subset, instance string) *bus.Error {
	if instance != "" {
		return bus.Errorf(bus.NoResponders, "instance %s of service %q, picked by the load balancer, is gone", instance, service)
	}
	if subset != "" {
		why := ""
		if t.callees != nil {
			why = t.callees.explain(service, subset)
		}
		return bus.Errorf(bus.NoResponders, "no instance serves subset %s of service %q, which its config routes the call to%s; start one with `natsmesh sidecar --service %s --subset %s`", subset, service, why, service, subset)
	}
	if t.callees != nil {
		if why := t.callees.explain(service, ""); why != "" {
			return bus.Errorf(bus.NoResponders, "no instance of service %q is taking calls%s", service, why)
		}
	}
	return bus.Errorf(bus.NoResponders, "no instance of service %q is running; start one with `natsmesh sidecar --service %s`", service, service)
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

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	if host == "" {
		host = req.Host
	}
	service, isMesh, herr := bus.ServiceFromHost(host)
	if herr == nil && !isMesh {
		if t.egress != nil {
			return t.egress.RoundTrip(req)
		}
		herr = bus.Errorf(bus.Forbidden, "host %q is not a mesh service and this transport has no egress", host)
	}
	if herr != nil {
		closeBody(req)
		return errorResponse(req, herr, ""), nil
	}
	reqHost := req.Host
	if reqHost == "" {
		reqHost = req.URL.Host
	}
	uri := req.URL.RequestURI()
	buf := getBuf()
	defer putBuf(buf)
	length := req.ContentLength
	if length == 0 {
		length = -1 // a body with ContentLength 0 is of unknown length
	}
	rb, body, e := t.prepare(service, req.Header, req.Body, length, len(uri)+len(reqHost), buf)
	if rb != nil {
		defer closeBody(req)
	} else {
		closeBody(req)
	}
	if e != nil {
		return errorResponse(req, e, ""), nil
	}
	r, err := t.call(req.Context(), service, req.Method, uri, reqHost, req.Header, body, rb)
	var resp *http.Response
	switch e := meshError(err); {
	case e != nil:
		resp = errorResponse(req, e, "")
	case err != nil:
		return nil, err
	case r.st != nil:
		resp = streamResponse(req, r.m, r.st)
	default:
		resp = messageResponse(req, r.m)
	}
	addCallHeaders(resp.Header, &r)
	return resp, nil
}

// prepare is what both caller entry points (RoundTrip and Forward) check
// before a call, in this order: the NATS connection is up (else
// mesh-unavailable at once, before the body is read, never queued), the
// request is no upgrade, and its body fits (read into buf when it fits one
// message, else a reqStream to send in chunks). A failure is counted on the
// service's edge.
func (t *Transport) prepare(service string, hdr http.Header, body io.Reader, length int64, extra int, buf *bytes.Buffer) (*reqStream, []byte, *bus.Error) {
	e := t.unavailable()
	if e == nil && isUpgrade(hdr) {
		e = notSupportedUpgrade(hdr)
	}
	var rb *reqStream
	if e == nil {
		rb, e = t.takeBody(body, length, hdr, extra, buf)
	}
	if e != nil {
		t.recordEarly(service, e)
		return nil, nil, e
	}
	if rb != nil {
		return rb, nil, nil
	}
	return nil, buf.Bytes(), nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// messageResponse turns a reply message into an *http.Response.
func messageResponse(req *http.Request, m *nats.Msg) *http.Response {
	code, ok := replyStatus(m)
	if !ok {
		return errorResponse(req, badStatus(), "")
	}
	h := make(http.Header, len(m.Header))
	copyReplyHeaders(h, m)
	resp := &http.Response{
		Status:        bus.StatusCode(code) + " " + http.StatusText(code),
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
