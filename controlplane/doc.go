// Package controlplane is the mesh's control plane as one process role: the
// part of `natsmesh server` (and of `natsmesh demo`) that is not the NATS
// server itself. It owns
//
//   - the mesh's config bucket in JetStream KV, created when it is missing
//     (the bucket natsmesh apply writes and every proxy watches), and
//     looked for every Config.BucketCheck while it runs, to make it again
//     when someone deleted it,
//   - the registry service (registry.Start), which follows every
//     instance's heartbeats and answers <prefix>.registry.*, and
//   - the stats aggregator (metrics.StartAggregator), which follows every
//     instance's stats snapshots and answers <prefix>.stats.summary,
//     leaving out the instances the registry has dropped.
//
// Start brings them up in that order on a caller-owned *nats.Conn, and
// Shutdown stops them in reverse; the package never dials and never closes
// the connection. Several control planes may run on one NATS: every one
// follows the heartbeats and snapshots, a lease decides which one answers
// the registry, and a queue group which one answers each summary.
//
// The package never imports nats-server or the Prometheus client: the
// program chooses the NATS server (bus/embedded, or someone else's) and the
// metrics exposition (metrics/prom).
package controlplane
