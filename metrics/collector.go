package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/breaker"
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

var breakerStates = []breaker.State{breaker.Closed, breaker.Open, breaker.HalfOpen}

// Describe implements prometheus.Collector.
func (s *Set) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReqs, descRetries, descDur, descFlight, descBreaker, descState, descInfo, descOver} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the Set's atomics at
// scrape time; the request path does no more than its atomic adds.
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1, s.id.Service, s.id.Subset, s.id.Instance, s.id.Kind)
	ch <- prometheus.MustNewConstMetric(descOver, prometheus.CounterValue, float64(s.Overflow()))
	if st := s.State(); st != "" {
		for _, k := range states {
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, oneIf(k == st), s.id.Service, s.id.Subset, k)
		}
	}
	bs := s.breakerStates()
	for _, key := range sortedKeys(bs) {
		for _, st := range breakerStates {
			ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, oneIf(bs[key] == st), s.id.Service, key, st.String())
		}
	}
	for _, e := range s.all() {
		labels := []string{e.dir.String(), e.caller, e.callee, e.subset}
		for c := range e.responses {
			for k := range e.responses[c] {
				if n := e.responses[c][k].Load(); n > 0 {
					ch <- prometheus.MustNewConstMetric(descReqs, prometheus.CounterValue, float64(n), e.dir.String(), e.caller, e.callee, e.subset, classNames[c], codeName(k))
				}
			}
		}
		if e.dir == Outbound {
			ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(e.retries.Load()), labels...)
		}
		ch <- prometheus.MustNewConstMetric(descFlight, prometheus.GaugeValue, float64(e.inflight.Load()), labels...)
		h := e.latency.Snapshot()
		buckets := make(map[float64]uint64, len(Bounds))
		var cum uint64
		for i, b := range Bounds {
			cum += h.Counts[i]
			buckets[b] = cum
		}
		ch <- prometheus.MustNewConstHistogram(descDur, h.Count(), h.Sum, buckets, labels...)
	}
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
