package sidecar

import (
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ejections records what an outlier asks of its instance.
type ejections struct {
	mu  sync.Mutex
	all []bool
}

func (e *ejections) set(ejected bool) {
	e.mu.Lock()
	e.all = append(e.all, ejected)
	e.mu.Unlock()
}

func (e *ejections) last() (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.all) == 0 {
		return false, 0
	}
	return e.all[len(e.all)-1], len(e.all)
}

// The n-th ejection in a row lasts n × BaseEjection, at most MaxEjection; a
// success in between resets the count of failures; a long quiet spell
// forgives earlier ejections; with no other instance passing there is no
// ejection, and an ejected instance rejoins early.
func TestOutlierEjectionTimes(t *testing.T) {
	t.Parallel()
	var others atomic.Int64
	others.Store(1)
	rec := &ejections{}
	o := &outlier{
		cfg:           OutlierConfig{Consecutive: 2, BaseEjection: time.Hour, MaxEjection: 150 * time.Minute},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		othersPassing: func() int { return int(others.Load()) },
		setEjected:    rec.set,
	}
	defer o.stop()
	// endEjection makes the current ejection due and runs the check.
	endEjection := func() {
		o.mu.Lock()
		o.until = time.Now().Add(-time.Millisecond)
		o.mu.Unlock()
		o.check()
		if ej, _ := rec.last(); ej {
			t.Fatalf("still ejected after the ejection was over")
		}
	}
	eject := func(want time.Duration) {
		t.Helper()
		if d := o.observe(true); d != 0 {
			t.Fatalf("ejected after 1 failure")
		}
		if d := o.observe(true); d != want {
			t.Fatalf("ejection for %s, want %s", d, want)
		}
		if ej, _ := rec.last(); !ej {
			t.Fatalf("not ejected")
		}
	}

	// A success between failures resets the count.
	for range 3 {
		o.observe(true)
		o.observe(false)
	}
	if _, n := rec.last(); n != 0 {
		t.Fatalf("ejected with no two failures in a row")
	}
	eject(time.Hour)
	endEjection()
	eject(2 * time.Hour)
	endEjection()
	eject(150 * time.Minute) // 3 h, capped
	endEjection()

	// Rejoined longer than MaxEjection ago: the count starts again.
	o.mu.Lock()
	o.lastRejoin = time.Now().Add(-3 * time.Hour)
	o.mu.Unlock()
	eject(time.Hour)

	// While ejected, the last other passing instance goes: it rejoins early.
	others.Store(0)
	o.check()
	if ej, _ := rec.last(); ej {
		t.Fatalf("still ejected with no other passing instance")
	}
	// And as the last passing instance, it stays in however it fails.
	_, n := rec.last()
	for range 5 {
		if d := o.observe(true); d != 0 {
			t.Fatalf("the last passing instance ejected itself for %s", d)
		}
	}
	if _, n2 := rec.last(); n2 != n {
		t.Fatalf("the last passing instance changed its rotation")
	}
}

// recheck, run on registry events, rejoins an ejected instance as soon as no
// other passes, without waiting for its next check; while others pass, or
// when it is not ejected, it changes nothing.
func TestOutlierRecheck(t *testing.T) {
	t.Parallel()
	var others atomic.Int64
	others.Store(1)
	rec := &ejections{}
	o := &outlier{
		cfg:           OutlierConfig{Consecutive: 1, BaseEjection: time.Hour, MaxEjection: time.Hour},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		othersPassing: func() int { return int(others.Load()) },
		setEjected:    rec.set,
	}
	defer o.stop()
	o.recheck()
	if _, n := rec.last(); n != 0 {
		t.Fatalf("recheck of an instance in rotation changed it")
	}
	if d := o.observe(true); d != time.Hour {
		t.Fatalf("ejection for %s, want 1h", d)
	}
	o.recheck()
	if ej, n := rec.last(); !ej || n != 1 {
		t.Fatalf("recheck while another instance passes rejoined (ejected %v after %d changes)", ej, n)
	}
	others.Store(0) // the others ejected themselves too, or left
	o.recheck()
	if ej, n := rec.last(); ej || n != 2 {
		t.Fatalf("recheck with no other instance passing: ejected %v after %d changes, want rejoined", ej, n)
	}
	o.mu.Lock()
	ejected, pending := o.ejected, o.timer != nil && o.timer.Stop()
	o.mu.Unlock()
	if ejected || pending {
		t.Fatalf("after the rejoin: ejected %v, check still pending %v", ejected, pending)
	}
}

// The last passing instance, refused ejection, answers its further failures
// without the pause that desynchronises decisions: it pauses again only
// once another instance passes or BaseEjection has passed.
func TestOutlierLastPassingDoesNotPauseEachFailure(t *testing.T) {
	t.Parallel()
	var others atomic.Int64
	var pauses atomic.Int64
	var ej ejections
	o := &outlier{
		cfg:           OutlierConfig{Consecutive: 2, BaseEjection: time.Hour, MaxEjection: time.Hour},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		othersPassing: func() int { return int(others.Load()) },
		setEjected:    ej.set,
		pause:         func(time.Duration) { pauses.Add(1) },
	}
	defer o.stop()
	for range 2 {
		o.observe(true)
	}
	if got := pauses.Load(); got != 1 {
		t.Fatalf("%d pauses for the failure that reached the limit, want 1", got)
	}
	for range 50 {
		if d := o.observe(true); d != 0 {
			t.Fatalf("the last passing instance ejected itself for %s", d)
		}
	}
	if got := pauses.Load(); got != 1 {
		t.Errorf("%d pauses after 50 more failures as the last passing instance, want still 1", got)
	}
	others.Store(1) // another instance passes again: the next failure decides
	if d := o.observe(true); d != time.Hour {
		t.Errorf("with another instance passing, the next failure ejected for %s, want 1h", d)
	}
	if got := pauses.Load(); got != 2 {
		t.Errorf("%d pauses, want 2: one more for the decision that ejected", got)
	}
	if ejected, n := ej.last(); !ejected || n != 1 {
		t.Errorf("ejection recorded %v (%d changes), want ejected once", ejected, n)
	}
}
