package proxy

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// attempt sends the request once and waits for its reply, until deadline or
// the attempt's own timeout. While it waits past the callee's
// acknowledgement, it probes the instance holding the request, so that a
// death is noticed within a probe interval (see probe.go). A request body
// that streams is sent once the instance that took the head grants credit;
// a reply whose body streams comes with its respStream, which then owns the
// call's reply subject.
func (t *Transport) attempt(ctx context.Context, pl *plan, instance, subject string, deadline time.Time, h nats.Header, body []byte) (answer, error) {
	now := time.Now()
	until := deadline
	if p := pl.p.PerTryTimeout(); p > 0 && now.Add(p).Before(until) {
		until = now.Add(p)
	}
	left := until.Sub(now)
	if left <= 0 {
		return answer{}, bus.Errorf(bus.Timeout, "the call to %s had no time left before it was sent", pl.service)
	}
	w := waiter{t: t, service: pl.service, subset: pl.tg.Subset, rb: pl.rb, instance: instance, left: left, until: until}
	if pl.rb == nil {
		w.replyTo, w.ch, w.id = t.mux.register()
	} else {
		w.replyTo, w.ch, w.id = t.mux.registerStream()
	}
	defer func() {
		if !w.owned {
			t.mux.release(w.id, w.ch)
		}
	}()
	// Rounded up, so that the callee gives up no earlier than the caller.
	h[bus.HeaderTimeout] = []string{strconv.FormatInt(int64((left+time.Millisecond-1)/time.Millisecond), 10)}
	msg := &nats.Msg{Subject: subject, Reply: w.replyTo, Header: h, Data: body}
	if err := t.nc.PublishMsg(msg); err != nil {
		return answer{}, publishError(err, pl.service, t.nc.MaxPayload())
	}
	w.timer = time.NewTimer(min(left, t.ackWait))
	defer w.timer.Stop()
	return w.wait(ctx)
}

// waiter is one attempt waiting for its reply.
type waiter struct {
	t        *Transport
	service  string
	subset   string     // of the target
	rb       *reqStream // the request body, when it streams
	instance string     // picked by the balancer; "" for the queue group
	replyTo  string
	ch       chan *nats.Msg
	id       uint64
	owned    bool // by the respStream returned
	left     time.Duration
	until    time.Time
	timer    *time.Timer
	holder   string    // the instance that acknowledged the request
	uploaded bool      // the streamed body went (or failed)
	early    *nats.Msg // an answer that came while the body was sent
}

func (w *waiter) wait(ctx context.Context) (answer, error) {
	for {
		m, err := w.next(ctx)
		if err != nil {
			return answer{}, err
		}
		if m == nil {
			continue // the timer was rearmed
		}
		if a, done, err := w.handle(ctx, m); done || err != nil {
			return a, err
		}
	}
}

// next is the next message on the reply subject; nil when the timer fired
// and was rearmed; a failure when the attempt is over without an answer.
func (w *waiter) next(ctx context.Context) (*nats.Msg, error) {
	if m := w.early; m != nil {
		w.early = nil
		return m, nil
	}
	t, service := w.t, w.service
	select {
	case m := <-w.ch:
		switch {
		case m == nil && t.isClosed():
			return nil, ErrTransportClosed
		case m == nil:
			return nil, bus.Errorf(bus.UpstreamLost, "the NATS connection dropped while waiting for %s to answer; the request may or may not have been processed", service)
		}
		return m, nil
	case <-w.timer.C:
		switch {
		case !time.Now().Before(w.until):
			w.cancel()
			return nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, w.left.Round(time.Millisecond))
		case w.holder == "":
			return nil, bus.Errorf(bus.UpstreamLost, "no instance of %q acknowledged the request within %s, so the one that took it is presumed gone; the request may or may not have been processed", service, t.ackWait)
		case t.probes.dead(w.service, w.holder):
			if m := t.arrived(w.ch); m != nil {
				w.timer.Reset(min(time.Until(w.until), t.probeInterval))
				return m, nil // answered, then gone: the answer stands
			}
			return nil, bus.Errorf(bus.UpstreamLost, "instance %s of %q went away while holding the request; it may or may not have been processed", w.holder, service)
		}
		w.timer.Reset(min(time.Until(w.until), t.probeInterval))
		return nil, nil
	case <-ctx.Done():
		w.cancel()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, bus.Errorf(bus.Timeout, "service %q did not answer within %s", service, w.left.Round(time.Millisecond))
		}
		return nil, ctx.Err()
	}
}

// handle takes one message of the reply subject: done with the answer, or
// not done (an acknowledgement, a credit, a stray chunk).
func (w *waiter) handle(ctx context.Context, m *nats.Msg) (answer, bool, error) {
	t := w.t
	switch {
	case m.Header[bus.HeaderCredit] != nil && m.Header[bus.HeaderStatus] == nil:
		if w.rb == nil || w.uploaded {
			return answer{}, false, nil // a late credit
		}
		return answer{}, false, w.upload(ctx, m)
	case m.Header[bus.HeaderAck] != nil:
		if w.holder == "" {
			w.holder = bus.First(m.Header, bus.HeaderInstance)
			w.timer.Reset(min(time.Until(w.until), t.probeInterval))
		}
		return answer{}, false, nil
	case m.Header[bus.HeaderSeq] != nil:
		return answer{}, false, nil // a chunk of a response already given up
	case bus.IsNoResponders(m):
		return answer{}, true, t.noResponders(w.service, w.subset, w.instance)
	}
	if m.Header[bus.HeaderStream] != nil && m.Header[bus.HeaderError] == nil {
		w.owned = true
		return answer{m: m, st: t.newRespStream(w.id, w.ch, w.replyTo, m, w.service, w.left)}, true, nil
	}
	return answer{m: m}, true, nil
}

// upload sends the streamed request body to the instance that took the head
// and grants credit (m): it holds the call. The call's timeout counts from
// the end of the body.
func (w *waiter) upload(ctx context.Context, m *nats.Msg) error {
	w.uploaded = true
	w.holder = bus.First(m.Header, bus.HeaderInstance)
	credit, _ := strconv.ParseInt(bus.First(m.Header, bus.HeaderCredit), 10, 64)
	early, err := w.t.upload(ctx, w.service, w.rb, w.ch, w.replyTo, w.holder, credit, w.left)
	if err != nil {
		w.cancel()
		return err
	}
	w.early = early
	w.until = time.Now().Add(w.left)
	w.timer.Reset(min(w.left, w.t.probeInterval))
	return nil
}

// cancel tells the callee to stop a call whose request body went, when the
// call ends without its answer.
func (w *waiter) cancel() {
	if w.uploaded && w.holder != "" {
		w.t.cancelAt(w.service, w.holder, w.replyTo)
	}
}

// arrived is a message for ch that reached this process before the probe
// that found its sender gone, if there is one: an instance that answers and
// then leaves (a drain) is found gone by a probe that NATS answers after the
// answer, on the same connection, but each subscription hands its messages
// on in its own goroutine. A barrier over the subscriptions lets every
// message received before it reach its channel; the wait is bounded by a
// probe interval.
func (t *Transport) arrived(ch chan *nats.Msg) *nats.Msg {
	done := make(chan struct{})
	if t.nc.Barrier(func() { close(done) }) == nil {
		timer := time.NewTimer(t.probeInterval)
		select {
		case <-done:
		case <-timer.C:
		}
		timer.Stop()
	}
	select {
	case m := <-ch:
		return m
	default:
		return nil
	}
}
