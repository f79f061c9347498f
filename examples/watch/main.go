// Command watch follows registry events from Go: it mirrors the registry of
// `natsmesh server` and prints each instance coming up, changing health and
// going down, for one service or all.
//
//	NATSMESH_URL=nats://127.0.0.1:4222 go run ./examples/watch [SERVICE]
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/registry"
)

func main() {
	service := ""
	if len(os.Args) > 1 {
		service = os.Args[1]
	}
	nc, err := bus.Connect(bus.ConnectConfig{URL: bus.URLFromEnv(), CredsFile: bus.CredsFromEnv(), Name: "example-watch"})
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := registry.NewClient(nc, "")
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	m, err := c.Mirror(ctx, service, func(u registry.Update) {
		if u.Snapshot != nil {
			fmt.Printf("snapshot: %d instances at rev %d\n", u.Snapshot.Instances, u.Snapshot.Rev)
			return
		}
		e := u.Event
		fmt.Printf("%s %s %s (%s)\n", e.Type, e.Service, e.Instance, e.Reason)
	})
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	defer m.Stop()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}
