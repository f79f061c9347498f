// Package gateway is the mesh's ingress: a reverse proxy that takes
// ordinary HTTP requests from outside the mesh and calls the service of the
// route matching each one's host and path prefix, through a
// proxy.Transport.
//
// Start and Shutdown run it as a process role (listener, transport, stats);
// NewHandler is the handler alone, for a program with its own server.
//
// It links neither nats-server nor the Prometheus client.
package gateway
