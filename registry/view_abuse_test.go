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
		h.Started = h.Started.Add(time.Duration(i+1) * 100 * time.Millisecond)
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

// A heartbeat whose start time lies ahead of the view's clock is ignored:
// taken, it would make every true beat of the instance look like one of an
// earlier run until then, locking its record.
func TestViewIgnoresFutureStart(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("x", "x-1", 1))
	f.expect("up/registered x/x-1")

	forged := withHealth(hb("x", "x-1", 2), registry.Draining)
	forged.Started = f.clock.Now().Add(3 * time.Hour)
	f.clock.Advance(time.Second)
	f.view.Observe(forged)
	if st := f.view.Stats(); st.Future != 1 {
		t.Fatalf("Stats() = %+v, want the future start counted", st)
	}
	// A new instance with a future start is not registered either.
	phantom := hb("x", "x-2", 1)
	phantom.Started = f.clock.Now().Add(registry.MaxClockSkew + time.Second)
	f.view.Observe(phantom)

	// The true beats go on being taken.
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("x", "x-1", 3), registry.Failing))
	f.expect("changed/health x/x-1")
	if got := f.view.Snapshot("x").Services["x"]; len(got) != 1 || got[0].Health != registry.Failing {
		t.Fatalf("instances %+v, want x-1 alone, failing", got)
	}
	// Within the allowed skew a start time ahead is taken (clocks differ).
	near := hb("x", "x-3", 1)
	near.Started = f.clock.Now().Add(registry.MaxClockSkew / 2)
	f.view.Observe(near)
	f.expect("up/registered x/x-3")
}
