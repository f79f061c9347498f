package metrics

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
)

// Summary is the mesh's golden signals over a window, as natsmesh top shows
// them: per service from what its instances served (inbound), per edge
// caller → callee from what the callers saw (outbound, which includes the
// calls no callee saw: no-responders, circuit-open...). Services are sorted
// by name, edges by caller then callee.
type Summary struct {
	At       time.Time `json:"at"`
	WindowMS int64     `json:"window_ms"`
	// Instances counts the instances whose snapshots are in the summary.
	Instances int            `json:"instances"`
	Services  []ServiceStats `json:"services"`
	Edges     []EdgeStats    `json:"edges"`
	// Truncated: there were more services or edges than a summary holds;
	// the busiest are kept.
	Truncated bool            `json:"truncated,omitempty"`
	Stats     AggregatorStats `json:"stats"`
}

// Signals are the golden signals of a service or an edge over the window.
// Success and the latencies are null when there was no request.
type Signals struct {
	Requests uint64  `json:"requests"`
	RPS      float64 `json:"rps"`
	// Success is the ratio (0 to 1) of requests that did not fail: a
	// failure is a 5xx, the app's or the mesh's.
	Success *float64 `json:"success"`
	// P50MS, P95MS and P99MS are latency quantiles in milliseconds (to the
	// microsecond), from the merged histogram buckets of every instance.
	P50MS *float64 `json:"p50_ms"`
	P95MS *float64 `json:"p95_ms"`
	P99MS *float64 `json:"p99_ms"`
	// Errors counts the failures by Mesh-Error code ("timeout",
	// "no-responders"...); "app" counts the 5xx the app answered itself.
	// The mesh's own 4xx refusals ("forbidden", "bad-request", "too-large",
	// "no-route") are counted here too, by code, though they do not lower
	// Success: the caller's request was refused, the service did not fail.
	Errors map[string]uint64 `json:"errors,omitempty"`
}

// ServiceStats are one service's signals, from the inbound edges of its
// instances, with its breaker as its callers see it.
type ServiceStats struct {
	Name string `json:"name"`
	// Instances counts the instances reporting (0 for a service only
	// callers mention).
	Instances int `json:"instances"`
	Signals
	// Breaker is "open" when a caller's breaker for the service (or one of
	// its subsets) is open, else "half-open" when one is, else "closed";
	// empty when no caller has one.
	Breaker string `json:"breaker,omitempty"`
	// BreakerOpen and BreakerHalfOpen count the caller instances whose
	// breaker is in that state.
	BreakerOpen     int `json:"breaker_open,omitempty"`
	BreakerHalfOpen int `json:"breaker_half_open,omitempty"`
}

// EdgeStats are the signals of the calls of one service to another, as the
// caller's instances counted them, all subsets together.
type EdgeStats struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Subset is the subset of To that a route of To's config sent these
	// calls to; empty for calls to the whole service (its queue group). A
	// canary shows as one edge per subset.
	Subset string `json:"subset,omitempty"`
	// Callers counts the caller instances reporting the edge.
	Callers int `json:"callers"`
	Signals
	// Retries counts the attempts beyond the first, RetriesPerSecond their
	// rate.
	Retries          uint64  `json:"retries"`
	RetriesPerSecond float64 `json:"retries_per_second"`
}

// AppErrors is the key of Signals.Errors for the 5xx an app answered.
const AppErrors = "app"

// acc sums the deltas of edges.
type acc struct {
	requests, failures, retries uint64
	rate, retryRate             float64
	errors                      map[string]uint64
	latency                     HistogramSnapshot
}

func (c *acc) signals() Signals {
	s := Signals{Requests: c.requests, RPS: c.rate, Errors: c.errors}
	if c.requests > 0 {
		ok := 1 - float64(c.failures)/float64(c.requests)
		s.Success = &ok
	}
	if c.latency.Count() > 0 {
		q := func(q float64) *float64 {
			ms := math.Round(c.latency.Quantile(q)*1e6) / 1e3 // to the microsecond
			return &ms
		}
		s.P50MS, s.P95MS, s.P99MS = q(0.5), q(0.95), q(0.99)
	}
	return s
}

// add adds the change from prev (nil: zero) to cur, over elapsed seconds.
// Counters that went down were reset: cur counts from zero then.
func (c *acc) add(cur, prev *edgeSample, elapsed float64) {
	if prev != nil && reset(cur, prev) {
		prev = nil
	}
	var reqs uint64
	for _, r := range cur.responses {
		n := r.n
		if prev != nil {
			n -= prev.response(r.key)
		}
		if n == 0 {
			continue
		}
		reqs += n
		class, code, _ := strings.Cut(r.key, ":")
		if class == "5xx" {
			c.failures += n
			if code == "" {
				code = AppErrors
			}
		}
		if code == "" {
			continue // an app's own answer, not a failure
		}
		if c.errors == nil {
			c.errors = make(map[string]uint64)
		}
		c.errors[code] += n
	}
	retries, lat := cur.retries, cur.latency
	if prev != nil {
		retries -= prev.retries
		lat = cur.latency.Sub(&prev.latency)
	}
	c.requests += reqs
	c.retries += retries
	c.latency.Add(&lat)
	c.rate += float64(reqs) / elapsed
	c.retryRate += float64(retries) / elapsed
}

// reset tells whether any counter of cur is below prev's.
func reset(cur, prev *edgeSample) bool {
	if cur.retries < prev.retries {
		return true
	}
	for i := range cur.latency.Counts {
		if cur.latency.Counts[i] < prev.latency.Counts[i] {
			return true
		}
	}
	for _, r := range prev.responses {
		if cur.response(r.key) < r.n {
			return true
		}
	}
	return false
}

func (e *edgeSample) response(key string) uint64 {
	i, ok := slices.BinarySearchFunc(e.responses, key, func(r responseCount, k string) int { return strings.Compare(r.key, k) })
	if !ok {
		return 0
	}
	return e.responses[i].n
}

type pairKey struct{ from, to, subset string }

type serviceAcc struct {
	instances          int
	acc                acc
	open, half, closed int // caller instances whose breaker is in that state
}

type edgeAcc struct {
	callers int
	acc     acc
}

// summarize computes a Summary (without its time, window and stats) from
// the instances' spans.
func summarize(spans []span, maxServices, maxEdges int) Summary {
	t := tally{services: make(map[string]*serviceAcc), edges: make(map[pairKey]*edgeAcc)}
	for i := range spans {
		t.addSpan(&spans[i])
	}
	sum := Summary{Instances: len(spans)}
	var cut1, cut2 bool
	sum.Services, cut1 = keepBusiest(t.serviceStats(), maxServices, serviceRequests, compareServices)
	sum.Edges, cut2 = keepBusiest(t.edgeStats(), maxEdges, edgeRequests, compareEdges)
	sum.Truncated = cut1 || cut2
	return sum
}

// tally sums the instances' spans by service and by caller → callee edge.
type tally struct {
	services map[string]*serviceAcc
	edges    map[pairKey]*edgeAcc
}

// service is the sums of the service name, made on first use.
func (t *tally) service(name string) *serviceAcc {
	s := t.services[name]
	if s == nil {
		s = &serviceAcc{}
		t.services[name] = s
	}
	return s
}

// addSpan adds one instance's span: the instance to its service (unless it
// is a gateway), its breakers to the services they guard, and the change of
// each of its edges over the span.
func (t *tally) addSpan(sp *span) {
	if sp.kind != "gateway" {
		t.service(sp.service).instances++
	}
	countBreakers(sp.breakers, t.service)
	prev := edgesByKey(sp.prev)
	seen := make(map[pairKey]bool) // edges this instance reports
	for j := range sp.cur.edges {
		e := &sp.cur.edges[j]
		c := t.accOf(sp.service, e, seen)
		if sp.elapsed > 0 {
			c.add(e, prev[e.key()], sp.elapsed)
		}
	}
}

// accOf is what an edge of an instance of service adds to: an inbound
// edge to the service's sums; an outbound one to the sums of the edge from
// service to the peer, which counts the instance among its callers once
// (seen holds the edges already counted for it). A valid peer is listed
// among the services even if none of its instances reports.
func (t *tally) accOf(service string, e *edgeSample, seen map[pairKey]bool) *acc {
	if e.inbound {
		return &t.service(service).acc
	}
	k := pairKey{service, e.peer, e.subset}
	ea := t.edges[k]
	if ea == nil {
		ea = &edgeAcc{}
		t.edges[k] = ea
	}
	if !seen[k] {
		seen[k] = true
		ea.callers++
	}
	if bus.ValidateName("service", e.peer) == nil {
		t.service(e.peer)
	}
	return &ea.acc
}

// serviceStats are the signals of every service tallied, unsorted.
func (t *tally) serviceStats() []ServiceStats {
	out := make([]ServiceStats, 0, len(t.services))
	for name, s := range t.services {
		out = append(out, ServiceStats{Name: name, Instances: s.instances, Signals: s.acc.signals(),
			Breaker: s.breaker(), BreakerOpen: s.open, BreakerHalfOpen: s.half})
	}
	return out
}

// edgeStats are the signals of every edge tallied, unsorted.
func (t *tally) edgeStats() []EdgeStats {
	out := make([]EdgeStats, 0, len(t.edges))
	for k, e := range t.edges {
		out = append(out, EdgeStats{From: k.from, To: k.to, Subset: k.subset, Callers: e.callers, Signals: e.acc.signals(),
			Retries: e.acc.retries, RetriesPerSecond: e.acc.retryRate})
	}
	return out
}

// breaker is the worst state the service's callers report for its
// breakers; "" if none has one.
func (s *serviceAcc) breaker() string {
	switch {
	case s.open > 0:
		return breaker.Open.String()
	case s.half > 0:
		return breaker.HalfOpen.String()
	case s.closed > 0:
		return breaker.Closed.String()
	}
	return ""
}

// sampleKey tells apart the edges of one sample.
type sampleKey struct {
	inbound      bool
	peer, subset string
}

func (e *edgeSample) key() sampleKey { return sampleKey{e.inbound, e.peer, e.subset} }

// edgesByKey indexes the edges of s; nil when there is no s.
func edgesByKey(s *sample) map[sampleKey]*edgeSample {
	if s == nil {
		return nil
	}
	m := make(map[sampleKey]*edgeSample, len(s.edges))
	for j := range s.edges {
		e := &s.edges[j]
		m[e.key()] = e
	}
	return m
}

// countBreakers counts one caller instance's breakers by the service they
// guard (a key is "svc" or "svc/subset"); the worst state of its breakers
// for a service counts.
func countBreakers(breakers map[string]string, svc func(string) *serviceAcc) {
	if len(breakers) == 0 {
		return
	}
	rank := map[string]int{breaker.Closed.String(): 1, breaker.HalfOpen.String(): 2, breaker.Open.String(): 3}
	worst := make(map[string]int)
	for key, state := range breakers {
		name, _, _ := strings.Cut(key, "/")
		if r := rank[state]; r > worst[name] && bus.ValidateName("service", name) == nil {
			worst[name] = r
		}
	}
	for name, r := range worst {
		s := svc(name)
		switch r {
		case 3:
			s.open++
		case 2:
			s.half++
		default:
			s.closed++
		}
	}
}

func serviceRequests(s *ServiceStats) uint64 { return s.Requests }
func edgeRequests(e *EdgeStats) uint64       { return e.Requests }

func compareServices(a, b *ServiceStats) int { return strings.Compare(a.Name, b.Name) }
func compareEdges(a, b *EdgeStats) int {
	return cmp.Or(strings.Compare(a.From, b.From), strings.Compare(a.To, b.To), strings.Compare(a.Subset, b.Subset))
}

// keepBusiest sorts list by order and, when it is longer than n, keeps the
// n with the most requests; truncated says whether it did.
func keepBusiest[T any](list []T, n int, requests func(*T) uint64, order func(a, b *T) int) (kept []T, truncated bool) {
	if len(list) > n {
		slices.SortFunc(list, func(a, b T) int { return cmp.Or(cmp.Compare(requests(&b), requests(&a)), order(&a, &b)) })
		list, truncated = list[:n], true
	}
	slices.SortFunc(list, func(a, b T) int { return order(&a, &b) })
	return list, truncated
}

// ErrNoServer means no natsmesh server answered a summary request.
var ErrNoServer = errors.New("metrics: no natsmesh server answers stats")

// FetchSummary asks the mesh's aggregators (natsmesh server) for a summary
// over window (0: the server's default, 30 s). Without a deadline on ctx it
// waits at most 5 seconds.
func FetchSummary(ctx context.Context, nc *nats.Conn, prefix string, window time.Duration) (Summary, error) {
	subj, err := bus.NewSubjects(prefix)
	if err != nil {
		return Summary{}, err
	}
	if window < 0 || window > MaxWindow {
		return Summary{}, fmt.Errorf("metrics: window %s: use up to %s", window, MaxWindow)
	}
	var data []byte
	if window > 0 {
		if data, err = json.Marshal(SummaryRequest{WindowMS: max(1, window.Milliseconds())}); err != nil {
			return Summary{}, err
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	subject := subj.StatsSummary()
	m, err := nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return Summary{}, fmt.Errorf("%w on %s; start one with natsmesh server, or point --nats at the mesh's NATS", ErrNoServer, subject)
	case err != nil:
		return Summary{}, fmt.Errorf("metrics: ask %s for the stats summary: %w", subject, err)
	}
	var r summaryReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return Summary{}, fmt.Errorf("metrics: the answer on %s is not a stats summary: %w", subject, err)
	}
	if r.Error != "" {
		return Summary{}, fmt.Errorf("metrics: natsmesh server refused the summary request: %s", r.Error)
	}
	return r.Summary, nil
}
