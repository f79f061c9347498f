// Package config is the mesh's traffic configuration: one document per
// service, written by operators as YAML, stored as JSON in the JetStream KV
// bucket of the mesh, and applied live by every proxy that calls the
// service.
//
// A document sets the service's timeout, retries, circuit breaker, load
// balancer, routes (ordered matches on path prefix, methods and headers, each
// with a weighted split of subsets) and fault injection. Parse reads a file
// and checks all of it, reporting every problem with its line, so that a
// file is applied whole or not at all.
package config
