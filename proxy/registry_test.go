package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
)

// A sidecar announces its instance: up and passing while it serves, with its
// requests in flight; draining as soon as it is told to stop; gone with a
// goodbye once it has stopped.
func TestSidecarHeartbeats(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	view := registry.NewView(registry.ViewConfig{})
	f, err := registry.Follow(meshtest.Connect(t, s), view, "", "beats")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)
	_, w := view.Watch("beats", 64)
	defer w.Stop()

	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	app := startApp(t, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	nc := meshtest.Connect(t, s)
	sc, err := sidecar.Start(nc, sidecar.Config{Service: "beats", Upstream: app.URL, Listen: "127.0.0.1:0", Heartbeat: 100 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}

	next := func(want registry.EventType, reason registry.Reason) registry.Event {
		t.Helper()
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher closed: %v", w.Err())
			}
			if ev.Type != want || ev.Reason != reason || ev.Instance != sc.Instance() {
				t.Fatalf("event %s/%s of %s, want %s/%s of %s", ev.Type, ev.Reason, ev.Instance, want, reason, sc.Instance())
			}
			return ev
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s/%s event", want, reason)
		}
		return registry.Event{}
	}
	if ev := next(registry.Up, registry.Registered); ev.Heartbeat.Health != registry.Passing || ev.Heartbeat.IntervalMS != 100 {
		t.Fatalf("first heartbeat %+v, want passing every 100ms", ev.Heartbeat)
	}

	// A request in flight shows in the heartbeats.
	caller := startCaller(t, s, "front", nil)
	c := sidecarClient(t, formProxy, caller, "front")
	go func() {
		if resp, err := c.hc.Get("http://beats/"); err == nil {
			resp.Body.Close()
		}
	}()
	<-arrived
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		insts := view.Snapshot("beats").Services["beats"]
		if len(insts) != 1 || insts[0].Inflight != 1 {
			return fmt.Errorf("view has %+v, want one instance with 1 request in flight", insts)
		}
		return nil
	})

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- sc.Shutdown(ctx)
	}()
	next(registry.Changed, registry.HealthChange)
	if got := view.Snapshot("beats").Services["beats"][0].Health; got != registry.Draining {
		t.Fatalf("health while draining = %s, want draining", got)
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	next(registry.Down, registry.Deregistered)
}
