package proxy

import (
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// The check of an allowed caller costs an atomic load, the subject's last
// token and a map lookup: no allocation, whether or not there is a list.
func TestCheckCallerAllocs(t *testing.T) {
	s := &Server{service: "reviews", log: slog.New(slog.DiscardHandler)}
	m := &nats.Msg{Subject: "mesh.rpc.reviews.v2.productpage", Reply: "mesh.inbox.productpage.x.1"}
	if n := testing.AllocsPerRun(1000, func() { s.checkCaller(m, bus.CallerOf(m.Subject)) }); n != 0 {
		t.Errorf("with no list: %v allocations per call, want 0", n)
	}
	s.applyCallers(&config.Service{Service: "reviews", Callers: config.Names{"gateway", "productpage"}}, 3)
	if n := testing.AllocsPerRun(1000, func() {
		if s.checkCaller(m, bus.CallerOf(m.Subject)) {
			t.Fatal("productpage refused")
		}
	}); n != 0 {
		t.Errorf("with a list: %v allocations per call, want 0", n)
	}
}

func BenchmarkCheckCaller(b *testing.B) {
	s := &Server{service: "reviews", log: slog.New(slog.DiscardHandler)}
	s.applyCallers(&config.Service{Service: "reviews", Callers: config.Names{"gateway", "productpage", "details", "ratings"}}, 3)
	m := &nats.Msg{Subject: "mesh.rpc.reviews.productpage", Reply: "mesh.inbox.productpage.x.1"}
	b.ReportAllocs()
	for b.Loop() {
		s.checkCaller(m, bus.CallerOf(m.Subject))
	}
}
