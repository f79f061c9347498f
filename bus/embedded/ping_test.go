package embedded_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A client that stops answering the server's pings (a hung process) is
// dropped within seconds, and its queue subscription with it, so that NATS
// stops giving it calls.
func TestHungClientIsDropped(t *testing.T) {
	t.Parallel()
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A client that subscribes, then never reads or answers again.
	fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB mesh.rpc.svc.* svc 1\r\nPING\r\n")
	// The server's INFO, then its PONG: the client is in.
	buf := make([]byte, 4096)
	var got string
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !strings.Contains(got, "PONG") {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("before the hang: %v (read %q)", err, got)
		}
		got += string(buf[:n])
	}
	if n := s.NATS().NumClients(); n != 1 {
		t.Fatalf("%d clients, want the one", n)
	}
	start := time.Now()
	meshtest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if n := s.NATS().NumClients(); n != 0 {
			return fmt.Errorf("%d clients still connected after %s", n, time.Since(start).Round(time.Millisecond))
		}
		return nil
	})
	if d := time.Since(start); d > 3*embedded.ServerPingInterval+2*time.Second {
		t.Errorf("the hung client was dropped after %s", d)
	}
}
