package registry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// Two registry services on one NATS: each event is published once, by the
// lease holder; when it dies, the other takes over and events continue.
func TestTwoRegistriesPublishOnce(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	const ttl = time.Second
	ncA := meshtest.Connect(t, s)
	a, err := registry.Start(ncA, registry.Config{LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	b, err := registry.Start(meshtest.Connect(t, s), registry.Config{LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	if !a.Leader() || b.Leader() {
		t.Fatalf("leaders: a %v, b %v; want the first one only", a.Leader(), b.Leader())
	}

	events := make(chan *nats.Msg, 64)
	meshtest.Subscribe(t, s, "mesh.events.>", events)
	expect := func(n int, what string) {
		t.Helper()
		for i := 0; i < n; i++ {
			select {
			case <-events:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: %d events, want %d", what, i, n)
			}
		}
		select {
		case m := <-events:
			t.Fatalf("%s: an extra event %s (published twice?)", what, m.Data)
		case <-time.After(300 * time.Millisecond):
		}
	}

	announce(t, s, "lease", "lease-1", nil)
	expect(1, "up of lease-1 with two registries")

	// The leader dies without handing over: its connection is gone.
	ncA.Close()
	meshtest.CheckFor(t, 5*ttl, 50*time.Millisecond, func() error {
		if !b.Leader() {
			return fmt.Errorf("b has not taken over")
		}
		return nil
	})
	announce(t, s, "lease", "lease-2", nil)
	expect(1, "up of lease-2 after the takeover")

	c, err := registry.NewClient(meshtest.Connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := c.Get(context.Background(), "lease")
	if err != nil || len(snap.Services["lease"]) != 2 || snap.Origin != b.View().Origin() {
		t.Fatalf("get after takeover: %+v, %v; want both instances from b", snap, err)
	}
}

// A registry that stops hands the lease over at once.
func TestRegistryHandsOverOnStop(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	a, err := registry.Start(meshtest.Connect(t, s), registry.Config{LeaseTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	b, err := registry.Start(meshtest.Connect(t, s), registry.Config{LeaseTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	a.Stop()
	// b tries every second; with a minute-long lease only a hand-over lets
	// it win this soon.
	meshtest.CheckFor(t, 2*time.Second, 20*time.Millisecond, func() error {
		if !b.Leader() {
			return fmt.Errorf("b has not taken over")
		}
		return nil
	})
}
