package gateway_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy"
)

var quiet = slog.New(slog.DiscardHandler)

// A gateway started by its role takes traffic on its listener, sends it to
// the routed service, counts it, and shuts down, twice without harm.
func TestStartServesAndShutsDown(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	srv, err := proxy.Serve(nc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "details for "+r.URL.Path+" from "+r.Header.Get("Mesh-Caller"))
	}), proxy.ServeConfig{Service: "details", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	gw, err := gateway.Start(nc, gateway.Config{
		Listen: "127.0.0.1:0", Routes: []gateway.Route{{Prefix: "/api", Service: "details"}},
		StatsInterval: time.Hour, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + gw.Addr().String() + "/api/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "details for /api/x from gateway" {
		t.Errorf("GET /api/x: %d %q; want 200 from details, called as gateway", resp.StatusCode, body)
	}
	snap := gw.Metrics().Snapshot(time.Now(), 0)
	if len(snap.Edges) != 1 || snap.Edges[0].Peer != "details" || snap.Edges[0].Responses["2xx"] != 1 || snap.Kind != "gateway" {
		t.Errorf("gateway metrics %+v; want one outbound edge to details with one 2xx", snap)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := gw.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := gw.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if got := gw.Metrics().State(); got != metrics.StateDraining {
		t.Errorf("state after Shutdown %q, want %q", got, metrics.StateDraining)
	}
	if _, err := http.Get("http://" + gw.Addr().String() + "/api/x"); err == nil {
		t.Errorf("the gateway still takes connections after Shutdown")
	}
}

// A Config Start refuses is an ErrInvalidConfig naming the field, never a
// flag.
func TestStartRejectsBadConfig(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, tc := range []struct {
		name string
		cfg  gateway.Config
		want string
	}{
		{"no route", gateway.Config{Listen: "127.0.0.1:0"}, "Config.Routes"},
		{"bad service", gateway.Config{Listen: "127.0.0.1:0", Routes: []gateway.Route{{Prefix: "/", Service: "Bad"}}}, "Config.Routes"},
		{"duplicate routes", gateway.Config{Listen: "127.0.0.1:0", Routes: []gateway.Route{{Prefix: "/", Service: "a"}, {Prefix: "/", Service: "b"}}}, "same host and prefix"},
		{"bad name", gateway.Config{Name: "Gate Way", Routes: []gateway.Route{{Prefix: "/", Service: "a"}}}, "Config.Name"},
		{"bad prefix", gateway.Config{Prefix: "Mesh", Routes: []gateway.Route{{Prefix: "/", Service: "a"}}}, "Config.Prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Logger = quiet
			gw, err := gateway.Start(nc, tc.cfg)
			if err == nil {
				_ = gw.Shutdown(context.Background())
				t.Fatalf("Start succeeded; want an error naming %s", tc.want)
			}
			if !errors.Is(err, gateway.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "--") {
				t.Errorf("Start: %v; want an ErrInvalidConfig naming %s and no flag", err, tc.want)
			}
		})
	}
}
