package registry_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

const testInterval = 100 * time.Millisecond

// followed is a view fed from a real NATS server, with a watcher of all its
// events.
type followed struct {
	nc   *nats.Conn
	view *registry.View
	f    *registry.Follower
	w    *registry.Watcher
}

func followMesh(t *testing.T, s *embedded.Server, prefix string, services ...string) *followed {
	t.Helper()
	nc := meshtest.Connect(t, s)
	v := registry.NewView(registry.ViewConfig{})
	_, w := v.Watch("", 1024)
	t.Cleanup(w.Stop)
	f, err := registry.Follow(nc, v, prefix, services...)
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	t.Cleanup(f.Stop)
	if err := nc.Flush(); err != nil { // the subscriptions are in place
		t.Fatal(err)
	}
	return &followed{nc: nc, view: v, f: f, w: w}
}

// startAnnouncer starts an announcer on its own connection, stopped when the test
// ends.
func startAnnouncer(t *testing.T, s *embedded.Server, cfg registry.AnnouncerConfig) (*registry.Announcer, *nats.Conn) {
	t.Helper()
	nc := meshtest.Connect(t, s)
	if cfg.Interval == 0 {
		cfg.Interval = testInterval
	}
	a, err := registry.NewAnnouncer(nc, cfg)
	if err != nil {
		t.Fatalf("NewAnnouncer: %v", err)
	}
	t.Cleanup(a.Stop)
	return a, nc
}

// nextEvent returns the watcher's next event, failing after within.
func nextEvent(t *testing.T, w *registry.Watcher, within time.Duration) registry.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watcher closed: %v", w.Err())
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %s", within)
	}
	panic("unreachable")
}

// expectNext checks the watcher's next event.
func expectNext(t *testing.T, w *registry.Watcher, want string) registry.Event {
	t.Helper()
	ev := nextEvent(t, w, 5*time.Second)
	if got := describe(ev); got != want {
		t.Fatalf("event = %s, want %s", got, want)
	}
	return ev
}

func TestFollowAnnouncer(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "")
	var health atomic.Value
	health.Store(registry.Passing)
	var inflight atomic.Int64
	a, _ := startAnnouncer(t, s, registry.AnnouncerConfig{
		Service: "greeter", Subset: "v1", Instance: "greeter-1",
		// A long interval: the health change below can only arrive in
		// time through Beat.
		Interval: 10 * time.Second,
		Meta:     map[string]string{"version": "1.0"},
		Status: func() (registry.Health, int) {
			return health.Load().(registry.Health), int(inflight.Load())
		},
	})

	ev := expectNext(t, fw.w, "up/registered greeter/greeter-1")
	if ev.Rev != 1 || ev.Heartbeat.Subset != "v1" || ev.Heartbeat.Meta["version"] != "1.0" ||
		ev.Heartbeat.Seq != 1 || ev.Heartbeat.IntervalMS != 10000 || ev.Heartbeat.Health != registry.Passing {
		t.Errorf("up event = %+v", ev)
	}
	snap := fw.view.Snapshot("greeter")
	if len(snap.Services["greeter"]) != 1 {
		t.Fatalf("snapshot = %+v, want greeter-1", snap)
	}
	in := snap.Services["greeter"][0]
	if in.Instance != "greeter-1" || in.Host == "" || in.PID == 0 || in.Started.IsZero() || time.Since(in.Started) > time.Minute {
		t.Errorf("instance = %+v, want host, pid and a recent start", in)
	}

	health.Store(registry.Failing)
	inflight.Store(7)
	a.Beat()
	ev = nextEvent(t, fw.w, 2*time.Second)
	if describe(ev) != "changed/health greeter/greeter-1" || ev.Heartbeat.Health != registry.Failing ||
		ev.Heartbeat.Inflight != 7 || ev.Heartbeat.Seq != 2 || ev.Rev != 2 {
		t.Fatalf("after Beat: event %s %+v, want changed/health to failing with 7 in flight, seq 2, rev 2", describe(ev), ev)
	}

	health.Store(registry.Draining)
	a.Beat()
	ev = expectNext(t, fw.w, "changed/health greeter/greeter-1")
	if ev.Heartbeat.Health != registry.Draining {
		t.Errorf("health = %s, want draining", ev.Heartbeat.Health)
	}

	a.Stop()
	ev = nextEvent(t, fw.w, 2*time.Second)
	if describe(ev) != "down/deregistered greeter/greeter-1" || ev.Rev != 4 {
		t.Fatalf("after Stop: event %s rev %d, want down/deregistered rev 4", describe(ev), ev.Rev)
	}
	if snap := fw.view.Snapshot(""); snap.Instances != 0 {
		t.Errorf("snapshot after Stop = %+v, want empty", snap)
	}
	a.Stop() // twice is harmless
	a.Beat() // after Stop: nothing
	if err := fw.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := fw.view.Stats(); st.Deregistered != 1 || st.Heartbeats != 3 || st.Malformed != 0 {
		t.Errorf("Stats() = %+v, want 3 heartbeats and 1 deregistered", st)
	}
}

func TestFollowRegularHeartbeats(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "")
	startAnnouncer(t, s, registry.AnnouncerConfig{Service: "greeter", Instance: "greeter-1"})
	expectNext(t, fw.w, "up/registered greeter/greeter-1")
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := fw.view.Stats(); st.Heartbeats < 5 {
			return fmt.Errorf("%d heartbeats", st.Heartbeats)
		}
		return nil
	})
	if st := fw.view.Stats(); st.Stale != 0 || st.Flood != 0 || st.Malformed != 0 {
		t.Errorf("Stats() = %+v: an announcer's regular heartbeats must all be accepted", st)
	}
	select {
	case ev := <-fw.w.Events():
		t.Errorf("unexpected event %s from regular heartbeats", describe(ev))
	default:
	}
}

// An instance killed without a goodbye (kill -9: its connection just goes
// away) expires within 3 intervals plus a sweep.
func TestFollowExpiresKilledInstance(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "")
	_, anc := startAnnouncer(t, s, registry.AnnouncerConfig{Service: "greeter", Instance: "greeter-1"})
	expectNext(t, fw.w, "up/registered greeter/greeter-1")

	anc.Close()
	killed := time.Now()
	ev := nextEvent(t, fw.w, 5*time.Second)
	took := time.Since(killed)
	if describe(ev) != "down/expired greeter/greeter-1" {
		t.Fatalf("event = %s, want down/expired", describe(ev))
	}
	if limit := 3*testInterval + registry.SweepEvery + 500*time.Millisecond; took > limit {
		t.Errorf("expired %s after the kill, want under %s", took, limit)
	}
	if st := fw.view.Stats(); st.Expired != 1 || st.Deregistered != 0 {
		t.Errorf("Stats() = %+v, want 1 expired", st)
	}
}

func TestFollowOnlyNamedServices(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "", "a")

	// Count what the mesh publishes, on a connection of its own.
	spy := meshtest.Connect(t, s)
	var aBeats, bBeats atomic.Int64
	if _, err := spy.Subscribe("mesh.hb.a.*", func(*nats.Msg) { aBeats.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if _, err := spy.Subscribe("mesh.hb.b.*", func(*nats.Msg) { bBeats.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}

	aAnn, _ := startAnnouncer(t, s, registry.AnnouncerConfig{Service: "a", Instance: "a-1"})
	bAnn, _ := startAnnouncer(t, s, registry.AnnouncerConfig{Service: "b", Instance: "b-1"})
	expectNext(t, fw.w, "up/registered a/a-1")
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := bBeats.Load(); n < 4 {
			return fmt.Errorf("b sent %d heartbeats", n)
		}
		return nil
	})
	// Stop both: after a's goodbye is applied, every heartbeat of a has
	// been handled, and b's would have been too had they been delivered.
	bAnn.Stop()
	aAnn.Stop()
	expectNext(t, fw.w, "down/deregistered a/a-1")
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if got, want := fw.view.Stats().Heartbeats, uint64(aBeats.Load()); got != want {
			return fmt.Errorf("view counted %d heartbeats, a sent %d (b sent %d)", got, want, bBeats.Load())
		}
		return nil
	})
	if snap := fw.view.Snapshot(""); len(snap.Services) != 0 {
		t.Errorf("snapshot = %+v, want nothing (and never b)", snap)
	}
	if st := fw.view.Stats(); st.Malformed != 0 || st.Deregistered != 1 {
		t.Errorf("Stats() = %+v, want a's goodbye only", st)
	}
	select {
	case ev := <-fw.w.Events():
		t.Errorf("unexpected event %s", describe(ev))
	default:
	}
}

func TestFollowerAddRemove(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "", "a")
	startAnnouncer(t, s, registry.AnnouncerConfig{Service: "b", Instance: "b-1"})

	if err := fw.f.Add("b"); err != nil {
		t.Fatalf("Add(b): %v", err)
	}
	if err := fw.f.Add("b"); err != nil {
		t.Fatalf("Add(b) twice: %v", err)
	}
	expectNext(t, fw.w, "up/registered b/b-1")

	fw.f.Remove("b")
	fw.f.Remove("b") // twice is harmless
	fw.f.Remove("never-followed")
	// b keeps heartbeating, but the view no longer hears it: it expires.
	ev := nextEvent(t, fw.w, 5*time.Second)
	if describe(ev) != "down/expired b/b-1" {
		t.Fatalf("after Remove: event %s, want down/expired b/b-1", describe(ev))
	}
	before := fw.view.Stats().Heartbeats
	spy := meshtest.Connect(t, s)
	var bBeats atomic.Int64
	if _, err := spy.Subscribe("mesh.hb.b.*", func(*nats.Msg) { bBeats.Add(1) }); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := bBeats.Load(); n < 3 {
			return fmt.Errorf("b sent %d heartbeats", n)
		}
		return nil
	})
	if err := fw.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if after := fw.view.Stats().Heartbeats; after != before {
		t.Errorf("view counted %d heartbeats after Remove, want %d", after, before)
	}

	// And it can be followed again.
	if err := fw.f.Add("b"); err != nil {
		t.Fatal(err)
	}
	expectNext(t, fw.w, "up/registered b/b-1")
}

func TestFollowRejectsBadNames(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	v := registry.NewView(registry.ViewConfig{})
	if _, err := registry.Follow(nc, v, "Bad.Prefix"); !errors.Is(err, bus.ErrInvalidName) {
		t.Errorf("Follow with a bad prefix: %v, want ErrInvalidName", err)
	}
	for _, svc := range []string{"B", "a.b", "*", ">"} {
		if _, err := registry.Follow(nc, v, "", "ok", svc); !errors.Is(err, bus.ErrInvalidName) {
			t.Errorf("Follow(%q): %v, want ErrInvalidName", svc, err)
		}
	}
	f, err := registry.Follow(nc, v, "", "ok")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	if err := f.Add("*"); !errors.Is(err, bus.ErrInvalidName) {
		t.Errorf("Add(*): %v, want ErrInvalidName", err)
	}
	f.Stop()
	f.Stop() // twice is harmless
}

func TestFollowCountsMalformed(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "")
	pub := meshtest.Connect(t, s)

	good := func(svc, inst string) []byte {
		return encode(t, hb(svc, inst, 1))
	}
	big := hb("x", "y", 1)
	big.Host = string(make([]byte, registry.MaxHeartbeatSize)) // oversized

	for _, m := range []struct {
		subject string
		data    []byte
	}{
		{"mesh.hb.x.y", []byte(`{"service":"x","instance":`)}, // bad JSON
		{"mesh.hb.x.Y", good("x", "Y")},                       // invalid token
		{"mesh.hb.x.y", good("x", "z")},                       // body names another instance
		{"mesh.hb.w.y", good("x", "y")},                       // body names another service
		{"mesh.hb.x.y", encode(t, big)},                       // oversized
		{"mesh.hb.x.y", encode(t, withHealth(hb("x", "y", 1), "sick"))},
		{"mesh.bye.x.Y", nil}, // goodbye on an invalid token
	} {
		if err := pub.Publish(m.subject, m.data); err != nil {
			t.Fatal(err)
		}
	}
	// A good heartbeat last: the heartbeats arrive in order, so once it is
	// in, the garbage before it was handled.
	if err := pub.Publish("mesh.hb.x.ok", good("x", "ok")); err != nil {
		t.Fatal(err)
	}
	ev := expectNext(t, fw.w, "up/registered x/ok")
	if ev.Rev != 1 {
		t.Errorf("rev = %d: garbage must not make events", ev.Rev)
	}
	meshtest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if st := fw.view.Stats(); st.Malformed != 7 {
			return fmt.Errorf("Stats().Malformed = %d, want 7", st.Malformed)
		}
		return nil
	})
	snap := fw.view.Snapshot("")
	if snap.Instances != 1 || len(snap.Services) != 1 || snap.Services["x"][0].Instance != "ok" {
		t.Errorf("snapshot = %+v, want only x/ok", snap)
	}
	if st := fw.view.Stats(); st.Heartbeats != 1 {
		t.Errorf("Stats().Heartbeats = %d, want 1", st.Heartbeats)
	}
}

func TestFollowCustomPrefix(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "prod.mesh")
	spy := meshtest.Connect(t, s)
	sub, err := spy.SubscribeSync("prod.mesh.hb.greeter.greeter-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	// Another mesh on the same NATS is invisible.
	startAnnouncer(t, s, registry.AnnouncerConfig{Service: "greeter", Instance: "other-mesh"})
	a, _ := startAnnouncer(t, s, registry.AnnouncerConfig{Service: "greeter", Instance: "greeter-1", Prefix: "prod.mesh"})

	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no heartbeat on prod.mesh.hb.greeter.greeter-1: %v", err)
	}
	expectNext(t, fw.w, "up/registered greeter/greeter-1")
	a.Stop()
	expectNext(t, fw.w, "down/deregistered greeter/greeter-1")
	if st := fw.view.Stats(); st.Malformed != 0 {
		t.Errorf("Stats().Malformed = %d", st.Malformed)
	}
}

func TestNewAnnouncerRejectsBadConfig(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	spy := meshtest.Connect(t, s)
	sub, err := spy.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []registry.AnnouncerConfig{
		{Instance: "i"},
		{Service: "s"},
		{Service: "S", Instance: "i"},
		{Service: "s", Instance: "i.j"},
		{Service: "s", Instance: "*"},
		{Service: "s", Instance: "i", Subset: "V1"},
		{Service: "s", Instance: "i", Prefix: "bad prefix"},
		{Service: "s", Instance: "i", Interval: time.Millisecond},
		{Service: "s", Instance: "i", Interval: 2 * time.Hour},
		{Service: "s", Instance: "i", Meta: map[string]string{"": "x"}},
	} {
		a, err := registry.NewAnnouncer(nc, cfg)
		if err == nil {
			a.Stop()
			t.Errorf("NewAnnouncer(%+v) succeeded, want an error", cfg)
			continue
		}
		if !errors.Is(err, registry.ErrBadHeartbeat) && !errors.Is(err, bus.ErrInvalidName) {
			t.Errorf("NewAnnouncer(%+v) = %v, want ErrBadHeartbeat or ErrInvalidName", cfg, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(50 * time.Millisecond); err == nil {
		t.Errorf("a rejected announcer published on %s", m.Subject)
	}
}

// The heartbeat document has DESIGN.md's field names, and seq rises by one
// per heartbeat; a goodbye follows Stop.
func TestAnnouncerWireFormat(t *testing.T) {
	s := meshtest.RunServer(t)
	spy := meshtest.Connect(t, s)
	hbs, err := spy.SubscribeSync("mesh.hb.greeter.greeter-1")
	if err != nil {
		t.Fatal(err)
	}
	byes, err := spy.SubscribeSync("mesh.bye.greeter.greeter-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	a, _ := startAnnouncer(t, s, registry.AnnouncerConfig{
		Service: "greeter", Subset: "v1", Instance: "greeter-1",
		Meta:   map[string]string{"version": "1.0"},
		Status: func() (registry.Health, int) { return registry.Failing, 2 },
	})

	want := []string{"service", "subset", "instance", "host", "pid", "started", "seq", "interval_ms", "health", "inflight", "meta"}
	sort.Strings(want)
	var seqs []float64
	for i := range 4 {
		m, err := hbs.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
		var doc map[string]any
		if err := json.Unmarshal(m.Data, &doc); err != nil {
			t.Fatalf("heartbeat %q is not JSON: %v", m.Data, err)
		}
		keys := make([]string, 0, len(doc))
		for k := range doc {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if !slices.Equal(keys, want) {
			t.Fatalf("heartbeat keys = %v, want %v", keys, want)
		}
		if doc["service"] != "greeter" || doc["subset"] != "v1" || doc["instance"] != "greeter-1" ||
			doc["interval_ms"] != float64(testInterval.Milliseconds()) || doc["health"] != "failing" || doc["inflight"] != float64(2) {
			t.Errorf("heartbeat = %s", m.Data)
		}
		if meta, _ := doc["meta"].(map[string]any); meta["version"] != "1.0" {
			t.Errorf("meta = %v", doc["meta"])
		}
		if st, _ := doc["started"].(string); st == "" {
			t.Errorf("started = %v, want a timestamp", doc["started"])
		} else if _, err := time.Parse(time.RFC3339Nano, st); err != nil {
			t.Errorf("started %q is not RFC 3339: %v", st, err)
		}
		seqs = append(seqs, doc["seq"].(float64))
	}
	for i, seq := range seqs {
		if seq != float64(i+1) {
			t.Fatalf("seqs = %v, want 1, 2, 3, 4", seqs)
		}
	}
	a.Stop()
	if _, err := byes.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no goodbye after Stop: %v", err)
	}
}

// Without subset and meta, those keys are left out; the rest are always
// there, zero or not.
func TestAnnouncerWireFormatMinimal(t *testing.T) {
	s := meshtest.RunServer(t)
	spy := meshtest.Connect(t, s)
	hbs, err := spy.SubscribeSync("mesh.hb.greeter.greeter-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	startAnnouncer(t, s, registry.AnnouncerConfig{Service: "greeter", Instance: "greeter-1", Interval: -1})
	m, err := hbs.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(m.Data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"service", "instance", "host", "pid", "started", "seq", "interval_ms", "health", "inflight"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("heartbeat %s has no %q", m.Data, k)
		}
	}
	if doc["health"] != "passing" || doc["inflight"] != float64(0) {
		t.Errorf("default status = %v/%v, want passing with 0 in flight", doc["health"], doc["inflight"])
	}
	if doc["interval_ms"] != float64(registry.DefaultInterval.Milliseconds()) {
		t.Errorf("interval_ms = %v, want the default %d", doc["interval_ms"], registry.DefaultInterval.Milliseconds())
	}
}

// A goodbye is final: the heartbeat an instance sent just before it is never
// applied after it, which would bring the instance back up until it
// expired. (Heartbeats and goodbyes come on two subscriptions; the follower
// must keep the order NATS delivered them in.)
func TestFollowGoodbyeIsFinal(t *testing.T) {
	s := meshtest.RunServer(t)
	fw := followMesh(t, s, "")
	nc := meshtest.Connect(t, s)
	for i := range 50 {
		inst, sentinel := fmt.Sprintf("g-%d", i), fmt.Sprintf("s-%d", i)
		a, err := registry.NewAnnouncer(nc, registry.AnnouncerConfig{Service: "greeter", Instance: inst, Interval: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		expectNext(t, fw.w, "up/registered greeter/"+inst)
		a.Beat()
		a.Stop()
		// A heartbeat of another instance after the goodbye, on the same
		// connection: once it is applied, everything before it was.
		if err := nc.Publish("mesh.hb.greeter."+sentinel, encode(t, hb("greeter", sentinel, 1))); err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish("mesh.bye.greeter."+sentinel, nil); err != nil {
			t.Fatal(err)
		}
		expectNext(t, fw.w, "down/deregistered greeter/"+inst)
		expectNext(t, fw.w, "up/registered greeter/"+sentinel)
		expectNext(t, fw.w, "down/deregistered greeter/"+sentinel)
	}
	if snap := fw.view.Snapshot(""); snap.Instances != 0 {
		t.Errorf("snapshot = %+v, want empty", snap)
	}
}

// Nothing is published after the goodbye, even when Beat races with Stop.
func TestAnnouncerNothingAfterGoodbye(t *testing.T) {
	s := meshtest.RunServer(t)
	spy := meshtest.Connect(t, s)
	sub, err := spy.SubscribeSync("mesh.*.greeter.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := meshtest.Connect(t, s)
	for i := range 20 {
		a, err := registry.NewAnnouncer(nc, registry.AnnouncerConfig{Service: "greeter", Instance: fmt.Sprintf("g-%d", i), Interval: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var ready, done sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			ready.Add(1)
			done.Add(1)
			go func() {
				defer done.Done()
				a.Beat()
				ready.Done()
				for range 200 {
					select {
					case <-stop:
						return
					default:
						a.Beat()
					}
				}
			}()
		}
		ready.Wait()
		a.Stop()
		close(stop)
		done.Wait()
		if err := nc.Publish("mesh.bye.greeter.marker", nil); err != nil {
			t.Fatal(err)
		}
		var sawBye bool
		var seqs []uint64
		for {
			m, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m.Subject == "mesh.bye.greeter.marker" {
				break
			}
			if m.Subject == fmt.Sprintf("mesh.bye.greeter.g-%d", i) {
				if sawBye {
					t.Fatalf("iteration %d: two goodbyes", i)
				}
				sawBye = true
				continue
			}
			if sawBye {
				t.Fatalf("iteration %d: heartbeat on %s after the goodbye", i, m.Subject)
			}
			h, err := registry.DecodeHeartbeat("greeter", fmt.Sprintf("g-%d", i), m.Data)
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, h.Seq)
		}
		if !sawBye {
			t.Fatalf("iteration %d: no goodbye", i)
		}
		for j, seq := range seqs {
			if seq != uint64(j+1) {
				t.Fatalf("iteration %d: seqs on the wire %v..., want 1, 2, 3... in order", i, seqs[:min(len(seqs), 10)])
			}
		}
	}
}
