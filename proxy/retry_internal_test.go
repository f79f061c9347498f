package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// budgetEpoch is a fixed instant for the budget's explicit times; its second
// is a multiple of the window, so slot arithmetic is easy to follow.
var budgetEpoch = time.Unix(1_700_000_000, 0)

func at(sec float64) time.Time {
	return budgetEpoch.Add(time.Duration(sec * float64(time.Second)))
}

// takeRetries takes retries from b at now until it refuses, at most limit,
// and returns how many it got.
func takeRetries(b *budget, now time.Time, limit int) int {
	n := 0
	for n < limit && b.retry(now) {
		n++
	}
	return n
}

func calls(b *budget, now time.Time, n int) {
	for range n {
		b.call(now)
	}
}

// Retries are at most ratio × calls over the window, plus the floor per
// second of the window.
func TestBudgetRatioAndFloor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		ratio, floor float64
		calls        int
		want         int
	}{
		{name: "ratio only", ratio: 0.2, calls: 10, want: 2},
		{name: "ratio only, rounds down", ratio: 0.2, calls: 14, want: 2},
		{name: "no calls, no floor", ratio: 0.2, calls: 0, want: 0},
		{name: "floor only: 1/s over 10 s", floor: 1, calls: 0, want: 10},
		{name: "floor only, calls do not add", floor: 1, calls: 500, want: 10},
		{name: "ratio and floor", ratio: 0.2, floor: 10, calls: 300, want: 160},
		{name: "defaults", ratio: DefaultBudgetRatio, floor: DefaultBudgetMinPerSecond, calls: 50, want: 110},
		{name: "nothing", calls: 1000, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := &budget{ratio: tc.ratio, floor: tc.floor}
			calls(b, at(0), tc.calls)
			if got := takeRetries(b, at(0.5), 10_000); got != tc.want {
				t.Errorf("%d calls, ratio %v, floor %v/s: %d retries allowed, want %d", tc.calls, tc.ratio, tc.floor, got, tc.want)
			}
			// A refused retry is not counted: more calls make room again.
			if tc.ratio > 0 {
				calls(b, at(0.7), 5)
				if got := takeRetries(b, at(0.8), 10_000); got != 1 {
					t.Errorf("after 5 more calls at ratio %v: %d more retries, want 1", tc.ratio, got)
				}
			}
		})
	}
}

// Calls and retries count for budgetWindow seconds, then drop out of the
// window, whichever slot of the ring they were in.
func TestBudgetWindowSlides(t *testing.T) {
	t.Parallel()
	b := &budget{ratio: 0.5}
	calls(b, at(0), 10) // 5 retries' worth
	if got := takeRetries(b, at(0), 3); got != 3 {
		t.Fatalf("at 0 s: %d retries, want 3", got)
	}
	calls(b, at(1), 4) // 7 retries' worth in the window now
	if got := takeRetries(b, at(9.999), 100); got != 4 {
		t.Fatalf("at 9.999 s, second 0 still in the window: %d more retries, want 4", got)
	}
	// At 10 s the calls and retries of second 0 leave the window (its slot
	// is reused for second 10): 4 calls and the 4 retries taken at 9.999 s
	// remain, which is already over 0.5 × 4.
	if b.retry(at(10)) {
		t.Fatalf("at 10 s: a retry allowed with 4 calls and 4 retries in the window")
	}
	// At 11 s second 1 leaves too: only the 4 retries of second 9 remain,
	// with no calls.
	calls(b, at(11), 10)
	if got := takeRetries(b, at(11), 100); got != 1 {
		t.Fatalf("at 11 s: %d retries, want 1 (0.5 × 10 calls - 4 retries still in the window)", got)
	}
	// At 19 s second 9's retries are gone; second 11's calls and retry are
	// still in.
	if got := takeRetries(b, at(19), 100); got != 4 {
		t.Fatalf("at 19 s: %d retries, want 4 (0.5 × 10 calls - 1 retry)", got)
	}
	// Long after, nothing is left, whatever slot it sat in.
	if b.retry(at(500)) {
		t.Fatalf("at 500 s: a retry allowed from calls long out of the window")
	}
}

// A stale bucket in another slot of the ring is not counted: only buckets
// whose second is inside the window are.
func TestBudgetStaleSlotsIgnored(t *testing.T) {
	t.Parallel()
	b := &budget{ratio: 1}
	calls(b, at(-97), 1000) // slot 3 ahead of second 0's, 97 s ago
	if b.retry(at(0)) {
		t.Fatalf("calls 97 s ago made room for a retry now")
	}
	calls(b, at(-9), 1) // inside the window
	if got := takeRetries(b, at(0), 10); got != 1 {
		t.Fatalf("%d retries from 1 call 9 s ago at ratio 1, want 1", got)
	}
}

func TestBudgetConcurrent(t *testing.T) {
	t.Parallel()
	b := &budget{ratio: 0.2, floor: 1}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		retries int
	)
	now := at(0)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for range 100 {
				b.call(now)
				if b.retry(now) {
					n++
				}
			}
			mu.Lock()
			retries += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	// 800 calls: at most 0.2 × 800 + 10; the floor is reached before the
	// calls run out, so exactly that many.
	if retries != 170 {
		t.Fatalf("%d retries taken by 8 goroutines, want 170", retries)
	}
}

func TestRetryPolicyDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   RetryPolicy
		want RetryPolicy
	}{
		{
			name: "zero value",
			want: RetryPolicy{Retries: 2, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond, BudgetRatio: 0.2, BudgetMinPerSecond: 10},
		},
		{
			name: "negative retries: none, negative budget: none",
			in:   RetryPolicy{Retries: -1, BudgetRatio: -1, BudgetMinPerSecond: -1},
			want: RetryPolicy{Retries: 0, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond},
		},
		{
			name: "max below base is raised to base",
			in:   RetryPolicy{Retries: 5, BackoffBase: time.Second, BackoffMax: time.Millisecond, PerTryTimeout: time.Second},
			want: RetryPolicy{Retries: 5, BackoffBase: time.Second, BackoffMax: time.Second, PerTryTimeout: time.Second, BudgetRatio: 0.2, BudgetMinPerSecond: 10},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in
			got.defaults()
			if got != tc.want {
				t.Errorf("defaults of %+v = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestIdempotent(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method string
		header string
		want   bool
	}{
		{http.MethodGet, "", true},
		{http.MethodHead, "", true},
		{http.MethodOptions, "", true},
		{http.MethodTrace, "", true},
		{http.MethodPut, "", true},
		{http.MethodDelete, "", true},
		{http.MethodPost, "", false},
		{http.MethodPatch, "", false},
		{"PROPFIND", "", false},
		{http.MethodPost, "Idempotency-Key", true},
		{http.MethodPatch, "Idempotency-Key", true},
		{http.MethodPost, "X-Idempotency-Key", true},
		{http.MethodPost, "X-Request-Id", false},
	}
	for _, tc := range tests {
		h := http.Header{}
		if tc.header != "" {
			h.Set(tc.header, "k-1")
		}
		if got := idempotent(tc.method, h); got != tc.want {
			t.Errorf("idempotent(%s, %v) = %v, want %v", tc.method, h, got, tc.want)
		}
	}
}

// reply messages as a callee sends them.
func appReply(status int) *nats.Msg {
	return &nats.Msg{Header: nats.Header{bus.HeaderStatus: {bus.StatusText(status)}}}
}

func meshReply(code bus.Code) *nats.Msg {
	h, _ := bus.ErrorResponse(bus.Errorf(code, "x"), "inst-1")
	return &nats.Msg{Header: h}
}

// Which attempts are retried, for idempotent and other requests, and what
// each tells the breaker: the rules of DESIGN.md's "Retry safety" and of
// the breaker's failure counting.
func TestOutcomeRules(t *testing.T) {
	t.Parallel()
	type want struct {
		retryIdem, retryOther bool
		result                breaker.Result
	}
	tests := []struct {
		name string
		m    *nats.Msg
		merr *bus.Error
		want want
	}{
		{"200", appReply(200), nil, want{false, false, breaker.Success}},
		{"204", appReply(204), nil, want{false, false, breaker.Success}},
		{"404", appReply(404), nil, want{false, false, breaker.Success}},
		{"429", appReply(429), nil, want{false, false, breaker.Success}},
		{"500", appReply(500), nil, want{false, false, breaker.Failure}},
		{"501", appReply(501), nil, want{false, false, breaker.Failure}},
		{"502", appReply(502), nil, want{true, false, breaker.Failure}},
		{"503", appReply(503), nil, want{true, false, breaker.Failure}},
		{"504", appReply(504), nil, want{true, false, breaker.Failure}},
		{"reply without status", &nats.Msg{Header: nats.Header{}}, nil, want{false, false, breaker.Failure}},
		// Failures the caller makes itself.
		{"no-responders", nil, bus.Errorf(bus.NoResponders, "x"), want{true, true, breaker.Ignore}},
		{"mesh-unavailable", nil, bus.Errorf(bus.MeshUnavailable, "x"), want{true, true, breaker.Ignore}},
		{"timeout", nil, bus.Errorf(bus.Timeout, "x"), want{true, false, breaker.Failure}},
		{"upstream-lost", nil, bus.Errorf(bus.UpstreamLost, "x"), want{true, false, breaker.Ignore}},
		{"too-large request", nil, bus.Errorf(bus.TooLarge, "x"), want{false, false, breaker.Ignore}},
		{"bad-request", nil, bus.Errorf(bus.BadRequest, "x"), want{false, false, breaker.Ignore}},
		// Failures a callee answers with Mesh-Error.
		{"callee overloaded", meshReply(bus.Overloaded), nil, want{true, true, breaker.Failure}},
		{"callee upstream-unreachable", meshReply(bus.UpstreamUnreachable), nil, want{true, false, breaker.Failure}},
		{"callee timeout", meshReply(bus.Timeout), nil, want{true, false, breaker.Failure}},
		{"callee upstream-lost", meshReply(bus.UpstreamLost), nil, want{true, false, breaker.Failure}},
		{"callee bad-request", meshReply(bus.BadRequest), nil, want{false, false, breaker.Ignore}},
		{"callee too-large response", meshReply(bus.TooLarge), nil, want{false, false, breaker.Ignore}},
	}
	for _, tc := range tests {
		o := outcomeOf(tc.m, tc.merr)
		if got := o.retryable(true); got != tc.want.retryIdem {
			t.Errorf("%s (%s): retryable for an idempotent request = %v, want %v", tc.name, o, got, tc.want.retryIdem)
		}
		if got := o.retryable(false); got != tc.want.retryOther {
			t.Errorf("%s (%s): retryable for a POST = %v, want %v", tc.name, o, got, tc.want.retryOther)
		}
		if got := o.result(); got != tc.want.result {
			t.Errorf("%s (%s): breaker result %v, want %v", tc.name, o, got, tc.want.result)
		}
	}
}

// A Transport keeps one budget per destination, and a bounded number.
func TestDestinationsPerService(t *testing.T) {
	t.Parallel()
	d := destinations{breakers: breaker.NewSet(breaker.Settings{}, 4), budgets: newBudgets(0.2, 0, 4)}
	a, b := d.get("a"), d.get("b")
	if a.budget == b.budget || a.br == b.br {
		t.Fatalf("services a and b share a budget or a breaker")
	}
	if again := d.get("a"); again.budget != a.budget || again.br != a.br {
		t.Fatalf("a second lookup of a returned a new budget or breaker")
	}
	calls(a.budget, time.Now(), 10)
	if got := takeRetries(b.budget, time.Now(), 10); got != 0 {
		t.Fatalf("calls to a gave %d retries to b", got)
	}
	for _, svc := range []string{"c", "d", "e", "f", "g"} {
		d.get(svc)
	}
	d.budgets.mu.Lock()
	n := len(d.budgets.m)
	d.budgets.mu.Unlock()
	if n > 4 {
		t.Fatalf("%d budgets kept, want at most 4", n)
	}
}

// What outlier detection counts as the app failing a request.
func TestAppFailed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		code   bus.Code
		want   bool
	}{
		{200, "", false},
		{404, "", false},
		{429, "", false},
		{500, "", true},
		{503, "", true},
		{0, bus.UpstreamUnreachable, true},
		{0, bus.Timeout, true},
		{0, bus.UpstreamLost, true},
		{0, bus.Overloaded, false},
		{0, bus.BadRequest, false},
		{0, bus.TooLarge, false},
	}
	for _, tc := range tests {
		var e *bus.Error
		if tc.code != "" {
			e = bus.Errorf(tc.code, "x")
		}
		if got := appFailed(tc.status, e); got != tc.want {
			t.Errorf("appFailed(%d, %v) = %v, want %v", tc.status, tc.code, got, tc.want)
		}
	}
}

// ejections records what an outlier asks of its instance.
type ejections struct {
	mu  sync.Mutex
	all []bool
}

func (e *ejections) set(ejected bool) {
	e.mu.Lock()
	e.all = append(e.all, ejected)
	e.mu.Unlock()
}

func (e *ejections) last() (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.all) == 0 {
		return false, 0
	}
	return e.all[len(e.all)-1], len(e.all)
}

// The n-th ejection in a row lasts n × BaseEjection, at most MaxEjection; a
// success in between resets the count of failures; a long quiet spell
// forgives earlier ejections; with no other instance passing there is no
// ejection, and an ejected instance rejoins early.
func TestOutlierEjectionTimes(t *testing.T) {
	t.Parallel()
	var others atomic.Int64
	others.Store(1)
	rec := &ejections{}
	o := &outlier{
		cfg:           OutlierConfig{Consecutive: 2, BaseEjection: time.Hour, MaxEjection: 150 * time.Minute},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		othersPassing: func() int { return int(others.Load()) },
		setEjected:    rec.set,
	}
	defer o.stop()
	// endEjection makes the current ejection due and runs the check.
	endEjection := func() {
		o.mu.Lock()
		o.until = time.Now().Add(-time.Millisecond)
		o.mu.Unlock()
		o.check()
		if ej, _ := rec.last(); ej {
			t.Fatalf("still ejected after the ejection was over")
		}
	}
	eject := func(want time.Duration) {
		t.Helper()
		if d := o.observe(true); d != 0 {
			t.Fatalf("ejected after 1 failure")
		}
		if d := o.observe(true); d != want {
			t.Fatalf("ejection for %s, want %s", d, want)
		}
		if ej, _ := rec.last(); !ej {
			t.Fatalf("not ejected")
		}
	}

	// A success between failures resets the count.
	for range 3 {
		o.observe(true)
		o.observe(false)
	}
	if _, n := rec.last(); n != 0 {
		t.Fatalf("ejected with no two failures in a row")
	}
	eject(time.Hour)
	endEjection()
	eject(2 * time.Hour)
	endEjection()
	eject(150 * time.Minute) // 3 h, capped
	endEjection()

	// Rejoined longer than MaxEjection ago: the count starts again.
	o.mu.Lock()
	o.lastRejoin = time.Now().Add(-3 * time.Hour)
	o.mu.Unlock()
	eject(time.Hour)

	// While ejected, the last other passing instance goes: it rejoins early.
	others.Store(0)
	o.check()
	if ej, _ := rec.last(); ej {
		t.Fatalf("still ejected with no other passing instance")
	}
	// And as the last passing instance, it stays in however it fails.
	_, n := rec.last()
	for range 5 {
		if d := o.observe(true); d != 0 {
			t.Fatalf("the last passing instance ejected itself for %s", d)
		}
	}
	if _, n2 := rec.last(); n2 != n {
		t.Fatalf("the last passing instance changed its rotation")
	}
}

// least-request's cost: requests in flight weighted by a peak-EWMA latency
// that rises at once, falls gradually and fades without measurements.
func TestEndpointCost(t *testing.T) {
	now := time.Now().UnixNano()
	fresh, fast, slow := &endpoint{}, &endpoint{}, &endpoint{}
	fast.observe(2*time.Millisecond, now)
	slow.observe(20*time.Millisecond, now)
	if !(fresh.cost(now) < fast.cost(now) && fast.cost(now) < slow.cost(now)) {
		t.Fatalf("costs unmeasured %g, fast %g, slow %g: want them in that order", fresh.cost(now), fast.cost(now), slow.cost(now))
	}
	// Busy enough, the fast instance costs more than the idle slow one.
	fast.inflight.Store(12)
	if fast.cost(now) <= slow.cost(now) {
		t.Errorf("fast with 12 in flight costs %g, slow idle %g: want the fast one dearer", fast.cost(now), slow.cost(now))
	}
	fast.inflight.Store(0)
	// The heartbeat's count and the caller's own are not added: the
	// heartbeat's includes the caller's.
	fast.hbInflight.Store(3)
	fast.inflight.Store(2)
	if fast.load() != 3 {
		t.Errorf("load %d with 3 in the heartbeat and 2 of the caller's, want 3", fast.load())
	}
	// A slower measurement counts at once; faster ones pull it down by an
	// eighth of the difference each.
	fast.observe(10*time.Millisecond, now)
	if got := time.Duration(fast.rtt.Load()); got != 10*time.Millisecond {
		t.Errorf("after a 10ms attempt the estimate is %s, want 10ms", got)
	}
	fast.observe(2*time.Millisecond, now)
	if got := time.Duration(fast.rtt.Load()); got != 9*time.Millisecond {
		t.Errorf("after a 2ms attempt the estimate is %s, want 9ms", got)
	}
	// Unmeasured for a time constant, the slow instance's cost fades to
	// about a third.
	later := now + int64(rttDecay)
	if ratio := slow.cost(later) / slow.cost(now); ratio < 0.36 || ratio > 0.38 {
		t.Errorf("after %s without measurements the cost is %.2f of what it was, want 1/e", rttDecay, ratio)
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
	p := &policy{}
	for i := range docs[0].Routes {
		p.routes = append(p.routes, compileRoute(bus.Subjects{}, "reviews", &docs[0].Routes[i]))
	}
	hdr := http.Header{"Accept": {"*/*"}, "User-Agent": {"bench"}, "X-User": {"alice"}}
	b.ReportAllocs()
	for b.Loop() {
		if p.routeRequest(http.MethodGet, "/reviews/1?x=1", hdr) == nil {
			b.Fatal("no route")
		}
	}
}

// recheck, run on registry events, rejoins an ejected instance as soon as no
// other passes, without waiting for its next check; while others pass, or
// when it is not ejected, it changes nothing.
func TestOutlierRecheck(t *testing.T) {
	t.Parallel()
	var others atomic.Int64
	others.Store(1)
	rec := &ejections{}
	o := &outlier{
		cfg:           OutlierConfig{Consecutive: 1, BaseEjection: time.Hour, MaxEjection: time.Hour},
		log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		othersPassing: func() int { return int(others.Load()) },
		setEjected:    rec.set,
	}
	defer o.stop()
	o.recheck()
	if _, n := rec.last(); n != 0 {
		t.Fatalf("recheck of an instance in rotation changed it")
	}
	if d := o.observe(true); d != time.Hour {
		t.Fatalf("ejection for %s, want 1h", d)
	}
	o.recheck()
	if ej, n := rec.last(); !ej || n != 1 {
		t.Fatalf("recheck while another instance passes rejoined (ejected %v after %d changes)", ej, n)
	}
	others.Store(0) // the others ejected themselves too, or left
	o.recheck()
	if ej, n := rec.last(); ej || n != 2 {
		t.Fatalf("recheck with no other instance passing: ejected %v after %d changes, want rejoined", ej, n)
	}
	o.mu.Lock()
	ejected, pending := o.ejected, o.timer != nil && o.timer.Stop()
	o.mu.Unlock()
	if ejected || pending {
		t.Fatalf("after the rejoin: ejected %v, check still pending %v", ejected, pending)
	}
}
