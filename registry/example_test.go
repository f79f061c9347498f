package registry_test

import (
	"fmt"
	"os"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/registry"
)

// A process follows the mesh with a View and sees an instance come up as
// soon as its Announcer sends the first heartbeat.
func ExampleFollow() {
	dir, err := os.MkdirTemp("", "natsmesh-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()

	// The watching side: a view of the whole mesh, fed from NATS.
	watchConn, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: "watcher"})
	if err != nil {
		panic(err)
	}
	defer watchConn.Close()
	view := registry.NewView(registry.ViewConfig{})
	_, w := view.Watch("", 0)
	defer w.Stop()
	f, err := registry.Follow(watchConn, view, "")
	if err != nil {
		panic(err)
	}
	defer f.Stop()
	if err := watchConn.Flush(); err != nil {
		panic(err)
	}

	// The service side: an instance announcing itself.
	svcConn, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: "greeter"})
	if err != nil {
		panic(err)
	}
	defer svcConn.Close()
	a, err := registry.NewAnnouncer(svcConn, registry.AnnouncerConfig{Service: "greeter", Instance: "greeter-1"})
	if err != nil {
		panic(err)
	}
	defer a.Stop()

	select {
	case ev := <-w.Events():
		fmt.Println(ev.Type, ev.Service, ev.Reason)
	case <-time.After(10 * time.Second):
		fmt.Println("no event")
	}
	// Output: up greeter registered
}
