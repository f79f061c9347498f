package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/metrics/prom"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/sidecar"
)

// edgeOf finds one edge of a sidecar's metrics.
func edgeOf(t *testing.T, sc *sidecar.Sidecar, dir, peer string) metrics.EdgeSnapshot {
	t.Helper()
	for _, e := range sc.Metrics().Snapshot(time.Now(), time.Second).Edges {
		if e.Direction == dir && e.Peer == peer {
			return e
		}
	}
	t.Fatalf("no %s edge with %s", dir, peer)
	return metrics.EdgeSnapshot{}
}

// Known traffic between two sidecars gives exact counts on both sides, and
// the callee's NATS service discovery stats report the same counts.
func TestMetricsKnownTraffic(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	_, callee := startCallee(t, s, "ratings", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusInternalServerError)
		case "/slow":
			time.Sleep(30 * time.Millisecond)
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
		}
	}), noOutlier)
	caller := startCaller(t, s, "web", func(c *sidecar.Config) { c.Transport.DisableBreaker = true })
	c := sidecarClient(t, formProxy, caller, "web")

	want := map[string]int{"/ok": 6, "/fail": 3, "/slow": 2, "/missing": 1}
	for path, n := range want {
		for i := 0; i < n; i++ {
			c.get(t, "ratings", path)
		}
	}
	retries := 0
	for i := 0; i < 2; i++ {
		resp, _ := c.get(t, "nobody", "/")
		retries += attemptsOf(resp) - 1
	}

	out := edgeOf(t, caller, "outbound", "ratings")
	wantResp := map[string]uint64{"2xx": 8, "4xx": 1, "5xx": 3}
	if fmt.Sprint(out.Responses) != fmt.Sprint(wantResp) || out.Retries != 0 || out.InFlight != 0 {
		t.Errorf("caller's edge to ratings: %v, %d retries, %d in flight; want %v, none, none", out.Responses, out.Retries, out.InFlight, wantResp)
	}
	none := edgeOf(t, caller, "outbound", "nobody")
	if fmt.Sprint(none.Responses) != "map[5xx:no-responders:2]" || int(none.Retries) != retries || retries == 0 {
		t.Errorf("caller's edge to nobody: %v, %d retries; want 2 no-responders and the %d retries Mesh-Attempts reported", none.Responses, none.Retries, retries)
	}
	in := edgeOf(t, callee, "inbound", "web")
	if fmt.Sprint(in.Responses) != fmt.Sprint(wantResp) {
		t.Errorf("callee's edge from web: %v, want %v", in.Responses, wantResp)
	}
	// The two slow calls, and only they, took more than 20ms at the callee.
	h := in.Latency.Histogram()
	var over20ms uint64
	for i, b := range metrics.Bounds {
		if b > 0.02 {
			over20ms += h.Counts[i]
		}
	}
	over20ms += h.Counts[len(metrics.Bounds)]
	if h.Count() != 12 || over20ms < 2 {
		t.Errorf("callee's latency buckets %v: %d calls, %d over 20ms; want 12 and at least the 2 slow ones", h.Counts, h.Count(), over20ms)
	}

	// $SRV.STATS: the same requests and errors.
	msg, err := meshtest.Connect(t, s).Request("$SRV.STATS.ratings", nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil || len(st.Endpoints) != 1 {
		t.Fatalf("stats %s: %v", msg.Data, err)
	}
	if ep := st.Endpoints[0]; uint64(ep.NumRequests) != in.Requests() || uint64(ep.NumErrors) != in.Failures() {
		t.Errorf("$SRV.STATS: %d requests, %d errors; the metrics count %d and %d", ep.NumRequests, ep.NumErrors, in.Requests(), in.Failures())
	}
}

// Paths never become labels: 10,000 distinct paths add no series.
func TestMetricsCardinality(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	_, callee := startCallee(t, s, "ratings", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), noOutlier)
	caller := startCaller(t, s, "web", nil)
	c := sidecarClient(t, formProxy, caller, "web")
	c.get(t, "ratings", "/first")

	series := func() int {
		n := 0
		for _, sc := range []*sidecar.Sidecar{caller, callee} {
			reg, err := prom.NewRegistry(prom.NewCollector(sc.Metrics()))
			if err != nil {
				t.Fatal(err)
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if strings.HasPrefix(mf.GetName(), "natsmesh_") {
					n += len(mf.GetMetric())
				}
			}
		}
		return n
	}
	before := series()
	const calls, workers = 10000, 8
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < calls; i += workers {
				resp, _ := c.get(t, "ratings", fmt.Sprintf("/item/%d?q=%d", i, i))
				if resp.StatusCode != http.StatusOK {
					t.Errorf("call %d: status %d", i, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	if after := series(); after != before {
		t.Fatalf("%d series before 10,000 distinct paths, %d after", before, after)
	}
	if in := edgeOf(t, callee, "inbound", "web"); in.Requests() != calls+1 {
		t.Fatalf("callee counted %d requests, want %d", in.Requests(), calls+1)
	}
}

// Callers that name more services than a Set holds (a buggy or hostile
// Mesh-Caller) overflow the inbound edges only: the instance's own calls
// still count on their own outbound edge.
func TestMetricsInboundCallersDoNotCrowdOutOutbound(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startCallee(t, s, "ratings", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), noOutlier)
	_, reviews := startCallee(t, s, "reviews", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), noOutlier)

	nc := meshtest.Connect(t, s)
	for i := range metrics.DefaultMaxEdges + 10 {
		h := nats.Header{}
		bus.EncodeRequest(h, http.MethodGet, "/", "reviews", nil)
		subj := bus.Subjects{Caller: fmt.Sprintf("caller-%d", i)}.Call("reviews")
		m, err := nc.RequestMsg(&nats.Msg{Subject: subj, Header: h}, 5*time.Second)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if st := bus.First(m.Header, bus.HeaderStatus); st != "200" {
			t.Fatalf("call %d: status %q", i, st)
		}
	}
	if in := edgeOf(t, reviews, "inbound", metrics.Other); in.Requests() == 0 {
		t.Fatalf("no call counted on the inbound %s edge", metrics.Other)
	}

	c := sidecarClient(t, formProxy, reviews, "reviews")
	if resp, _ := c.get(t, "ratings", "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("reviews → ratings: status %d", resp.StatusCode)
	}
	if out := edgeOf(t, reviews, "outbound", "ratings"); out.Requests() != 1 {
		t.Fatalf("reviews' edge to ratings counted %d calls, want 1", out.Requests())
	}
}

// A config whose breaker settings change makes the service's breakers anew,
// closed: the metrics say closed too, not the open state the old breaker
// last reported.
func TestMetricsBreakerStateAfterNewSettings(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var failing atomic.Bool
	failing.Store(true)
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}), proxy.ServeConfig{Service: "ratings"})
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\nretries: {attempts: 0}\nbreaker: {failures: 2}\n")
	set := metrics.NewSet(metrics.Identity{Service: "productpage", Instance: "productpage-1", Kind: "library"}, metrics.Options{})
	hc := configClient(t, s, cfgs, func(c *proxy.TransportConfig) { c.Metrics = set })
	breakerOf := func() string { return set.Snapshot(time.Now(), time.Second).Breakers["ratings"] }

	for i := 0; breakerOf() != "open"; i++ {
		if i == 10 {
			t.Fatalf("breaker %q after 10 failed calls, want open", breakerOf())
		}
		callBody(t, hc, "http://ratings/")
	}

	failing.Store(false)
	cfgs.apply(t, "service: ratings\nretries: {attempts: 0}\nbreaker: {failures: 5}\n")
	if code, _, _ := callBody(t, hc, "http://ratings/"); code != http.StatusOK {
		t.Fatalf("after the new breaker settings: status %d, want 200 through a new, closed breaker", code)
	}
	if st := breakerOf(); st != "closed" {
		t.Fatalf("breaker state %q in the metrics, want closed: the breaker in use is new", st)
	}
}

// A call whose context's deadline passes is counted as a timeout, however
// the race between that deadline and the call's own timer ends.
func TestMetricsContextDeadlineIsTimeout(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}), proxy.ServeConfig{Service: "slow"})
	set := metrics.NewSet(metrics.Identity{Service: "web", Instance: "web-1", Kind: "library"}, metrics.Options{})
	hc := httpClient(t, newTransport(t, s, proxy.TransportConfig{Caller: "web", Metrics: set}))
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://slow/", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
		}
		cancel()
	}
	for _, e := range set.Snapshot(time.Now(), time.Second).Edges {
		if e.Peer == "slow" {
			if fmt.Sprint(e.Responses) != "map[5xx:timeout:5]" {
				t.Fatalf("responses %v, want 5 timeouts", e.Responses)
			}
			return
		}
	}
	t.Fatal("no edge to slow")
}

// A response whose headers alone exceed the NATS message limit is answered
// 502 too-large at once (it cannot stream: its head is one message), and
// both sides count that, not the handler's 200.
func TestMetricsResponseTooLargeForMessage(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	padding := strings.Repeat("p", int(nc.MaxPayload())) // the headers alone are too large
	callee := metrics.NewSet(metrics.Identity{Service: "big", Instance: "big-1", Kind: "library"}, metrics.Options{})
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Padding", padding)
		_, _ = io.WriteString(w, "small body")
	}), proxy.ServeConfig{Service: "big", Instance: "big-1", Metrics: callee})
	caller := metrics.NewSet(metrics.Identity{Service: "web", Instance: "web-1", Kind: "library"}, metrics.Options{})
	hc := httpClient(t, newTransport(t, s, proxy.TransportConfig{Caller: "web", Metrics: caller, Retry: traffic.RetryPolicy{Retries: -1}}))
	resp, _ := doRequest(t, hc, mustRequest(t, "http://big/"))
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(bus.HeaderError) != string(bus.TooLarge) {
		t.Fatalf("status %d, Mesh-Error %q; want 502 too-large at once, not upstream-lost after the ack wait", resp.StatusCode, resp.Header.Get(bus.HeaderError))
	}
	for name, set := range map[string]*metrics.Set{"caller": caller, "callee": callee} {
		edges := set.Snapshot(time.Now(), time.Second).Edges
		if len(edges) != 1 || fmt.Sprint(edges[0].Responses) != "map[5xx:too-large:1]" {
			t.Errorf("%s: edges %+v, want one too-large", name, edges)
		}
	}
}
