package proxy

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A reply that arrives right behind its call's acknowledgement, before the
// waiting call has read the acknowledgement, is kept, not dropped.
func TestReplyMuxKeepsReplyBehindAck(t *testing.T) {
	s := meshtest.RunServer(t)
	m, err := newReplyMux(meshtest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	defer m.close()
	subject, ch, id := m.register()
	m.deliver(&nats.Msg{Subject: subject, Header: nats.Header{bus.HeaderAck: {"1"}}})
	m.deliver(&nats.Msg{Subject: subject, Header: nats.Header{bus.HeaderStatus: {"200"}}})
	if got := <-ch; got.Header.Get(bus.HeaderAck) == "" {
		t.Fatalf("first message %v, want the acknowledgement", got.Header)
	}
	select {
	case got := <-ch:
		if got.Header.Get(bus.HeaderStatus) != "200" {
			t.Fatalf("second message %v, want the reply", got.Header)
		}
	default:
		t.Fatal("the reply behind the acknowledgement was dropped")
	}
	// Released, the channel is empty when it is reused.
	m.deliver(&nats.Msg{Subject: subject}) // a late duplicate, before release
	m.release(id, ch)
	if len(ch) != 0 {
		t.Fatalf("a released channel holds %d messages", len(ch))
	}
}
