// Command announce is a Go service on the mesh with no sidecar: it serves an
// http.Handler over NATS as service "hello-go", announces itself to the
// registry with heartbeats, and says goodbye when stopped with Ctrl-C. It
// records metrics as a sidecar does: published every 5 s for natsmesh top,
// and served for Prometheus at /metrics on $METRICS_ADDR (default
// 127.0.0.1:15095).
//
//	NATSMESH_URL=nats://127.0.0.1:4222 go run ./examples/announce
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/metrics/prom"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/registry"
)

func main() {
	nc, err := bus.Connect(bus.ConnectConfig{URL: bus.URLFromEnv(), CredsFile: bus.CredsFromEnv(), Name: "example-announce"})
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from Go, %s\n", r.Header.Get("Mesh-Caller"))
	})
	// Metrics are opt-in for Go programs: a Set, given to Serve (and to a
	// Transport, for calls the program makes), published on NATS and, if
	// wanted, served to Prometheus.
	instance := bus.NewInstanceID("hello-go")
	set := metrics.NewSet(metrics.Identity{Service: "hello-go", Instance: instance, Kind: "library"}, metrics.Options{})
	stats, err := metrics.StartPublisher(nc, "", set, 0, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer stats.Stop()
	reg, err := prom.NewRegistry(prom.NewCollector(set))
	if err != nil {
		log.Fatal(err)
	}
	addr := os.Getenv("METRICS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:15095"
	}
	ep, err := prom.Listen(addr, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()

	srv, err := proxy.Serve(nc, handler, proxy.ServeConfig{Service: "hello-go", Instance: instance, Metrics: set})
	if err != nil {
		log.Fatal(err)
	}
	a, err := registry.NewAnnouncer(nc, registry.AnnouncerConfig{
		Service:  "hello-go",
		Instance: srv.Instance(),
		Meta:     map[string]string{"version": "1"},
		Status:   func() (registry.Health, int) { return registry.Passing, srv.Inflight() },
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("serving hello-go as instance %s; try: natsmesh call hello-go /\n", srv.Instance())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Drain(ctx); err != nil {
		log.Print(err)
	}
	a.Stop() // goodbye: the registry drops the instance at once
}
