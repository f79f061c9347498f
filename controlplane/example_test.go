package controlplane_test

import (
	"context"
	"log"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/controlplane"
)

// A program that serves the mesh's registry and stats on a NATS server it
// has connected to, until SIGINT or SIGTERM.
func ExampleStart() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	cp, err := controlplane.Start(nc, controlplane.Config{})
	if err != nil {
		log.Fatal(err)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cp.Shutdown(sctx); err != nil {
		log.Print(err)
	}
}
