package traffic_test

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

var subj = bus.Subjects{Prefix: "mesh"}

// baseTimeout is the callers' own timeout in these tests (the proxy's
// default).
const baseTimeout = 15 * time.Second

// testBase is a caller's own configuration, as the proxy makes it from its
// fields.
func testBase(retry traffic.RetryPolicy, bs breaker.Settings, disabled bool) *traffic.Base {
	return &traffic.Base{Timeout: baseTimeout, Retry: retry.WithDefaults(), Breaker: bs, DisableBreaker: disabled}
}

func parseDoc(t testing.TB, yaml string) *config.Service {
	t.Helper()
	docs, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return docs[0]
}

// reviews is the target of a subset of service reviews.
func reviews(subset string) traffic.Target {
	if subset == "" {
		return traffic.Target{Subject: "mesh.rpc.reviews._", Key: "reviews"}
	}
	return traffic.Target{Subset: subset, Subject: "mesh.rpc.reviews." + subset + "._", Key: "reviews/" + subset}
}

// routeCounts routes a request n times and counts the targets it got.
func routeCounts(t *testing.T, p *traffic.Policy, method, uri string, hdr http.Header, n int) map[traffic.Target]int {
	t.Helper()
	counts := map[traffic.Target]int{}
	for range n {
		tg := p.Route(method, uri, hdr)
		if tg == nil {
			t.Fatalf("%s %s: no target", method, uri)
		}
		counts[*tg]++
	}
	return counts
}

// checkShares checks that counts, over n routings, has exactly the subsets
// of want, each with its percentage of the calls to within half a point:
// at n = 1000000 that is over 10 standard deviations either way, so the
// test does not flake, and a weight off by one point fails it.
func checkShares(t *testing.T, counts map[traffic.Target]int, n int, want map[string]int) {
	t.Helper()
	if len(counts) != len(want) {
		t.Errorf("routed to %v, want the subsets of %v", counts, want)
	}
	for subset, pct := range want {
		got := counts[reviews(subset)]
		if d := 2 * (got*100 - pct*n); d <= -n || d >= n {
			t.Errorf("subset %s took %d of %d calls, want %d %%", subset, got, n, pct)
		}
	}
}

const fiveRoutes = `
service: reviews
routes:
  - name: jason
    match: {headers: {X-User: jason}}
    split: {v2: 100}
  - name: admin-posts
    match: {pathPrefix: /admin, methods: [POST, PUT]}
    split: {v3: 100}
  - name: api
    match: {pathPrefix: /api/, headers: {x-canary: "yes", x-region: eu}}
    split: {v3: 50, v2: 50}
  - name: zero
    match: {pathPrefix: /zero}
    split: {v1: 0, v2: 100}
  - split: {v2: 10, v1: 90}
`

// The cumulative table itself (subsets by name, weight-0 subsets left out)
// is checked by TestCompileRoutesTables (internal_test.go); Route shows
// the shares it makes.
func TestCompileRoutes(t *testing.T) {
	t.Parallel()
	base := testBase(traffic.RetryPolicy{}, breaker.Settings{}, false)
	doc := parseDoc(t, fiveRoutes)
	p := traffic.Compile(subj, "reviews", doc, 7, base, nil)
	if p.Routes() != 5 || p.Revision() != 7 || !p.FromDoc() {
		t.Fatalf("compiled %d routes, revision %d, fromDoc %v", p.Routes(), p.Revision(), p.FromDoc())
	}
	const n = 1_000_000
	checkShares(t, routeCounts(t, p, "GET", "/", nil, n), n, map[string]int{"v1": 90, "v2": 10})
	for tg := range routeCounts(t, p, "GET", "/zero", nil, 1000) {
		if tg != reviews("v2") {
			t.Errorf("a subset of weight 0 is picked: %+v", tg)
		}
	}

	// prefixes[k] is the policy of the document's first k routes: the first
	// route that takes a request is the one whose prefix policy is the
	// first to send it to a subset rather than to the whole service.
	prefixes := make([]*traffic.Policy, len(doc.Routes)+1)
	for k := range prefixes {
		d := *doc
		d.Routes = doc.Routes[:k]
		prefixes[k] = traffic.Compile(subj, "reviews", &d, 7, base, nil)
		if prefixes[k].Routes() != k {
			t.Fatalf("the first %d routes compiled to %d", k, prefixes[k].Routes())
		}
	}
	if tg := prefixes[0].Route("GET", "/", nil); tg == nil || *tg != reviews("") {
		t.Errorf("own target %+v, want %+v", tg, reviews(""))
	}
	firstMatch := func(method, uri string, hdr http.Header) int {
		for k := 1; k < len(prefixes); k++ {
			if tg := prefixes[k].Route(method, uri, hdr); tg != nil && tg.Subset != "" {
				return k - 1
			}
		}
		return -1
	}

	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	tests := []struct {
		name        string
		method, uri string
		hdr         http.Header
		route       int // -1: none matches but the catch-all (4)
	}{
		{"header, any case of its name", "GET", "/", hdr("x-user", "jason"), 0},
		{"header before path: order wins", "POST", "/admin/x", hdr("X-User", "jason"), 0},
		{"one of several values", "GET", "/", hdr("X-User", "bob", "X-User", "jason"), 0},
		{"header value is exact", "GET", "/", hdr("X-User", "Jason"), 4},
		{"prefix and method", "PUT", "/admin/users", nil, 1},
		{"prefix, wrong method", "GET", "/admin/users", nil, 4},
		{"prefix is on the path, not the query", "POST", "/x?next=/admin", nil, 4},
		{"all headers must hold", "GET", "/api/v1", hdr("X-Canary", "yes"), 4},
		{"all headers hold", "GET", "/api/v1?q=1", hdr("X-Canary", "yes", "X-Region", "eu"), 2},
		{"prefix is a plain prefix", "GET", "/api", hdr("X-Canary", "yes", "X-Region", "eu"), 4},
		{"weight 0 never picked", "GET", "/zero", nil, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := firstMatch(tc.method, tc.uri, tc.hdr); got != tc.route {
				t.Fatalf("%s %s %v matched route %d, want %d", tc.method, tc.uri, tc.hdr, got, tc.route)
			}
			tg := p.Route(tc.method, tc.uri, tc.hdr)
			if tg == nil || tg.Subset == "" {
				t.Fatalf("no target: %+v", tg)
			}
			if tc.route >= 0 && doc.Routes[tc.route].Split[tg.Subset] == 0 {
				t.Fatalf("routed to %s, not a subset of route %d", tg.Subset, tc.route)
			}
		})
	}
}

// Route splits the calls by the route's weights. (That every number in
// [0, 100) picks the subset its weight says is checked by
// TestRoutePickWeights, internal_test.go.)
func TestRouteWeights(t *testing.T) {
	t.Parallel()
	base := testBase(traffic.RetryPolicy{}, breaker.Settings{}, false)
	p := traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\nroutes:\n  - split: {c: 25, a: 5, b: 70}\n"), 1, base, nil)
	const n = 1_000_000
	checkShares(t, routeCounts(t, p, "GET", "/", nil, n), n, map[string]int{"a": 5, "b": 70, "c": 25})
	if tg := p.Route("GET", "/", nil); tg == nil || tg.Subset == "" {
		t.Fatalf("an empty match takes every request; got %+v", tg)
	}
	// Without routes a request goes to the whole service; the defaults
	// policy of services without a document leaves the target to the caller.
	p = traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\ntimeout: 1s\n"), 1, base, nil)
	if tg := p.Route("GET", "/", nil); tg == nil || *tg != reviews("") {
		t.Fatalf("a document without routes routed a request to %+v, want the whole service", tg)
	}
	if tg := traffic.Defaults(base, 4).Route("GET", "/", nil); tg != nil {
		t.Fatalf("the defaults routed a request to %+v", tg)
	}
}

// outcomeOfCondition is the outcome each of config.RetryConditions names.
func outcomeOfCondition(cond string) traffic.Outcome {
	if status, err := strconv.Atoi(cond); err == nil {
		return traffic.Outcome{Status: status}
	}
	return traffic.Outcome{Code: bus.Code(cond)}
}

// retried reports whether p retries a first attempt of a call (method)
// that ended in o, with time and retry budget to spare.
func retried(p *traffic.Policy, method string, o traffic.Outcome) bool {
	now := time.Now()
	r := p.Retrier(traffic.Destination{Budget: traffic.NewBudget(1, 1000)}, method, nil, 0, now)
	_, v := r.Next(o, 1, false, now, now.Add(time.Hour))
	return v == traffic.Retry
}

// retriedConditions are the retry conditions whose outcome p retries for a
// GET.
func retriedConditions(p *traffic.Policy) []string {
	var on []string
	for _, c := range config.RetryConditions {
		if retried(p, http.MethodGet, outcomeOfCondition(c)) {
			on = append(on, c)
		}
	}
	return on
}

// failuresToOpen is how many failures in a row open b: 0 if limit do not.
func failuresToOpen(t *testing.T, b *breaker.Breaker, limit int) int {
	t.Helper()
	for n := 1; n <= limit; n++ {
		tk, err := b.Try()
		if err != nil {
			t.Fatalf("breaker %s: %v", b.Name(), err)
		}
		tk.Done(breaker.Failure)
		if b.State() == breaker.Open {
			return n
		}
	}
	return 0
}

// waitWithin checks that the wait before retry number nth of a call under p
// is within [lo, hi] (the backoff's ±50 % jitter round its interval): with
// lo left before the deadline it is never retried, with just over hi always.
func waitWithin(t *testing.T, p *traffic.Policy, nth int, lo, hi time.Duration) {
	t.Helper()
	now := time.Now()
	o := traffic.Outcome{Code: bus.Timeout}
	for range 50 {
		for _, left := range []time.Duration{lo, hi + 1} {
			r := p.Retrier(traffic.Destination{Budget: traffic.NewBudget(1, 1000)}, http.MethodGet, nil, 0, now)
			for a := 1; a < nth; a++ {
				if _, v := r.Next(o, a, false, now, now.Add(time.Hour)); v != traffic.Retry {
					t.Fatalf("retry %d refused", a)
				}
			}
			_, v := r.Next(o, nth, false, now, now.Add(left))
			if want := left > hi; (v == traffic.Retry) != want {
				t.Fatalf("retry %d with %s left: verdict %d, want retried %v (its wait within %s..%s)", nth, left, v, want, lo, hi)
			}
		}
	}
}

// A document overrides the flags field by field; fields it leaves out keep
// the flags' values. (The backoff and breaker ratio themselves, which the
// policy does not show, are checked by TestCompileOverridesSettings,
// internal_test.go.)
func TestCompileOverrides(t *testing.T) {
	t.Parallel()
	base := testBase(traffic.RetryPolicy{Retries: 4, PerTryTimeout: time.Second, BudgetRatio: 0.5},
		breaker.Settings{ConsecutiveFailures: 7, OpenTimeout: 9 * time.Second}, false)
	def := traffic.Compile(subj, "reviews", nil, 0, base, nil)
	if def.Timeout() != baseTimeout || def.Retries() != 4 || def.Balancer() != nil || def.Fault() != nil {
		t.Fatalf("defaults: %s", def)
	}
	if got := retriedConditions(def); !slices.Equal(got, config.RetryConditions) {
		t.Fatalf("defaults retry %v, want all of %v", got, config.RetryConditions)
	}
	p := traffic.Compile(subj, "reviews", parseDoc(t, `
service: reviews
timeout: 2s
retries:
  on: [timeout, "503"]
  backoff: 100ms
breaker:
  ratio: 0.9
loadBalancer: {policy: ring-hash, hashHeader: x-user}
fault:
  abort: {percent: 20, status: 418}
`), 3, base, def)
	if p.Timeout() != 2*time.Second {
		t.Errorf("timeout %s", p.Timeout())
	}
	if p.Retries() != 4 || p.PerTryTimeout() != time.Second {
		t.Errorf("retries %d, per-try %s: want the flags' 4 and 1s", p.Retries(), p.PerTryTimeout())
	}
	// Backoff 100ms..250ms: the first wait is 100ms ± 50 %; the fourth,
	// 100ms × 1.5³ capped at 250ms, ± 50 %.
	waitWithin(t, p, 1, 50*time.Millisecond, 150*time.Millisecond)
	waitWithin(t, p, 4, 125*time.Millisecond, 375*time.Millisecond)
	if got := retriedConditions(p); !slices.Equal(got, []string{"timeout", "503"}) {
		t.Errorf("retry conditions %v", got)
	}
	if n := failuresToOpen(t, p.Destination("reviews").Breaker, 100); n != 7 || p.OpenTimeout() != 9*time.Second {
		t.Errorf("breaker opened after %d failures, open %s: want the flags' 7 and 9s", n, p.OpenTimeout())
	}
	if rh, ok := p.Balancer().(*traffic.RingHash); !ok || rh.Header != "X-User" {
		t.Errorf("balance %v", p.Balancer())
	}
	if p.Fault() == nil || p.Fault().AbortStatus() != 418 {
		t.Errorf("fault %v", p.Fault())
	}
	if !p.NewBreakers() || p.Destination("reviews").Breaker == def.Destination("reviews").Breaker {
		t.Error("new breaker settings kept the old breakers")
	}
	if p.Destination("reviews").Budget != def.Destination("reviews").Budget {
		t.Error("unchanged budget settings made new budgets")
	}
	// Same breaker settings in the next revision: same breakers.
	p2 := traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\nbreaker: {ratio: 0.9}\nretries: {attempts: 0, budget: {ratio: 0.1}}\n"), 4, base, p)
	if p2.NewBreakers() || p2.Destination("reviews").Breaker != p.Destination("reviews").Breaker {
		t.Error("unchanged breaker settings made new breakers")
	}
	if p2.Destination("reviews").Budget == p.Destination("reviews").Budget {
		t.Error("a new budget ratio kept the old budgets")
	}
	if p2.Retries() != 0 {
		t.Errorf("attempts: 0 left %d retries", p2.Retries())
	}
	off := traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\nbreaker: {enabled: false}\n"), 5, base, p2)
	if !strings.Contains(off.String(), "breaker off") {
		t.Errorf("enabled: false left the breaker on: %s", off)
	}
	if n := failuresToOpen(t, off.Destination("reviews").Breaker, 100); n != 0 {
		t.Errorf("enabled: false: the breaker opened after %d failures", n)
	}
	// A document can turn on a breaker the flags turned off.
	baseOff := testBase(traffic.RetryPolicy{}, breaker.Settings{ConsecutiveFailures: 5, FailureRatio: 0.5}, true)
	on := traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\nbreaker: {enabled: true}\n"), 1, baseOff, nil)
	if n := failuresToOpen(t, on.Destination("reviews").Breaker, 100); n != 5 {
		t.Errorf("enabled: true: the breaker opened after %d failures, want the flags' 5", n)
	}
}

// retries.on narrows which failures are retried; the idempotency rule still
// applies on top.
func TestRetryConditions(t *testing.T) {
	t.Parallel()
	base := testBase(traffic.RetryPolicy{}, breaker.Settings{}, false)
	p := traffic.Compile(subj, "reviews", parseDoc(t, "service: reviews\nretries:\n  on: [timeout, \"503\"]\n"), 1, base, nil)
	for _, tc := range []struct {
		o    traffic.Outcome
		want bool
	}{
		{traffic.Outcome{Code: bus.Timeout}, true},
		{traffic.Outcome{Status: 503}, true},
		{traffic.Outcome{Status: 502}, false},
		{traffic.Outcome{Code: bus.NoResponders}, false},
		{traffic.Outcome{Status: 200}, false},
	} {
		if got := retried(p, http.MethodGet, tc.o); got != tc.want {
			t.Errorf("%s allowed = %v, want %v", tc.o, got, tc.want)
		}
	}
	if retried(p, http.MethodPost, traffic.Outcome{Code: bus.Timeout}) {
		t.Error("a POST that timed out was retried")
	}
	// Without retries.on every condition is retried; with one, that one
	// alone: each of config's conditions is known, and is its own.
	if got := retriedConditions(traffic.Compile(subj, "reviews", &config.Service{Service: "reviews"}, 1, base, nil)); !slices.Equal(got, config.RetryConditions) {
		t.Errorf("without retries.on, %v are retried, want all of %v", got, config.RetryConditions)
	}
	for _, c := range config.RetryConditions {
		doc := &config.Service{Service: "reviews", Retries: &config.Retries{On: []string{c}}}
		if got := retriedConditions(traffic.Compile(subj, "reviews", doc, 1, base, nil)); !slices.Equal(got, []string{c}) {
			t.Errorf("retries.on [%s] retries %v", c, got)
		}
	}
}

// Faults hit their share of calls.
func TestFaultHit(t *testing.T) {
	t.Parallel()
	n := 0
	for i := 0; i < 100_000; i++ {
		if traffic.Hit(20) {
			n++
		}
	}
	if n < 19_000 || n > 21_000 {
		t.Fatalf("Hit(20) was true %d times in 100000", n)
	}
	if !traffic.Hit(100) {
		t.Fatal("Hit(100) missed")
	}
	doc := &config.Service{Service: "reviews", Fault: &config.Fault{Abort: &config.Abort{Percent: 0, Status: 503}}}
	if f := traffic.Compile(subj, "reviews", doc, 1, testBase(traffic.RetryPolicy{}, breaker.Settings{}, false), nil).Fault(); f != nil {
		t.Fatalf("a fault of 0 %% compiled to %s", f)
	}
}

// BenchmarkRouteRequest is the routing a call does with a 5-route config
// whose first four routes do not match: the whole list, then the split.
func BenchmarkRouteRequest(b *testing.B) {
	docs, err := config.Parse("bench.yaml", []byte(`service: reviews
routes:
  - match: {headers: {x-user: jason}}
    split: {v1: 100}
  - match: {pathPrefix: /api/v2}
    split: {v1: 100}
  - match: {methods: [POST, PUT], pathPrefix: /orders}
    split: {v1: 100}
  - match: {headers: {x-canary: "1", x-region: eu}}
    split: {v1: 100}
  - split: {v1: 90, v2: 10}
`))
	if err != nil {
		b.Fatal(err)
	}
	p := traffic.Compile(bus.Subjects{}, "reviews", docs[0], 1, testBase(traffic.RetryPolicy{}, breaker.Settings{}, false), nil)
	hdr := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench"}, "X-User": {"alice"}}
	b.ReportAllocs()
	for b.Loop() {
		if tg := p.Route(http.MethodGet, "/reviews/1?x=1", hdr); tg == nil || tg.Subset == "" {
			b.Fatal("no route")
		}
	}
}
