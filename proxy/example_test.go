package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/proxy"
)

// A Go program can serve a handler as a mesh service and call services by
// name with an ordinary http.Client, with no sidecar.
func Example() {
	// The example brings its own embedded server; a program would connect to
	// the mesh's NATS with nats.Connect or bus.Connect.
	dir, _ := os.MkdirTemp("", "natsmesh-example")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s, from %s", r.Header.Get("Mesh-Caller"), r.Host)
	})
	greeter, err := proxy.Serve(nc, handler, proxy.ServeConfig{Service: "greeter"})
	if err != nil {
		log.Fatal(err)
	}
	defer greeter.Drain(context.Background())

	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Caller: "web"})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	resp, err := client.Get("http://greeter/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output: 200 hello web, from greeter
}
