// Command library is the smallest Go program on the mesh: it serves an
// http.Handler as service "greeter" with proxy.Serve and calls it by name with
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
	nc, err := bus.Connect(bus.ConnectConfig{URL: bus.URLFromEnv(), Name: "example-library"})
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	greeter, err := proxy.Serve(nc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s, from the greeter\n", r.Header.Get("Mesh-Caller"))
	}), proxy.ServeConfig{Service: "greeter"})
	if err != nil {
		log.Fatal(err)
	}
	defer greeter.Drain(context.Background())

	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Caller: "library"})
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
	fmt.Printf("%s %s", resp.Status, body)
}
