// Package traffic makes natsmesh's traffic decisions, and nothing else: no
// I/O, no goroutines, no clocks of its own. A caller's proxy asks it:
//
//   - which target does this request route to? [Policy.Route], over the
//     routes of the service's config compiled by [Compile];
//   - which instance does this policy pick? [Pick], with one small
//     [Picker] per load-balancing policy ([RoundRobin], [LeastRequest],
//     [RingHash], [Random]);
//   - may this outcome be retried now, and after how long? [Retrier.Next],
//     over the rules of [RetryPolicy], the config's retries.on and the
//     destination's retry [Budget];
//   - is this call delayed or aborted by a fault the config injects?
//     [Fault.Roll].
//
// Policies are immutable once compiled; a new config revision is a new
// Policy. The proxy package does the sending, waiting and counting.
//
// It imports bus (codes and subjects), config (the documents) and breaker
// (the per-destination state machines); never nats-server, the Prometheus
// client or anything that dials.
package traffic
