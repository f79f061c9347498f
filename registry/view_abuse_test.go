package registry_test

import (
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/registry"
)

// A sender cannot get around the flood rule by toggling its health, by
// announcing a new run with every beat, or by announcing a tiny interval.
func TestViewFloodCannotBeBypassed(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("x", "x-1", 1))
	f.expect("up/registered x/x-1")

	// 100 beats 1 ms apart, each flipping health.
	seq := uint64(1)
	for i := 0; i < 100; i++ {
		f.clock.Advance(time.Millisecond)
		seq++
		h := registry.Failing
		if i%2 == 1 {
			h = registry.Passing
		}
		f.view.Observe(withHealth(hb("x", "x-1", seq), h))
	}
	if n := len(f.events()); n > 3 {
		t.Fatalf("toggling health 100 times within 100 ms gave %d events, want at most 3", n)
	}

	// A new run on every beat.
	for i := 0; i < 100; i++ {
		f.clock.Advance(time.Millisecond)
		h := hb("x", "x-1", 1)
		h.Started = h.Started.Add(time.Duration(i+1) * time.Second)
		f.view.Observe(h)
	}
	// A tiny announced interval does not lower the limit the view applies.
	for i := 0; i < 100; i++ {
		f.clock.Advance(time.Millisecond)
		seq++
		h := hb("x", "x-1", seq)
		h.IntervalMS = 100
		f.view.Observe(h)
	}
	if st := f.view.Stats(); st.Flood < 250 {
		t.Fatalf("Stats() = %+v, want most of the 300 fast beats counted as flood", st)
	}
}

// A late heartbeat of an instance's earlier run never replaces its current
// run.
func TestViewIgnoresEarlierRun(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	newer := hb("x", "x-1", 5)
	f.view.Observe(newer)
	f.expect("up/registered x/x-1")
	older := withHealth(hb("x", "x-1", 99), registry.Draining)
	older.Started = newer.Started.Add(-time.Hour)
	f.clock.Advance(time.Second)
	f.view.Observe(older)
	f.expect()
	in := f.view.Snapshot("x").Services["x"][0]
	if !in.Started.Equal(newer.Started) || in.Health != registry.Passing || in.Seq != 5 {
		t.Fatalf("instance = %+v, want the newer run untouched", in)
	}
	if f.view.Stats().Stale != 1 {
		t.Fatalf("Stats() = %+v, want the earlier run's beat counted as stale", f.view.Stats())
	}
}
