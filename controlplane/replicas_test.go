package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// streamInfo is the info of stream, asked of the cluster.
func streamInfo(t *testing.T, nc *nats.Conn, stream string) *jetstream.StreamInfo {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(testCtx(t), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return s.CachedInfo()
}

func checkReplicas(t *testing.T, nc *nats.Conn, stream string, want int) {
	t.Helper()
	if got := max(streamInfo(t, nc, stream).Config.Replicas, 1); got != want {
		t.Errorf("%s has %d replicas, want %d", stream, got, want)
	}
}

const leaseStream = "KV_" + registry.LeaseBucket

// On one server both buckets have one replica, and nothing is warned.
func TestReplicasOneServer(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var logs meshtest.LogBuffer
	start(t, meshtest.Connect(t, s), controlplane.Config{Logger: logs.Logger(), RequireConfigBucket: true})
	nc := meshtest.Connect(t, s)
	checkReplicas(t, nc, "KV_mesh_config", 1)
	checkReplicas(t, nc, leaseStream, 1)
	if strings.Contains(logs.String(), "replicas") && strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a warning about replicas on one server:\n%s", logs.String())
	}
}

// On a cluster of 3 the buckets the control plane makes have 3 replicas;
// Replicas overrides that; a config bucket someone made with 1 is kept and
// warned about, with the command that fixes it.
func TestReplicasCluster(t *testing.T) {
	t.Parallel()
	servers := meshtest.RunCluster(t, 3)
	nc := meshtest.ConnectURL(t, servers[0].ClientURL())

	var logs meshtest.LogBuffer
	start(t, nc, controlplane.Config{Logger: logs.Logger(), RequireConfigBucket: true})
	checkReplicas(t, nc, "KV_mesh_config", 3)
	checkReplicas(t, nc, leaseStream, 3)
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("warnings with R3 buckets:\n%s", logs.String())
	}

	// Set: one replica, even on a cluster.
	var setLogs meshtest.LogBuffer
	start(t, meshtest.ConnectURL(t, servers[1].ClientURL()), controlplane.Config{Prefix: "one", Logger: setLogs.Logger(), RequireConfigBucket: true, Replicas: 1})
	checkReplicas(t, nc, "KV_one_config", 1)
	if strings.Contains(setLogs.String(), "stream edit") {
		t.Errorf("a warning about replicas set to 1:\n%s", setLogs.String())
	}

	// A bucket made with 1 replica, then a control plane left to choose.
	if _, err := config.CreateStore(testCtx(t), nc, "two", config.WithReplicas(1)); err != nil {
		t.Fatal(err)
	}
	// The warning counts the servers the cluster advertised to the
	// connection (bus.ClusterSize); wait until it has them all.
	ncTwo := meshtest.ConnectURL(t, servers[2].ClientURL())
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := len(ncTwo.Servers()); n < 3 {
			return fmt.Errorf("the connection knows %d servers", n)
		}
		return nil
	})
	var autoLogs meshtest.LogBuffer
	start(t, ncTwo, controlplane.Config{Prefix: "two", Logger: autoLogs.Logger(), RequireConfigBucket: true})
	checkReplicas(t, nc, "KV_two_config", 1)
	warns := 0
	for line := range strings.Lines(autoLogs.String()) {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "nats stream edit KV_two_config --replicas 3") {
			warns++
		}
	}
	if warns != 1 {
		t.Errorf("%d warnings naming `nats stream edit KV_two_config --replicas 3`, want 1:\n%s", warns, autoLogs.String())
	}
}

// With one server of the three down, config is still read and written.
func TestReplicasClusterLosesOneServer(t *testing.T) {
	t.Parallel()
	servers := meshtest.RunCluster(t, 3)
	nc := meshtest.ConnectURL(t, servers[0].ClientURL())
	start(t, nc, controlplane.Config{Logger: slog.New(slog.DiscardHandler), RequireConfigBucket: true})
	st, err := config.OpenStore(testCtx(t), nc, "")
	if err != nil {
		t.Fatal(err)
	}
	// A new R3 stream may take a moment to answer its first write.
	var rev uint64
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := st.Put(ctx, &config.Service{Service: "reviews"}, 0); err != nil && !errors.Is(err, config.ErrConflict) {
			return err
		}
		e, err := st.Get(ctx, "reviews")
		if err != nil {
			return err
		}
		rev = e.Revision
		return nil
	})

	// Stop a server that neither leads the bucket's stream nor holds the
	// connection: the two left are a quorum, and nothing waits on an
	// election.
	leader := streamInfo(t, nc, "KV_mesh_config").Cluster.Leader
	var victim string
	for _, s := range servers[1:] {
		if s.Name() != leader {
			victim = s.Name()
			s.Shutdown()
			s.WaitForShutdown()
			break
		}
	}
	t.Logf("stream leader %s, stopped %s", leader, victim)

	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		e, err := st.Get(ctx, "reviews")
		if err != nil {
			return err
		}
		if e.Revision < rev {
			return fmt.Errorf("read revision %d, want %d or later", e.Revision, rev)
		}
		next, err := st.Put(ctx, &config.Service{Service: "reviews", Callers: config.Names{"gateway"}}, e.Revision)
		if err != nil {
			return fmt.Errorf("write with %s down: %w", victim, err)
		}
		rev = next
		return nil
	})
	e, err := st.Get(testCtx(t), "reviews")
	if err != nil || e.Revision != rev || len(e.Doc.Callers) != 1 {
		t.Fatalf("after the write: %+v, %v; want revision %d with one caller", e, err, rev)
	}
}
