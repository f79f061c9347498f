// Package prom exposes a metrics.Set to Prometheus: a collector that reads
// the Set at scrape time, a registry with the Go runtime and process
// collectors, and an HTTP endpoint serving /metrics. It is the only package
// of the mesh that imports the Prometheus client, so a Go program that
// records metrics without serving them does not link it.
package prom

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/metrics"
)

// Metric names. They follow the Prometheus naming rules (a natsmesh_
// namespace, base units, _total for counters) and the OpenTelemetry HTTP
// conventions where one applies (a duration histogram in seconds, the
// failure's kind as error_type). No label ever holds a path, a method or an
// instance of the peer, so a Set's series are bounded by its edges.
const (
	nameRequests  = "natsmesh_requests_total"
	nameRetries   = "natsmesh_request_retries_total"
	nameDuration  = "natsmesh_request_duration_seconds"
	nameInFlight  = "natsmesh_requests_in_flight"
	nameBreaker   = "natsmesh_circuit_breaker_state"
	nameState     = "natsmesh_instance_state"
	nameInfo      = "natsmesh_info"
	nameOverflows = "natsmesh_metrics_edges_overflow_total"
)

var (
	edgeLabels  = []string{"direction", "caller", "callee", "subset"}
	descReqs    = prometheus.NewDesc(nameRequests, "Requests by the status class of their response and, for failures the mesh made, the Mesh-Error code.", append(edgeLabels[:4:4], "status_class", "error_type"), nil)
	descRetries = prometheus.NewDesc(nameRetries, "Attempts beyond the first that calls took.", edgeLabels, nil)
	descDur     = prometheus.NewDesc(nameDuration, "Time from a request to its response's head, retries included.", edgeLabels, nil)
	descFlight  = prometheus.NewDesc(nameInFlight, "Requests started and not yet answered.", edgeLabels, nil)
	descBreaker = prometheus.NewDesc(nameBreaker, "1 for the state a circuit breaker of the caller is in (closed, open, half-open), 0 for the others.", []string{"caller", "destination", "state"}, nil)
	descState   = prometheus.NewDesc(nameState, "1 for the instance's state: serving (in its queue groups), failing (out: health check), ejected (out: outlier detection), draining; 0 for the others.", []string{"service", "subset", "state"}, nil)
	descInfo    = prometheus.NewDesc(nameInfo, "The process: its service, subset, mesh instance id and kind (sidecar, gateway, library).", []string{"service", "subset", "mesh_instance", "kind"}, nil)
	descOver    = prometheus.NewDesc(nameOverflows, "Calls counted with peer \"(other)\" because their peer was beyond the process's limit of edges.", nil, nil)
)

var (
	breakerStates  = []breaker.State{breaker.Closed, breaker.Open, breaker.HalfOpen}
	instanceStates = []string{metrics.StateServing, metrics.StateFailing, metrics.StateEjected, metrics.StateDraining}
)

// Collector is a prometheus.Collector of one Set.
type Collector struct {
	set *metrics.Set
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector collects s's metrics.
func NewCollector(s *metrics.Set) *Collector { return &Collector{set: s} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReqs, descRetries, descDur, descFlight, descBreaker, descState, descInfo, descOver} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the Set's snapshot at
// scrape time; the request path does no more than its atomic adds.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.set.Snapshot(time.Now(), 0)
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, snap.Service, snap.Subset, snap.Instance, snap.Kind)
	ch <- prometheus.MustNewConstMetric(descOver, prometheus.CounterValue, float64(snap.Overflow))
	if st := snap.State; st != "" {
		for _, k := range instanceStates {
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, oneIf(k == st), snap.Service, snap.Subset, k)
		}
	}
	for key, state := range snap.Breakers {
		for _, st := range breakerStates {
			ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, oneIf(state == st.String()), snap.Service, key, st.String())
		}
	}
	for i := range snap.Edges {
		collectEdge(ch, snap.Service, &snap.Edges[i])
	}
}

// collectEdge sends one edge's series.
func collectEdge(ch chan<- prometheus.Metric, service string, e *metrics.EdgeSnapshot) {
	caller, callee := service, e.Peer
	if e.Direction == metrics.Inbound.String() {
		caller, callee = e.Peer, service
	}
	labels := []string{e.Direction, caller, callee, e.Subset}
	for key, n := range e.Responses {
		class, code, _ := strings.Cut(key, ":")
		ch <- prometheus.MustNewConstMetric(descReqs, prometheus.CounterValue, float64(n), e.Direction, caller, callee, e.Subset, class, code)
	}
	if e.Direction == metrics.Outbound.String() {
		ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(e.Retries), labels...)
	}
	ch <- prometheus.MustNewConstMetric(descFlight, prometheus.GaugeValue, float64(e.InFlight), labels...)
	buckets := make(map[float64]uint64, len(metrics.Bounds))
	var cum, count uint64
	for i, b := range metrics.Bounds {
		cum += e.Latency.Counts[i]
		buckets[b] = cum
	}
	for _, n := range e.Latency.Counts {
		count += n
	}
	ch <- prometheus.MustNewConstHistogram(descDur, count, e.Latency.Sum, buckets, labels...)
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
