package registry_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// hb is a valid heartbeat of service/instance at seq, with a 1 s interval.
func hb(service, instance string, seq uint64) registry.Heartbeat {
	return registry.Heartbeat{
		Service: service, Instance: instance, Host: "h", PID: 1,
		Started: started, Seq: seq, IntervalMS: 1000, Health: registry.Passing,
	}
}

func withHealth(h registry.Heartbeat, health registry.Health) registry.Heartbeat {
	h.Health = health
	return h
}

// viewFixture is a view on a fake clock with a watcher of every event.
type viewFixture struct {
	t     *testing.T
	clock *meshtest.Clock
	view  *registry.View
	w     *registry.Watcher
}

func newViewFixture(t *testing.T, cfg registry.ViewConfig) *viewFixture {
	t.Helper()
	clock := meshtest.NewClock()
	cfg.Clock = clock
	v := registry.NewView(cfg)
	_, w := v.Watch("", 1024)
	t.Cleanup(w.Stop)
	return &viewFixture{t: t, clock: clock, view: v, w: w}
}

// events returns the events emitted so far and not yet taken. The view
// emits synchronously, so nothing is still on its way.
func (f *viewFixture) events() []registry.Event {
	var evs []registry.Event
	for {
		select {
		case ev, ok := <-f.w.Events():
			if !ok {
				f.t.Fatalf("watcher closed: %v", f.w.Err())
			}
			evs = append(evs, ev)
		default:
			return evs
		}
	}
}

// expect checks that exactly the events described were emitted, as
// "type/reason service/instance" strings.
func (f *viewFixture) expect(want ...string) []registry.Event {
	f.t.Helper()
	evs := f.events()
	got := make([]string, len(evs))
	for i, ev := range evs {
		got[i] = describe(ev)
	}
	if !slices.Equal(got, want) {
		f.t.Fatalf("events = %q, want %q", got, want)
	}
	return evs
}

func describe(ev registry.Event) string {
	return fmt.Sprintf("%s/%s %s/%s", ev.Type, ev.Reason, ev.Service, ev.Instance)
}

func TestViewFirstHeartbeatRegisters(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	h := hb("reviews", "reviews-1", 1)
	h.Meta = map[string]string{"version": "2"}
	f.view.Observe(h)
	evs := f.expect("up/registered reviews/reviews-1")
	ev := evs[0]
	if ev.Rev != 1 {
		t.Errorf("first event rev = %d, want 1", ev.Rev)
	}
	if !ev.At.Equal(f.clock.Now()) {
		t.Errorf("event at %v, want the clock's %v", ev.At, f.clock.Now())
	}
	if ev.Heartbeat.Seq != 1 || ev.Heartbeat.Meta["version"] != "2" {
		t.Errorf("event carries heartbeat %+v, want the one observed", ev.Heartbeat)
	}
	if got := f.view.Rev(); got != 1 {
		t.Errorf("Rev() = %d, want 1", got)
	}
	if st := f.view.Stats(); st.Heartbeats != 1 {
		t.Errorf("Stats().Heartbeats = %d, want 1", st.Heartbeats)
	}
}

func TestViewRepeatedHeartbeatsEmitNothing(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")
	for seq := uint64(2); seq <= 10; seq++ {
		f.clock.Advance(time.Second)
		h := hb("reviews", "reviews-1", seq)
		h.Inflight = int(seq) // in-flight counts change without an event
		f.view.Observe(h)
	}
	f.expect()
	if got := f.view.Rev(); got != 1 {
		t.Errorf("Rev() = %d after repeated heartbeats, want 1", got)
	}
	snap := f.view.Snapshot("reviews")
	if in := snap.Services["reviews"][0]; in.Seq != 10 || in.Inflight != 10 || !in.LastSeen.Equal(f.clock.Now()) {
		t.Errorf("instance = seq %d inflight %d last seen %v; want the last heartbeat, seen now", in.Seq, in.Inflight, in.LastSeen)
	}
	if st := f.view.Stats(); st.Heartbeats != 10 || st.Stale != 0 || st.Flood != 0 {
		t.Errorf("Stats() = %+v, want 10 heartbeats and nothing dropped", st)
	}
}

func TestViewHealthChanges(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 2), registry.Failing))
	evs := f.expect("up/registered reviews/reviews-1", "changed/health reviews/reviews-1")
	if evs[1].Heartbeat.Health != registry.Failing || evs[1].Rev != 2 {
		t.Errorf("changed event = %+v, want health failing at rev 2", evs[1])
	}
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 3), registry.Failing))
	f.expect()
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 4), registry.Draining))
	evs = f.expect("changed/health reviews/reviews-1")
	if evs[0].Heartbeat.Health != registry.Draining || evs[0].Rev != 3 {
		t.Errorf("changed event = %+v, want health draining at rev 3", evs[0])
	}
	f.clock.Advance(time.Second)
	f.view.Observe(hb("reviews", "reviews-1", 5))
	f.expect("changed/health reviews/reviews-1")
	if got := f.view.Snapshot("").Services["reviews"][0].Health; got != registry.Passing {
		t.Errorf("snapshot health = %q, want passing", got)
	}
}

func TestViewBye(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.view.Observe(hb("reviews", "reviews-2", 1))
	f.expect("up/registered reviews/reviews-1", "up/registered reviews/reviews-2")

	f.view.Bye("reviews", "unknown")
	f.view.Bye("ratings", "reviews-1")
	f.expect()

	f.view.Bye("reviews", "reviews-1")
	evs := f.expect("down/deregistered reviews/reviews-1")
	if evs[0].Rev != 3 || evs[0].Heartbeat.Seq != 1 {
		t.Errorf("down event = %+v, want rev 3 carrying the last heartbeat", evs[0])
	}
	f.view.Bye("reviews", "reviews-1") // a second goodbye is nothing new
	f.expect()

	snap := f.view.Snapshot("")
	if snap.Instances != 1 || len(snap.Services["reviews"]) != 1 || snap.Services["reviews"][0].Instance != "reviews-2" {
		t.Errorf("snapshot after bye = %+v, want only reviews-2", snap)
	}
	if st := f.view.Stats(); st.Deregistered != 1 {
		t.Errorf("Stats().Deregistered = %d, want 1", st.Deregistered)
	}

	f.view.Bye("reviews", "reviews-2")
	f.expect("down/deregistered reviews/reviews-2")
	if snap := f.view.Snapshot(""); len(snap.Services) != 0 || snap.Instances != 0 {
		t.Errorf("snapshot after the last bye = %+v, want no services", snap)
	}
}

func TestViewExpiry(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")

	f.clock.Advance(3 * time.Second)
	f.view.Sweep()
	f.expect() // exactly 3 intervals missed: not yet

	f.clock.Advance(time.Millisecond)
	f.view.Sweep()
	evs := f.expect("down/expired reviews/reviews-1")
	if evs[0].Rev != 2 || !evs[0].At.Equal(f.clock.Now()) {
		t.Errorf("expired event = %+v, want rev 2 at the clock's time", evs[0])
	}
	f.view.Sweep()
	f.clock.Advance(time.Hour)
	f.view.Sweep()
	f.expect()

	if snap := f.view.Snapshot(""); snap.Instances != 0 || len(snap.Services) != 0 {
		t.Errorf("snapshot after expiry = %+v, want empty", snap)
	}
	if st := f.view.Stats(); st.Expired != 1 {
		t.Errorf("Stats().Expired = %d, want 1", st.Expired)
	}

	// An expired instance that heartbeats again comes back up.
	f.view.Observe(hb("reviews", "reviews-1", 2))
	f.expect("up/registered reviews/reviews-1")
}

func TestViewExpiryIsPerHeartbeat(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")
	// A heartbeat every 2.9 s keeps it alive forever.
	for seq := uint64(2); seq < 10; seq++ {
		f.clock.Advance(2900 * time.Millisecond)
		f.view.Sweep()
		f.view.Observe(hb("reviews", "reviews-1", seq))
	}
	f.expect()
}

func TestViewExpiryUsesEachInstancesInterval(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	slow := hb("reviews", "slow", 1)
	slow.IntervalMS = 5000
	fast := hb("reviews", "fast", 1)
	fast.IntervalMS = 100
	f.view.Observe(slow)
	f.view.Observe(fast)
	f.expect("up/registered reviews/slow", "up/registered reviews/fast")

	f.clock.Advance(301 * time.Millisecond)
	f.view.Sweep()
	f.expect("down/expired reviews/fast")

	f.clock.Advance(3 * time.Second) // 3.3 s: not 3 of slow's 5 s intervals
	f.view.Sweep()
	f.expect()

	f.clock.Advance(12 * time.Second) // 15.3 s
	f.view.Sweep()
	f.expect("down/expired reviews/slow")
}

func TestViewExpireAfterConfig(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{ExpireAfter: 5})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")
	f.clock.Advance(4 * time.Second)
	f.view.Sweep()
	f.expect()
	f.clock.Advance(1001 * time.Millisecond)
	f.view.Sweep()
	f.expect("down/expired reviews/reviews-1")
}

func TestViewRestartedInstance(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	for seq := uint64(1); seq <= 5; seq++ {
		f.view.Observe(hb("reviews", "reviews-1", seq))
		f.clock.Advance(time.Second)
	}
	f.expect("up/registered reviews/reviews-1")

	restarted := hb("reviews", "reviews-1", 1)
	restarted.Started = started.Add(5 * time.Second) // the clock is 5 s on
	restarted.PID = 2
	f.view.Observe(restarted)
	f.expect()
	in := f.view.Snapshot("reviews").Services["reviews"][0]
	if in.Seq != 1 || in.PID != 2 || !in.Started.Equal(restarted.Started) {
		t.Errorf("instance = %+v, want the restarted run's heartbeat", in)
	}
	if st := f.view.Stats(); st.Stale != 0 || st.Heartbeats != 6 {
		t.Errorf("Stats() = %+v, want 6 heartbeats, none stale", st)
	}
	// The new run's seq counts from its own start.
	f.clock.Advance(time.Second)
	next := restarted
	next.Seq = 2
	f.view.Observe(next)
	if st := f.view.Stats(); st.Stale != 0 || st.Heartbeats != 7 {
		t.Errorf("Stats() = %+v, want 7 heartbeats, none stale", st)
	}

	// A restart that comes up failing is a health change.
	f.clock.Advance(time.Second)
	again := withHealth(hb("reviews", "reviews-1", 1), registry.Failing)
	again.Started = started.Add(7 * time.Second)
	f.view.Observe(again)
	f.expect("changed/health reviews/reviews-1")
}

func TestViewStaleSeq(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 5))
	f.expect("up/registered reviews/reviews-1")
	f.clock.Advance(time.Second)

	f.view.Observe(hb("reviews", "reviews-1", 5))                               // duplicate
	f.view.Observe(hb("reviews", "reviews-1", 4))                               // out of order
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 3), registry.Failing)) // old news, even with a new health
	f.expect()
	if st := f.view.Stats(); st.Stale != 3 || st.Heartbeats != 1 {
		t.Errorf("Stats() = %+v, want 3 stale and 1 heartbeat", st)
	}
	in := f.view.Snapshot("reviews").Services["reviews"][0]
	if in.Seq != 5 || in.Health != registry.Passing {
		t.Errorf("instance = seq %d health %s, want seq 5 passing: stale heartbeats must not apply", in.Seq, in.Health)
	}
	// A stale heartbeat does not refresh the instance either.
	f.clock.Advance(2001 * time.Millisecond)
	f.view.Observe(hb("reviews", "reviews-1", 5))
	f.view.Sweep()
	f.expect("down/expired reviews/reviews-1")
}

func TestViewFlood(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")

	// Ten heartbeats 10 ms apart at a 1 s interval: a flood.
	for seq := uint64(2); seq <= 11; seq++ {
		f.clock.Advance(10 * time.Millisecond)
		f.view.Observe(hb("reviews", "reviews-1", seq))
	}
	f.expect()
	st := f.view.Stats()
	if st.Flood != 10 || st.Heartbeats != 1 || st.Stale != 0 {
		t.Errorf("Stats() = %+v, want 10 flood, 1 heartbeat", st)
	}
	in := f.view.Snapshot("reviews").Services["reviews"][0]
	if in.Seq != 1 {
		t.Errorf("instance seq = %d, want 1: a flood must not be applied", in.Seq)
	}

	// A health change is news however soon it comes.
	f.clock.Advance(10 * time.Millisecond)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 12), registry.Failing))
	evs := f.expect("changed/health reviews/reviews-1")
	if evs[0].Heartbeat.Seq != 12 {
		t.Errorf("changed event carries seq %d, want 12", evs[0].Heartbeat.Seq)
	}

	// A quarter of an interval after the last applied heartbeat is not a flood.
	f.clock.Advance(250 * time.Millisecond)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 13), registry.Failing))
	if st := f.view.Stats(); st.Flood != 10 || st.Heartbeats != 3 {
		t.Errorf("Stats() = %+v, want 10 flood, 3 heartbeats", st)
	}
}

// A flood does not keep a dead instance alive: it expires 3 intervals after
// the last heartbeat the view applied.
func TestViewFloodDoesNotRefresh(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.expect("up/registered reviews/reviews-1")
	f.clock.Advance(3001 * time.Millisecond)
	f.view.Sweep()
	f.expect("down/expired reviews/reviews-1")
}

func TestViewMaxInstances(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{MaxInstances: 2})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.view.Observe(hb("ratings", "ratings-1", 1))
	f.expect("up/registered reviews/reviews-1", "up/registered ratings/ratings-1")

	f.view.Observe(hb("reviews", "reviews-2", 1))
	f.view.Observe(hb("details", "details-1", 1))
	f.expect()
	if st := f.view.Stats(); st.Overflow != 2 || st.Heartbeats != 2 {
		t.Errorf("Stats() = %+v, want 2 overflow, 2 heartbeats", st)
	}
	if snap := f.view.Snapshot(""); snap.Instances != 2 || len(snap.Services) != 2 {
		t.Errorf("snapshot = %+v, want the first 2 instances only", snap)
	}

	// Instances already in still update.
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 2), registry.Failing))
	f.expect("changed/health reviews/reviews-1")

	// Room made by a goodbye is taken by the next new instance.
	f.view.Bye("ratings", "ratings-1")
	f.view.Observe(hb("details", "details-1", 2))
	f.expect("down/deregistered ratings/ratings-1", "up/registered details/details-1")
	if st := f.view.Stats(); st.Overflow != 2 {
		t.Errorf("Stats().Overflow = %d, want still 2", st.Overflow)
	}
}

func TestViewRevsRiseByOneAcrossServices(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.view.Observe(hb("ratings", "ratings-1", 1))
	f.clock.Advance(time.Second)
	f.view.Observe(withHealth(hb("reviews", "reviews-1", 2), registry.Failing))
	f.view.Bye("ratings", "ratings-1")
	f.view.Observe(hb("details", "details-1", 1))
	f.clock.Advance(3001 * time.Millisecond)
	f.view.Sweep() // expires reviews-1 and details-1, in any order
	evs := f.events()
	if len(evs) != 7 {
		t.Fatalf("got %d events, want 7: %v", len(evs), evs)
	}
	for i, ev := range evs {
		if ev.Rev != uint64(i+1) {
			t.Errorf("event %d (%s) has rev %d, want %d", i, describe(ev), ev.Rev, i+1)
		}
	}
	if got := f.view.Rev(); got != 7 {
		t.Errorf("Rev() = %d, want 7", got)
	}
	if got := f.view.Snapshot("").Rev; got != 7 {
		t.Errorf("Snapshot().Rev = %d, want 7", got)
	}
}

func TestViewSnapshot(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	empty := f.view.Snapshot("")
	if empty.Rev != 0 || empty.Instances != 0 || empty.Services == nil || len(empty.Services) != 0 {
		t.Errorf("empty view snapshot = %+v, want rev 0 and an empty, non-nil map", empty)
	}
	for _, id := range []string{"reviews-c", "reviews-a", "reviews-b"} {
		f.view.Observe(hb("reviews", id, 1))
	}
	f.clock.Advance(time.Second)
	for _, id := range []string{"ratings-2", "ratings-10", "ratings-1"} {
		f.view.Observe(hb("ratings", id, 1))
	}

	all := f.view.Snapshot("")
	if all.Rev != 6 || all.Instances != 6 || len(all.Services) != 2 {
		t.Fatalf("Snapshot(\"\") = rev %d, %d instances, %d services; want 6, 6, 2", all.Rev, all.Instances, len(all.Services))
	}
	ids := func(insts []registry.Instance) []string {
		var s []string
		for _, in := range insts {
			s = append(s, in.Instance)
		}
		return s
	}
	if got, want := ids(all.Services["reviews"]), []string{"reviews-a", "reviews-b", "reviews-c"}; !slices.Equal(got, want) {
		t.Errorf("reviews instances = %v, want sorted %v", got, want)
	}
	if got, want := ids(all.Services["ratings"]), []string{"ratings-1", "ratings-10", "ratings-2"}; !slices.Equal(got, want) {
		t.Errorf("ratings instances = %v, want sorted %v", got, want)
	}
	if got := all.Services["ratings"][0].LastSeen; !got.Equal(f.clock.Now()) {
		t.Errorf("LastSeen = %v, want %v", got, f.clock.Now())
	}
	if got := all.Services["reviews"][0].LastSeen; !got.Equal(f.clock.Now().Add(-time.Second)) {
		t.Errorf("LastSeen = %v, want a second ago", got)
	}

	one := f.view.Snapshot("reviews")
	if one.Rev != 6 || one.Instances != 3 || len(one.Services) != 1 || len(one.Services["reviews"]) != 3 {
		t.Errorf("Snapshot(\"reviews\") = %+v, want rev 6 and only reviews' 3 instances", one)
	}
	none := f.view.Snapshot("details")
	if none.Rev != 6 || none.Instances != 0 || len(none.Services) != 0 {
		t.Errorf("Snapshot(\"details\") = %+v, want rev 6 and nothing", none)
	}

	// A snapshot is a copy: changing it does not change the view.
	one.Services["reviews"][0].Seq = 99
	if got := f.view.Snapshot("reviews").Services["reviews"][0].Seq; got != 1 {
		t.Errorf("the view's seq changed to %d through a snapshot", got)
	}
}

func TestWatchSnapshotThenEvents(t *testing.T) {
	clock := meshtest.NewClock()
	v := registry.NewView(registry.ViewConfig{Clock: clock})
	v.Observe(hb("reviews", "reviews-1", 1))
	v.Observe(hb("ratings", "ratings-1", 1))

	snap, w := v.Watch("", 16)
	defer w.Stop()
	if snap.Rev != 2 || snap.Instances != 2 {
		t.Fatalf("Watch snapshot = %+v, want rev 2 with both instances", snap)
	}
	clock.Advance(time.Second)
	v.Observe(hb("reviews", "reviews-2", 1))
	v.Bye("ratings", "ratings-1")
	v.Observe(withHealth(hb("reviews", "reviews-1", 2), registry.Draining))
	want := []string{"up/registered reviews/reviews-2", "down/deregistered ratings/ratings-1", "changed/health reviews/reviews-1"}
	for i, w1 := range want {
		ev := recv(t, w)
		if describe(ev) != w1 || ev.Rev != snap.Rev+uint64(i)+1 {
			t.Errorf("event %d = %s rev %d, want %s rev %d", i, describe(ev), ev.Rev, w1, snap.Rev+uint64(i)+1)
		}
	}
	noEvent(t, w)
}

// Watch is atomic with the view's events: whatever runs concurrently, the
// events a watcher gets start right after its snapshot's rev.
func TestWatchIsAtomic(t *testing.T) {
	v := registry.NewView(registry.ViewConfig{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			v.Observe(hb("reviews", fmt.Sprintf("r-%d", i), 1))
		}
	}()
	var watchers []*registry.Watcher
	var snaps []registry.Snapshot
	for range 50 {
		s, w := v.Watch("", 4096)
		watchers = append(watchers, w)
		snaps = append(snaps, s)
	}
	<-done
	for i, w := range watchers {
		w.Stop()
		next := snaps[i].Rev + 1
		for _, ev := range untilClosed(t, w) {
			if ev.Rev != next {
				t.Fatalf("watcher %d: snapshot rev %d, then event rev %d, want %d", i, snaps[i].Rev, ev.Rev, next)
			}
			next++
		}
		if got := snaps[i].Instances + int(next-snaps[i].Rev-1); got != 2000 {
			t.Errorf("watcher %d: snapshot %d instances + events = %d, want 2000", i, snaps[i].Instances, got)
		}
	}
}

func TestWatchFilteredByService(t *testing.T) {
	clock := meshtest.NewClock()
	v := registry.NewView(registry.ViewConfig{Clock: clock})
	v.Observe(hb("reviews", "reviews-1", 1))
	v.Observe(hb("ratings", "ratings-1", 1))

	snap, w := v.Watch("reviews", 16)
	defer w.Stop()
	if snap.Rev != 2 || len(snap.Services) != 1 || len(snap.Services["reviews"]) != 1 {
		t.Fatalf("Watch(\"reviews\") snapshot = %+v, want reviews only at rev 2", snap)
	}
	v.Observe(hb("ratings", "ratings-2", 1))
	v.Observe(hb("reviews", "reviews-2", 1))
	v.Bye("ratings", "ratings-1")
	v.Bye("reviews", "reviews-1")

	ev := recv(t, w)
	if describe(ev) != "up/registered reviews/reviews-2" || ev.Rev != 4 {
		t.Errorf("first event = %s rev %d, want up reviews-2 rev 4", describe(ev), ev.Rev)
	}
	ev = recv(t, w)
	if describe(ev) != "down/deregistered reviews/reviews-1" || ev.Rev != 6 {
		t.Errorf("second event = %s rev %d, want down reviews-1 rev 6", describe(ev), ev.Rev)
	}
	noEvent(t, w)
}

func TestSlowWatcherIsDropped(t *testing.T) {
	clock := meshtest.NewClock()
	v := registry.NewView(registry.ViewConfig{Clock: clock})
	_, slow := v.Watch("", 2)
	_, fast := v.Watch("", 2)
	defer fast.Stop()

	var fastGot []registry.Event
	for i := range 5 {
		v.Observe(hb("reviews", fmt.Sprintf("reviews-%d", i), 1))
		fastGot = append(fastGot, recv(t, fast)) // keeps up
	}
	for i, ev := range fastGot {
		if ev.Rev != uint64(i+1) {
			t.Errorf("fast watcher event %d has rev %d", i, ev.Rev)
		}
	}

	var slowGot []uint64
	for _, ev := range untilClosed(t, slow) { // the view closed it
		slowGot = append(slowGot, ev.Rev)
	}
	if !slices.Equal(slowGot, []uint64{1, 2}) {
		t.Errorf("slow watcher got revs %v, want the 2 it had room for", slowGot)
	}
	if err := slow.Err(); !errors.Is(err, registry.ErrSlowWatcher) {
		t.Errorf("slow watcher Err() = %v, want ErrSlowWatcher", err)
	}
	if err := fast.Err(); err != nil {
		t.Errorf("fast watcher Err() = %v, want nil", err)
	}
	if st := v.Stats(); st.WatchersDropped != 1 {
		t.Errorf("Stats().WatchersDropped = %d, want 1", st.WatchersDropped)
	}
	slow.Stop() // harmless on a dropped watcher
	slow.Stop()

	// The view carries on.
	v.Observe(hb("reviews", "reviews-5", 1))
	if ev := recv(t, fast); ev.Rev != 6 {
		t.Errorf("after the drop the fast watcher got rev %d, want 6", ev.Rev)
	}
	if st := v.Stats(); st.WatchersDropped != 1 {
		t.Errorf("Stats().WatchersDropped = %d, want still 1", st.WatchersDropped)
	}
}

func TestWatcherStop(t *testing.T) {
	v := registry.NewView(registry.ViewConfig{Clock: meshtest.NewClock()})
	_, w := v.Watch("", 0) // 0: the default buffer
	v.Observe(hb("reviews", "reviews-1", 1))
	w.Stop()
	w.Stop()
	// The event sent before Stop can still be read; then the channel is closed.
	if n := len(untilClosed(t, w)); n != 1 {
		t.Errorf("read %d events after Stop, want the 1 buffered", n)
	}
	if err := w.Err(); err != nil {
		t.Errorf("stopped watcher Err() = %v, want nil", err)
	}
	// Events after Stop go nowhere and do not count as a drop.
	for i := range registry.DefaultWatchBuffer + 10 {
		v.Observe(hb("reviews", fmt.Sprintf("r-%d", i), 1))
	}
	if st := v.Stats(); st.WatchersDropped != 0 {
		t.Errorf("Stats().WatchersDropped = %d after Stop, want 0", st.WatchersDropped)
	}
}

func TestWatcherDefaultBuffer(t *testing.T) {
	v := registry.NewView(registry.ViewConfig{Clock: meshtest.NewClock()})
	_, w := v.Watch("", 0)
	defer w.Stop()
	for i := range registry.DefaultWatchBuffer {
		v.Observe(hb("reviews", fmt.Sprintf("r-%d", i), 1))
	}
	if st := v.Stats(); st.WatchersDropped != 0 {
		t.Fatalf("a watcher with the default buffer was dropped after %d events", registry.DefaultWatchBuffer)
	}
	v.Observe(hb("reviews", "one-more", 1))
	if st := v.Stats(); st.WatchersDropped != 1 {
		t.Errorf("Stats().WatchersDropped = %d after overfilling the default buffer, want 1", st.WatchersDropped)
	}
}

// The view never waits for a watcher: with a watcher that never reads,
// applying many heartbeats finishes.
func TestViewNeverBlocksOnWatchers(t *testing.T) {
	v := registry.NewView(registry.ViewConfig{Clock: meshtest.NewClock()})
	for range 10 {
		_, w := v.Watch("", 1)
		defer w.Stop()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			v.Observe(hb("reviews", fmt.Sprintf("r-%d", i), 1))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the view blocked on watchers that do not read")
	}
	if st := v.Stats(); st.WatchersDropped != 10 {
		t.Errorf("Stats().WatchersDropped = %d, want 10", st.WatchersDropped)
	}
}

// untilClosed reads w's events until its channel is closed, failing if it
// is not closed once the buffered events are read.
func untilClosed(t *testing.T, w *registry.Watcher) []registry.Event {
	t.Helper()
	var evs []registry.Event
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-time.After(5 * time.Second):
			t.Fatalf("watcher still open after %d events", len(evs))
		}
	}
}

func recv(t *testing.T, w *registry.Watcher) registry.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watcher closed: %v", w.Err())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	panic("unreachable")
}

// noEvent checks that nothing is waiting on w. Views emit synchronously,
// so for a view driven directly by the test nothing can still be coming.
func noEvent(t *testing.T, w *registry.Watcher) {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if ok {
			t.Errorf("unexpected event %s rev %d", describe(ev), ev.Rev)
		} else {
			t.Errorf("watcher closed: %v", w.Err())
		}
	default:
	}
}
