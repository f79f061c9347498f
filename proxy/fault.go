package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// fault is a compiled config.Fault: the caller's proxy holds a share of the
// calls before sending them, and answers a share itself without sending
// them.
type fault struct {
	delayPercent float64
	delay        time.Duration
	abortPercent float64
	abortStatus  int
	abortHeader  nats.Header // of the answer to an aborted call; shared, never changed
	abortBody    []byte
}

// Mesh-Fault values.
var (
	faultDelay = []string{"delay"}
	faultAbort = []string{"abort"}
	faultBoth  = []string{"delay, abort"}
)

func compileFault(service string, f *config.Fault) *fault {
	if f == nil {
		return nil
	}
	c := &fault{}
	if d := f.Delay; d != nil && d.Percent > 0 && d.Duration > 0 {
		c.delayPercent, c.delay = d.Percent, d.Duration.D()
	}
	if a := f.Abort; a != nil && a.Percent > 0 {
		c.abortPercent, c.abortStatus = a.Percent, a.Status
		c.abortHeader = nats.Header{
			bus.HeaderStatus: {strconv.Itoa(a.Status)},
			"Content-Type":   {"text/plain; charset=utf-8"},
		}
		c.abortBody = []byte(fmt.Sprintf("fault injected by the mesh config of service %s\n", service))
	}
	if c.delayPercent == 0 && c.abortPercent == 0 {
		return nil
	}
	return c
}

func (f *fault) describe() string {
	s := "fault"
	if f.delayPercent > 0 {
		s += fmt.Sprintf(" delay %g%% %s", f.delayPercent, f.delay)
	}
	if f.abortPercent > 0 {
		s += fmt.Sprintf(" abort %g%% %d", f.abortPercent, f.abortStatus)
	}
	return s
}

// hit reports whether a call falls in percent of the calls.
func hit(percent float64) bool {
	return percent >= 100 || rand.Float64()*100 < percent
}

// inject applies the fault to a call about to be sent. It returns the
// Mesh-Fault value (nil when the call is left alone) and, for an aborted
// call or one whose deadline passed while it was held, its answer: the call
// is then not sent. ctx ending or the transport closing during a delay
// return an error, as a call would.
func (t *Transport) inject(ctx context.Context, f *fault, service string, deadline time.Time) (mark []string, r *reply, err error) {
	if f.delayPercent > 0 && hit(f.delayPercent) {
		mark = faultDelay
		wait := f.delay
		left := time.Until(deadline)
		if left < wait {
			wait = left
		}
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
			return mark, &reply{err: bus.Errorf(bus.Timeout, "the call to %s was held %s by a fault its config injects, and had no time left to be sent", service, f.delay)}, nil
		}
	}
	if f.abortPercent > 0 && hit(f.abortPercent) {
		if mark == nil {
			mark = faultAbort
		} else {
			mark = faultBoth
		}
		return mark, &reply{m: &nats.Msg{Header: f.abortHeader, Data: f.abortBody}}, nil
	}
	return mark, nil, nil
}
