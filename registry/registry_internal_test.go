package registry

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A publisher that falls behind is cut off like any watcher; the service
// watches again and goes on publishing, and the skipped revs tell mirrors to
// resynchronise.
func TestServicePublisherResumesAfterFallingBehind(t *testing.T) {
	old := publishBuffer
	publishBuffer = 1
	t.Cleanup(func() { publishBuffer = old })

	s := meshtest.RunServer(t)
	clock := meshtest.NewClock()
	svc, err := Start(meshtest.Connect(t, s), Config{View: ViewConfig{Clock: clock}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Stop)
	events := make(chan *nats.Msg, 256)
	meshtest.Subscribe(t, s, "mesh.events.>", events)

	for i := 0; i < 50; i++ {
		svc.View().Observe(Heartbeat{Service: "burst", Instance: fmt.Sprintf("b-%d", i), Seq: 1, IntervalMS: 1000, Health: Passing})
	}
	clock.Advance(time.Hour)
	svc.View().Sweep() // 50 down events in one go: more than the publisher's buffer
	before := svc.View().Stats().WatchersDropped
	if before == 0 {
		t.Fatal("the publisher was not cut off; the test needs a burst larger than its buffer")
	}
	// The publisher watches again shortly after; from then on events flow.
	n := 0
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		n++
		svc.View().Observe(Heartbeat{Service: "after", Instance: fmt.Sprintf("a-%d", n), Seq: 1, IntervalMS: 1000, Health: Passing})
		for {
			select {
			case m := <-events:
				if m.Subject == "mesh.events.after" {
					return nil
				}
			case <-time.After(10 * time.Millisecond):
				return fmt.Errorf("no event published after the burst")
			}
		}
	})
}
