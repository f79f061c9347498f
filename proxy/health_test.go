package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
)

// An instance whose app fails its health checks leaves the queue group (no
// request reaches it while it fails), reports failing, and comes back by
// itself when the app recovers.
func TestHealthChecksTakeInstanceOutOfRotation(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	view := registry.NewView(registry.ViewConfig{})
	f, err := registry.Follow(meshtest.Connect(t, s), view, "", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)

	var sickHealthy atomic.Bool
	sickHealthy.Store(true)
	var sickServed atomic.Int64
	sickApp := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if !sickHealthy.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
			}
			return
		}
		sickServed.Add(1)
		io.WriteString(w, "sick")
	})
	okApp := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	hc := sidecar.HealthCheckConfig{Path: "/healthz", Interval: 20 * time.Millisecond, Fails: 2, Passes: 2}
	_, sick := startCallee(t, s, "hc", sickApp, func(c *sidecar.Config) { c.HealthCheck = hc; c.Heartbeat = 100 * time.Millisecond })
	startCallee(t, s, "hc", okApp, func(c *sidecar.Config) { c.HealthCheck = hc; c.Heartbeat = 100 * time.Millisecond })
	caller := startCaller(t, s, "front", nil)
	c := sidecarClient(t, formProxy, caller, "front")

	health := func(want registry.Health) func() error {
		return func() error {
			for _, in := range view.Snapshot("hc").Services["hc"] {
				if in.Instance == sick.Instance() {
					if in.Health != want {
						return fmt.Errorf("%s reports %s, want %s", in.Instance, in.Health, want)
					}
					return nil
				}
			}
			return fmt.Errorf("%s not in the view", sick.Instance())
		}
	}
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, health(registry.Passing))
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if resp, _ := c.get(t, "hc", "/"); resp.StatusCode != http.StatusOK || sickServed.Load() == 0 {
			return fmt.Errorf("the sick instance has served %d requests", sickServed.Load())
		}
		return nil
	})

	sickHealthy.Store(false)
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, health(registry.Failing))
	if !sick.Inbound().Paused() {
		t.Fatal("a failing instance is still in its queue group")
	}
	before := sickServed.Load()
	for i := 0; i < 100; i++ {
		resp, body := c.get(t, "hc", "/")
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Fatalf("call %d while one instance fails: %d %q, want 200 from the healthy one", i, resp.StatusCode, body)
		}
	}
	if got := sickServed.Load(); got != before {
		t.Fatalf("%d requests reached the failing instance", got-before)
	}

	sickHealthy.Store(true)
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, health(registry.Passing))
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if resp, _ := c.get(t, "hc", "/"); resp.StatusCode != http.StatusOK || sickServed.Load() == before {
			return fmt.Errorf("the recovered instance gets no traffic")
		}
		return nil
	})
}

// A caller's sidecar follows the services its app calls in the registry, and
// only those; when no instance answers, it says what the registry knows.
func TestNoRespondersExplainedFromRegistry(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var healthy atomic.Bool
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && !healthy.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	})
	hc := sidecar.HealthCheckConfig{Path: "/healthz", Interval: 20 * time.Millisecond, Fails: 1, Passes: 1}
	_, sick := startCallee(t, s, "lonely", app, func(c *sidecar.Config) { c.HealthCheck = hc; c.Heartbeat = 100 * time.Millisecond })
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !sick.Inbound().Paused() {
			return fmt.Errorf("the failing instance is still in rotation")
		}
		return nil
	})
	caller := startCaller(t, s, "front", nil)
	c := sidecarClient(t, formProxy, caller, "front")
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		resp, body := c.get(t, "lonely", "/")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Mesh-Error") != "no-responders" {
			return fmt.Errorf("got %d %s, want 503 no-responders", resp.StatusCode, resp.Header.Get("Mesh-Error"))
		}
		if !strings.Contains(string(body), "1 instance(s), 1 failing") {
			return fmt.Errorf("message %q does not say the one instance is failing", body)
		}
		return nil
	})
	// A service nobody runs is explained as before.
	resp, body := c.get(t, "nobody", "/")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "is running; start one") {
		t.Fatalf("call to a service with no instance: %d %q", resp.StatusCode, body)
	}
}
