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

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
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
	// Retry says when failed calls are tried again; the zero value is the
	// default policy.
	Retry RetryPolicy
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
	caller  []string
	timeout time.Duration
	egress  http.RoundTripper
	maxBody int64

	tracer        *tracer
	metrics       *metrics.Set
	base          policyBase
	defaults      *policy // of services without a config
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
		return nil, err
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
	retry := cfg.Retry
	retry.defaults()
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
	t.base = policyBase{timeout: t.timeout, retry: retry, breaker: bs, disabled: cfg.DisableBreaker}
	t.defaults = t.compile("", nil, 0, nil)
	t.defaults.own = target{}
	t.defaults.dests.breakers = breaker.NewSet(t.base.breakerSettings(nil), breaker.DefaultMaxBreakers)
	t.defaults.dests.budgets = newBudgets(retry.BudgetRatio, retry.BudgetMinPerSecond, breaker.DefaultMaxBreakers)
	if cfg.Configs != nil {
		t.configs = cfg.Configs
		t.watchCtx, t.watchCancel = context.WithCancel(context.Background())
	}
	t.up = make(chan struct{})
	close(t.up)
	if cfg.Caller != "" {
		if err := bus.ValidateName("caller", cfg.Caller); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
		t.caller = []string{cfg.Caller}
	}
	if t.mux, err = newReplyMux(nc); err != nil {
		return nil, fmt.Errorf("proxy: subscribe to reply inbox: %w", err)
	}
	if cfg.Follow {
		if t.callees, err = newCallees(nc, subj); err != nil {
			t.mux.close()
			return nil, err
		}
	}
	// When the connection drops, waiting calls can no longer get their
	// replies: fail them at once instead of letting them wait out the timeout.
	t.status = nc.StatusChanged(nats.CONNECTED, nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
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

// reply is the outcome of a call: the reply message or the mesh's failure,
// how many attempts it took, the destination's breaker state when the call
// failed and the breaker is not closed, and the Mesh-Fault value when the
// config injected a fault.
type reply struct {
	m        *nats.Msg
	st       *respStream // the body of m, when it streams; the receiver closes it
	err      *bus.Error
	attempts int
	breaker  breaker.State
	fault    []string
}

// plan is what a call sends to, decided at its start: the policy, the
// target (the service or the subset a route picked), and for instance-aware
// policies the service's instances and the request's hash key.
type plan struct {
	p       *policy
	service string
	tg      *target
	eps     *endpoints // nil: the queue group
	hashKey string
	rb      *reqStream // the request body, when it streams
}

// call is one request to a service, as raw parts: attempts, retried as the
// service's policy allows, guarded by the destination's breaker. ctx ending
// returns ctx's error as a Go error. rb, if not nil, is a body that streams
// (body is then empty).
func (t *Transport) call(ctx context.Context, service, method, uri, host string, hdr http.Header, body []byte, rb *reqStream) (r reply, err error) {
	// The callers (RoundTrip, Outbound) have answered mesh-unavailable
	// already, before reading the body; a drop from here on fails the
	// publish or, once sent, the wait.
	select {
	case <-t.done:
		return reply{}, ErrTransportClosed
	default:
	}
	// The policy is read once: every attempt of the call uses this one,
	// whatever revision arrives meanwhile.
	p := t.policyFor(service)
	now := time.Now()
	deadline := now.Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if !now.Before(deadline) {
		e := bus.Errorf(bus.Timeout, "the call to %s had no time left before it was sent", service)
		t.recordEarly(service, e)
		return reply{err: e}, nil
	}
	pl := plan{p: p, service: service, tg: &p.own, rb: rb}
	if len(p.routes) > 0 {
		if tg := p.routeRequest(method, uri, hdr); tg != nil {
			pl.tg = tg
		}
	}
	var own target
	if pl.tg.subject == "" { // the transport's defaults
		own = serviceTarget(t.subj, service)
		pl.tg = &own
	}
	if t.callees != nil {
		if eps := t.callees.note(service); eps != nil && p.balance != balanceQueue {
			pl.eps = eps
			if p.balance == balanceRingHash {
				if v := hdr[p.hashHeader]; len(v) > 0 {
					pl.hashKey = v[0]
				}
			}
		}
	}
	if t.metrics != nil {
		edge := t.metrics.Edge(metrics.Outbound, service, pl.tg.subset)
		edge.Start()
		defer func() {
			status, code := replyOutcome(&r, err)
			edge.Done(status, code, r.attempts, time.Since(now))
		}()
	}
	var mark []string
	if p.fault != nil {
		m, r, err := t.inject(ctx, p.fault, service, deadline)
		if err != nil {
			return reply{fault: m}, err
		}
		if r != nil {
			r.fault = m
			return *r, nil // an aborted call: not sent, not retried, not counted
		}
		mark = m
	}
	dest := p.dests.get(pl.tg.key)
	dest.budget.call(now)
	retries := p.retry.Retries
	if len(body) > RetryBodyLimit {
		retries = 0 // the body is not kept for a second attempt
	}
	idem := idempotent(method, hdr)

	h := make(nats.Header, len(hdr)+8)
	bus.EncodeRequest(h, method, uri, host, hdr)
	if t.caller != nil {
		h[bus.HeaderCaller] = t.caller
	}
	h[bus.HeaderAck] = ackAfterValue
	if rb != nil {
		h[bus.HeaderStream] = oneValue
		delete(h, "Content-Length")
		if rb.length >= 0 {
			h["Content-Length"] = []string{strconv.FormatInt(rb.length, 10)}
		}
	}
	if t.tracer == nil {
		r, err = t.send(ctx, &pl, dest, method, h, body, retries, idem, deadline)
		r.fault = mark
		return r, err
	}
	span := t.tracer.startClient(ctx, service, pl.tg.subject, method, uri, hdr, h)
	r, err = t.send(ctx, &pl, dest, method, h, body, retries, idem, deadline)
	r.fault = mark
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.End()
		return r, err
	}
	endClient(span, &r)
	return r, nil
}

// replyOutcome is the status and Mesh-Error code a call's client got.
func replyOutcome(r *reply, err error) (int, bus.Code) {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// The deadline of the request's context: a timeout, whichever of
		// it and the call's own timer (set to the same time) fired first.
		return http.StatusGatewayTimeout, bus.Timeout
	case err != nil:
		return statusClientClosed, ""
	case r.err != nil:
		return r.err.Status, r.err.Code
	case r.m != nil:
		// A failure the callee's side made (its app unreachable, overloaded,
		// timed out) comes as a reply carrying Mesh-Error.
		if code, ok := replyStatus(r.m); ok {
			return code, bus.Code(bus.First(r.m.Header, bus.HeaderError))
		}
	}
	return http.StatusBadGateway, ""
}

// statusClientClosed is what metrics count for a call its client gave up on
// before it was answered (nginx's 499): nobody got a response.
const statusClientClosed = 499

// recordEarly counts a call to service that failed before it was sent.
func (t *Transport) recordEarly(service string, e *bus.Error) {
	if t.metrics != nil {
		t.metrics.Edge(metrics.Outbound, service, "").Record(e.Status, e.Code, 0, 0)
	}
}

// send makes the attempts of a call.
func (t *Transport) send(ctx context.Context, pl *plan, dest destination, method string, h nats.Header, body []byte, retries int, idem bool, deadline time.Time) (reply, error) {
	var (
		r     reply
		o     outcome
		bo    *backoff.ExponentialBackOff
		err   error
		avoid *endpoint // the instance the last attempt failed on
	)
	p, service := pl.p, pl.service
	for {
		ticket, berr := dest.br.Try()
		if berr != nil {
			if r.attempts == 0 {
				r.err = t.circuitOpen(pl)
				r.breaker = dest.br.State()
				return r, nil
			}
			break // the last attempt's failure stands
		}
		r.attempts++
		subject, instance := pl.tg.subject, ""
		var ep *endpoint
		if pl.eps != nil {
			if ep = pl.eps.pick(p.balance, pl.tg.subset, pl.hashKey, avoid, time.Now().UnixNano()); ep != nil {
				subject, instance = ep.subject, ep.id
				ep.inflight.Add(1)
			}
		}
		var sent time.Time
		if ep != nil && p.balance == balanceLeastRequest {
			sent = time.Now()
		}
		r.m, r.st, r.err, err = t.attempt(ctx, pl, instance, subject, deadline, h, body)
		if ep != nil {
			ep.inflight.Add(-1)
			switch {
			case r.err != nil && r.err.Code == bus.NoResponders:
				// The instance is gone; its heartbeats have not expired yet.
				ep.goneUntil.Store(time.Now().Add(goneFor).UnixNano())
			case !sent.IsZero() && (r.m != nil || r.err != nil && r.err.Code == bus.Timeout):
				// Only answers and timeouts measure an instance's latency: a
				// failure that comes at once is not a fast instance.
				now := time.Now()
				ep.observe(now.Sub(sent), now.UnixNano())
			}
			avoid = ep
		}
		if err != nil {
			ticket.Done(breaker.Ignore)
			return r, err
		}
		o = outcomeOf(r.m, r.err)
		ticket.Done(o.result())
		if r.st != nil || (pl.rb != nil && pl.rb.sent) {
			break // a stream is never retried halfway, nor a body once it went
		}
		settling := o.code == bus.NoResponders && t.settling()
		if !settling && (r.attempts > retries || !o.retryable(idem) || !p.retryOn.allows(o)) {
			break
		}
		if bo == nil {
			bo = backoff.NewExponentialBackOff(
				backoff.WithInitialInterval(p.retry.BackoffBase),
				backoff.WithMaxInterval(p.retry.BackoffMax),
				backoff.WithRandomizationFactor(0.5),
				backoff.WithMaxElapsedTime(0))
		}
		wait := bo.NextBackOff()
		if time.Until(deadline) <= wait {
			break // no time for another attempt
		}
		why := o.String()
		if !settling && !dest.budget.retry(time.Now()) {
			t.logs.log(slog.LevelWarn, "retry budget exhausted; not retrying", "service", service, "attempt", r.attempts, "failure", why)
			break
		}
		t.logs.log(slog.LevelInfo, "retrying", "service", service, "method", method, "attempt", r.attempts+1, "after", wait, "failure", why)
		if merr, err := t.pause(ctx, service, wait, deadline); err != nil {
			return r, err
		} else if merr != nil {
			r.m, r.err = nil, merr
			return r, nil
		}
	}
	if o.failed() {
		if st := dest.br.State(); st != breaker.Closed {
			r.breaker = st
		}
		if o.code == bus.Timeout {
			t.logs.log(slog.LevelInfo, "call timed out", "service", service, "method", method, "attempts", r.attempts)
		}
	}
	return r, nil
}

// settleTime is how long after a reconnect "no responders" is taken for the
// callees not being back yet rather than for the service being gone: clients
// reconnect at different moments (within bus's reconnect wait and jitter), and
// a callee's subscriptions return with its connection.
const settleTime = time.Second

// settling reports whether the connection came back within settleTime. Calls
// then retry "no responders" until settleTime has passed, within their
// deadline, beyond the retry count and outside the budget: such retries reach
// no app, so they cannot add to an outage.
func (t *Transport) settling() bool {
	at := t.reconnected.Load()
	return at != 0 && time.Now().UnixNano()-at < int64(settleTime)
}

// circuitOpen is the failure of a call its destination's breaker refused.
func (t *Transport) circuitOpen(pl *plan) *bus.Error {
	if s := pl.tg.subset; s != "" {
		return bus.Errorf(bus.CircuitOpen, "calls to subset %s of %q are failing, so the circuit breaker refuses them for now; it lets a few through again within %s", s, pl.service, pl.p.openTimeout)
	}
	return bus.Errorf(bus.CircuitOpen, "calls to %q are failing, so the circuit breaker refuses them for now; it lets a few through again within %s", pl.service, pl.p.openTimeout)
}

// pause waits before a retry, then for the NATS connection if it is down,
// within the call's deadline: mesh-unavailable if it does not come back.
func (t *Transport) pause(ctx context.Context, service string, wait time.Duration, deadline time.Time) (*bus.Error, error) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.done:
		return nil, ErrTransportClosed
	}
	for t.nc.Status() != nats.CONNECTED {
		up := t.upSignal()
		left := time.Until(deadline)
		if left <= 0 {
			return bus.Errorf(bus.MeshUnavailable, "the NATS connection dropped during the call to %s and did not come back within the call's timeout", service), nil
		}
		timer.Reset(left)
		select {
		case <-up:
		case <-timer.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.done:
			return nil, ErrTransportClosed
		}
	}
	return nil, nil
}

// attempt sends the request once and waits for its reply, until deadline or
// the attempt's own timeout. While it waits past the callee's
// acknowledgement, it probes the instance holding the request, so that a
// death is noticed within a probe interval (see probe.go). A request body
// that streams is sent once the instance that took the head grants credit;
// a reply whose body streams comes with its respStream, which then owns the
// call's reply subject.
func (t *Transport) attempt(ctx context.Context, pl *plan, instance, subject string, deadline time.Time, h nats.Header, body []byte) (*nats.Msg, *respStream, *bus.Error, error) {
	service := pl.service
	now := time.Now()
	until := deadline
	if p := pl.p.retry.PerTryTimeout; p > 0 && now.Add(p).Before(until) {
		until = now.Add(p)
	}
	left := until.Sub(now)
	if left <= 0 {
		return nil, nil, bus.Errorf(bus.Timeout, "the call to %s had no time left before it was sent", service), nil
	}
	rb := pl.rb
	var (
		replyTo string
		ch      chan *nats.Msg
		id      uint64
	)
	if rb == nil {
		replyTo, ch, id = t.mux.register()
	} else {
		replyTo, ch, id = t.mux.registerStream()
	}
	owned := false // by the respStream returned
	defer func() {
		if !owned {
			t.mux.release(id, ch)
		}
	}()
	// Rounded up, so that the callee gives up no earlier than the caller.
	h[bus.HeaderTimeout] = []string{strconv.FormatInt(int64((left+time.Millisecond-1)/time.Millisecond), 10)}
	msg := &nats.Msg{Subject: subject, Reply: replyTo, Header: h, Data: body}
	if err := t.nc.PublishMsg(msg); err != nil {
		return nil, nil, publishError(err, service, t.nc.MaxPayload()), nil
	}

	timer := time.NewTimer(min(left, t.ackWait))
	defer timer.Stop()
	holder := ""      // the instance that acknowledged the request
	uploaded := false // the streamed body went (or failed)
	// A request body that went is cancelled at the callee when the call
	// ends without its answer.
	cancel := func() {
		if uploaded && holder != "" {
			t.cancelAt(holder, replyTo)
		}
	}
	var early *nats.Msg // an answer that came while the body was sent
	for {
		var m *nats.Msg
		if early != nil {
			m, early = early, nil
		} else {
			select {
			case m = <-ch:
			case <-timer.C:
				switch {
				case !time.Now().Before(until):
					cancel()
					return nil, nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, left.Round(time.Millisecond)), nil
				case holder == "":
					return nil, nil, bus.Errorf(bus.UpstreamLost, "no instance of %q acknowledged the request within %s, so the one that took it is presumed gone; the request may or may not have been processed", service, t.ackWait), nil
				case t.probes.dead(holder):
					return nil, nil, bus.Errorf(bus.UpstreamLost, "instance %s of %q went away while holding the request; it may or may not have been processed", holder, service), nil
				}
				timer.Reset(min(time.Until(until), t.probeInterval))
				continue
			case <-ctx.Done():
				cancel()
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					return nil, nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, left.Round(time.Millisecond)), nil
				}
				return nil, nil, nil, ctx.Err()
			}
		}
		switch {
		case m == nil && t.isClosed():
			return nil, nil, nil, ErrTransportClosed
		case m == nil:
			return nil, nil, bus.Errorf(bus.UpstreamLost, "the NATS connection dropped while waiting for %s to answer; the request may or may not have been processed", service), nil
		case m.Header[bus.HeaderCredit] != nil && m.Header[bus.HeaderStatus] == nil:
			if rb == nil || uploaded {
				continue // a late credit
			}
			// The instance that took the head grants credit: it holds
			// the call, and the body goes to it.
			uploaded = true
			holder = bus.First(m.Header, bus.HeaderInstance)
			credit, _ := strconv.ParseInt(bus.First(m.Header, bus.HeaderCredit), 10, 64)
			answer, e, err := t.upload(ctx, pl, rb, ch, replyTo, holder, credit, left)
			if err != nil || e != nil {
				cancel()
				return nil, nil, e, err
			}
			early = answer
			// The call's timeout counts from the end of its body.
			until = time.Now().Add(left)
			timer.Reset(min(left, t.probeInterval))
			continue
		case m.Header[bus.HeaderAck] != nil:
			if holder == "" {
				holder = bus.First(m.Header, bus.HeaderInstance)
				timer.Reset(min(time.Until(until), t.probeInterval))
			}
			continue
		case m.Header[bus.HeaderSeq] != nil:
			continue // a chunk of a response already given up
		case bus.IsNoResponders(m):
			return nil, nil, t.noResponders(service, pl.tg.subset, instance), nil
		}
		if m.Header[bus.HeaderStream] != nil && m.Header[bus.HeaderError] == nil {
			owned = true
			return m, t.newRespStream(id, ch, replyTo, m, service, left), nil, nil
		}
		return m, nil, nil, nil
	}
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
		t.recordEarly(service, e)
		return errorResponse(req, e, ""), nil
	}
	if isUpgrade(req.Header) {
		closeBody(req)
		e := notSupportedUpgrade(req.Header)
		t.recordEarly(service, e)
		return errorResponse(req, e, ""), nil
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
	rb, berr := t.takeBody(req.Body, length, req.Header, len(uri)+len(reqHost), buf)
	if berr != nil {
		closeBody(req)
		t.recordEarly(service, berr)
		return errorResponse(req, berr, ""), nil
	}
	body := buf.Bytes()
	if rb != nil {
		body = nil
		defer closeBody(req)
	} else {
		closeBody(req)
	}
	r, err := t.call(req.Context(), service, req.Method, uri, reqHost, req.Header, body, rb)
	if err != nil {
		return nil, err
	}
	var resp *http.Response
	switch {
	case r.err != nil:
		resp = errorResponse(req, r.err, "")
	case r.st != nil:
		resp = streamResponse(req, r.m, r.st)
	default:
		resp = messageResponse(req, r.m)
	}
	addCallHeaders(resp.Header, &r)
	return resp, nil
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
