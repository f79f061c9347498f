package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// DefaultMaxInflight is the default concurrency limit of one instance.
const DefaultMaxInflight = 1024

// DefaultMaxTimeout is the longest deadline a request may ask for.
const DefaultMaxTimeout = 5 * time.Minute

// Defaults of ServeConfig.BodyStart and BodyIdle. A caller's first bytes go
// as they come and a sidecar or gateway cuts off a client body that gives
// nothing for 10 s (httpguard), so 20 s leaves room; later chunks gather 64
// KiB, which a client at the slowest rate httpguard allows sends in 64 s.
const (
	DefaultBodyStart = 20 * time.Second
	DefaultBodyIdle  = 2 * time.Minute
)

// ServeConfig configures Serve.
type ServeConfig struct {
	// Service is the service this instance belongs to. Required.
	Service string
	// Subset, if set, is the subset of the service this instance belongs
	// to (a version, say): besides the service's queue group it joins the
	// subset's, <prefix>.rpc.<service>.<subset> in group <service>.<subset>,
	// where routes that pick the subset send.
	Subset string
	// Instance identifies this instance; defaults to "<service>-<random>".
	Instance string
	// Prefix is the subject prefix; defaults to bus.DefaultPrefix.
	Prefix string
	// MaxInflight limits requests handled at once; beyond it requests are
	// answered `overloaded` at once. Defaults to DefaultMaxInflight.
	MaxInflight int
	// Timeout is the deadline of a request that carries no Mesh-Timeout (one
	// sent by a plain NATS client); defaults to DefaultTimeout.
	Timeout time.Duration
	// MaxTimeout caps the deadline a caller may ask for with Mesh-Timeout;
	// defaults to DefaultMaxTimeout.
	MaxTimeout time.Duration
	// BodyStart bounds the wait for the first chunk of a streamed request
	// body, and BodyIdle the wait for each next one, within the request's
	// deadline: a caller that sends a streamed head and no body holds its
	// slot that long, not for the deadline it asked. Default
	// DefaultBodyStart and DefaultBodyIdle.
	BodyStart, BodyIdle time.Duration
	// Logger receives operational messages; defaults to slog.Default().
	Logger *slog.Logger
	// Outcome, if set, is told of every request whether the app failed it
	// (answered 5xx, could not be reached, or did not answer in time). A
	// non-zero duration it returns means this failure ejected the instance
	// for that long; the response says so in Mesh-Ejected.
	Outcome func(failed bool) time.Duration
	// TracerProvider, if set, records a server span per request, whose trace
	// context the request to the app carries; nil records nothing.
	TracerProvider trace.TracerProvider
	// Metrics, if set, records every request on its inbound edge from the
	// calling service (Mesh-Caller; "(unknown)" when there is none): its
	// status class and Mesh-Error code, its latency, and calls in flight.
	Metrics *metrics.Set
	// Configs, if set, delivers the config document of the instance's own
	// service, whose callers list the instance enforces: a call from a
	// service the list does not name (or from an unnamed caller, when there
	// is a list) is answered 403 forbidden before it is admitted or reaches
	// the handler. A new revision applies to the next call. Serve waits for
	// the current document as Watch does (about a second at most when the
	// store does not answer, after which every caller is accepted until it
	// does). Nil accepts calls from every caller.
	Configs ConfigSource
}

// Server answers one service instance's NATS requests with an http.Handler.
type Server struct {
	nc       *nats.Conn
	h        http.Handler
	service  string
	subset   string
	instance string
	inst     []string    // Mesh-Instance value, shared by every response
	ackHdr   nats.Header // the header of every acknowledgement
	outcome  func(failed bool) time.Duration
	tracer   *tracer
	metrics  *metrics.Set
	max      int64
	log      *slog.Logger

	timeout, maxTimeout time.Duration
	bodyStart, bodyIdle time.Duration

	subj     bus.Subjects
	subMu    sync.Mutex
	queues   []*nats.Subscription // the service's and the subset's; nil while paused
	direct   *nats.Subscription
	stopped  bool
	inflight atomic.Int64
	slots    *callerSlots
	streams  sync.Map       // reply subject → *calleeStream, of streamed calls
	wg       sync.WaitGroup // requests being served
	admit    sync.Mutex     // orders wg.Add before the final wg.Wait
	closed   bool
	stopOnce sync.Once

	served, rejected, malformed, failed, forbidden atomic.Uint64
	busy                                           atomic.Int64 // nanoseconds spent serving
	lastErr                                        atomic.Pointer[string]

	// callers is the service's callers list in force (nil: every caller),
	// kept by the watch of its config document.
	callers atomic.Pointer[callerPolicy]
	cfgMu   sync.Mutex // orders applies
	cfgStop func()
	cfgOnce sync.Once
}

// Serve subscribes the instance to the service's queue group
// (<prefix>.rpc.<service>, group <service>), to its subset's if it has one
// (<prefix>.rpc.<service>.<subset>, group <service>.<subset>) and to its own
// subject (<prefix>.inst.<instance>), and answers each request with h. The
// connection is the caller's; Drain or Stop the Server before closing it.
func Serve(nc *nats.Conn, h http.Handler, cfg ServeConfig) (*Server, error) {
	if err := bus.ValidateName("service", cfg.Service); err != nil {
		return nil, invalid("ServeConfig.Service", err)
	}
	if cfg.Subset != "" {
		if err := bus.ValidateName("subset", cfg.Subset); err != nil {
			return nil, invalid("ServeConfig.Subset", err)
		}
	}
	if cfg.Instance == "" {
		cfg.Instance = bus.NewInstanceID(cfg.Service)
	}
	if err := bus.ValidateName("instance", cfg.Instance); err != nil {
		return nil, invalid("ServeConfig.Instance", err)
	}
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, invalid("ServeConfig.Prefix", err)
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxTimeout <= 0 {
		cfg.MaxTimeout = DefaultMaxTimeout
	}
	cfg.Timeout = min(cfg.Timeout, cfg.MaxTimeout)
	if cfg.BodyStart <= 0 {
		cfg.BodyStart = DefaultBodyStart
	}
	if cfg.BodyIdle <= 0 {
		cfg.BodyIdle = DefaultBodyIdle
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		timeout: cfg.Timeout, maxTimeout: cfg.MaxTimeout, bodyStart: cfg.BodyStart, bodyIdle: cfg.BodyIdle,
		nc: nc, h: h, service: cfg.Service, subset: cfg.Subset, instance: cfg.Instance,
		inst: []string{cfg.Instance}, max: int64(cfg.MaxInflight), log: cfg.Logger,
		outcome: cfg.Outcome, tracer: newTracer(cfg.TracerProvider), metrics: cfg.Metrics,
	}
	s.slots = newCallerSlots(s.max)
	s.ackHdr = nats.Header{bus.HeaderAck: {"1"}, bus.HeaderInstance: s.inst}
	s.subj = subj
	if cfg.Configs != nil {
		// Before the first call can arrive, so that the list is in force.
		s.watchCallers(cfg.Configs)
	}
	s.subMu.Lock()
	err = s.subscribeQueue()
	s.subMu.Unlock()
	if err != nil {
		s.stopCallers()
		return nil, err
	}
	d, err := nc.Subscribe(subj.InstCalls(cfg.Service, cfg.Instance), s.onMsg)
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("proxy: subscribe to %s: %w", subj.InstCalls(cfg.Service, cfg.Instance), err)
	}
	// The callback only hands off, so little queues; a flood beyond this is
	// dropped by nats.go and reported as a slow consumer.
	_ = d.SetPendingLimits(64*1024, 256<<20)
	s.direct = d
	// Make sure the server has the subscriptions before callers are told
	// the instance exists.
	if nc.Status() == nats.CONNECTED {
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			s.Stop()
			return nil, fmt.Errorf("proxy: subscribe: %w", err)
		}
	}
	return s, nil
}

// subscribeQueue joins the service's queue group and the subset's, if the
// instance has one; s.subMu is held.
func (s *Server) subscribeQueue() error {
	subject, group := s.subj.Calls(s.service), s.subj.QueueGroup(s.service)
	q, err := s.nc.QueueSubscribe(subject, group, s.onMsg)
	if err != nil {
		return fmt.Errorf("proxy: subscribe to %s: %w", subject, err)
	}
	_ = q.SetPendingLimits(64*1024, 256<<20)
	queues := []*nats.Subscription{q}
	if s.subset != "" {
		subject, group = s.subj.SubsetCalls(s.service, s.subset), s.subj.QueueGroupSubset(s.service, s.subset)
		sq, err := s.nc.QueueSubscribe(subject, group, s.onMsg)
		if err != nil {
			_ = q.Unsubscribe()
			return fmt.Errorf("proxy: subscribe to %s: %w", subject, err)
		}
		_ = sq.SetPendingLimits(64*1024, 256<<20)
		queues = append(queues, sq)
	}
	s.queues = queues
	return nil
}

// Pause takes the instance out of its queue groups (the service's and its
// subset's), so NATS sends their requests to the other instances; the
// requests it already received finish. Requests addressed to the instance
// itself still arrive. Resume undoes it.
func (s *Server) Pause() {
	s.subMu.Lock()
	queues := s.queues
	s.queues = nil
	s.subMu.Unlock()
	for _, q := range queues {
		if err := q.Drain(); err != nil {
			_ = q.Unsubscribe()
		}
	}
}

// Resume puts a paused instance back in its queue groups. It does nothing
// once the server drains or stops.
func (s *Server) Resume() error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.queues != nil || s.stopped {
		return nil
	}
	return s.subscribeQueue()
}

// Paused reports whether the instance is out of its queue groups.
func (s *Server) Paused() bool {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	return s.queues == nil
}

// subscriptions are the current subscriptions, and marks the server stopped
// so that Resume no longer subscribes.
func (s *Server) stopSubscriptions() []*nats.Subscription {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.stopped = true
	subs := append([]*nats.Subscription(nil), s.queues...)
	if s.direct != nil {
		subs = append(subs, s.direct) // last: Drain relies on it
	}
	return subs
}

// Instance is this instance's id.
func (s *Server) Instance() string { return s.instance }

// Subset is the subset the instance belongs to, "" if none.
func (s *Server) Subset() string { return s.subset }

// Inflight is the number of requests being handled now.
func (s *Server) Inflight() int { return int(s.inflight.Load()) }

// Stats are counters of a Server since it started.
type Stats struct {
	Served         uint64        // requests handed to the handler
	Rejected       uint64        // answered overloaded
	Malformed      uint64        // dropped or answered bad-request: no reply subject, missing method or path
	Failed         uint64        // answered with a mesh error or an HTTP 5xx
	Forbidden      uint64        // answered forbidden: the caller is not on the service's callers list
	LastError      string        // the latest of those
	ProcessingTime time.Duration // total time spent serving requests
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Served: s.served.Load(), Rejected: s.rejected.Load(), Malformed: s.malformed.Load(),
		Failed: s.failed.Load(), Forbidden: s.forbidden.Load(), ProcessingTime: time.Duration(s.busy.Load()),
	}
	if e := s.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	return st
}

func (s *Server) recordFailure(msg string) {
	s.failed.Add(1)
	s.lastErr.Store(&msg)
}

// onMsg runs on the subscription's delivery goroutine: it only admits the
// request and hands it to a goroutine of its own, bounded by MaxInflight.
func (s *Server) onMsg(m *nats.Msg) {
	if v := m.Header[bus.HeaderStream]; len(v) > 0 && v[0] != "1" {
		// A chunk, credit or cancel of a streamed call, to the
		// instance's own subject.
		s.onStreamMsg(v[0], m)
		return
	}
	if m.Reply == "" {
		s.malformed.Add(1) // nobody to answer
		return
	}
	if m.Header[bus.HeaderProbe] != nil {
		// A caller checking that the instance holding its call is alive.
		_ = m.RespondMsg(&nats.Msg{Header: s.ackHdr})
		return
	}
	// The caller is the subject's, read once for the callers list, the
	// slots and the request's Mesh-Caller.
	caller := bus.CallerOf(m.Subject)
	if s.checkCaller(m, caller) {
		return // refused: its caller is not on the service's callers list
	}
	total := s.inflight.Add(1)
	if total > s.max || !s.slots.take(caller, total, s.max) {
		s.inflight.Add(-1)
		s.rejected.Add(1)
		if s.metrics != nil {
			s.inboundEdge(caller).Record(http.StatusServiceUnavailable, bus.Overloaded, 1, 0)
		}
		s.respondError(m, s.overloaded(caller, total))
		return
	}
	s.admit.Lock()
	if s.closed {
		s.admit.Unlock()
		s.inflight.Add(-1)
		s.slots.give(caller)
		// The instance has drained; only its own subject still delivers, to
		// a caller that picked it before hearing it leave. The request never
		// reached the app, which no-responders says: any method is retried,
		// elsewhere, and the breaker does not count it.
		s.respondError(m, bus.Errorf(bus.NoResponders, "instance %s of %s is shutting down and takes no new requests", s.instance, s.service))
		return
	}
	s.wg.Add(1)
	s.admit.Unlock()
	go s.serve(m, caller)
}

// overloaded is the refusal of a request when the instance is full, or
// when its caller holds its share of a busy instance.
func (s *Server) overloaded(caller string, total int64) *bus.Error {
	if total > s.max {
		return bus.Errorf(bus.Overloaded, "instance %s of %s is handling its limit of %d requests; retry shortly", s.instance, s.service, s.max)
	}
	if caller == "" {
		caller = unknownCaller
	}
	return bus.Errorf(bus.Overloaded, "instance %s of %s is busy, and %s holds its share of the %d requests it handles at once (the last %d are kept for other callers); retry shortly", s.instance, s.service, caller, s.max, s.slots.reserve)
}

func (s *Server) respondError(m *nats.Msg, e *bus.Error) {
	s.respondErrorEjected(m, e, 0)
}

func (s *Server) respondErrorEjected(m *nats.Msg, e *bus.Error, ejected time.Duration) {
	s.recordFailure(e.Error())
	h, body := bus.ErrorResponse(e, s.instance)
	if ejected > 0 {
		h[bus.HeaderEjected] = []string{ejected.String()}
	}
	_ = m.RespondMsg(&nats.Msg{Header: h, Data: body})
}

// ack acknowledges a request the instance is still working on, so that the
// caller knows whom to probe while it waits.
func (s *Server) ack(reply string) {
	_ = s.nc.PublishMsg(&nats.Msg{Subject: reply, Header: s.ackHdr})
}

// ackDelay parses a request's Mesh-Ack: milliseconds, at most a minute.
func ackDelay(v string) (time.Duration, bool) {
	ms, err := strconv.Atoi(v)
	if err != nil || ms < 0 || ms > 60_000 {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// appFailed reports whether a response means the app failed the request, as
// outlier detection counts it.
func appFailed(status int, e *bus.Error) bool {
	if e != nil {
		return e.Code.Failure().Outlier
	}
	return status >= 500
}

func (s *Server) serve(m *nats.Msg, caller string) {
	start := time.Now()
	defer s.done(start, caller)
	s.served.Add(1)
	setCaller(m, caller)
	// The metrics count a request before its answer goes, so that a caller
	// that has its answer finds it counted.
	var edge *metrics.Edge
	if s.metrics != nil {
		edge = s.inboundEdge(caller)
		edge.Start()
	}

	method := bus.First(m.Header, bus.HeaderMethod)
	uri := bus.First(m.Header, bus.HeaderPath)
	if method == "" || uri == "" {
		s.malformed.Add(1)
		e := bus.Errorf(bus.BadRequest, "the request message lacks %s or %s; send requests through a natsmesh proxy or proxy.Transport", bus.HeaderMethod, bus.HeaderPath)
		if edge != nil {
			edge.Done(e.Status, e.Code, 1, time.Since(start))
		}
		s.respondError(m, e)
		return
	}
	var span trace.Span
	if s.tracer != nil {
		span = s.tracer.startServer(m, s.instance, method, uri)
	}
	timeout := s.requestTimeout(bus.First(m.Header, bus.HeaderTimeout))
	deadline := time.Now().Add(timeout)
	var ack *time.Timer
	if v := m.Header[bus.HeaderAck]; len(v) > 0 {
		if d, ok := ackDelay(v[0]); ok {
			reply := m.Reply
			ack = time.AfterFunc(d, func() { s.ack(reply) })
			defer ack.Stop()
		}
	}
	w := responseWriter{buf: getBuf(), limit: s.nc.MaxPayload(), srv: s, req: m, method: method, ack: ack, idle: timeout}
	defer putBuf(w.buf)
	defer w.closeStream()
	if v := m.Header[bus.HeaderStream]; len(v) > 0 {
		s.openRequestStream(&w, m)
	}
	ejected := s.answer(&w, m, method, uri, deadline)
	rec := traffic.Outcome{Status: w.status}
	if w.err != nil {
		rec = traffic.Outcome{Code: w.err.Code, Status: w.err.Status}
	}
	if span != nil {
		endSpan(span, rec)
	}
	if edge != nil {
		edge.Done(rec.Status, rec.Code, 1, time.Since(start))
	}
	switch {
	case w.streaming:
		s.finishStream(&w)
	case w.err != nil:
		s.respondErrorEjected(m, w.err, ejected)
	default:
		s.respond(&w, m, method, ejected)
	}
}

// answer has the request answered, by the app (an Upstream, straight from
// the message, with no http.Request or context in between) or by the
// handler, and tells outlier detection how it went; it returns the ejection
// that started, if any.
func (s *Server) answer(w *responseWriter, m *nats.Msg, method, uri string, deadline time.Time) time.Duration {
	var e *bus.Error
	if u, ok := s.h.(*Upstream); ok {
		e = u.forward(context.Background(), deadline, method, uri, bus.First(m.Header, bus.HeaderHost), m.Header, m.Data, w)
	} else {
		e = s.handleMsg(deadline, w, m, method, uri)
	}
	if e != nil {
		w.err = e
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if s.outcome != nil && !w.outcomeDone && !w.callerFailed() {
		return s.outcome(appFailed(w.status, w.err))
	}
	return w.ejected
}

// respond sends the app's answer, which fits one message.
func (s *Server) respond(w *responseWriter, m *nats.Msg, method string, ejected time.Duration) {
	if w.status >= 500 {
		s.recordFailure("HTTP " + bus.StatusCode(w.status) + " from the app")
	}
	if method == http.MethodHead && w.buf.Len() > 0 {
		// As net/http does for HEAD: the body a handler wrote is not sent,
		// but its length is, when the handler did not set one.
		if w.header.Get("Content-Length") == "" && bodyAllowed(w.status) {
			w.Header().Set("Content-Length", strconv.Itoa(w.buf.Len()))
		}
		w.buf.Reset()
	} else if !bodyAllowed(w.status) {
		w.buf.Reset() // 204 and 304 have no body, whatever a handler wrote
	}
	h := make(nats.Header, len(w.header)+3)
	bus.EncodeResponse(h, w.status, "", w.header)
	h[bus.HeaderInstance] = s.inst
	if ejected > 0 {
		h[bus.HeaderEjected] = []string{ejected.String()}
	}
	if err := m.RespondMsg(&nats.Msg{Header: h, Data: w.buf.Bytes()}); err != nil {
		if errors.Is(err, nats.ErrMaxPayload) {
			s.respondError(m, tooLargeResponse(s.nc.MaxPayload()))
			return
		}
		s.log.Debug("reply not sent", "service", s.service, "error", err)
	}
}

// setCaller makes a request's Mesh-Caller the service its subject names,
// whatever header it came with: the subject is what NATS let the caller's
// identity publish to; c is bus.CallerOf(m.Subject), "" for an unnamed
// caller.
func setCaller(m *nats.Msg, c string) {
	switch {
	case c != "" && m.Header == nil:
		m.Header = nats.Header{bus.HeaderCaller: {c}}
	case c != "":
		m.Header[bus.HeaderCaller] = []string{c}
	default:
		delete(m.Header, bus.HeaderCaller)
	}
}

// unknownCaller is the peer of inbound calls that name no valid caller.
const unknownCaller = "(unknown)"

// done ends one request's accounting.
func (s *Server) done(start time.Time, caller string) {
	s.busy.Add(int64(time.Since(start)))
	s.slots.give(caller)
	s.inflight.Add(-1)
	s.wg.Done()
}

// requestTimeout is the time a request may take: what its Mesh-Timeout asks
// for, capped, or the default when it asks for nothing valid.
func (s *Server) requestTimeout(meshTimeout string) time.Duration {
	ms, err := strconv.ParseInt(meshTimeout, 10, 64)
	if errors.Is(err, strconv.ErrRange) && ms > 0 {
		return s.maxTimeout // more digits than an int64 holds
	}
	if err != nil || ms <= 0 {
		return s.timeout
	}
	if ms >= int64(s.maxTimeout/time.Millisecond) {
		return s.maxTimeout
	}
	return time.Duration(ms) * time.Millisecond
}

// handleMsg builds the http.Request for a library handler and runs it.
func (s *Server) handleMsg(deadline time.Time, w *responseWriter, m *nats.Msg, method, uri string) *bus.Error {
	if !validHeaderName(method) {
		s.malformed.Add(1)
		return bus.Errorf(bus.BadRequest, "invalid method %q", method)
	}
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		s.malformed.Add(1)
		return bus.Errorf(bus.BadRequest, "invalid request URI %q: %v", uri, err)
	}
	req := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header, len(m.Header)),
		Host:       bus.First(m.Header, bus.HeaderHost),
		RequestURI: uri,
		RemoteAddr: "nats",
		Body:       http.NoBody,
	}
	bus.CopyToHTTP(req.Header, m.Header)
	if c := m.Header[bus.HeaderCaller]; len(c) > 0 {
		req.Header[bus.HeaderCaller] = c[:1]
	}
	if len(m.Data) > 0 {
		req.ContentLength = int64(len(m.Data))
		req.Body = io.NopCloser(bytes.NewReader(m.Data))
	}
	if w.reqBody != nil {
		req.ContentLength = w.reqLen
		req.Body = io.NopCloser(w.reqBody)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if w.cs != nil {
		w.cs.setHook(cancel) // the caller cancelling ends the request's context
	}
	w.onCancel = cancel
	if e := s.handle(w, req.WithContext(ctx)); e != nil {
		return e
	}
	if !w.streaming && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// As the sidecar does for its app: an answer that comes after the
		// call's deadline is a timeout, whatever the handler wrote, so the
		// caller sees the same outcome however its own timer raced this one.
		return bus.Errorf(bus.Timeout, "the handler of %s did not answer before the call's deadline", s.service)
	}
	return nil
}

// handle runs the handler, turning a panic into a 502 for the caller.
func (s *Server) handle(w *responseWriter, req *http.Request) (perr *bus.Error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				perr = bus.Errorf(bus.UpstreamUnreachable, "the handler of %s aborted the response", s.service)
				return
			}
			s.log.Error("handler panicked", "service", s.service, "panic", v)
			perr = bus.Errorf(bus.UpstreamUnreachable, "the handler of %s failed while serving the request", s.service)
		}
	}()
	s.h.ServeHTTP(w, req)
	return nil
}

func tooLargeResponse(maxPayload int64) *bus.Error {
	e := bus.Errorf(bus.TooLarge, "the response's headers and body exceed the NATS message limit of %d bytes", maxPayload)
	e.Status = http.StatusBadGateway
	return e
}

// Drain stops taking requests (the instance leaves its queue group, so new
// requests go to other instances), lets the requests already received finish,
// and returns when they have, or when ctx ends. The instance's own subject
// stays subscribed until then: it answers the liveness probes of the callers
// whose requests the instance still holds, who would otherwise take it for
// dead.
func (s *Server) Drain(ctx context.Context) error {
	var closed []<-chan nats.SubStatus
	if s.nc.Status() != nats.CONNECTED {
		// No request can arrive without a connection, and a drain would
		// wait for a server that is not there: leave at once, then wait
		// for the requests already received.
		s.Stop()
	}
	subs := s.stopSubscriptions()
	var direct *nats.Subscription
	if n := len(subs); n > 0 && subs[n-1] == s.direct {
		direct, subs = subs[n-1], subs[:n-1]
	}
	for _, sub := range subs {
		closed = append(closed, sub.StatusChanged(nats.SubscriptionClosed))
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrBadSubscription) {
			s.log.Warn("drain subscription", "subject", sub.Subject, "error", err)
		}
	}
	for i, ch := range closed {
		if !subs[i].IsValid() {
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("proxy: drain of %s did not finish: %w", s.instance, ctx.Err())
		}
	}
	// A callback that was already running when the subscriptions were
	// stopped may still try to admit a request; from here on it is refused.
	s.admit.Lock()
	s.closed = true
	s.admit.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("proxy: %d requests still in flight when the drain of %s ended: %w", s.Inflight(), s.instance, ctx.Err())
	}
	if direct != nil {
		// Every request is answered: nothing is left to drain from it.
		_ = direct.Unsubscribe()
	}
	s.stopCallers()
	return nil
}

// Stop unsubscribes at once, without waiting for requests in flight.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		for _, sub := range s.stopSubscriptions() {
			_ = sub.Unsubscribe()
		}
		s.stopCallers()
	})
}
