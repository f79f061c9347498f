package proxy

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// inject applies the fault to a call about to be sent. It returns the
// Mesh-Fault value (nil when the call is left alone) and, for an aborted
// call, its answer, or for one whose deadline passed while it was held, a
// timeout: the call is then not sent. ctx ending or the transport closing
// during a delay return an error, as a call would.
func (t *Transport) inject(ctx context.Context, f *traffic.Fault, service string, deadline time.Time) (mark []string, abort *nats.Msg, err error) {
	if wait, m := f.Roll(); m != nil {
		mark = m
		wait = min(wait, time.Until(deadline))
		if wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return mark, nil, ctx.Err()
			case <-t.done:
				timer.Stop()
				return mark, nil, ErrTransportClosed
			}
		}
		if !time.Now().Before(deadline) {
			return mark, nil, bus.Errorf(bus.Timeout, "the call to %s was held %s by a fault its config injects, and had no time left to be sent", service, f.Delay())
		}
	}
	if abort, m := f.Abort(mark); abort {
		h := nats.Header{
			bus.HeaderStatus: {strconv.Itoa(f.AbortStatus())},
			"Content-Type":   {"text/plain; charset=utf-8"},
		}
		return m, &nats.Msg{Header: h, Data: f.AbortBody()}, nil
	}
	return mark, nil, nil
}
