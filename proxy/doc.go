// Package proxy bridges HTTP and NATS request-reply: the mesh as a library,
// caller and callee together, as net/http keeps Client and Server.
//
//   - Transport, an http.RoundTripper that sends a request for http://<service>/...
//     over NATS to one instance of that service, with timeouts, retries,
//     circuit breakers and trace context; Forward is the same call for a
//     proxy's caller side (package sidecar's outbound listener, package
//     gateway);
//   - Serve, which answers a service's NATS requests with an http.Handler, in
//     the service's queue group, under a concurrency limit;
//   - Upstream, an http.Handler that forwards to a local HTTP app over a
//     keep-alive connection pool, and that Serve drives straight from the
//     message.
//
// The traffic decisions (routes, load-balancing picks, retry rules, faults)
// are made by package proxy/traffic; this package sends, waits and counts.
// A Transport given a ConfigSource applies each service's config document
// (package config) to the calls it makes to that service; a document is
// compiled once per revision into an immutable traffic.Policy that a call
// reads once, at its start.
//
// Failures made by the mesh are answered as HTTP responses carrying a
// Mesh-Error header and a one-sentence body (bus.Code, bus.Failure); on the
// call path they are *bus.Error values used as error.
//
// The package links neither nats-server nor the Prometheus client.
package proxy
