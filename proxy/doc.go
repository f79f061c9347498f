// Package proxy bridges HTTP and NATS request-reply.
//
// The pieces, each usable on its own by Go programs (library mode):
//
//   - Transport, an http.RoundTripper that sends a request for http://<service>/...
//     over NATS to one instance of that service;
//   - Serve, which answers a service's NATS requests with an http.Handler, in
//     the service's queue group, under a concurrency limit;
//   - Upstream, an http.Handler that forwards to a local HTTP app over a
//     keep-alive connection pool;
//   - Outbound, the HTTP proxy handler an app talks to (proxy-form or Host-form),
//     with egress to non-mesh hosts;
//   - Sidecar, the process that combines them for one service instance.
//
// A Transport given a ConfigSource applies each service's config document
// (package config) to the calls it makes to that service: routes that split
// traffic between subsets, the load-balancing policy, fault injection, and
// the timeout, retries and breaker. A document is compiled once per revision
// into an immutable policy that a call reads once, at its start.
//
// Failures made by the mesh are answered as HTTP responses carrying a
// Mesh-Error header and a one-sentence body; see bus.Code.
package proxy
