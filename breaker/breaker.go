// Package breaker is a circuit breaker for proxies: closed → open → half-open.
//
// A breaker in the closed state lets calls through and counts their results.
// It trips open on ConsecutiveFailures failures in a row, or when the failure
// ratio over a rolling Window reaches FailureRatio with at least MinRequests
// calls in it. Open, it refuses every call with ErrOpen for OpenTimeout, then
// half-opens: up to HalfOpenProbes calls go through as probes; if that many
// succeed it closes, and one failure opens it again.
//
// Use is two-step, as a proxy needs (the result is known after the call):
//
//	ticket, err := b.Try()
//	if err != nil { /* answer circuit-open */ }
//	... make the call ...
//	ticket.Done(breaker.Success) // or Failure, or Ignore for a cancelled call
//
// A Ticket is a small value, so asking allocates nothing on the request
// path.
//
// Compared with sony/gobreaker: gobreaker trips by default after more than 5
// consecutive failures and has no failure-ratio window (ReadyToTrip sees
// counts that, with the default Interval 0, are never cleared while closed);
// this breaker trips on either rule, and its ratio looks only at a rolling
// window, so old failures age out. gobreaker stays open 60 s by default; this
// one 5 s, since a mesh's instances come back in seconds. gobreaker's
// half-open state admits MaxRequests (1) calls and closes after that many
// successes; here HalfOpenProbes (default 3) probes must all succeed.
// gobreaker calls OnStateChange while holding its lock; here callbacks run
// outside it, in order. Cancelled calls are neither success nor failure
// (Ignore), time comes from an injectable Clock, and a Set keeps one breaker
// per key with a bounded size.
package breaker

import (
	"errors"
	"sync"
	"time"
)

// State of a breaker.
type State int

// The states.
const (
	Closed State = iota
	Open
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// Result is the outcome of a call, told to the breaker with Ticket.Done.
type Result int

// The results.
const (
	Success Result = iota
	Failure
	Ignore // the call was cancelled by its caller: it says nothing of the callee
)

// Errors Try returns.
var (
	ErrOpen          = errors.New("breaker: open")
	ErrTooManyProbes = errors.New("breaker: half-open, probes in flight")
)

// Clock tells the time; tests use a fake one.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Defaults of Settings.
const (
	DefaultConsecutiveFailures = 5
	DefaultFailureRatio        = 0.5
	DefaultMinRequests         = 20
	DefaultWindow              = 10 * time.Second
	DefaultOpenTimeout         = 5 * time.Second
	DefaultHalfOpenProbes      = 3
	windowBuckets              = 10
)

// Settings configure a breaker; zero values are the defaults above.
type Settings struct {
	// ConsecutiveFailures in a row trip the breaker; negative disables.
	ConsecutiveFailures int
	// FailureRatio of failures over Window trips it, once the window holds
	// MinRequests calls; negative disables.
	FailureRatio float64
	MinRequests  int
	Window       time.Duration
	// OpenTimeout is how long the breaker stays open before probing.
	OpenTimeout time.Duration
	// HalfOpenProbes calls are let through half-open; all must succeed.
	HalfOpenProbes int
	// OnStateChange, if set, is called on every transition, outside the
	// breaker's lock and in order.
	OnStateChange func(name string, from, to State)
	Clock         Clock
}

func (s *Settings) defaults() {
	if s.ConsecutiveFailures == 0 {
		s.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if s.FailureRatio == 0 {
		s.FailureRatio = DefaultFailureRatio
	}
	if s.MinRequests <= 0 {
		s.MinRequests = DefaultMinRequests
	}
	if s.Window <= 0 {
		s.Window = DefaultWindow
	}
	if s.OpenTimeout <= 0 {
		s.OpenTimeout = DefaultOpenTimeout
	}
	if s.HalfOpenProbes <= 0 {
		s.HalfOpenProbes = DefaultHalfOpenProbes
	}
	if s.Clock == nil {
		s.Clock = realClock{}
	}
}

type bucket struct {
	slot          int64 // which Window/windowBuckets slice of time it counts
	calls, failed int
}

type transition struct{ from, to State }

// Breaker is one circuit breaker. Its methods are safe for concurrent use.
type Breaker struct {
	name string
	s    Settings

	mu          sync.Mutex
	state       State
	openedAt    time.Time
	consecutive int
	buckets     [windowBuckets]bucket
	probes      int // in flight, half-open
	successes   int // of probes, half-open
	generation  uint64

	nmu       sync.Mutex // orders state-change callbacks
	pending   []transition
	notifying bool
}

// New makes a breaker; name is passed to OnStateChange.
func New(name string, s Settings) *Breaker {
	s.defaults()
	return &Breaker{name: name, s: s}
}

// Name is the breaker's name.
func (b *Breaker) Name() string { return b.name }

// State is the breaker's state now (an open breaker whose timeout passed
// reports half-open).
func (b *Breaker) State() State {
	b.mu.Lock()
	st := b.current(b.s.Clock.Now())
	b.mu.Unlock()
	b.notify()
	return st
}

// closed reports whether the breaker is closed, without moving its state
// or delivering callbacks (for a Set, under its own lock).
func (b *Breaker) closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == Closed
}

// current moves an open breaker to half-open once its timeout passed; b.mu held.
func (b *Breaker) current(now time.Time) State {
	if b.state == Open && !now.Before(b.openedAt.Add(b.s.OpenTimeout)) {
		b.setState(HalfOpen, now)
	}
	return b.state
}

// Ticket is a call the breaker let through.
type Ticket struct {
	b   *Breaker
	gen uint64
}

// Try asks to make a call: it returns ErrOpen while the breaker is open,
// ErrTooManyProbes while half-open with all its probes in flight. On
// success, the ticket's Done must be called exactly once with the call's
// result (more calls would count it again).
func (b *Breaker) Try() (Ticket, error) {
	now := b.s.Clock.Now()
	b.mu.Lock()
	switch b.current(now) {
	case Open:
		b.mu.Unlock()
		b.notify()
		return Ticket{}, ErrOpen
	case HalfOpen:
		if b.probes >= b.s.HalfOpenProbes {
			b.mu.Unlock()
			b.notify()
			return Ticket{}, ErrTooManyProbes
		}
		b.probes++
	}
	gen := b.generation
	b.mu.Unlock()
	b.notify()
	return Ticket{b: b, gen: gen}, nil
}

// Done tells the breaker the result of the call.
func (t Ticket) Done(r Result) { t.b.record(t.gen, r) }

// record counts a result of a call allowed in generation gen: results of
// calls from before the last state change are ignored.
func (b *Breaker) record(gen uint64, r Result) {
	now := b.s.Clock.Now()
	b.mu.Lock()
	defer b.notify()
	defer b.mu.Unlock()
	if gen != b.generation {
		return
	}
	switch b.state {
	case HalfOpen:
		b.probes--
		switch r {
		case Failure:
			b.setState(Open, now)
		case Success:
			b.successes++
			if b.successes >= b.s.HalfOpenProbes {
				b.setState(Closed, now)
			}
		}
	case Closed:
		if r == Ignore {
			return
		}
		bk := b.bucket(now)
		bk.calls++
		if r == Success {
			b.consecutive = 0
			return
		}
		bk.failed++
		b.consecutive++
		if b.s.ConsecutiveFailures > 0 && b.consecutive >= b.s.ConsecutiveFailures {
			b.setState(Open, now)
			return
		}
		if b.s.FailureRatio > 0 {
			calls, failed := b.window(now)
			if calls >= b.s.MinRequests && float64(failed) >= b.s.FailureRatio*float64(calls) {
				b.setState(Open, now)
			}
		}
	}
}

func (b *Breaker) slot(now time.Time) int64 {
	return now.UnixNano() / int64(b.s.Window/windowBuckets)
}

// bucket is the bucket counting now, cleared if it held an older slice.
func (b *Breaker) bucket(now time.Time) *bucket {
	slot := b.slot(now)
	bk := &b.buckets[slot%windowBuckets]
	if bk.slot != slot {
		*bk = bucket{slot: slot}
	}
	return bk
}

// window sums the buckets of the last Window.
func (b *Breaker) window(now time.Time) (calls, failed int) {
	slot := b.slot(now)
	for _, bk := range b.buckets {
		if slot-bk.slot < windowBuckets {
			calls += bk.calls
			failed += bk.failed
		}
	}
	return calls, failed
}

// setState changes state, resets the counts and queues the callback; b.mu held.
func (b *Breaker) setState(to State, now time.Time) {
	from := b.state
	if from == to {
		return
	}
	b.state = to
	b.generation++
	b.consecutive, b.probes, b.successes = 0, 0, 0
	b.buckets = [windowBuckets]bucket{}
	if to == Open {
		b.openedAt = now
	}
	if b.s.OnStateChange != nil {
		b.nmu.Lock()
		b.pending = append(b.pending, transition{from, to})
		b.nmu.Unlock()
	}
}

// notify delivers queued state changes, in order, with no breaker lock held.
// Whoever finds the queue idle delivers; others return at once.
func (b *Breaker) notify() {
	if b.s.OnStateChange == nil {
		return
	}
	b.nmu.Lock()
	if b.notifying {
		b.nmu.Unlock()
		return
	}
	b.notifying = true
	for len(b.pending) > 0 {
		t := b.pending[0]
		b.pending = b.pending[1:]
		b.nmu.Unlock()
		b.s.OnStateChange(b.name, t.from, t.to)
		b.nmu.Lock()
	}
	b.notifying = false
	b.nmu.Unlock()
}
