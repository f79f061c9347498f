package bus_test

import (
	"fmt"
	"net/http"
	"sort"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

func ExampleValidateName() {
	for _, name := range []string{"reviews", "reviews.v1", "*"} {
		fmt.Println(name, bus.ValidateName("service", name) == nil)
	}
	// Output:
	// reviews true
	// reviews.v1 false
	// * false
}

func ExampleNewSubjects() {
	subj, err := bus.NewSubjects("prod.mesh")
	if err != nil {
		panic(err)
	}
	subj.Caller = "productpage"
	fmt.Println(subj.Call("reviews"))
	fmt.Println(subj.Calls("reviews"), subj.QueueGroup("reviews"))
	fmt.Println(subj.Inst("reviews", "reviews-7f9c"))
	fmt.Println(subj.Inbox("productpage"))
	// Output:
	// prod.mesh.rpc.reviews.productpage
	// prod.mesh.rpc.reviews.* reviews
	// prod.mesh.inst.reviews.reviews-7f9c.productpage
	// prod.mesh.inbox.productpage
}

func ExampleEncodeRequest() {
	h := nats.Header{}
	bus.EncodeRequest(h, http.MethodGet, "/reviews/1", "reviews", http.Header{
		"Accept":      {"application/json"},
		"Connection":  {"keep-alive"},
		"Mesh-Caller": {"spoofed"},
		"Status":      {"503"},
		"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	})
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("%s: %s\n", k, h[k][0])
	}
	// Output:
	// Accept: application/json
	// Mesh-Esc-Status: 503
	// Mesh-Host: reviews
	// Mesh-Method: GET
	// Mesh-Path: /reviews/1
	// traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
}

func ExampleErrorResponse() {
	h, body := bus.ErrorResponse(bus.Errorf(bus.Overloaded, "reviews is at its concurrency limit"), "reviews-1")
	fmt.Println(h[bus.HeaderStatus][0], h[bus.HeaderError][0], h["Retry-After"][0])
	fmt.Print(string(body))
	// Output:
	// 503 overloaded 1
	// reviews is at its concurrency limit
}
