package traffic

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// Defaults of RetryPolicy.
const (
	DefaultRetries            = 2
	DefaultBackoffBase        = 25 * time.Millisecond
	DefaultBackoffMax         = 250 * time.Millisecond
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10
	// RetryBodyLimit is the largest request body kept for retries; a call
	// with a larger body is made once.
	RetryBodyLimit = 64 << 10
	// budgetWindow is how far back the retry budget looks.
	budgetWindow = 10
	// backoffMultiplier is how much each wait grows over the one before
	// (the backoff package's default).
	backoffMultiplier = backoff.DefaultMultiplier
)

// RetryPolicy says when and how often a failed call is tried again.
//
// Which failures are retried follows from what they prove (bus.Failure):
// no-responders, overloaded and mesh-unavailable prove the request never
// reached an app, so any method is retried; a timeout, upstream-lost,
// upstream-unreachable and an app's own 502, 503 or 504 are retried only for
// idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or any request
// with an Idempotency-Key header). Retries wait an exponential, jittered
// backoff and never outlast the call's deadline.
type RetryPolicy struct {
	// Retries is how many times a call may be tried again after its first
	// attempt (default DefaultRetries; negative: never).
	Retries int
	// BackoffBase and BackoffMax bound the wait before each retry, which
	// grows 1.5× per retry from the base up to the max, with ±50 % jitter.
	BackoffBase, BackoffMax time.Duration
	// PerTryTimeout bounds each attempt, so that a timed-out idempotent call
	// can be retried within its deadline; 0 lets an attempt use all the time
	// left.
	PerTryTimeout time.Duration
	// BudgetRatio and BudgetMinPerSecond bound retries per destination: over
	// the last 10 s, retries may be at most BudgetRatio of the calls plus
	// BudgetMinPerSecond per second, so that retries cannot multiply an
	// outage (defaults 0.2 and 10; negative: no retries beyond the other).
	BudgetRatio        float64
	BudgetMinPerSecond float64
}

// WithDefaults is p with its zero fields set to the defaults.
func (p RetryPolicy) WithDefaults() RetryPolicy {
	if p.Retries == 0 {
		p.Retries = DefaultRetries
	}
	if p.Retries < 0 {
		p.Retries = 0
	}
	if p.BackoffBase <= 0 {
		p.BackoffBase = DefaultBackoffBase
	}
	if p.BackoffMax <= 0 {
		p.BackoffMax = DefaultBackoffMax
	}
	p.BackoffMax = max(p.BackoffMax, p.BackoffBase)
	if p.BudgetRatio == 0 {
		p.BudgetRatio = DefaultBudgetRatio
	}
	if p.BudgetMinPerSecond == 0 {
		p.BudgetMinPerSecond = DefaultBudgetMinPerSecond
	}
	p.BudgetRatio = max(p.BudgetRatio, 0)
	p.BudgetMinPerSecond = max(p.BudgetMinPerSecond, 0)
	return p
}

// Idempotent reports whether a request may be sent twice (RFC 9110 §9.2.2;
// an Idempotency-Key header makes any method so, as net/http also assumes).
func Idempotent(method string, hdr http.Header) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	_, ok := hdr["Idempotency-Key"]
	if !ok {
		_, ok = hdr["X-Idempotency-Key"]
	}
	return ok
}

// Outcome is what one attempt says about the destination.
type Outcome struct {
	Code   bus.Code // the mesh failure, if any
	Status int      // the HTTP status otherwise; 0 for a reply without a valid one
	// Lost: the caller lost the request itself (the instance holding it
	// died, or the caller's own NATS connection dropped), as opposed to a
	// callee answering upstream-lost for its app.
	Lost bool
	// Streamed: a body went in chunks (the request's, or the response's
	// is coming), so the call cannot be made again.
	Streamed bool
}

// Retryable reports whether the attempt's failure may be retried, by what it
// proves (bus.Failure) and the request's idempotence.
func (o Outcome) Retryable(idem bool) bool {
	if o.Code != "" {
		f := o.Code.Failure()
		return f.Unsent || f.MaybeSent && idem
	}
	switch o.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return idem
	}
	return false
}

// Result is what the attempt tells the destination's breaker. Failures are
// the destination's: timeouts, lost or unreachable apps, overload and 5xx.
// A missing service, a lost NATS connection or a refused request say nothing
// about the instances, and are ignored. So is a request the caller lost with
// the instance holding it: one instance dying fails every call it held at
// once, which would open the breaker for the whole service while its other
// instances are fine; the calls are retried elsewhere, and NATS stops routing
// to the dead instance by itself.
func (o Outcome) Result() breaker.Result {
	switch {
	case o.Lost:
		return breaker.Ignore
	case o.Code != "":
		if o.Code.Failure().Breaker {
			return breaker.Failure
		}
		return breaker.Ignore
	case o.Status >= 500 || o.Status == 0:
		return breaker.Failure
	}
	return breaker.Success
}

// Failed reports whether the outcome is a failure the app should see the
// breaker's state with.
func (o Outcome) Failed() bool { return o.Result() == breaker.Failure }

// String names the failure for logs.
func (o Outcome) String() string {
	if o.Code != "" {
		return string(o.Code)
	}
	return "HTTP " + strconv.Itoa(o.Status)
}

// condition is the name of retries.on the outcome is (config.RetryConditions),
// "" if none.
func (o Outcome) condition() string {
	if o.Code != "" {
		return string(o.Code)
	}
	switch o.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return strconv.Itoa(o.Status)
	}
	return ""
}

// retryConds is a set of the failures a config's retries.on names, one bit
// per entry of config.RetryConditions.
type retryConds uint32

const allRetryConds retryConds = 1<<32 - 1

func condsOf(names []string) retryConds {
	var c retryConds
	for _, n := range names {
		for i, k := range config.RetryConditions {
			if k == n {
				c |= 1 << i
			}
		}
	}
	return c
}

// allows reports whether the outcome is one of the conditions.
func (c retryConds) allows(o Outcome) bool {
	cond := o.condition()
	for i, k := range config.RetryConditions {
		if k == cond {
			return c&(1<<i) != 0
		}
	}
	return false
}

// Verdict is the retry decision's answer.
type Verdict uint8

const (
	// Stop: the last attempt's outcome stands.
	Stop Verdict = iota
	// Retry: try again after the wait.
	Retry
	// BudgetSpent: the failure could be retried, but the destination's
	// retry budget has none left; the outcome stands.
	BudgetSpent
)

// Retrier is one call's retry state under a policy: how many retries it may
// make, whether its request is idempotent, its backoff and its
// destination's budget. Make it with Policy.Retrier, use it by pointer.
type Retrier struct {
	p       *Policy
	retries int // the policy's, or 0 for a body too large to keep
	idem    bool
	budget  *Budget
	bo      *backoff.ExponentialBackOff
}

// Retrier starts the retries of a call to dest, counting the call in dest's
// budget. A body over RetryBodyLimit is not kept, so its call is made once.
func (p *Policy) Retrier(dest Destination, method string, hdr http.Header, bodyLen int, now time.Time) Retrier {
	dest.Budget.call(now)
	r := Retrier{
		p: p, retries: p.retry.Retries, idem: Idempotent(method, hdr), budget: dest.Budget,
	}
	if bodyLen > RetryBodyLimit {
		r.retries = 0
	}
	return r
}

// Next is the retry decision: whether a call whose attempt number attempts
// ended in o is tried again, and after how long. A stream is never retried
// halfway, nor a body once it went. While settling (the caller's NATS
// connection came back a moment ago, and callees may not be back yet) a
// no-responders failure is retried beyond the retry count and outside the
// budget: such retries reach no app. Otherwise a failure is retried when the
// count allows, its kind and the method allow (Outcome.Retryable), the
// config's retries.on names it, the backoff's wait ends before deadline,
// and the budget has a retry left.
func (r *Retrier) Next(o Outcome, attempts int, settling bool, now, deadline time.Time) (time.Duration, Verdict) {
	if o.Streamed {
		return 0, Stop
	}
	settling = settling && o.Code == bus.NoResponders
	if !settling && (attempts > r.retries || !o.Retryable(r.idem) || !r.p.retryOn.allows(o)) {
		return 0, Stop
	}
	if r.bo == nil {
		r.bo = backoff.NewExponentialBackOff(
			backoff.WithInitialInterval(r.p.retry.BackoffBase),
			backoff.WithMaxInterval(r.p.retry.BackoffMax),
			backoff.WithMultiplier(backoffMultiplier),
			backoff.WithRandomizationFactor(0.5),
			backoff.WithMaxElapsedTime(0))
	}
	wait := r.bo.NextBackOff()
	if deadline.Sub(now) <= wait {
		return 0, Stop // no time for another attempt
	}
	if !settling && !r.budget.retry(now) {
		return 0, BudgetSpent
	}
	return wait, Retry
}

// Budget is a retry budget over a window of budgetWindow one-second buckets.
type Budget struct {
	ratio, floor float64

	mu      sync.Mutex
	buckets [budgetWindow]budgetBucket
}

type budgetBucket struct {
	sec            int64
	calls, retries int
}

// NewBudget is a budget allowing retries up to ratio of the calls plus
// floor per second, over the last 10 s.
func NewBudget(ratio, floor float64) *Budget { return &Budget{ratio: ratio, floor: floor} }

func (b *Budget) bucket(now time.Time) *budgetBucket {
	sec := now.Unix()
	bk := &b.buckets[sec%budgetWindow]
	if bk.sec != sec {
		bk.sec, bk.calls, bk.retries = sec, 0, 0
	}
	return bk
}

// call counts a call.
func (b *Budget) call(now time.Time) {
	b.mu.Lock()
	b.bucket(now).calls++
	b.mu.Unlock()
}

// retry takes a retry from the budget, reporting whether there was one.
func (b *Budget) retry(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.bucket(now)
	calls, retries := 0, 0
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.sec > cur.sec-budgetWindow {
			calls += bk.calls
			retries += bk.retries
		}
	}
	if float64(retries+1) > b.ratio*float64(calls)+b.floor*budgetWindow {
		return false
	}
	cur.retries++
	return true
}

// Destination is what a caller keeps per destination (a service, or a
// subset of one: "reviews", "reviews/v2"): its breaker and its retry budget.
type Destination struct {
	Breaker *breaker.Breaker
	Budget  *Budget
}

// destinations are the breakers and retry budgets of a set of destinations,
// each bounded: beyond their max, those whose breakers are closed are
// forgotten first, and any budget may be (it only forgets recent counts).
type destinations struct {
	breakers *breaker.Set
	budgets  *budgets
}

func (d destinations) get(key string) Destination {
	return Destination{Breaker: d.breakers.Get(key), Budget: d.budgets.get(key)}
}

// budgets keeps at most max retry budgets, one per destination.
type budgets struct {
	ratio, floor float64
	max          int

	mu sync.Mutex
	m  map[string]*Budget
}

func newBudgets(ratio, floor float64, max int) *budgets {
	return &budgets{ratio: ratio, floor: floor, max: max, m: make(map[string]*Budget)}
}

func (bs *budgets) get(key string) *Budget {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.m[key]
	if !ok {
		if len(bs.m) >= bs.max {
			// A forgotten budget only forgets recent counts: drop one.
			for k := range bs.m {
				delete(bs.m, k)
				break
			}
		}
		b = NewBudget(bs.ratio, bs.floor)
		bs.m[key] = b
	}
	return b
}
