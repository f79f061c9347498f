package breaker_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// call makes one call with the given result; it fails the test if refused.
func call(t *testing.T, b *breaker.Breaker, r breaker.Result) {
	t.Helper()
	ticket, err := b.Try()
	if err != nil {
		t.Fatalf("call refused in state %s: %v", b.State(), err)
	}
	ticket.Done(r)
}

func TestTripsOnConsecutiveFailures(t *testing.T) {
	clock := meshtest.NewClock()
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: 3, FailureRatio: -1, Clock: clock})
	call(t, b, breaker.Failure)
	call(t, b, breaker.Failure)
	call(t, b, breaker.Success) // breaks the run
	call(t, b, breaker.Failure)
	call(t, b, breaker.Failure)
	if b.State() != breaker.Closed {
		t.Fatalf("state %s after 2 failures in a row, want closed", b.State())
	}
	call(t, b, breaker.Failure)
	if b.State() != breaker.Open {
		t.Fatalf("state %s after 3 failures in a row, want open", b.State())
	}
	if _, err := b.Try(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("Try while open: %v, want ErrOpen", err)
	}
}

func TestTripsOnFailureRatioOverWindow(t *testing.T) {
	clock := meshtest.NewClock()
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: -1, FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second, Clock: clock})
	// Below the minimum volume nothing trips, whatever the ratio.
	for i := 0; i < 4; i++ {
		call(t, b, breaker.Failure)
		call(t, b, breaker.Success)
	}
	if b.State() != breaker.Closed {
		t.Fatalf("tripped below the minimum volume")
	}
	// Old calls age out of the window: after it, 4 failures of 9 is below half.
	clock.Advance(11 * time.Second)
	for i := 0; i < 5; i++ {
		call(t, b, breaker.Success)
	}
	for i := 0; i < 4; i++ {
		call(t, b, breaker.Failure)
	}
	if b.State() != breaker.Closed {
		t.Fatalf("tripped at 4 failures of 9 calls in the window")
	}
	call(t, b, breaker.Failure) // 5 of 10: half
	if b.State() != breaker.Open {
		t.Fatalf("state %s at half failures over the minimum volume, want open", b.State())
	}
}

func TestIgnoredResultsDoNotCount(t *testing.T) {
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: 2, FailureRatio: -1, Clock: meshtest.NewClock()})
	call(t, b, breaker.Failure)
	for i := 0; i < 10; i++ {
		call(t, b, breaker.Ignore) // cancelled calls
	}
	if b.State() != breaker.Closed {
		t.Fatalf("cancelled calls tripped the breaker")
	}
	call(t, b, breaker.Failure)
	if b.State() != breaker.Open {
		t.Fatalf("ignored results broke the run of failures")
	}
}

func TestHalfOpenProbes(t *testing.T) {
	clock := meshtest.NewClock()
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: 1, FailureRatio: -1, OpenTimeout: 5 * time.Second, HalfOpenProbes: 2, Clock: clock})
	call(t, b, breaker.Failure)
	clock.Advance(4 * time.Second)
	if _, err := b.Try(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("allowed before the open timeout: %v", err)
	}
	clock.Advance(time.Second)
	if b.State() != breaker.HalfOpen {
		t.Fatalf("state %s after the open timeout, want half-open", b.State())
	}
	p1, err1 := b.Try()
	p2, err2 := b.Try()
	if err1 != nil || err2 != nil {
		t.Fatalf("probes refused: %v %v", err1, err2)
	}
	if _, err := b.Try(); !errors.Is(err, breaker.ErrTooManyProbes) {
		t.Fatalf("third probe: %v, want ErrTooManyProbes", err)
	}
	p1.Done(breaker.Success)
	if b.State() != breaker.HalfOpen {
		t.Fatalf("closed after 1 of 2 probes")
	}
	p2.Done(breaker.Success)
	if b.State() != breaker.Closed {
		t.Fatalf("state %s after all probes succeeded, want closed", b.State())
	}

	// A failed probe opens it again, for a full timeout.
	call(t, b, breaker.Failure)
	clock.Advance(5 * time.Second)
	call(t, b, breaker.Failure)
	if b.State() != breaker.Open {
		t.Fatalf("state %s after a failed probe, want open", b.State())
	}
	clock.Advance(4 * time.Second)
	if b.State() != breaker.Open {
		t.Fatalf("half-open again before a full timeout")
	}
}

// A result of a call allowed before a state change says nothing of the new
// state: a slow failure from before a breaker closed does not reopen it.
func TestStaleResultsIgnored(t *testing.T) {
	clock := meshtest.NewClock()
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: 1, FailureRatio: -1, HalfOpenProbes: 1, Clock: clock})
	old, err := b.Try()
	if err != nil {
		t.Fatal(err)
	}
	call(t, b, breaker.Failure)
	clock.Advance(breaker.DefaultOpenTimeout)
	call(t, b, breaker.Success)
	old.Done(breaker.Failure)
	if b.State() != breaker.Closed {
		t.Fatalf("a result from before the breaker closed reopened it")
	}
	old.Done(breaker.Failure) // twice: still from before
	if b.State() != breaker.Closed {
		t.Fatalf("a result from before the breaker closed, told twice, reopened it")
	}
}

// Callbacks run in order and outside the breaker's lock: one that asks the
// breaker for its state does not deadlock.
func TestStateChangeCallbacks(t *testing.T) {
	clock := meshtest.NewClock()
	var got []string
	var b *breaker.Breaker
	b = breaker.New("svc", breaker.Settings{
		ConsecutiveFailures: 1, FailureRatio: -1, HalfOpenProbes: 1, Clock: clock,
		OnStateChange: func(name string, from, to breaker.State) {
			_ = b.State() // would deadlock under the lock
			got = append(got, fmt.Sprintf("%s %s->%s", name, from, to))
		},
	})
	call(t, b, breaker.Failure)
	clock.Advance(breaker.DefaultOpenTimeout)
	call(t, b, breaker.Success)
	want := []string{"svc closed->open", "svc open->half-open", "svc half-open->closed"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("callbacks %v, want %v", got, want)
	}
}

func TestConcurrentUse(t *testing.T) {
	b := breaker.New("svc", breaker.Settings{OnStateChange: func(string, breaker.State, breaker.State) {}})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if ticket, err := b.Try(); err == nil {
					r := breaker.Success
					if (i+g)%3 == 0 {
						r = breaker.Failure
					}
					ticket.Done(r)
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestSetIsKeyedAndBounded(t *testing.T) {
	clock := meshtest.NewClock()
	s := breaker.NewSet(breaker.Settings{ConsecutiveFailures: 1, FailureRatio: -1, Clock: clock}, 3)
	first, again := s.Get("a"), s.Get("a")
	if first != again || first == s.Get("b") {
		t.Fatal("Get does not keep one breaker per key")
	}
	if s.Get("a").Name() != "a" {
		t.Fatalf("name %q", s.Get("a").Name())
	}
	call(t, s.Get("a"), breaker.Failure) // a is open
	s.Get("b")
	s.Get("c")
	s.Get("d") // over the bound: the least recently used closed one (b) goes
	if s.Len() != 3 {
		t.Fatalf("set holds %d breakers, want 3", s.Len())
	}
	if s.Get("a").State() != breaker.Open {
		t.Fatal("the open breaker was forgotten while closed ones could go")
	}
}

// Tickets count, half-open admits only its probes, and a ticket from before
// a state change is ignored.
func TestTryTickets(t *testing.T) {
	clock := meshtest.NewClock()
	b := breaker.New("svc", breaker.Settings{ConsecutiveFailures: 2, FailureRatio: -1, OpenTimeout: time.Second, HalfOpenProbes: 1, Clock: clock})
	stale, err := b.Try()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		tk, err := b.Try()
		if err != nil {
			t.Fatal(err)
		}
		tk.Done(breaker.Failure)
	}
	if b.State() != breaker.Open {
		t.Fatalf("state %s after 2 failed tickets, want open", b.State())
	}
	if _, err := b.Try(); !errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("Try while open: %v, want ErrOpen", err)
	}
	clock.Advance(time.Second)
	probe, err := b.Try()
	if err != nil {
		t.Fatalf("Try half-open: %v", err)
	}
	if _, err := b.Try(); !errors.Is(err, breaker.ErrTooManyProbes) {
		t.Fatalf("second Try half-open: %v, want ErrTooManyProbes", err)
	}
	stale.Done(breaker.Failure) // from the closed generation: ignored
	if b.State() != breaker.HalfOpen {
		t.Fatalf("a stale ticket moved the breaker to %s", b.State())
	}
	probe.Done(breaker.Success)
	if b.State() != breaker.Closed {
		t.Fatalf("state %s after the probe succeeded, want closed", b.State())
	}
}
