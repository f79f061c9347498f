package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// recorder collects a mirror's updates.
type recorder struct {
	mu      sync.Mutex
	updates []registry.Update
}

func (r *recorder) add(u registry.Update) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updates = append(r.updates, u)
}

func (r *recorder) all() []registry.Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]registry.Update(nil), r.updates...)
}

func startRegistry(t *testing.T, s *embedded.Server) (*registry.Registry, *registry.Client) {
	t.Helper()
	svc, err := registry.Start(meshtest.Connect(t, s), registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Stop)
	c, err := registry.NewClient(meshtest.Connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	return svc, c
}

func announce(t *testing.T, s *embedded.Server, service, instance string, status func() (registry.Health, int)) *registry.Announcer {
	t.Helper()
	a, err := registry.NewAnnouncer(meshtest.Connect(t, s), registry.AnnouncerConfig{
		Service: service, Instance: instance, Interval: 100 * time.Millisecond, Status: status,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

func TestServiceListAndGet(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	_, c := startRegistry(t, s)
	ctx := context.Background()

	// The service answers once it holds the lease, which takes a JetStream
	// write: a moment on a loaded machine.
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		_, err := c.List(ctx)
		return err
	})
	failing := func() (registry.Health, int) { return registry.Failing, 0 }
	announce(t, s, "web", "web-1", nil)
	announce(t, s, "web", "web-2", failing)
	announce(t, s, "db", "db-1", nil)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		l, err := c.List(ctx)
		if err != nil {
			return err
		}
		want := []registry.ServiceSummary{
			{Name: "db", Instances: 1, Passing: 1},
			{Name: "web", Instances: 2, Passing: 1, Failing: 1},
		}
		if fmt.Sprint(l.Services) != fmt.Sprint(want) {
			return fmt.Errorf("list %+v, want %+v", l.Services, want)
		}
		if l.Rev < 3 || l.Origin == "" {
			return fmt.Errorf("list rev %d origin %q, want rev >= 3 and an origin", l.Rev, l.Origin)
		}
		return nil
	})
	snap, err := c.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	insts := snap.Services["web"]
	if len(insts) != 2 || insts[0].Instance != "web-1" || insts[1].Instance != "web-2" || insts[1].Health != registry.Failing || len(snap.Services) != 1 {
		t.Fatalf("get web = %+v, want web-1 passing and web-2 failing only", snap.Services)
	}
	if snap, err := c.Get(ctx, "nope"); err != nil || len(snap.Services) != 0 {
		t.Fatalf("get of an unknown service = %+v, %v; want an empty snapshot", snap, err)
	}
	if _, err := c.Get(ctx, "Bad.Name"); err == nil {
		t.Fatal("get of an invalid name did not fail")
	}
}

func TestClientWithoutRegistry(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	c, err := registry.NewClient(meshtest.Connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(context.Background()); err != registry.ErrNoRegistry {
		t.Fatalf("list with no registry service: %v, want ErrNoRegistry", err)
	}
}

// The service publishes each event of its view once, on the service's
// subject, with the JSON field names of the design.
func TestServicePublishesEvents(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startRegistry(t, s)
	raw := make(chan *nats.Msg, 16)
	meshtest.Subscribe(t, s, "mesh.events.>", raw)
	a := announce(t, s, "pub", "pub-1", nil)
	var m *nats.Msg
	select {
	case m = <-raw:
	case <-time.After(5 * time.Second):
		t.Fatal("no event published")
	}
	if m.Subject != "mesh.events.pub" {
		t.Fatalf("event on %s, want mesh.events.pub", m.Subject)
	}
	var doc map[string]any
	if err := json.Unmarshal(m.Data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"type", "service", "instance", "reason", "rev", "at", "heartbeat"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("event has no %q field: %s", k, m.Data)
		}
	}
	if doc["type"] != "up" || doc["reason"] != "registered" {
		t.Fatalf("first event %s, want up/registered", m.Data)
	}
	a.Stop()
	select {
	case m = <-raw:
		if err := json.Unmarshal(m.Data, &doc); err != nil || doc["type"] != "down" || doc["reason"] != "deregistered" {
			t.Fatalf("second event %s, want down/deregistered", m.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no down event")
	}
	select {
	case m = <-raw:
		t.Fatalf("an extra event: %s", m.Data)
	case <-time.After(300 * time.Millisecond):
	}
}

// A mirror starts from a snapshot, applies newer events in order, ignores
// ones it already has, and takes a new snapshot when it sees that it missed
// one or that the events come from another registry.
func TestMirrorFollowsTheProtocol(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	svc, c := startRegistry(t, s)
	announce(t, s, "mir", "mir-1", nil)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if svc.View().Snapshot("mir").Instances != 1 {
			return fmt.Errorf("mir-1 not registered yet")
		}
		return nil
	})

	var rec recorder
	m, err := c.Mirror(context.Background(), "mir", rec.add)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		u := rec.all()
		if len(u) == 0 || u[0].Snapshot == nil || len(u[0].Snapshot.Services["mir"]) != 1 {
			return fmt.Errorf("updates %+v, want a first snapshot with mir-1", u)
		}
		return nil
	})
	first := rec.all()[0].Snapshot

	a2 := announce(t, s, "mir", "mir-2", nil)
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		u := rec.all()
		if len(u) != 2 || u[1].Event == nil || u[1].Event.Instance != "mir-2" || u[1].Event.Type != registry.Up {
			return fmt.Errorf("updates %d, want the snapshot then mir-2's up event", len(u))
		}
		return nil
	})
	upRev := rec.all()[1].Event.Rev

	nc := meshtest.Connect(t, s)
	publish := func(ev registry.Event) {
		t.Helper()
		data, _ := json.Marshal(ev)
		if err := nc.Publish("mesh.events.mir", data); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// A repeat of an event already applied is ignored.
	publish(registry.Event{Type: registry.Up, Service: "mir", Instance: "mir-2", Rev: upRev, PrevRev: first.Rev, Origin: first.Origin})
	// An event whose predecessor the mirror never saw means it missed one:
	// it takes a new snapshot instead of applying it.
	publish(registry.Event{Type: registry.Down, Service: "mir", Instance: "ghost", Rev: upRev + 10, PrevRev: upRev + 5, Origin: first.Origin})
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if m.Resyncs() != 1 {
			return fmt.Errorf("%d resyncs after a gap, want 1", m.Resyncs())
		}
		return nil
	})
	u := rec.all()
	if len(u) != 3 || u[2].Snapshot == nil || len(u[2].Snapshot.Services["mir"]) != 2 {
		t.Fatalf("updates after the gap: %d, want a third update that is a fresh snapshot of both instances", len(u))
	}
	// Events of another registry (a restarted one) also start it over.
	publish(registry.Event{Type: registry.Up, Service: "mir", Instance: "other", Rev: 1, Origin: "someone-else"})
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if m.Resyncs() != 2 {
			return fmt.Errorf("%d resyncs after an event of another origin, want 2", m.Resyncs())
		}
		return nil
	})

	// Real events go on applying after a resync.
	a2.Stop()
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		u := rec.all()
		last := u[len(u)-1]
		if last.Event == nil || last.Event.Type != registry.Down || last.Event.Instance != "mir-2" {
			return fmt.Errorf("last update %+v, want mir-2's down event", last)
		}
		return nil
	})
	for _, u := range rec.all() {
		if u.Event != nil && (u.Event.Instance == "ghost" || u.Event.Instance == "other") {
			t.Fatalf("a forged event was applied: %+v", u.Event)
		}
	}
}
