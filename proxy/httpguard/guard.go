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
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// Defaults of Limits.
const (
	DefaultBodyIdle    = 30 * time.Second
	DefaultBodyMinRate = 1024 // bytes per second
	DefaultBodyGrace   = 10 * time.Second
	DefaultMaxConns    = 4096
)

// Limits bound a listener's clients. Zero values are the defaults; a
// negative BodyMinRate turns the rate rule off.
type Limits struct {
	BodyIdle    time.Duration
	BodyMinRate int64
	BodyGrace   time.Duration
	MaxConns    int
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
	h http.Handler
	l Limits
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &body{rc: r.Body, ctl: http.NewResponseController(w), l: &g.l, start: time.Now()}
	}
	g.h.ServeHTTP(w, r)
}

// body is a request body read under a deadline that moves with each read:
// the sooner of BodyIdle from now and the time by which the bytes read so
// far fall under BodyMinRate.
type body struct {
	rc    io.ReadCloser
	ctl   *http.ResponseController
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
	var ne interface{ Timeout() bool }
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		return n, b.slow(time.Now())
	}
	return n, err
}

func (b *body) Close() error { return b.rc.Close() }

// slow ends the body with the sentence a client reads.
func (b *body) slow(now time.Time) error {
	b.err = bus.Errorf(bus.SlowRequest, "the request body came too slowly (%d bytes in %s; a proxy wants a byte at least every %s and %d bytes a second after the first %s), so the request was dropped and the connection closed",
		b.n, now.Sub(b.start).Round(time.Millisecond), b.l.BodyIdle, b.l.BodyMinRate, b.l.BodyGrace)
	// The deadline stays in the past: the server cannot read another
	// request on this connection, and closes it.
	_ = b.ctl.SetReadDeadline(now)
	return b.err
}
