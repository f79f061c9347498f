package controlplane_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/registry"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// start starts a control plane on nc, shut down when the test ends.
func start(t *testing.T, nc *nats.Conn, cfg controlplane.Config) *controlplane.ControlPlane {
	t.Helper()
	cp, err := controlplane.Start(nc, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return cp
}

// waitServing waits until the registry and the stats summary of the mesh
// with prefix answer on nc.
func waitServing(t *testing.T, nc *nats.Conn, prefix string) {
	t.Helper()
	reg, err := registry.NewClient(nc, prefix)
	if err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := reg.List(testCtx(t))
		return err
	})
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		_, err := metrics.FetchSummary(testCtx(t), nc, prefix, 0)
		return err
	})
}

// After Start the config bucket exists with the mesh's history, the
// registry answers mesh.registry.list and an aggregator mesh.stats.summary;
// after Shutdown, which may be called twice, neither answers any more.
func TestStartAndShutdown(t *testing.T) {
	s := meshtest.RunServer(t)
	var logs meshtest.LogBuffer
	cp := start(t, meshtest.Connect(t, s), controlplane.Config{Logger: logs.Logger(), RequireConfigBucket: true})
	client := meshtest.Connect(t, s)

	st, err := config.OpenStore(testCtx(t), client, "")
	if err != nil {
		t.Fatalf("the config bucket is not there after Start: %v", err)
	}
	if kept, err := st.HistoryKept(testCtx(t)); err != nil || kept != config.History {
		t.Errorf("the config bucket keeps %d revisions (%v), want %d", kept, err, config.History)
	}
	if !strings.Contains(logs.String(), "config bucket ready") {
		t.Errorf("Start did not log that the config bucket is ready:\n%s", logs.String())
	}
	waitServing(t, client, "")

	for i := range 2 {
		if err := cp.Shutdown(testCtx(t)); err != nil {
			t.Fatalf("Shutdown #%d: %v", i+1, err)
		}
	}
	reg, err := registry.NewClient(client, "")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, err := reg.List(testCtx(t)); !errors.Is(err, registry.ErrNoRegistry) {
			return errors.New("the registry still answers after Shutdown")
		}
		if _, err := metrics.FetchSummary(testCtx(t), client, "", 0); !errors.Is(err, metrics.ErrNoServer) {
			return errors.New("the stats summary still answers after Shutdown")
		}
		return nil
	})
}

// Shutdown from several goroutines at once stops the control plane once,
// and each call returns when it has stopped.
func TestShutdownConcurrent(t *testing.T) {
	s := meshtest.RunServer(t)
	cp := start(t, meshtest.Connect(t, s), controlplane.Config{Logger: slog.New(slog.DiscardHandler)})
	client := meshtest.Connect(t, s)
	waitServing(t, client, "")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := cp.Shutdown(testCtx(t)); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
	}
	wg.Wait()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, err := metrics.FetchSummary(testCtx(t), client, "", 0); !errors.Is(err, metrics.ErrNoServer) {
			return errors.New("the stats summary still answers after Shutdown")
		}
		return nil
	})
}

// A prefix names the mesh's bucket and subjects: another mesh on the same
// NATS is left alone.
func TestStartWithPrefix(t *testing.T) {
	s := meshtest.RunServer(t)
	start(t, meshtest.Connect(t, s), controlplane.Config{Prefix: "prod.mesh", Logger: slog.New(slog.DiscardHandler), RequireConfigBucket: true})
	client := meshtest.Connect(t, s)

	if _, err := config.OpenStore(testCtx(t), client, "prod.mesh"); err != nil {
		t.Fatalf("the config bucket of prod.mesh is not there after Start: %v", err)
	}
	if _, err := config.OpenStore(testCtx(t), client, ""); !errors.Is(err, config.ErrNoBucket) {
		t.Errorf("the default mesh's config bucket: %v, want %v", err, config.ErrNoBucket)
	}
	waitServing(t, client, "prod.mesh")
	reg, err := registry.NewClient(client, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.List(testCtx(t)); !errors.Is(err, registry.ErrNoRegistry) {
		t.Errorf("mesh.registry.list: %v, want %v", err, registry.ErrNoRegistry)
	}
}

// connectNoJetStream starts a NATS server without JetStream and connects to
// it.
func connectNoJetStream(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: false, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server without JetStream did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := bus.Connect(bus.ConnectConfig{URL: ns.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// On a NATS without JetStream the control plane starts without the config
// bucket, says so, and answers the registry (leading on its own, with no
// lease) and the stats summary; unless the bucket is required.
func TestStartWithoutJetStream(t *testing.T) {
	nc := connectNoJetStream(t)

	_, err := controlplane.Start(nc, controlplane.Config{Logger: slog.New(slog.DiscardHandler), RequireConfigBucket: true})
	if !errors.Is(err, config.ErrNoJetStream) || !strings.HasPrefix(err.Error(), "controlplane: ") || !strings.Contains(err.Error(), "RequireConfigBucket") {
		t.Errorf("Start requiring the bucket without JetStream: %v; want a controlplane: error naming RequireConfigBucket that matches %v", err, config.ErrNoJetStream)
	}

	var logs meshtest.LogBuffer
	start(t, nc, controlplane.Config{Logger: logs.Logger()})
	if !strings.Contains(logs.String(), "no JetStream on this NATS: natsmesh apply cannot store config") {
		t.Errorf("Start without JetStream did not warn that config cannot be stored:\n%s", logs.String())
	}
	waitServing(t, nc, "")
}

// A bad Config is refused before anything starts, with an error that names
// the field.
func TestStartRejectsBadConfig(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, tc := range []struct {
		name string
		nc   *nats.Conn
		cfg  controlplane.Config
		want string
	}{
		{"no connection", nil, controlplane.Config{}, "controlplane: Start needs a NATS connection"},
		{"bad prefix", nc, controlplane.Config{Prefix: "Mesh"}, "controlplane: Prefix: "},
		{"wildcard prefix", nc, controlplane.Config{Prefix: "mesh.>"}, "controlplane: Prefix: "},
		{"negative bucket timeout", nc, controlplane.Config{BucketTimeout: -time.Second}, "controlplane: BucketTimeout -1s is negative"},
		{"negative bucket check", nc, controlplane.Config{BucketCheck: -time.Second}, "controlplane: BucketCheck -1s is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, err := controlplane.Start(tc.nc, tc.cfg)
			if err == nil {
				_ = cp.Shutdown(context.Background())
				t.Fatalf("Start succeeded, want an error starting %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "--") {
				t.Errorf("Start: %v; want an error starting %q that names no flag", err, tc.want)
			}
		})
	}
	if _, err := config.OpenStore(testCtx(t), nc, ""); !errors.Is(err, config.ErrNoBucket) {
		t.Errorf("a refused Start touched the config bucket: %v", err)
	}
}
