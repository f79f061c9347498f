package traffic_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// budgetEpoch is a fixed instant for the budget's explicit times; its second
// is a multiple of the window, so slot arithmetic is easy to follow.
var budgetEpoch = time.Unix(1_700_000_000, 0)

func at(sec float64) time.Time {
	return budgetEpoch.Add(time.Duration(sec * float64(time.Second)))
}

// budgetPolicy makes the calls of the budget tests: it retries any failure
// that proves the request unsent, such as overloaded, while the budget
// allows.
var budgetPolicy = traffic.Defaults(&traffic.Base{Timeout: time.Hour, Retry: traffic.RetryPolicy{}.WithDefaults()}, 1)

var overloaded = traffic.Outcome{Code: bus.Overloaded}

// calls counts n calls in b at now, as starting their retries does.
func calls(b *traffic.Budget, now time.Time, n int) {
	for range n {
		budgetPolicy.Retrier(traffic.Destination{Budget: b}, http.MethodGet, nil, 0, now)
	}
}

// newBudget is a budget, and a call whose retries it pays for: the call
// is counted 1000 s before any time these tests use, far outside the
// window, so that only the calls the tests count make room for retries.
// (It is made first: its count, stale in its slot of the ring, is dropped
// when a later second takes the slot.)
func newBudget(ratio, floor float64) (*traffic.Budget, *traffic.Retrier) {
	b := traffic.NewBudget(ratio, floor)
	return b, payer(b)
}

func payer(b *traffic.Budget) *traffic.Retrier {
	r := budgetPolicy.Retrier(traffic.Destination{Budget: b}, http.MethodGet, nil, 0, at(-1000))
	return &r
}

// retry asks r's budget for a retry at now, reporting whether it had one.
// Nothing but the budget may refuse it.
func retry(t testing.TB, r *traffic.Retrier, now time.Time) bool {
	t.Helper()
	switch _, v := r.Next(overloaded, 1, false, now, now.Add(time.Hour)); v {
	case traffic.Retry:
		return true
	case traffic.BudgetSpent:
		return false
	}
	t.Fatalf("an overloaded attempt was not retried, nor refused by the budget")
	return false
}

// takeRetries takes retries for r from its budget at now until it refuses,
// at most limit, and returns how many it got.
func takeRetries(t testing.TB, r *traffic.Retrier, now time.Time, limit int) int {
	t.Helper()
	n := 0
	for n < limit && retry(t, r, now) {
		n++
	}
	return n
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
		{name: "defaults", ratio: traffic.DefaultBudgetRatio, floor: traffic.DefaultBudgetMinPerSecond, calls: 50, want: 110},
		{name: "nothing", calls: 1000, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, r := newBudget(tc.ratio, tc.floor)
			calls(b, at(0), tc.calls)
			if got := takeRetries(t, r, at(0.5), 10_000); got != tc.want {
				t.Errorf("%d calls, ratio %v, floor %v/s: %d retries allowed, want %d", tc.calls, tc.ratio, tc.floor, got, tc.want)
			}
			// A refused retry is not counted: more calls make room again.
			if tc.ratio > 0 {
				calls(b, at(0.7), 5)
				if got := takeRetries(t, r, at(0.8), 10_000); got != 1 {
					t.Errorf("after 5 more calls at ratio %v: %d more retries, want 1", tc.ratio, got)
				}
			}
		})
	}
}

// Calls and retries count for the window's 10 seconds, then drop out of
// it, whichever slot of the ring they were in.
func TestBudgetWindowSlides(t *testing.T) {
	t.Parallel()
	b, r := newBudget(0.5, 0)
	calls(b, at(0), 10) // 5 retries' worth
	if got := takeRetries(t, r, at(0), 3); got != 3 {
		t.Fatalf("at 0 s: %d retries, want 3", got)
	}
	calls(b, at(1), 4) // 7 retries' worth in the window now
	if got := takeRetries(t, r, at(9.999), 100); got != 4 {
		t.Fatalf("at 9.999 s, second 0 still in the window: %d more retries, want 4", got)
	}
	// At 10 s the calls and retries of second 0 leave the window (its slot
	// is reused for second 10): 4 calls and the 4 retries taken at 9.999 s
	// remain, which is already over 0.5 × 4.
	if retry(t, r, at(10)) {
		t.Fatalf("at 10 s: a retry allowed with 4 calls and 4 retries in the window")
	}
	// At 11 s second 1 leaves too: only the 4 retries of second 9 remain,
	// with no calls.
	calls(b, at(11), 10)
	if got := takeRetries(t, r, at(11), 100); got != 1 {
		t.Fatalf("at 11 s: %d retries, want 1 (0.5 × 10 calls - 4 retries still in the window)", got)
	}
	// At 19 s second 9's retries are gone; second 11's calls and retry are
	// still in.
	if got := takeRetries(t, r, at(19), 100); got != 4 {
		t.Fatalf("at 19 s: %d retries, want 4 (0.5 × 10 calls - 1 retry)", got)
	}
	// Long after, nothing is left, whatever slot it sat in.
	if retry(t, r, at(500)) {
		t.Fatalf("at 500 s: a retry allowed from calls long out of the window")
	}
}

// A stale bucket in another slot of the ring is not counted: only buckets
// whose second is inside the window are.
func TestBudgetStaleSlotsIgnored(t *testing.T) {
	t.Parallel()
	b, r := newBudget(1, 0)
	calls(b, at(-97), 1000) // slot 3 ahead of second 0's, 97 s ago
	if retry(t, r, at(0)) {
		t.Fatalf("calls 97 s ago made room for a retry now")
	}
	calls(b, at(-9), 1) // inside the window
	if got := takeRetries(t, r, at(0), 10); got != 1 {
		t.Fatalf("%d retries from 1 call 9 s ago at ratio 1, want 1", got)
	}
}

func TestBudgetConcurrent(t *testing.T) {
	t.Parallel()
	b := traffic.NewBudget(0.2, 1)
	var (
		wg      sync.WaitGroup
		retries atomic.Int64
	)
	now := at(0)
	for range 8 {
		wg.Go(func() {
			for range 100 {
				r := budgetPolicy.Retrier(traffic.Destination{Budget: b}, http.MethodGet, nil, 0, now)
				switch _, v := r.Next(overloaded, 1, false, now, now.Add(time.Hour)); v {
				case traffic.Retry:
					retries.Add(1)
				case traffic.BudgetSpent:
				default:
					t.Errorf("an overloaded attempt was not retried, nor refused by the budget")
					return
				}
			}
		})
	}
	wg.Wait()
	// 800 calls: at most 0.2 × 800 + 10; the floor is reached before the
	// calls run out, so exactly that many.
	if n := retries.Load(); n != 170 {
		t.Fatalf("%d retries taken by 8 goroutines, want 170", n)
	}
}

func TestRetryPolicyDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   traffic.RetryPolicy
		want traffic.RetryPolicy
	}{
		{
			name: "zero value",
			want: traffic.RetryPolicy{Retries: 2, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond, BudgetRatio: 0.2, BudgetMinPerSecond: 10},
		},
		{
			name: "negative retries: none, negative budget: none",
			in:   traffic.RetryPolicy{Retries: -1, BudgetRatio: -1, BudgetMinPerSecond: -1},
			want: traffic.RetryPolicy{Retries: 0, BackoffBase: 25 * time.Millisecond, BackoffMax: 250 * time.Millisecond},
		},
		{
			name: "max below base is raised to base",
			in:   traffic.RetryPolicy{Retries: 5, BackoffBase: time.Second, BackoffMax: time.Millisecond, PerTryTimeout: time.Second},
			want: traffic.RetryPolicy{Retries: 5, BackoffBase: time.Second, BackoffMax: time.Second, PerTryTimeout: time.Second, BudgetRatio: 0.2, BudgetMinPerSecond: 10},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.in.WithDefaults(); got != tc.want {
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
		if got := traffic.Idempotent(tc.method, h); got != tc.want {
			t.Errorf("Idempotent(%s, %v) = %v, want %v", tc.method, h, got, tc.want)
		}
	}
}

// A policy keeps one breaker and one budget per destination. (That it keeps
// a bounded number of budgets is checked by TestDestinationsBounded,
// internal_test.go.)
func TestDestinationsPerService(t *testing.T) {
	t.Parallel()
	p := traffic.Defaults(&traffic.Base{Retry: traffic.RetryPolicy{BudgetRatio: 0.2, BudgetMinPerSecond: -1}.WithDefaults()}, 4)
	a, b := p.Destination("a"), p.Destination("b")
	if a.Budget == b.Budget || a.Breaker == b.Breaker {
		t.Fatalf("services a and b share a budget or a breaker")
	}
	if again := p.Destination("a"); again.Budget != a.Budget || again.Breaker != a.Breaker {
		t.Fatalf("a second lookup of a returned a new budget or breaker")
	}
	rb := payer(b.Budget)
	calls(a.Budget, time.Now(), 10)
	if got := takeRetries(t, rb, time.Now(), 10); got != 0 {
		t.Fatalf("calls to a gave %d retries to b", got)
	}
}
