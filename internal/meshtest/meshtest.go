// Package meshtest has the helpers natsmesh's tests share: a real embedded
// NATS server on a random port, connections to it, and polling for eventual
// conditions.
package meshtest

import (
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
)

// RunServer starts an embedded nats-server with JetStream on a random port,
// stopped when the test ends. NATSMESH_TEST_LOG=1 shows its logs.
func RunServer(t testing.TB) *embedded.Server {
	t.Helper()
	cfg := embedded.Config{Port: -1, DataDir: t.TempDir()}
	if os.Getenv("NATSMESH_TEST_LOG") != "" {
		cfg.Logger = testLogger{t}
	}
	s, err := embedded.Start(cfg)
	if err != nil {
		t.Fatalf("start NATS server: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Connect connects to s with the mesh's connection policy, closed when the
// test ends.
func Connect(t testing.TB, s *embedded.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), Name: t.Name()}, opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// CheckFor calls fn every interval until it returns nil, and fails the test
// with fn's last error if that has not happened within total.
func CheckFor(t testing.TB, total, interval time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", total, err)
		}
		time.Sleep(interval)
	}
}

type testLogger struct{ t testing.TB }

func (l testLogger) Noticef(f string, a ...any) { l.t.Logf("[NATS] "+f, a...) }
func (l testLogger) Warnf(f string, a ...any)   { l.t.Logf("[NATS WRN] "+f, a...) }
func (l testLogger) Fatalf(f string, a ...any)  { l.t.Logf("[NATS FTL] "+f, a...) }
func (l testLogger) Errorf(f string, a ...any)  { l.t.Logf("[NATS ERR] "+f, a...) }
func (l testLogger) Debugf(f string, a ...any)  { l.t.Logf("[NATS DBG] "+f, a...) }
func (l testLogger) Tracef(f string, a ...any)  { l.t.Logf("[NATS TRC] "+f, a...) }

// Subscribe subscribes a connection of its own to subject, delivering into
// ch, and returns once the server has the subscription, so nothing published
// afterwards is missed. It ends with the test.
func Subscribe(t testing.TB, s *embedded.Server, subject string, ch chan *nats.Msg) {
	t.Helper()
	nc := Connect(t, s)
	if _, err := nc.ChanSubscribe(subject, ch); err != nil {
		t.Fatalf("subscribe to %s: %v", subject, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("subscribe to %s: %v", subject, err)
	}
}
