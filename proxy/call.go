package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// reply is what a call got: the reply message (with the respStream of its
// body, when it streams; the receiver closes it), how many attempts it
// took, the destination's breaker state when the call failed and the
// breaker is not closed, and the Mesh-Fault value when the config injected
// a fault. A failure made by the mesh is the call's error, a *bus.Error.
type reply struct {
	answer
	attempts int
	breaker  breaker.State
	fault    []string
}

// answer is one attempt's reply message, and the body that follows it when
// it streams.
type answer struct {
	m  *nats.Msg
	st *respStream
}

// meshError is err as a failure made by the mesh, nil if it is none (nil, or
// a Go error: the request's context ended, the transport closed).
func meshError(err error) *bus.Error {
	if err == nil {
		return nil
	}
	if e, ok := err.(*bus.Error); ok {
		return e // as the call path makes them: no errors.As, which allocates
	}
	var e *bus.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// failure is e as an error: nil when e is.
func failure(e *bus.Error) error {
	if e == nil {
		return nil
	}
	return e
}

// plan is what a call sends to, decided at its start: the policy, the
// target (the service or the subset a route picked), and for instance-aware
// policies the service's instances and the request's hash key.
type plan struct {
	p       *traffic.Policy
	service string
	tg      *traffic.Target
	eps     *endpoints // nil: the queue group picks
	measure bool       // the policy's balancer weighs instances by their latency
	hashKey string
	rb      *reqStream // the request body, when it streams
}

// newPlan routes the request and, with a registry view and an
// instance-aware policy, finds the service's instances.
func (t *Transport) newPlan(pl *plan, p *traffic.Policy, service, method, uri string, hdr http.Header) {
	pl.p, pl.service = p, service
	if pl.tg = p.Route(method, uri, hdr); pl.tg == nil {
		own := traffic.ServiceTarget(t.subj, service) // a service without a config
		pl.tg = &own
	}
	if t.callees == nil {
		return
	}
	eps := t.callees.note(service) // followed either way, to explain no-responders
	if b := p.Balancer(); b != nil && eps != nil {
		pl.eps, pl.hashKey = eps, p.HashKey(hdr)
		_, pl.measure = b.(traffic.LeastRequest)
	}
}

// call is one request to a service, as raw parts: attempts, retried as the
// service's policy allows, guarded by the destination's breaker. rb, if not
// nil, is a body that streams (body is then empty). A failure made by the
// mesh is returned as a *bus.Error; ctx ending returns ctx's error.
func (t *Transport) call(ctx context.Context, service, method, uri, host string, hdr http.Header, body []byte, rb *reqStream) (r reply, err error) {
	// The callers (RoundTrip, Forward) have answered mesh-unavailable
	// already, before reading the body; a drop from here on fails the
	// publish or, once sent, the wait.
	if t.isClosed() {
		return reply{}, ErrTransportClosed
	}
	// The policy is read once: every attempt of the call uses this one,
	// whatever revision arrives meanwhile.
	p := t.policyFor(service)
	now := time.Now()
	deadline := now.Add(p.Timeout())
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if !now.Before(deadline) {
		e := bus.Errorf(bus.Timeout, "the call to %s had no time left before it was sent", service)
		t.recordEarly(service, e)
		return reply{}, e
	}
	pl := plan{rb: rb}
	t.newPlan(&pl, p, service, method, uri, hdr)
	if t.metrics != nil {
		edge := t.metrics.Edge(metrics.Outbound, service, pl.tg.Subset)
		edge.Start()
		defer func() {
			status, code := replyOutcome(&r, err)
			edge.Done(status, code, r.attempts, time.Since(now))
		}()
	}
	var mark []string
	if f := p.Fault(); f != nil {
		m, fr, err := t.inject(ctx, f, service, deadline)
		if err != nil || fr != nil {
			// An aborted call: not sent, not retried, not counted.
			return reply{answer: answer{m: fr}, fault: m}, err
		}
		mark = m
	}
	dest := p.Destination(pl.tg.Key)
	retry := p.Retrier(dest, method, hdr, len(body), now)
	h := t.requestHeader(method, uri, host, hdr, rb)
	if t.tracer == nil {
		r, err = t.send(ctx, &pl, dest, &retry, method, h, body, deadline)
		r.fault = mark
		return r, err
	}
	span := t.tracer.startClient(ctx, service, pl.tg.Subject, method, uri, hdr, h)
	r, err = t.send(ctx, &pl, dest, &retry, method, h, body, deadline)
	r.fault = mark
	if err != nil && meshError(err) == nil {
		span.SetStatus(codes.Error, err.Error())
		span.End()
		return r, err
	}
	endClient(span, &r, meshError(err))
	return r, err
}

// requestHeader is the request message's header.
func (t *Transport) requestHeader(method, uri, host string, hdr http.Header, rb *reqStream) nats.Header {
	h := make(nats.Header, len(hdr)+8)
	bus.EncodeRequest(h, method, uri, host, hdr)
	h[bus.HeaderAck] = ackAfterValue
	if rb != nil {
		h[bus.HeaderStream] = oneValue
		delete(h, "Content-Length")
		if rb.length >= 0 {
			h["Content-Length"] = []string{strconv.FormatInt(rb.length, 10)}
		}
	}
	return h
}

// replyOutcome is the status and Mesh-Error code a call's client got.
func replyOutcome(r *reply, err error) (int, bus.Code) {
	if e := meshError(err); e != nil {
		return e.Status, e.Code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		// The deadline of the request's context: a timeout, whichever of
		// it and the call's own timer (set to the same time) fired first.
		return http.StatusGatewayTimeout, bus.Timeout
	case err != nil:
		return statusClientClosed, ""
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

// send makes the attempts of a call, as the retry decision
// (traffic.Retrier.Next) allows.
func (t *Transport) send(ctx context.Context, pl *plan, dest traffic.Destination, retry *traffic.Retrier, method string, h nats.Header, body []byte, deadline time.Time) (reply, error) {
	var (
		r     reply
		o     traffic.Outcome
		last  *bus.Error
		avoid *traffic.Endpoint // the instance the last attempt failed on
	)
	for {
		ticket, berr := dest.Breaker.Try()
		if berr != nil {
			if r.attempts == 0 {
				r.breaker = dest.Breaker.State()
				return r, t.circuitOpen(pl)
			}
			break // the last attempt's failure stands
		}
		r.attempts++
		a, err := t.attemptTo(ctx, pl, &avoid, deadline, h, body)
		last = meshError(err)
		if err != nil && last == nil {
			ticket.Done(breaker.Ignore)
			return r, err
		}
		r.answer = a
		o = outcomeOf(a.m, last)
		o.Streamed = a.st != nil || (pl.rb != nil && pl.rb.sent)
		ticket.Done(o.Result())
		settling := o.Code == bus.NoResponders && t.settling()
		wait, verdict := retry.Next(o, r.attempts, settling, time.Now(), deadline)
		if verdict == traffic.BudgetSpent {
			t.logs.log(slog.LevelWarn, "retry budget exhausted; not retrying", "service", pl.service, "attempt", r.attempts, "failure", o.String())
		}
		if verdict != traffic.Retry {
			break
		}
		t.logs.log(slog.LevelInfo, "retrying", "service", pl.service, "method", method, "attempt", r.attempts+1, "after", wait, "failure", o.String())
		if err := t.pause(ctx, pl.service, wait, deadline); err != nil {
			r.answer = answer{}
			return r, err
		}
	}
	if o.Failed() {
		if st := dest.Breaker.State(); st != breaker.Closed {
			r.breaker = st
		}
		if o.Code == bus.Timeout {
			t.logs.log(slog.LevelInfo, "call timed out", "service", pl.service, "method", method, "attempts", r.attempts)
		}
	}
	return r, failure(last)
}

// attemptTo makes one attempt: to the instance the plan's balancer picks
// (traffic.Pick), else to the target's queue group; it keeps the picked
// instance's counts and latency estimate.
func (t *Transport) attemptTo(ctx context.Context, pl *plan, avoid **traffic.Endpoint, deadline time.Time, h nats.Header, body []byte) (answer, error) {
	subject, instance := pl.tg.Subject, ""
	var ep *traffic.Endpoint
	if pl.eps != nil {
		if ep = pl.eps.pick(pl.p.Balancer(), pl.tg.Subset, pl.hashKey, *avoid, time.Now().UnixNano()); ep != nil {
			subject, instance = ep.Subject, ep.ID
			ep.Started()
		}
	}
	var sent time.Time
	if ep != nil && pl.measure {
		sent = time.Now()
	}
	a, err := t.attempt(ctx, pl, instance, subject, deadline, h, body)
	if ep == nil {
		return a, err
	}
	ep.Finished()
	e := meshError(err)
	switch {
	case e != nil && e.Code == bus.NoResponders:
		// The instance is gone; its heartbeats have not expired yet.
		ep.Gone(time.Now())
	case !sent.IsZero() && (a.m != nil || e != nil && e.Code == bus.Timeout):
		// Only answers and timeouts measure an instance's latency.
		now := time.Now()
		ep.Observe(now.Sub(sent), now.UnixNano())
	}
	*avoid = ep
	return a, err
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
	if s := pl.tg.Subset; s != "" {
		return bus.Errorf(bus.CircuitOpen, "calls to subset %s of %q are failing, so the circuit breaker refuses them for now; it lets a few through again within %s", s, pl.service, pl.p.OpenTimeout())
	}
	return bus.Errorf(bus.CircuitOpen, "calls to %q are failing, so the circuit breaker refuses them for now; it lets a few through again within %s", pl.service, pl.p.OpenTimeout())
}

// pause waits before a retry, then for the NATS connection if it is down,
// within the call's deadline: mesh-unavailable if it does not come back.
func (t *Transport) pause(ctx context.Context, service string, wait time.Duration, deadline time.Time) error {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return ErrTransportClosed
	}
	for t.nc.Status() != nats.CONNECTED {
		up := t.upSignal()
		left := time.Until(deadline)
		if left <= 0 {
			return bus.Errorf(bus.MeshUnavailable, "the NATS connection dropped during the call to %s and did not come back within the call's timeout", service)
		}
		timer.Reset(left)
		select {
		case <-up:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-t.done:
			return ErrTransportClosed
		}
	}
	return nil
}
