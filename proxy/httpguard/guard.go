// Package httpguard bounds what the clients of a proxy's HTTP listener (a
// sidecar's outbound side, a gateway) may hold: a request body must keep
// coming (a byte at least every BodyIdle, and on average BodyMinRate bytes a
// second once BodyGrace has passed), and a listener holds at most MaxConns
// connections, refusing the rest with a 503. Bodies are never read ahead:
// memory grows as bytes arrive, never from a declared Content-Length.
package httpguard

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// Defaults of Limits.
const (
	DefaultBodyIdle    = 30 * time.Second
	DefaultBodyMinRate = 1024 // bytes per second
	DefaultBodyGrace   = 10 * time.Second
	DefaultMaxConns    = 4096
	// DefaultBodyBudget is the request body bytes a listener holds at
	// once, counting each body's first MaxBuffered bytes (the part a proxy
	// may buffer whole; beyond it a body streams through fixed chunks).
	DefaultBodyBudget = 256 << 20
	MaxBuffered       = 1 << 20
)

// Limits bound a listener's clients. Zero values are the defaults; a
// negative BodyMinRate turns the rate rule off.
type Limits struct {
	BodyIdle    time.Duration
	BodyMinRate int64
	BodyGrace   time.Duration
	MaxConns    int
	// BodyBudget bounds the request body bytes held at once (see
	// DefaultBodyBudget): a body that would take more is refused 503
	// overloaded.
	BodyBudget int64
}

// WithDefaults fills in the zero values.
func (l Limits) WithDefaults() Limits {
	if l.BodyIdle <= 0 {
		l.BodyIdle = DefaultBodyIdle
	}
	if l.BodyMinRate == 0 {
		l.BodyMinRate = DefaultBodyMinRate
	}
	if l.BodyGrace <= 0 {
		l.BodyGrace = DefaultBodyGrace
	}
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.BodyBudget <= 0 {
		l.BodyBudget = DefaultBodyBudget
	}
	return l
}

// Guard wraps h so that every request body it reads is held to l: a body
// that stalls or trickles ends with a *bus.Error of code bus.SlowRequest
// (408) from its Read, and the connection's read deadline, already past,
// makes the server close the connection after the answer.
func Guard(h http.Handler, l Limits) http.Handler {
	return &guard{h: h, l: l.WithDefaults()}
}

type guard struct {
	h    http.Handler
	l    Limits
	held atomic.Int64 // body bytes counted against BodyBudget
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil && r.Body != http.NoBody {
		b := &body{rc: r.Body, ctl: http.NewResponseController(w), g: g, l: &g.l, start: time.Now()}
		defer b.release()
		// A copy of the request carries the guarded body: the server's own
		// keeps its body, whose unread rest it judges after the handler
		// (discarding a little, or closing the connection for more).
		r2 := *r
		r2.Body = b
		r = &r2
	}
	g.h.ServeHTTP(w, r)
}

// body is a request body read under a deadline that moves with each read:
// the sooner of BodyIdle from now and the time by which the bytes read so
// far fall under BodyMinRate.
type body struct {
	rc    io.ReadCloser
	ctl   *http.ResponseController
	g     *guard
	held  int64 // bytes counted against the budget
	l     *Limits
	start time.Time
	n     int64
	err   error
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	now := time.Now()
	deadline := now.Add(b.l.BodyIdle)
	if b.l.BodyMinRate > 0 {
		byRate := b.start.Add(b.l.BodyGrace + time.Duration(float64(b.n)/float64(b.l.BodyMinRate)*float64(time.Second)))
		if byRate.Before(deadline) {
			deadline = byRate
		}
	}
	if !deadline.After(now) {
		return 0, b.slow(now)
	}
	_ = b.ctl.SetReadDeadline(deadline)
	n, err := b.rc.Read(p)
	b.n += int64(n)
	// The bytes are counted once they arrive, so that a slow body holds
	// only what it sent; a body that takes the budget past its bound ends.
	if more := min(b.n, MaxBuffered) - b.held; more > 0 {
		b.held += more
		if b.g.held.Add(more) > b.l.BodyBudget {
			b.err = bus.Errorf(bus.Overloaded, "this proxy holds its limit of %d MiB of request bodies being received; retry shortly", b.l.BodyBudget>>20)
			return 0, b.err
		}
	}
	var ne interface{ Timeout() bool }
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		return n, b.slow(time.Now())
	}
	return n, err
}

func (b *body) Close() error { return b.rc.Close() }

// release returns the body's bytes to the budget, once the request is done
// (its buffers with it).
func (b *body) release() {
	b.g.held.Add(-b.held)
	b.held = 0
}

// slow ends the body with the sentence a client reads.
func (b *body) slow(now time.Time) error {
	b.err = bus.Errorf(bus.SlowRequest, "the request body came too slowly (%d bytes in %s; a proxy wants a byte at least every %s and %d bytes a second after the first %s), so the request was dropped and the connection closed",
		b.n, now.Sub(b.start).Round(time.Millisecond), b.l.BodyIdle, b.l.BodyMinRate, b.l.BodyGrace)
	// The deadline stays in the past: the server cannot read another
	// request on this connection, and closes it.
	_ = b.ctl.SetReadDeadline(now)
	return b.err
}
