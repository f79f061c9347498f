package proxy

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// testTransport is a Transport with only what compile needs: no connection.
func testTransport(retry RetryPolicy, bs breaker.Settings, disabled bool) *Transport {
	retry.defaults()
	return &Transport{
		subj: bus.Subjects{Prefix: "mesh"},
		base: policyBase{timeout: DefaultTimeout, retry: retry, breaker: bs, disabled: disabled},
	}
}

func parseDoc(t testing.TB, yaml string) *config.Service {
	t.Helper()
	docs, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return docs[0]
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

func TestCompileRoutes(t *testing.T) {
	t.Parallel()
	tr := testTransport(RetryPolicy{}, breaker.Settings{}, false)
	p := tr.compile("reviews", parseDoc(t, fiveRoutes), 7, nil)
	if len(p.routes) != 5 || p.revision != 7 || !p.fromDoc {
		t.Fatalf("compiled %d routes, revision %d, fromDoc %v", len(p.routes), p.revision, p.fromDoc)
	}
	last := p.routes[4]
	if got := fmt.Sprint(last.cum); got != "[90 100]" {
		t.Errorf("cumulative weights of {v2: 10, v1: 90} = %s, want [90 100] (subsets by name)", got)
	}
	if last.targets[0].subset != "v1" || last.targets[1].subset != "v2" {
		t.Errorf("subsets %v, want v1 then v2", last.targets)
	}
	want := target{subset: "v2", subject: "mesh.rpc.reviews.v2", key: "reviews/v2"}
	if last.targets[1] != want {
		t.Errorf("target %+v, want %+v", last.targets[1], want)
	}
	if z := p.routes[3]; len(z.targets) != 1 || z.targets[0].subset != "v2" {
		t.Errorf("a subset of weight 0 is kept: %+v", z.targets)
	}
	if p.own.subject != "mesh.rpc.reviews" || p.own.key != "reviews" {
		t.Errorf("own target %+v", p.own)
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
			got := -1
			for i := range p.routes {
				if p.routes[i].matches(tc.method, tc.uri, tc.hdr) {
					got = i
					break
				}
			}
			if got != tc.route {
				t.Fatalf("%s %s %v matched route %d, want %d", tc.method, tc.uri, tc.hdr, got, tc.route)
			}
			tg := p.routeRequest(tc.method, tc.uri, tc.hdr)
			if tg == nil {
				t.Fatalf("no target")
			}
		})
	}
}

// The cumulative table turns every number in [0, 100) into the subset its
// weight says.
func TestRoutePickWeights(t *testing.T) {
	t.Parallel()
	tr := testTransport(RetryPolicy{}, breaker.Settings{}, false)
	p := tr.compile("reviews", parseDoc(t, "service: reviews\nroutes:\n  - split: {c: 25, a: 5, b: 70}\n"), 1, nil)
	r := &p.routes[0]
	counts := map[string]int{}
	for n := 0; n < 100; n++ {
		counts[r.pick(n).subset]++
	}
	if counts["a"] != 5 || counts["b"] != 70 || counts["c"] != 25 {
		t.Fatalf("picks over 0..99 = %v, want a 5, b 70, c 25", counts)
	}
	if p.routeRequest("GET", "/", nil) == nil {
		t.Fatal("an empty match takes every request")
	}
	if p := tr.compile("reviews", parseDoc(t, "service: reviews\ntimeout: 1s\n"), 1, nil); p.routeRequest("GET", "/", nil) != nil {
		t.Fatal("a document without routes routed a request")
	}
}

// A document overrides the flags field by field; fields it leaves out keep
// the flags' values.
func TestCompileOverrides(t *testing.T) {
	t.Parallel()
	tr := testTransport(RetryPolicy{Retries: 4, PerTryTimeout: time.Second, BudgetRatio: 0.5},
		breaker.Settings{ConsecutiveFailures: 7, OpenTimeout: 9 * time.Second}, false)
	def := tr.compile("reviews", nil, 0, nil)
	if def.timeout != DefaultTimeout || def.retry.Retries != 4 || def.retryOn != allRetryConds || def.balance != balanceQueue || def.fault != nil {
		t.Fatalf("defaults: %+v", def)
	}
	p := tr.compile("reviews", parseDoc(t, `
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
`), 3, def)
	switch {
	case p.timeout != 2*time.Second:
		t.Errorf("timeout %s", p.timeout)
	case p.retry.Retries != 4 || p.retry.PerTryTimeout != time.Second:
		t.Errorf("retries %d, per-try %s: want the flags' 4 and 1s", p.retry.Retries, p.retry.PerTryTimeout)
	case p.retry.BackoffBase != 100*time.Millisecond || p.retry.BackoffMax != 250*time.Millisecond:
		t.Errorf("backoff %s..%s", p.retry.BackoffBase, p.retry.BackoffMax)
	case p.retryOn != condTimeout|cond503:
		t.Errorf("retry conditions %b", p.retryOn)
	case p.breakerKey.failures != 7 || p.breakerKey.ratio != 0.9 || p.openTimeout != 9*time.Second:
		t.Errorf("breaker %+v, open %s", p.breakerKey, p.openTimeout)
	case p.balance != balanceRingHash || p.hashHeader != "X-User":
		t.Errorf("balance %s on %q", p.balance, p.hashHeader)
	case p.fault == nil || p.fault.abortStatus != 418:
		t.Errorf("fault %+v", p.fault)
	}
	if p.dests.breakers == def.dests.breakers {
		t.Error("new breaker settings kept the old breakers")
	}
	if p.dests.budgets != def.dests.budgets {
		t.Error("unchanged budget settings made new budgets")
	}
	// Same breaker settings in the next revision: same breakers.
	p2 := tr.compile("reviews", parseDoc(t, "service: reviews\nbreaker: {ratio: 0.9}\nretries: {attempts: 0, budget: {ratio: 0.1}}\n"), 4, p)
	if p2.dests.breakers != p.dests.breakers {
		t.Error("unchanged breaker settings made new breakers")
	}
	if p2.dests.budgets == p.dests.budgets {
		t.Error("a new budget ratio kept the old budgets")
	}
	if p2.retry.Retries != 0 {
		t.Errorf("attempts: 0 left %d retries", p2.retry.Retries)
	}
	off := tr.compile("reviews", parseDoc(t, "service: reviews\nbreaker: {enabled: false}\n"), 5, p2)
	if off.breakerKey.failures >= 0 || off.breakerKey.ratio >= 0 {
		t.Errorf("enabled: false left the breaker on: %+v", off.breakerKey)
	}
	// A document can turn on a breaker the flags turned off.
	trOff := testTransport(RetryPolicy{}, breaker.Settings{ConsecutiveFailures: 5, FailureRatio: 0.5}, true)
	on := trOff.compile("reviews", parseDoc(t, "service: reviews\nbreaker: {enabled: true}\n"), 1, nil)
	if on.breakerKey.failures != 5 {
		t.Errorf("enabled: true: %+v", on.breakerKey)
	}
}

// retries.on narrows which failures are retried; the idempotency rule still
// applies on top.
func TestRetryConditions(t *testing.T) {
	t.Parallel()
	on := condTimeout | cond503
	for _, tc := range []struct {
		o    outcome
		want bool
	}{
		{outcome{code: bus.Timeout}, true},
		{outcome{status: 503}, true},
		{outcome{status: 502}, false},
		{outcome{code: bus.NoResponders}, false},
		{outcome{status: 200}, false},
	} {
		if got := on.allows(tc.o); got != tc.want {
			t.Errorf("%s allowed = %v, want %v", tc.o, got, tc.want)
		}
	}
	for name, c := range retryCondNames {
		if allRetryConds&c == 0 {
			t.Errorf("%s is not in allRetryConds", name)
		}
	}
	if len(retryCondNames) != len(config.RetryConditions) {
		t.Errorf("%d retry conditions, config has %d", len(retryCondNames), len(config.RetryConditions))
	}
	for _, c := range config.RetryConditions {
		if retryCondNames[c] == 0 {
			t.Errorf("config's retry condition %s is unknown to the proxy", c)
		}
	}
}

func ringEndpoints(ids ...string) []*endpoint {
	eps := make([]*endpoint, len(ids))
	for i, id := range ids {
		eps[i] = &endpoint{id: id}
	}
	return eps
}

// A key stays on its instance; when one leaves, only its keys move, and
// they spread over the others.
func TestHashRing(t *testing.T) {
	t.Parallel()
	three := ringEndpoints("a-1", "b-2", "c-3")
	two := []*endpoint{three[0], three[2]}
	r3, r2 := newHashRing(three), newHashRing(two)
	counts := map[string]int{}
	moved := map[string]int{}
	const keys = 3000
	for k := 0; k < keys; k++ {
		h := hashKey(fmt.Sprintf("user-%d", k))
		before, after := r3.get(h, nil, 0), r2.get(h, nil, 0)
		counts[before.id]++
		if r3.get(h, nil, 0) != before {
			t.Fatal("the same key reached two instances")
		}
		if before.id != "b-2" && after != before {
			t.Fatalf("key %d moved from %s, which stayed, to %s", k, before.id, after.id)
		}
		if before.id == "b-2" {
			moved[after.id]++
		}
		// Avoiding its instance sends a key to the one it would move to.
		if alt := r3.get(h, before, 0); alt == before {
			t.Fatal("get avoided nothing")
		} else if before.id == "b-2" && alt != after {
			t.Fatalf("key %d: the retry goes to %s, the ring without b-2 to %s", k, alt.id, after.id)
		}
	}
	for id, n := range counts {
		if n < keys/3*7/10 || n > keys/3*13/10 {
			t.Errorf("instance %s owns %d of %d keys; the ring is uneven: %v", id, n, keys, counts)
		}
	}
	if moved["a-1"] == 0 || moved["c-3"] == 0 {
		t.Errorf("the keys of the instance that left all went to one: %v", moved)
	}
	// An instance found gone gives its keys to where they would move; when
	// all are gone, there is no pick (the call goes to the queue group).
	now := time.Now().UnixNano()
	three[1].goneUntil.Store(now + int64(time.Second))
	for k := 0; k < 300; k++ {
		h := hashKey(fmt.Sprintf("user-%d", k))
		if got, want := r3.get(h, nil, now), r2.get(h, nil, now); got != want {
			t.Fatalf("key %d: %s with b-2 gone, want %s as without it", k, got.id, want.id)
		}
	}
	three[0].goneUntil.Store(now + int64(time.Second))
	three[2].goneUntil.Store(now + int64(time.Second))
	if ep := r3.get(hashKey("x"), nil, now); ep != nil {
		t.Errorf("all gone: picked %s, want none", ep.id)
	}
	if ep := r3.get(hashKey("x"), nil, now+int64(2*time.Second)); ep == nil {
		t.Error("the gone mark does not wear off")
	}
}

// Faults hit their share of calls.
func TestFaultHit(t *testing.T) {
	t.Parallel()
	n := 0
	for i := 0; i < 100_000; i++ {
		if hit(20) {
			n++
		}
	}
	if n < 19_000 || n > 21_000 {
		t.Fatalf("hit(20) was true %d times in 100000", n)
	}
	if !hit(100) {
		t.Fatal("hit(100) missed")
	}
	if f := compileFault("reviews", &config.Fault{Abort: &config.Abort{Percent: 0, Status: 503}}); f != nil {
		t.Fatal("a fault of 0 % compiled to something")
	}
}
