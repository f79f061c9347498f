// Command library is the smallest Go program on the mesh: it serves an
// http.Handler as service "hello-library" with proxy.Serve and calls it by name with
// an ordinary http.Client over proxy.Transport, with no sidecar. It links
// neither nats-server nor the Prometheus client: a program that uses the
// mesh as a library pays only for nats.go and what it calls.
//
//	go run ./cmd/natsmesh server &
//	go run ./examples/library
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy"
)

func main() {
	nc, err := bus.Connect(bus.ConnectConfig{URL: bus.URLFromEnv(), CredsFile: bus.CredsFromEnv(), Name: "example-library"})
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	srv, err := proxy.Serve(nc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s, from %s\n", r.Header.Get("Mesh-Caller"), r.Host)
	}), proxy.ServeConfig{Service: "hello-library"})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Drain(context.Background())

	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Caller: "library"})
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	resp, err := client.Get("http://hello-library/")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %s", resp.Status, body)
}
