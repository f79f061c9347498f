// Package sidecar is the sidecar process role: one service instance's
// proxy, started on a caller-owned NATS connection with Start and stopped
// with Shutdown.
//
// It serves the app to the mesh (proxy.Serve of a proxy.Upstream, in the
// service's and its subset's queue groups), announces the instance with
// heartbeats, answers NATS service discovery, checks the app's health,
// ejects the instance when its app keeps failing (outlier ejection), and
// publishes its stats. It takes the app's outbound calls on a local
// listener: mesh services through a proxy.Transport, other hosts through
// Egress, which forwards only to the destinations its EgressConfig allows
// (public addresses by default; never this machine's loopback, link-local
// addresses or the mesh's own ports unless listed). Its Config nests the
// Transport's and Serve's configs.
//
// It links neither nats-server nor the Prometheus client.
package sidecar
