package metrics_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/metrics/prom"
)

func TestHistogramBuckets(t *testing.T) {
	var h metrics.Histogram
	// A latency equal to a bound belongs to that bucket (le: less or equal).
	for _, d := range []time.Duration{0, 500 * time.Microsecond, 501 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, 10 * time.Minute, -time.Second} {
		h.Observe(d)
	}
	s := h.Snapshot()
	want := map[int]uint64{0: 3, 1: 2, 3: 1, 16: 1} // -1s counts as 0
	for i, c := range s.Counts {
		if c != want[i] {
			t.Errorf("bucket %d (le %s) = %d, want %d", i, le(i), c, want[i])
		}
	}
	if s.Count() != 7 {
		t.Errorf("count %d, want 7", s.Count())
	}
	wantSum := (0.0005 + 0.000501 + 0.001 + 0.003 + 600)
	if math.Abs(s.Sum-wantSum) > 1e-9 {
		t.Errorf("sum %g, want %g", s.Sum, wantSum)
	}
}

func le(i int) string {
	if i == len(metrics.Bounds) {
		return "+Inf"
	}
	return fmt.Sprint(metrics.Bounds[i])
}

func TestQuantile(t *testing.T) {
	var h metrics.Histogram
	if q := h.Snapshot(); !math.IsNaN(q.Quantile(0.5)) {
		t.Fatalf("quantile of nothing = %g, want NaN", q.Quantile(0.5))
	}
	// 100 calls: 90 in (1ms, 2ms], 10 in (50ms, 100ms].
	for i := 0; i < 90; i++ {
		h.Observe(1500 * time.Microsecond)
	}
	for i := 0; i < 10; i++ {
		h.Observe(80 * time.Millisecond)
	}
	s := h.Snapshot()
	cases := []struct{ q, want float64 }{
		{0.5, 0.001 + 0.001*50/90}, // rank 50 of the 90 in (1ms, 2ms]
		{0.9, 0.002},               // the last of them
		{0.95, 0.05 + 0.05*5/10},   // rank 95: the 5th of 10 in (50ms, 100ms]
		{0.99, 0.05 + 0.05*9/10},
		{1, 0.1},
	}
	for _, c := range cases {
		if got := s.Quantile(c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("p%g = %g, want %g", c.q*100, got, c.want)
		}
	}
	// A rank in the +Inf bucket gives the highest finite bound.
	var slow metrics.Histogram
	slow.Observe(time.Hour)
	ss := slow.Snapshot()
	if got := ss.Quantile(0.5); got != metrics.Bounds[len(metrics.Bounds)-1] {
		t.Errorf("p50 of one call in +Inf = %g, want %g", got, metrics.Bounds[len(metrics.Bounds)-1])
	}
}

// Quantiles of several instances come from their merged buckets: the p99 of
// a fast and a slow instance together is not the mean of their p99s.
func TestMergedQuantile(t *testing.T) {
	var fast, slow, all metrics.Histogram
	for i := 0; i < 990; i++ {
		fast.Observe(time.Millisecond)
		all.Observe(time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		slow.Observe(4 * time.Second)
		all.Observe(4 * time.Second)
	}
	merged := fast.Snapshot()
	s := slow.Snapshot()
	merged.Add(&s)
	a := all.Snapshot()
	if merged != a {
		t.Fatalf("merged buckets %v, want those of one histogram of every call %v", merged.Counts, a.Counts)
	}
	f := fast.Snapshot()
	mean := (f.Quantile(0.99) + s.Quantile(0.99)) / 2
	if got := merged.Quantile(0.99); got > 0.0011 || math.Abs(got-mean) < 1 {
		t.Fatalf("merged p99 %g; the mean of the two p99s would be %g", got, mean)
	}
}

func TestHistogramSub(t *testing.T) {
	var h metrics.Histogram
	h.Observe(time.Millisecond)
	before := h.Snapshot()
	h.Observe(time.Second)
	h.Observe(time.Second)
	after := h.Snapshot()
	d := after.Sub(&before)
	if d.Count() != 2 || d.Counts[10] != 2 || math.Abs(d.Sum-2) > 1e-9 {
		t.Fatalf("delta %v sum %g, want 2 calls of 1s", d.Counts, d.Sum)
	}
	// After a reset (a bucket went down) the later snapshot is the delta.
	var fresh metrics.Histogram
	fresh.Observe(time.Second)
	fs := fresh.Snapshot()
	if d := fs.Sub(&after); d != fs {
		t.Fatalf("delta across a reset %v, want the new counts %v", d.Counts, fs.Counts)
	}
}

func newSet(max int) *metrics.Set {
	return metrics.NewSet(metrics.Identity{Service: "web", Instance: "web-1", Kind: "sidecar"}, metrics.Options{MaxEdges: max})
}

func TestEdgeOverflow(t *testing.T) {
	s := newSet(3)
	for i := 0; i < 10; i++ {
		s.Edge(metrics.Outbound, fmt.Sprintf("svc%d", i), "").Record(200, "", 1, time.Millisecond)
	}
	snap := s.Snapshot(time.Now(), time.Second)
	if len(snap.Edges) != 4 {
		t.Fatalf("%d edges, want the 3 allowed and %s", len(snap.Edges), metrics.Other)
	}
	other := snap.Edges[3]
	if other.Peer != metrics.Other || other.Requests() != 7 {
		t.Fatalf("last edge %s with %d requests, want %s with the 7 beyond the limit", other.Peer, other.Requests(), metrics.Other)
	}
	if s.Overflow() != 7 {
		t.Fatalf("overflow %d, want 7", s.Overflow())
	}
	// A known edge is still found, and a new one still overflows.
	if e := s.Edge(metrics.Outbound, "svc1", ""); e == s.Edge(metrics.Outbound, "svc9", "") {
		t.Fatal("a known edge returned the overflow edge")
	}
	// The overflow counts calls: svc9, refused already, counted again.
	if s.Overflow() != 8 {
		t.Fatalf("overflow %d after another call to a refused peer, want 8", s.Overflow())
	}
}

func TestEdgeConcurrent(t *testing.T) {
	s := newSet(0)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				e := s.Edge(metrics.Inbound, fmt.Sprintf("caller%d", i%5), "")
				e.Start()
				e.Done(200+i%2*300, "", 1, time.Millisecond)
			}
		}()
	}
	wg.Wait()
	snap := s.Snapshot(time.Now(), time.Second)
	var total, failed uint64
	for _, e := range snap.Edges {
		total += e.Requests()
		failed += e.Failures()
		if e.InFlight != 0 {
			t.Errorf("edge %s: %d in flight after every call ended", e.Peer, e.InFlight)
		}
	}
	if len(snap.Edges) != 5 || total != 8000 || failed != 4000 {
		t.Fatalf("%d edges, %d requests, %d failed; want 5, 8000, 4000", len(snap.Edges), total, failed)
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := newSet(0)
	e := s.Edge(metrics.Outbound, "ratings", "v2")
	e.Record(200, "", 1, 3*time.Millisecond)
	e.Record(503, bus.NoResponders, 3, time.Millisecond)
	e.Record(504, bus.Timeout, 2, time.Second)
	e.Record(502, bus.Code("brand-new"), 1, time.Second)
	s.SetBreaker("ratings/v2", breaker.Open)
	s.SetState(metrics.StateServing)
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	snap := s.Snapshot(now, 5*time.Second)
	data, err := jsonMarshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	got, err := metrics.DecodeSnapshot(data)
	if err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
	if len(got.Edges) != 1 {
		t.Fatalf("%d edges", len(got.Edges))
	}
	ge := got.Edges[0]
	want := map[string]uint64{"2xx": 1, "5xx:no-responders": 1, "5xx:timeout": 1, "5xx:other": 1}
	if fmt.Sprint(ge.Responses) != fmt.Sprint(want) {
		t.Errorf("responses %v, want %v", ge.Responses, want)
	}
	if ge.Retries != 3 || ge.Requests() != 4 || ge.Failures() != 3 || ge.Subset != "v2" || ge.Direction != "outbound" {
		t.Errorf("edge %+v: want 3 retries, 4 requests, 3 failures, subset v2, outbound", ge)
	}
	if h := ge.Latency.Histogram(); h.Count() != 4 || h.Counts[3] != 1 || h.Counts[10] != 2 {
		t.Errorf("latency %v", ge.Latency.Counts)
	}
	if got.Breakers["ratings/v2"] != "open" || got.State != "serving" || got.At != now || got.IntervalMS != 5000 {
		t.Errorf("snapshot %+v", got)
	}
}

func TestDecodeSnapshotRejects(t *testing.T) {
	good := newSet(0).Snapshot(time.Now(), time.Second)
	cases := map[string]func(s *metrics.Snapshot){
		"bad service":  func(s *metrics.Snapshot) { s.Service = "Web.*" },
		"bad instance": func(s *metrics.Snapshot) { s.Instance = "" },
		"other bounds": func(s *metrics.Snapshot) { s.Bounds = []float64{1, 2} },
		"bad direction": func(s *metrics.Snapshot) {
			s.Edges = []metrics.EdgeSnapshot{{Direction: "sideways", Latency: metrics.LatencySnapshot{Counts: make([]uint64, 17)}}}
		},
		"short counts": func(s *metrics.Snapshot) {
			s.Edges = []metrics.EdgeSnapshot{{Direction: "inbound", Latency: metrics.LatencySnapshot{Counts: []uint64{1}}}}
		},
	}
	for name, mutate := range cases {
		s := good
		mutate(&s)
		data, _ := jsonMarshal(s)
		if _, err := metrics.DecodeSnapshot(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := metrics.DecodeSnapshot([]byte("{not json")); err == nil || !strings.Contains(err.Error(), "invalid stats snapshot") {
		t.Errorf("garbage: %v", err)
	}
}

// The exposition has exact counts and cumulative buckets per label set, and
// parses with the Prometheus text parser.
func TestCollectorExposition(t *testing.T) {
	s := newSet(0)
	out := s.Edge(metrics.Outbound, "ratings", "")
	for i := 0; i < 7; i++ {
		out.Record(200, "", 1, 3*time.Millisecond) // le 0.005
	}
	out.Record(500, "", 1, 30*time.Millisecond) // le 0.05
	out.Record(503, bus.NoResponders, 4, 0)     // le 0.0005
	out.Record(404, "", 1, 2*time.Second)       // le 2
	s.Edge(metrics.Inbound, "gateway", "").Record(200, "", 1, time.Millisecond)
	s.SetBreaker("ratings", breaker.HalfOpen)
	s.SetState(metrics.StateEjected)

	fams := scrape(t, s)
	reqs := fams["natsmesh_requests_total"]
	wantReqs := map[string]float64{
		"outbound web ratings  2xx ":              7,
		"outbound web ratings  5xx ":              1,
		"outbound web ratings  5xx no-responders": 1,
		"outbound web ratings  4xx ":              1,
		"inbound gateway web  2xx ":               1,
	}
	got := map[string]float64{}
	for _, m := range reqs.GetMetric() {
		l := labels(m)
		got[strings.Join([]string{l["direction"], l["caller"], l["callee"], l["subset"], l["status_class"], l["error_type"]}, " ")] = m.GetCounter().GetValue()
	}
	if fmt.Sprint(got) != fmt.Sprint(wantReqs) {
		t.Errorf("requests_total %v, want %v", got, wantReqs)
	}
	if v := only(t, fams, "natsmesh_request_retries_total", "callee", "ratings").GetCounter().GetValue(); v != 3 {
		t.Errorf("retries %g, want 3", v)
	}
	h := only(t, fams, "natsmesh_request_duration_seconds", "callee", "ratings").GetHistogram()
	if h.GetSampleCount() != 10 || math.Abs(h.GetSampleSum()-(7*0.003+0.03+2)) > 1e-9 {
		t.Errorf("histogram count %d sum %g", h.GetSampleCount(), h.GetSampleSum())
	}
	wantCum := map[float64]uint64{0.0005: 1, 0.001: 1, 0.002: 1, 0.005: 8, 0.01: 8, 0.02: 8, 0.05: 9, 0.1: 9, 0.2: 9, 0.5: 9, 1: 9, 2: 10, 5: 10, 10: 10, 30: 10, 300: 10, math.Inf(1): 10}
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() != wantCum[b.GetUpperBound()] {
			t.Errorf("bucket le=%g: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), wantCum[b.GetUpperBound()])
		}
	}
	if len(h.GetBucket()) != len(metrics.Bounds)+1 {
		t.Errorf("%d buckets, want %d and +Inf", len(h.GetBucket()), len(metrics.Bounds))
	}
	for _, m := range fams["natsmesh_circuit_breaker_state"].GetMetric() {
		l := labels(m)
		if want := oneIf(l["state"] == "half-open"); m.GetGauge().GetValue() != want || l["destination"] != "ratings" {
			t.Errorf("breaker %v = %g", l, m.GetGauge().GetValue())
		}
	}
	for _, m := range fams["natsmesh_instance_state"].GetMetric() {
		l := labels(m)
		if want := oneIf(l["state"] == "ejected"); m.GetGauge().GetValue() != want {
			t.Errorf("instance state %v = %g", l, m.GetGauge().GetValue())
		}
	}
}

func oneIf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// scrape gathers s through a registry, writes the text exposition and parses
// it back with the Prometheus text parser.
func scrape(t *testing.T, s *metrics.Set) map[string]*dto.MetricFamily {
	t.Helper()
	reg, err := prom.NewRegistry(prom.NewCollector(s))
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the exposition does not parse: %v\n%s", err, b.String())
	}
	return fams
}

func labels(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

func only(t *testing.T, fams map[string]*dto.MetricFamily, name, label, value string) *dto.Metric {
	t.Helper()
	var found *dto.Metric
	for _, m := range fams[name].GetMetric() {
		if labels(m)[label] == value {
			if found != nil {
				t.Fatalf("%s{%s=%q}: more than one series", name, label, value)
			}
			found = m
		}
	}
	if found == nil {
		t.Fatalf("%s{%s=%q}: no series", name, label, value)
	}
	return found
}

var _ prometheus.Collector = (*prom.Collector)(nil)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
