package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// aggT0 is the time of the first snapshots of the tests; instances started
// an hour before unless a test says otherwise.
var aggT0 = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)

// aggEnv is an Aggregator on a real NATS server, on a fake clock, and a
// connection to publish snapshots with.
type aggEnv struct {
	t     *testing.T
	nc    *nats.Conn
	agg   *Aggregator
	clock *meshtest.Clock
	sent  uint64 // messages published on stats subjects
}

func newAggEnv(t *testing.T, cfg AggregatorConfig) *aggEnv {
	t.Helper()
	srv := meshtest.RunServer(t)
	e := &aggEnv{t: t, nc: meshtest.Connect(t, srv), clock: meshtest.NewClock()}
	cfg.Clock = e.clock
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	agg, err := StartAggregator(meshtest.Connect(t, srv), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agg.Stop)
	e.agg = agg
	return e
}

// publish sends data on subject and waits until the Aggregator has handled
// it (kept, or counted as invalid, stale or refused).
func (e *aggEnv) publish(subject string, data []byte) {
	e.t.Helper()
	if err := e.nc.Publish(subject, data); err != nil {
		e.t.Fatal(err)
	}
	e.sent++
	meshtest.CheckFor(e.t, 5*time.Second, time.Millisecond, func() error {
		st := e.agg.Stats()
		if n := st.Snapshots + st.Invalid + st.Stale + st.Refused; n != e.sent {
			return fmt.Errorf("%d of %d messages handled: %+v", n, e.sent, st)
		}
		return nil
	})
}

func (e *aggEnv) send(snaps ...Snapshot) {
	e.t.Helper()
	for _, s := range snaps {
		data, err := json.Marshal(s)
		if err != nil {
			e.t.Fatal(err)
		}
		e.publish(bus.Subjects{}.Stats(s.Service, s.Instance), data)
	}
}

// aggSnap is a snapshot of instance of service at aggT0+at, started an hour
// before aggT0.
func aggSnap(service, instance string, at time.Duration, edges ...EdgeSnapshot) Snapshot {
	return Snapshot{
		Service: service, Instance: instance, Kind: "sidecar",
		Started: aggT0.Add(-time.Hour), At: aggT0.Add(at), IntervalMS: 5000,
		Bounds: Bounds, Edges: edges,
	}
}

// aggEdge is an edge whose responses all took d.
func aggEdge(dir Direction, peer string, retries uint64, d time.Duration, responses map[string]uint64) EdgeSnapshot {
	var h Histogram
	for _, n := range responses {
		for range n {
			h.Observe(d)
		}
	}
	return aggEdgeHist(dir, peer, retries, h.Snapshot(), responses)
}

func aggEdgeHist(dir Direction, peer string, retries uint64, h HistogramSnapshot, responses map[string]uint64) EdgeSnapshot {
	return EdgeSnapshot{Direction: dir.String(), Peer: peer, Responses: responses, Retries: retries,
		Latency: LatencySnapshot{Counts: append([]uint64(nil), h.Counts[:]...), Sum: h.Sum}}
}

func aggService(t *testing.T, s Summary, name string) ServiceStats {
	t.Helper()
	for _, svc := range s.Services {
		if svc.Name == name {
			return svc
		}
	}
	t.Fatalf("no service %q in the summary: %+v", name, s.Services)
	return ServiceStats{}
}

func aggEdgeStats(t *testing.T, s Summary, from, to string) EdgeStats {
	t.Helper()
	for _, e := range s.Edges {
		if e.From == from && e.To == to {
			return e
		}
	}
	t.Fatalf("no edge %s → %s in the summary: %+v", from, to, s.Edges)
	return EdgeStats{}
}

func aggNear(got, want float64) bool { return math.Abs(got-want) < 1e-9 }

func aggCheckRate(t *testing.T, what string, sig Signals, requests uint64, rps, success float64) {
	t.Helper()
	if sig.Requests != requests || !aggNear(sig.RPS, rps) {
		t.Errorf("%s: %d requests at %g rps, want %d at %g", what, sig.Requests, sig.RPS, requests, rps)
	}
	if sig.Success == nil || !aggNear(*sig.Success, success) {
		t.Errorf("%s: success %v, want %g", what, aggPtr(sig.Success), success)
	}
}

func aggPtr(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func aggCheckErrors(t *testing.T, what string, got map[string]uint64, want map[string]uint64) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: errors %v, want %v", what, got, want)
	}
}

// A refusal the mesh made (403 forbidden) shows among the errors by its
// code, without lowering the success ratio; an app's own 4xx does neither.
func TestAggregatorCountsRefusals(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	ms := time.Millisecond
	e.send(
		aggSnap("reviews", "reviews-1", 0, aggEdge(Inbound, "ratings", 0, ms, map[string]uint64{"2xx": 10})),
		aggSnap("ratings", "ratings-1", 0, aggEdge(Outbound, "reviews", 0, ms, map[string]uint64{"2xx": 10})),
		aggSnap("reviews", "reviews-1", 10*time.Second, aggEdge(Inbound, "ratings", 0, ms, map[string]uint64{"2xx": 10, "4xx:forbidden": 30, "4xx": 5})),
		aggSnap("ratings", "ratings-1", 10*time.Second, aggEdge(Outbound, "reviews", 0, ms, map[string]uint64{"2xx": 10, "4xx:forbidden": 30, "4xx": 5})),
	)
	s := e.agg.Summary(10 * time.Second)
	rev := aggService(t, s, "reviews")
	aggCheckRate(t, "reviews", rev.Signals, 35, 3.5, 1)
	aggCheckErrors(t, "reviews", rev.Errors, map[string]uint64{"forbidden": 30})
	edge := aggEdgeStats(t, s, "ratings", "reviews")
	aggCheckRate(t, "ratings → reviews", edge.Signals, 35, 3.5, 1)
	aggCheckErrors(t, "ratings → reviews", edge.Errors, map[string]uint64{"forbidden": 30})
}

func TestAggregatorRatesAndSuccess(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	ms := time.Millisecond
	e.send(
		aggSnap("reviews", "reviews-1", 0, aggEdge(Inbound, "web", 0, 3*ms, map[string]uint64{"2xx": 100})),
		aggSnap("reviews", "reviews-2", 0, aggEdge(Inbound, "web", 0, 3*ms, map[string]uint64{"2xx": 50})),
		aggSnap("web", "web-1", 0, aggEdge(Outbound, "reviews", 0, 4*ms, map[string]uint64{"2xx": 140})),
		aggSnap("reviews", "reviews-1", 10*time.Second, aggEdge(Inbound, "web", 0, 3*ms, map[string]uint64{"2xx": 280, "5xx": 20})),
		aggSnap("reviews", "reviews-2", 10*time.Second, aggEdge(Inbound, "web", 0, 3*ms, map[string]uint64{"2xx": 150, "5xx:overloaded": 10})),
		aggSnap("web", "web-1", 10*time.Second, aggEdge(Outbound, "reviews", 12, 4*ms,
			map[string]uint64{"2xx": 420, "5xx": 20, "5xx:timeout": 3, "5xx:no-responders": 1, "4xx": 6})),
	)
	s := e.agg.Summary(10 * time.Second)
	if s.Instances != 3 || s.WindowMS != 10_000 || s.Truncated {
		t.Errorf("summary: %d instances, window %d ms, truncated %v; want 3, 10000, false", s.Instances, s.WindowMS, s.Truncated)
	}

	// reviews: (180+20) + (100+10) requests in 10 s, 30 of them failed.
	rev := aggService(t, s, "reviews")
	if rev.Instances != 2 {
		t.Errorf("reviews: %d instances, want 2", rev.Instances)
	}
	aggCheckRate(t, "reviews", rev.Signals, 310, 31, 1-30.0/310)
	aggCheckErrors(t, "reviews", rev.Errors, map[string]uint64{"app": 20, "overloaded": 10})
	if rev.P50MS == nil || *rev.P50MS <= 2 || *rev.P50MS > 5 {
		t.Errorf("reviews: p50 %v ms, want in the 2-5 ms bucket", aggPtr(rev.P50MS))
	}

	// web served nothing: no success ratio, no latency.
	web := aggService(t, s, "web")
	if web.Instances != 1 || web.Requests != 0 || web.RPS != 0 || web.Success != nil || web.P50MS != nil || web.P99MS != nil {
		t.Errorf("web: %+v, want 1 instance and no traffic", web)
	}

	// web → reviews as web saw it: 310 requests (the 4xx included), 24 of
	// them failed, 12 retries.
	edge := aggEdgeStats(t, s, "web", "reviews")
	aggCheckRate(t, "web → reviews", edge.Signals, 310, 31, 1-24.0/310)
	aggCheckErrors(t, "web → reviews", edge.Errors, map[string]uint64{"app": 20, "no-responders": 1, "timeout": 3})
	if edge.Callers != 1 || edge.Retries != 12 || !aggNear(edge.RetriesPerSecond, 1.2) {
		t.Errorf("web → reviews: %d callers, %d retries at %g/s; want 1, 12, 1.2/s", edge.Callers, edge.Retries, edge.RetriesPerSecond)
	}
	if len(s.Edges) != 1 || len(s.Services) != 2 {
		t.Errorf("summary has %d edges and %d services, want 1 and 2", len(s.Edges), len(s.Services))
	}

	// JSON: no NaN anywhere, nulls where there was no traffic.
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("summary does not encode: %v", err)
	}
	for _, want := range []string{`"name":"web","instances":1,"requests":0,"rps":0,"success":null,"p50_ms":null,"p95_ms":null,"p99_ms":null`, `"retries_per_second":1.2`, `"window_ms":10000`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("summary JSON lacks %s:\n%s", want, data)
		}
	}
}

// TestAggregatorMergedQuantiles: quantiles come from the instances' merged
// buckets, which is what one histogram of every observation gives, and not
// the average of the instances' quantiles.
func TestAggregatorMergedQuantiles(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	var fast, slow, all Histogram
	for i := range 1000 {
		d := 700 * time.Microsecond
		if i%10 == 0 {
			d = 3 * time.Millisecond
		}
		fast.Observe(d)
		all.Observe(d)
	}
	for i := range 1000 {
		d := 120*time.Millisecond + time.Duration(i)*50*time.Microsecond // 120-170 ms
		slow.Observe(d)
		all.Observe(d)
	}
	zero := HistogramSnapshot{}
	resp := map[string]uint64{"2xx": 1000}
	e.send(
		aggSnap("reviews", "reviews-1", 0, aggEdgeHist(Inbound, "web", 0, zero, map[string]uint64{})),
		aggSnap("reviews", "reviews-2", 0, aggEdgeHist(Inbound, "web", 0, zero, map[string]uint64{})),
		aggSnap("reviews", "reviews-1", 10*time.Second, aggEdgeHist(Inbound, "web", 0, fast.Snapshot(), resp)),
		aggSnap("reviews", "reviews-2", 10*time.Second, aggEdgeHist(Inbound, "web", 0, slow.Snapshot(), resp)),
	)
	rev := aggService(t, e.agg.Summary(10*time.Second), "reviews")
	fs, ss, as := fast.Snapshot(), slow.Snapshot(), all.Snapshot()
	for _, tc := range []struct {
		q   float64
		got *float64
	}{{0.5, rev.P50MS}, {0.95, rev.P95MS}, {0.99, rev.P99MS}} {
		want := math.Round(as.Quantile(tc.q)*1e6) / 1e3
		avg := (fs.Quantile(tc.q) + ss.Quantile(tc.q)) / 2 * 1000
		if tc.got == nil || *tc.got != want {
			t.Errorf("p%g = %v ms, want %g ms (one histogram of every observation)", tc.q*100, aggPtr(tc.got), want)
		}
		t.Logf("p%g: merged %.3f ms, average of the instances' %.3f ms", tc.q*100, want, avg)
		if tc.q == 0.99 && math.Abs(want-avg) < 10 {
			t.Errorf("p99 merged %g ms and averaged %g ms are alike; the test's distributions should tell them apart", want, avg)
		}
	}
}

func TestAggregatorWindow(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	// steady-1: cumulative 0, 100, 300, 600 at 0, 10, 20, 30 s.
	for i, n := range []uint64{0, 100, 300, 600} {
		e.send(aggSnap("steady", "steady-1", time.Duration(i)*10*time.Second, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": n})))
	}
	// fresh-1 started at 25 s and has sent one snapshot, at 30 s.
	fresh := aggSnap("fresh", "fresh-1", 30*time.Second, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 50}))
	fresh.Started = aggT0.Add(25 * time.Second)
	// lonely-1 started long ago and has sent one snapshot: no rate yet.
	e.send(fresh, aggSnap("lonely", "lonely-1", 30*time.Second, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 999})))

	for _, tc := range []struct {
		window               time.Duration
		steadyReqs, freshReq uint64
		steadyRPS, freshRPS  float64
		windowMS             int64
	}{
		// steady's base is its newest snapshot at or before 30 s - window.
		{window: 3 * time.Second, steadyReqs: 300, steadyRPS: 30},                             // 20 → 30 s; fresh started before 27 s and has one snapshot: no rate
		{window: 5 * time.Second, steadyReqs: 300, steadyRPS: 30, freshReq: 50, freshRPS: 10}, // fresh: from zero at its start, 25 s
		{window: 10 * time.Second, steadyReqs: 300, steadyRPS: 30, freshReq: 50, freshRPS: 10},
		{window: 15 * time.Second, steadyReqs: 500, steadyRPS: 25, freshReq: 50, freshRPS: 10},                    // 10 → 30 s
		{window: 30 * time.Second, steadyReqs: 600, steadyRPS: 20, freshReq: 50, freshRPS: 10},                    // 0 → 30 s
		{window: 45 * time.Second, steadyReqs: 600, steadyRPS: 20, freshReq: 50, freshRPS: 10},                    // as far back as the history goes
		{window: 10 * time.Minute, steadyReqs: 600, steadyRPS: 20, freshReq: 50, freshRPS: 10, windowMS: 300_000}, // capped
		{window: 0, steadyReqs: 600, steadyRPS: 20, freshReq: 50, freshRPS: 10, windowMS: 30_000},                 // the default
	} {
		t.Run(tc.window.String(), func(t *testing.T) {
			s := e.agg.Summary(tc.window)
			want := tc.windowMS
			if want == 0 {
				want = tc.window.Milliseconds()
			}
			if s.WindowMS != want || s.Instances != 3 {
				t.Errorf("window %d ms, %d instances; want %d ms, 3", s.WindowMS, s.Instances, want)
			}
			st, fr, lo := aggService(t, s, "steady"), aggService(t, s, "fresh"), aggService(t, s, "lonely")
			if st.Requests != tc.steadyReqs || !aggNear(st.RPS, tc.steadyRPS) {
				t.Errorf("steady: %d requests at %g rps, want %d at %g", st.Requests, st.RPS, tc.steadyReqs, tc.steadyRPS)
			}
			if fr.Requests != tc.freshReq || !aggNear(fr.RPS, tc.freshRPS) {
				t.Errorf("fresh: %d requests at %g rps, want %d at %g", fr.Requests, fr.RPS, tc.freshReq, tc.freshRPS)
			}
			if lo.Instances != 1 || lo.Requests != 0 || lo.RPS != 0 {
				t.Errorf("lonely: %+v, want 1 instance and no rate from its only snapshot", lo)
			}
		})
	}
}

func TestAggregatorCounterReset(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	resp := func(n uint64) EdgeSnapshot {
		return aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": n})
	}
	// work-1 restarts at 11 s under the same name: its counters start
	// again, and a late snapshot of the old process changes nothing.
	e.send(aggSnap("work", "work-1", 0, resp(1000)), aggSnap("work", "work-1", 10*time.Second, resp(1100)))
	restarted := aggSnap("work", "work-1", 12*time.Second, resp(20))
	restarted.Started = aggT0.Add(11 * time.Second)
	late := aggSnap("work", "work-1", 13*time.Second, resp(1200))
	e.send(restarted, late)
	// shrink-1 kept its start time but its counters went down: counted as
	// a reset, from zero.
	e.send(aggSnap("shrink", "shrink-1", 0, resp(500)), aggSnap("shrink", "shrink-1", 10*time.Second, resp(30)))

	if st := e.agg.Stats(); st.Stale != 1 || st.Snapshots != 5 {
		t.Errorf("stats %+v, want 5 snapshots kept and 1 stale", st)
	}
	s := e.agg.Summary(10 * time.Second)
	if w := aggService(t, s, "work"); w.Requests != 20 || !aggNear(w.RPS, 20) {
		t.Errorf("work after its restart: %d requests at %g rps, want 20 in the 1 s since it started", w.Requests, w.RPS)
	}
	if sh := aggService(t, s, "shrink"); sh.Requests != 30 || !aggNear(sh.RPS, 3) {
		t.Errorf("shrink after its reset: %d requests at %g rps, want 30 at 3", sh.Requests, sh.RPS)
	}
}

func TestAggregatorForgetsSilentInstances(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	quiet := aggSnap("work", "work-1", 0)
	quiet.IntervalMS = 1000
	chatty := aggSnap("work", "work-2", 0)
	e.send(quiet, chatty)
	if s := e.agg.Summary(0); s.Instances != 2 {
		t.Fatalf("%d instances, want 2", s.Instances)
	}
	e.clock.Advance(2900 * time.Millisecond)
	if s := e.agg.Summary(0); s.Instances != 2 {
		t.Fatalf("%d instances after 2.9 intervals of work-1, want 2", s.Instances)
	}
	e.clock.Advance(200 * time.Millisecond) // work-1 missed 3 intervals of 1 s; work-2's are 5 s
	s := e.agg.Summary(0)
	if s.Instances != 1 || aggService(t, s, "work").Instances != 1 || e.agg.Stats().Forgotten != 1 {
		t.Errorf("after 3.1 s: %d instances, stats %+v; want work-1 forgotten", s.Instances, e.agg.Stats())
	}
	e.clock.Advance(12 * time.Second)
	if s := e.agg.Summary(0); s.Instances != 0 || len(s.Services) != 0 || e.agg.Stats().Forgotten != 2 {
		t.Errorf("after 15.1 s: %+v, want nothing left", s)
	}
	e.agg.mu.Lock()
	defer e.agg.mu.Unlock()
	if len(e.agg.insts) != 0 || e.agg.samples != 0 {
		t.Errorf("%d instances and %d samples held, want none", len(e.agg.insts), e.agg.samples)
	}
}

func TestAggregatorAlive(t *testing.T) {
	var (
		mu    sync.Mutex
		alive = map[string]bool{"work-1": true, "work-2": true}
	)
	setAlive := func(inst string, on bool) {
		mu.Lock()
		defer mu.Unlock()
		alive[inst] = on
	}
	e := newAggEnv(t, AggregatorConfig{Alive: func(service, instance string) bool {
		mu.Lock()
		defer mu.Unlock()
		return alive[instance]
	}})
	gw := aggSnap("edge", "edge-1", 0) // a gateway: never in the registry
	gw.Kind = "gateway"
	e.send(aggSnap("work", "work-1", 0), aggSnap("work", "work-2", 0), aggSnap("work", "work-3", 0), gw)
	// work-3's heartbeat has not arrived yet: kept.
	if s := e.agg.Summary(0); s.Instances != 4 || aggService(t, s, "work").Instances != 3 {
		t.Fatalf("%d instances, work %+v; want 4 and 3", s.Instances, aggService(t, s, "work"))
	}
	setAlive("work-1", false) // it left the registry: left out at once
	s := e.agg.Summary(0)
	if s.Instances != 3 || aggService(t, s, "work").Instances != 2 || e.agg.Stats().Gone != 1 {
		t.Errorf("after work-1 left the registry: %d instances, stats %+v; want 3 and 1 gone", s.Instances, e.agg.Stats())
	}
	for _, svc := range s.Services {
		if svc.Name == "edge" {
			t.Errorf("the gateway is a service: %+v", svc)
		}
	}
	e.send(aggSnap("work", "work-1", time.Second)) // its last snapshot arrives after it left
	if s := e.agg.Summary(0); s.Instances != 3 {
		t.Errorf("after a late snapshot of work-1: %d instances, want 3", s.Instances)
	}
	setAlive("work-1", true) // back (a partition healed)
	if s := e.agg.Summary(0); s.Instances != 4 || e.agg.Stats().Gone != 0 {
		t.Errorf("after work-1 came back: %d instances, stats %+v; want 4", s.Instances, e.agg.Stats())
	}
}

func TestAggregatorInvalidSnapshots(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	subj := bus.Subjects{}
	good := aggSnap("work", "work-1", 0, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 1}))
	encode := func(s Snapshot) []byte {
		data, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	badBounds := good
	badBounds.Bounds = []float64{1, 2, 3}
	badDir := aggSnap("work", "work-1", 0, aggEdge(Inbound, "web", 0, time.Millisecond, nil))
	badDir.Edges[0].Direction = "sideways"
	badName := good
	badName.Service = "Work.All"
	// A process reports at most maxBreakers breakers; more would be kept,
	// one map per instance, for as long as its snapshots arrive.
	manyBreakers := good
	manyBreakers.Breakers = make(map[string]string)
	for i := range maxBreakers + 1 {
		manyBreakers.Breakers[fmt.Sprintf("svc-%d", i)] = "open"
	}
	for _, tc := range []struct {
		name, subject string
		data          []byte
	}{
		{"not JSON", subj.Stats("work", "work-1"), []byte("{nonsense")},
		{"empty", subj.Stats("work", "work-1"), nil},
		{"other buckets", subj.Stats("work", "work-1"), encode(badBounds)},
		{"bad direction", subj.Stats("work", "work-1"), encode(badDir)},
		{"bad name", subj.Stats("work", "work-1"), encode(badName)},
		{"too many breakers", subj.Stats("work", "work-1"), encode(manyBreakers)},
		{"another instance's subject", subj.Stats("work", "work-2"), encode(good)},
	} {
		e.publish(tc.subject, tc.data)
		if st := e.agg.Stats(); st.Invalid != e.sent || st.Snapshots != 0 {
			t.Errorf("%s: stats %+v, want it counted as invalid", tc.name, st)
		}
	}
	e.send(good)
	if s := e.agg.Summary(0); s.Instances != 1 || s.Stats.Invalid != 7 || s.Stats.Snapshots != 1 {
		t.Errorf("summary after the invalid snapshots and a good one: %+v", s)
	}
}

func TestAggregatorBounds(t *testing.T) {
	t.Run("instances", func(t *testing.T) {
		e := newAggEnv(t, AggregatorConfig{MaxInstances: 3})
		for i := range 5 {
			e.send(aggSnap("work", fmt.Sprintf("work-%d", i), 0))
		}
		if s := e.agg.Summary(0); s.Instances != 3 || s.Stats.Refused != 2 {
			t.Errorf("%d instances, stats %+v; want 3 kept and 2 refused", s.Instances, s.Stats)
		}
	})
	t.Run("history", func(t *testing.T) {
		e := newAggEnv(t, AggregatorConfig{History: 8})
		for i := range 40 { // 10 requests a second
			e.send(aggSnap("work", "work-1", time.Duration(i)*time.Second,
				aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": uint64(10 * i)})))
		}
		h := aggHistory(e, "work", "work-1")
		if len(h) != 8 || !h[0].at.Equal(aggT0) || !h[7].at.Equal(aggT0.Add(39*time.Second)) || !h[6].at.Equal(aggT0.Add(38*time.Second)) {
			t.Errorf("history %v; want 8 snapshots from the first to the newest, the one before it kept", aggTimes(h))
		}
		for i := 2; i < len(h); i++ { // coarser further back
			if h[i].at.Sub(h[i-1].at) > h[i-1].at.Sub(h[i-2].at) {
				t.Errorf("history %v: gaps grow towards the newest", aggTimes(h))
				break
			}
		}
		for _, w := range []time.Duration{time.Second, 5 * time.Second, 30 * time.Second} {
			if got := aggService(t, e.agg.Summary(w), "work"); !aggNear(got.RPS, 10) {
				t.Errorf("window %s: %g rps, want 10", w, got.RPS)
			}
		}
	})
	t.Run("max window", func(t *testing.T) {
		e := newAggEnv(t, AggregatorConfig{})
		for i := range 7 {
			e.send(aggSnap("work", "work-1", time.Duration(i)*100*time.Second))
		}
		if h := aggHistory(e, "work", "work-1"); !h[0].at.Equal(aggT0.Add(300 * time.Second)) {
			t.Errorf("history %v; want none before 300 s, 5 minutes before the newest", aggTimes(h))
		}
	})
	t.Run("samples", func(t *testing.T) {
		e := newAggEnv(t, AggregatorConfig{MaxSamples: 40})
		edges := []EdgeSnapshot{aggEdge(Inbound, "a", 0, 0, nil), aggEdge(Inbound, "b", 0, 0, nil)}
		for i := range 20 {
			for j := range 4 {
				e.send(aggSnap("work", fmt.Sprintf("work-%d", j), time.Duration(i)*time.Second, edges...))
			}
		}
		e.agg.mu.Lock()
		defer e.agg.mu.Unlock()
		if e.agg.samples > 40 {
			t.Errorf("%d samples held, want at most 40", e.agg.samples)
		}
		for k, in := range e.agg.insts {
			if len(in.history) != 5 { // its share: 40 / 4 instances / 2 edges
				t.Errorf("%s holds %d snapshots, want 5", k.instance, len(in.history))
			}
		}
	})
	t.Run("memory", func(t *testing.T) {
		// At two snapshots each, instances with many edges fill the budget:
		// further instances are refused, and snapshots that grow past twice
		// the budget are dropped.
		e := newAggEnv(t, AggregatorConfig{MaxSamples: 100})
		edges := func(n int) []EdgeSnapshot {
			var es []EdgeSnapshot
			for i := range n {
				es = append(es, aggEdge(Inbound, fmt.Sprintf("peer%d", i), 0, 0, nil))
			}
			return es
		}
		for i := range 2 {
			e.send(aggSnap("work", "work-1", time.Duration(i)*time.Second, edges(30)...))
		}
		e.send(aggSnap("work", "work-2", 0, edges(30)...)) // 60 + 2×30 > 100
		if st := e.agg.Stats(); st.Refused != 1 {
			t.Errorf("stats %+v; want the second instance refused", st)
		}
		for i := 2; i < 6; i++ {
			e.send(aggSnap("work", "work-1", time.Duration(i)*time.Second, edges(150)...))
		}
		e.agg.mu.Lock()
		held := e.agg.samples
		e.agg.mu.Unlock()
		if held > 200 {
			t.Errorf("%d samples held, want at most twice the budget of 100", held)
		}
	})
	t.Run("summary", func(t *testing.T) {
		e := newAggEnv(t, AggregatorConfig{SummaryServices: 2, SummaryEdges: 2})
		for i, name := range []string{"a", "b", "c", "d"} {
			n := map[string]uint64{"2xx": uint64(10 * (4 - i%3))} // a 40, b 30, c 20, d 40
			e.send(aggSnap(name, name+"-1", 0, aggEdge(Inbound, "web", 0, 0, map[string]uint64{})),
				aggSnap(name, name+"-1", time.Second, aggEdge(Inbound, "web", 0, 0, n), aggEdge(Outbound, "z", 0, 0, n)))
		}
		s := e.agg.Summary(0)
		var names []string
		for _, svc := range s.Services {
			names = append(names, svc.Name)
		}
		for _, edge := range s.Edges {
			names = append(names, edge.From+"→"+edge.To)
		}
		if !s.Truncated || fmt.Sprint(names) != "[a d a→z d→z]" {
			t.Errorf("truncated %v, kept %v; want true and the busiest two of each, by name", s.Truncated, names)
		}
	})
}

func aggHistory(e *aggEnv, service, instance string) []*sample {
	e.agg.mu.Lock()
	defer e.agg.mu.Unlock()
	return append([]*sample(nil), e.agg.insts[instKey{service, instance}].history...)
}

func aggTimes(h []*sample) []time.Duration {
	var ts []time.Duration
	for _, s := range h {
		ts = append(ts, s.at.Sub(aggT0))
	}
	return ts
}

func TestAggregatorBreakers(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	caller := func(inst string, breakers map[string]string) Snapshot {
		s := aggSnap("web", inst, 0)
		s.Breakers = breakers
		return s
	}
	e.send(
		caller("web-1", map[string]string{"reviews": "open"}),
		caller("web-2", map[string]string{"reviews/v2": "half-open", "reviews": "closed"}),
		caller("web-3", map[string]string{"reviews": "closed", "ratings": "closed"}),
		caller("web-4", map[string]string{"(other)": "open", "details": "half-open"}),
	)
	s := e.agg.Summary(0)
	for _, want := range []ServiceStats{
		{Name: "reviews", Breaker: "open", BreakerOpen: 1, BreakerHalfOpen: 1},
		{Name: "ratings", Breaker: "closed"},
		{Name: "details", Breaker: "half-open", BreakerHalfOpen: 1},
		{Name: "web", Instances: 4},
	} {
		got := aggService(t, s, want.Name)
		if got.Breaker != want.Breaker || got.BreakerOpen != want.BreakerOpen || got.BreakerHalfOpen != want.BreakerHalfOpen || got.Instances != want.Instances {
			t.Errorf("%s: breaker %q (%d open, %d half-open), %d instances; want %q (%d, %d), %d", want.Name,
				got.Breaker, got.BreakerOpen, got.BreakerHalfOpen, got.Instances, want.Breaker, want.BreakerOpen, want.BreakerHalfOpen, want.Instances)
		}
	}
	if len(s.Services) != 4 {
		t.Errorf("services %+v, want 4", s.Services)
	}
}

func TestFetchSummary(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	e.send(
		aggSnap("work", "work-1", 0, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 0})),
		aggSnap("work", "work-1", 10*time.Second, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 50})),
		aggSnap("work", "work-1", 20*time.Second, aggEdge(Inbound, "web", 0, time.Millisecond, map[string]uint64{"2xx": 250})),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		window time.Duration
		rps    float64
	}{{0, 12.5}, {10 * time.Second, 20}, {20 * time.Second, 12.5}} {
		s, err := FetchSummary(ctx, e.nc, "", tc.window)
		if err != nil {
			t.Fatal(err)
		}
		if w := aggService(t, s, "work"); !aggNear(w.RPS, tc.rps) || s.Stats.Snapshots != 3 {
			t.Errorf("window %s: %g rps, stats %+v; want %g", tc.window, w.RPS, s.Stats, tc.rps)
		}
	}
	if e.agg.summarySub.Queue != StatsQueue {
		t.Errorf("summary subscription in queue group %q, want %q", e.agg.summarySub.Queue, StatsQueue)
	}

	m, err := e.nc.Request(bus.Subjects{}.StatsSummary(), []byte("{nonsense"), 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"error":"the request is not {\"window_ms\":N}`) {
		t.Errorf("a bad request: %v, answer %q; want an error answer", err, m.Data)
	}

	// Nobody answers on another prefix.
	_, err = FetchSummary(ctx, e.nc, "other", 0)
	want := "no natsmesh server answers stats on other.stats.summary; start one with natsmesh server, or point --nats at the mesh's NATS"
	if !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), want) {
		t.Errorf("with no aggregator: %v; want ErrNoServer saying %q", err, want)
	}
}

// TestAggregatorWarmup: an Aggregator that starts while another answers
// waits before it answers too; one alone answers at once.
func TestAggregatorWarmup(t *testing.T) {
	e := newAggEnv(t, AggregatorConfig{})
	if !e.agg.Answering() {
		t.Fatal("the only aggregator does not answer")
	}
	e.send(aggSnap("work", "work-1", 0), aggSnap("work", "work-1", time.Second))
	clock := meshtest.NewClock()
	late, err := StartAggregator(e.nc, AggregatorConfig{Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Stop()
	if late.Answering() {
		t.Fatal("an aggregator started beside another answers at once")
	}
	for range 5 { // the first one answers, with what it has heard
		s, err := FetchSummary(context.Background(), e.nc, "", 0)
		if err != nil || s.Instances != 1 {
			t.Fatalf("summary: %d instances, error %v; want 1 from the first aggregator", s.Instances, err)
		}
	}
	clock.Advance(DefaultInterval) // the default warmup is 5 s and a second
	late.Summary(0)
	if late.Answering() {
		t.Fatal("answering after 5 s")
	}
	clock.Advance(time.Second)
	late.Summary(0)
	if !late.Answering() {
		t.Fatal("not answering after 6 s")
	}
	late.Stop()
	late.Stop() // safe twice
}

// aggFill gives 1,000 instances of 50 services, each with 2 inbound and 2
// outbound edges, a full history.
func aggFill(b *testing.B, a *Aggregator) {
	b.Helper()
	for i := range 1000 {
		svc := fmt.Sprintf("svc-%d", i%50)
		for j := range DefaultHistory {
			n := uint64(j * 100)
			resp := map[string]uint64{"2xx": n, "5xx": n / 100, "5xx:timeout": n / 200}
			s := aggSnap(svc, fmt.Sprintf("%s-%d", svc, i), time.Duration(j)*5*time.Second,
				aggEdge(Inbound, fmt.Sprintf("svc-%d", (i+1)%50), 0, time.Millisecond, nil),
				aggEdge(Inbound, fmt.Sprintf("svc-%d", (i+2)%50), 0, time.Millisecond, nil),
				aggEdge(Outbound, fmt.Sprintf("svc-%d", (i+3)%50), 0, time.Millisecond, nil),
				aggEdge(Outbound, fmt.Sprintf("svc-%d", (i+4)%50), 0, time.Millisecond, nil))
			for k := range s.Edges {
				s.Edges[k].Responses = resp
				s.Edges[k].Latency.Counts[3] = n
			}
			a.add(&s, aggT0)
		}
	}
}

func aggBenchAggregator(b *testing.B) *Aggregator {
	b.Helper()
	srv := meshtest.RunServer(b)
	a, err := StartAggregator(meshtest.Connect(b, srv), AggregatorConfig{Clock: meshtest.NewClock(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(a.Stop)
	return a
}

// BenchmarkAggregatorSummary: a summary of 1,000 instances with 4 edges
// each, 64 snapshots kept per instance.
func BenchmarkAggregatorSummary(b *testing.B) {
	a := aggBenchAggregator(b)
	aggFill(b, a)
	b.ReportAllocs()
	for b.Loop() {
		if s := a.Summary(time.Minute); len(s.Services) != 50 || len(s.Edges) != 100 {
			b.Fatalf("%d services, %d edges", len(s.Services), len(s.Edges))
		}
	}
}

// BenchmarkAggregatorMemory reports the heap an edge sample takes.
func BenchmarkAggregatorMemory(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		a := aggBenchAggregator(b)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		aggFill(b, a)
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		a.mu.Lock()
		n := a.samples
		a.mu.Unlock()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(n), "B/sample")
		b.ReportMetric(float64(n), "samples")
		runtime.KeepAlive(a)
		b.StartTimer()
	}
}
