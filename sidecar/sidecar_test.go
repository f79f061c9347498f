package sidecar_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

var quiet = slog.New(slog.DiscardHandler)

// A Config Start refuses is an ErrInvalidConfig naming the field, never a
// flag.
func TestStartRejectsBadConfig(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, tc := range []struct {
		name string
		cfg  sidecar.Config
		want string
	}{
		{"no service", sidecar.Config{Upstream: "http://127.0.0.1:1"}, "Config.Service"},
		{"bad service", sidecar.Config{Service: "Ratings", Upstream: "http://127.0.0.1:1"}, "Config.Service"},
		{"no upstream", sidecar.Config{Service: "ratings"}, "Config.Upstream"},
		{"upstream with a path", sidecar.Config{Service: "ratings", Upstream: "http://127.0.0.1:1/x"}, "Config.Upstream"},
		{"bad instance", sidecar.Config{Service: "ratings", Instance: "a.b", Upstream: "http://127.0.0.1:1"}, "Config.Instance"},
		{"bad prefix", sidecar.Config{Service: "ratings", Prefix: "Mesh", Upstream: "http://127.0.0.1:1"}, "Config.Prefix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Listen, tc.cfg.Logger = "127.0.0.1:0", quiet
			sc, err := sidecar.Start(nc, tc.cfg)
			if err == nil {
				_ = sc.Shutdown(context.Background())
				t.Fatalf("Start succeeded; want an error naming %s", tc.want)
			}
			if !errors.Is(err, sidecar.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "--") {
				t.Errorf("Start: %v; want an ErrInvalidConfig naming %s and no flag", err, tc.want)
			}
		})
	}
}

// A sidecar started by its role serves its app to the mesh and carries the
// app's calls under its nested Transport config, whose timeout also bounds
// inbound requests that carry none; Shutdown is safe twice.
func TestStartNestedConfigs(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ratings for "+r.Header.Get("Mesh-Caller"))
	}))
	t.Cleanup(app.Close)
	sc, err := sidecar.Start(nc, sidecar.Config{
		Service: "ratings", Upstream: app.URL, Listen: "127.0.0.1:0", Logger: quiet,
		Transport: proxy.TransportConfig{Timeout: 200 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The app calls the mesh through its own sidecar: the call carries the
	// sidecar's service as Mesh-Caller, whatever Transport.Caller said.
	pu, _ := url.Parse("http://" + sc.OutboundAddr().String())
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		resp, err := hc.Get("http://ratings/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "ratings for ratings" {
			return errors.New(resp.Status + " " + string(body))
		}
		return nil
	})
	if st := sc.Inbound().Stats(); st.Served == 0 {
		t.Errorf("the inbound side served no request: %+v", st)
	}
	// Transport.Timeout bounds the app's calls.
	start := time.Now()
	resp, err := hc.Get("http://ratings/slow")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Mesh-Error") != "timeout" || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("a 2 s call under Transport.Timeout 200ms: %s, Mesh-Error %q after %s; want 504 timeout well before 2 s", resp.Status, resp.Header.Get("Mesh-Error"), time.Since(start))
	}
	// A request that carries no deadline (a plain NATS client's) gets
	// Transport.Timeout at the inbound side too: one deadline both ways.
	msg := nats.NewMsg("mesh.rpc.ratings._")
	msg.Header.Set(bus.HeaderMethod, http.MethodGet)
	msg.Header.Set(bus.HeaderPath, "/slow")
	reply, err := nc.RequestMsg(msg, 1500*time.Millisecond)
	if err != nil {
		t.Fatalf("a request without Mesh-Timeout to a 2 s app: %v; want the sidecar's timeout answer within 1.5 s", err)
	}
	if got := reply.Header.Get(bus.HeaderError); got != string(bus.Timeout) {
		t.Errorf("a request without Mesh-Timeout to a 2 s app: Mesh-Error %q, want timeout", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := sc.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}
