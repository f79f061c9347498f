package meshtest

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// RunCluster starts n nats-servers with JetStream in one cluster, routed to
// each other on loopback, and returns once JetStream has a meta leader that
// knows all n. Each is named s0…s<n-1>, in cluster "meshtest", with its
// store in a temporary directory; all are shut down when the test ends.
// NATSMESH_TEST_LOG=1 shows their logs.
func RunCluster(t testing.TB, n int) []*server.Server {
	t.Helper()
	ports := freePorts(t, n)
	routes := make([]*url.URL, n)
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)}
	}
	dir := t.TempDir()
	servers := make([]*server.Server, n)
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("s%d", i),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("s%d", i)),
			NoSigs:     true,
			NoLog:      os.Getenv("NATSMESH_TEST_LOG") == "",
			Cluster:    server.ClusterOpts{Name: "meshtest", Host: "127.0.0.1", Port: ports[i]},
			Routes:     routes,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("cluster server %d: %v", i, err)
		}
		if !opts.NoLog {
			s.SetLoggerV2(testLogger{t}, false, false, false)
		}
		servers[i] = s
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		go s.Start()
	}
	for i, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("cluster server %d not ready", i)
		}
	}
	CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		leaders := 0
		for i, s := range servers {
			if !s.JetStreamIsCurrent() {
				return fmt.Errorf("cluster server %d has not caught up with the JetStream meta leader", i)
			}
			if s.JetStreamIsLeader() {
				leaders++
				if peers := len(s.JetStreamClusterPeers()); peers != n {
					return fmt.Errorf("the JetStream meta leader knows %d peers, want %d", peers, n)
				}
			}
		}
		if leaders != 1 {
			return fmt.Errorf("%d JetStream meta leaders", leaders)
		}
		return nil
	})
	return servers
}

// freePorts finds n free loopback ports, holding them all at once so that
// they differ; they are free again when it returns.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// ConnectURL connects to the NATS server at url with the mesh's connection
// policy, closed when the test ends.
func ConnectURL(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := bus.Connect(bus.ConnectConfig{URL: url, Name: t.Name()}, opts...)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}
