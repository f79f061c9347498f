package proxy

import (
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
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
)

// RetryPolicy says when and how often a failed call is tried again.
//
// Which failures are retried follows from what they prove: no-responders,
// overloaded and mesh-unavailable prove the request never reached an app, so
// any method is retried; a timeout, upstream-lost, upstream-unreachable and an
// app's own 502, 503 or 504 are retried only for idempotent methods (GET,
// HEAD, OPTIONS, TRACE, PUT, DELETE, or any request with an Idempotency-Key
// header). Retries wait an exponential, jittered backoff and never outlast
// the call's deadline.
type RetryPolicy struct {
	// Retries is how many times a call may be tried again after its first
	// attempt (default DefaultRetries; negative: never).
	Retries int
	// BackoffBase and BackoffMax bound the wait before each retry, which
	// doubles from the base up to the max, with ±50 % jitter.
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

func (p *RetryPolicy) defaults() {
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
}

// idempotent reports whether a request may be sent twice (RFC 9110 §9.2.2;
// an Idempotency-Key header makes any method so, as net/http also assumes).
func idempotent(method string, hdr http.Header) bool {
	if idempotentMethod(method) {
		return true
	}
	_, ok := hdr["Idempotency-Key"]
	if !ok {
		_, ok = hdr["X-Idempotency-Key"]
	}
	return ok
}

// outcome is what one attempt says about the destination.
type outcome struct {
	code   bus.Code // the mesh failure, if any
	status int      // the HTTP status otherwise
	// lost: the caller lost the request itself (the instance holding it
	// died, or the caller's own NATS connection dropped), as opposed to a
	// callee answering upstream-lost for its app.
	lost bool
}

func outcomeOf(m *nats.Msg, merr *bus.Error) outcome {
	if merr != nil {
		return outcome{code: merr.Code, status: merr.Status, lost: merr.Code == bus.UpstreamLost}
	}
	if c := bus.First(m.Header, bus.HeaderError); c != "" {
		return outcome{code: bus.Code(c)}
	}
	return outcome{status: statusOf(m)}
}

// statusOf is the status a reply carries, 0 if it has none that is valid.
func statusOf(m *nats.Msg) int {
	s := bus.First(m.Header, bus.HeaderStatus)
	if len(s) != 3 {
		return 0
	}
	n := 0
	for i := 0; i < 3; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// retryable reports whether the attempt's failure may be retried.
func (o outcome) retryable(idem bool) bool {
	switch o.code {
	case bus.NoResponders, bus.Overloaded, bus.MeshUnavailable:
		return true
	case bus.Timeout, bus.UpstreamLost, bus.UpstreamUnreachable:
		return idem
	case "":
		switch o.status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return idem
		}
	}
	return false
}

// result is what the attempt tells the destination's breaker. Failures are
// the destination's: timeouts, lost or unreachable apps, overload and 5xx.
// A missing service, a lost NATS connection or a refused request say nothing
// about the instances, and are ignored. So is a request the caller lost with
// the instance holding it: one instance dying fails every call it held at
// once, which would open the breaker for the whole service while its other
// instances are fine; the calls are retried elsewhere, and NATS stops routing
// to the dead instance by itself.
func (o outcome) result() breaker.Result {
	if o.lost {
		return breaker.Ignore
	}
	switch o.code {
	case "":
		if o.status >= 500 || o.status == 0 {
			return breaker.Failure
		}
		return breaker.Success
	case bus.Timeout, bus.UpstreamLost, bus.UpstreamUnreachable, bus.Overloaded:
		return breaker.Failure
	}
	return breaker.Ignore
}

// failed reports whether the outcome is a failure the app should see the
// breaker's state with.
func (o outcome) failed() bool { return o.result() == breaker.Failure }

// budget is a retry budget over a window of budgetWindow one-second buckets.
type budget struct {
	ratio, floor float64

	mu      sync.Mutex
	buckets [budgetWindow]budgetBucket
}

type budgetBucket struct {
	sec            int64
	calls, retries int
}

func (b *budget) bucket(now time.Time) *budgetBucket {
	sec := now.Unix()
	bk := &b.buckets[sec%budgetWindow]
	if bk.sec != sec {
		bk.sec, bk.calls, bk.retries = sec, 0, 0
	}
	return bk
}

// call counts a call.
func (b *budget) call(now time.Time) {
	b.mu.Lock()
	b.bucket(now).calls++
	b.mu.Unlock()
}

// retry takes a retry from the budget, reporting whether there was one.
func (b *budget) retry(now time.Time) bool {
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

// destination is what a Transport keeps per destination (a service, or a
// subset of one: "reviews", "reviews/v2"): its breaker and its retry budget.
type destination struct {
	br     *breaker.Breaker
	budget *budget
}

// destinations are the breakers and retry budgets of a set of destinations,
// each bounded: beyond their max, those whose breakers are closed are
// forgotten first, and any budget may be (it only forgets recent counts).
type destinations struct {
	breakers *breaker.Set
	budgets  *budgets
}

func (d destinations) get(key string) destination {
	return destination{br: d.breakers.Get(key), budget: d.budgets.get(key)}
}

// budgets keeps at most max retry budgets, one per destination.
type budgets struct {
	ratio, floor float64
	max          int

	mu sync.Mutex
	m  map[string]*budget
}

func newBudgets(ratio, floor float64, max int) *budgets {
	return &budgets{ratio: ratio, floor: floor, max: max, m: make(map[string]*budget)}
}

func (bs *budgets) get(key string) *budget {
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
		b = &budget{ratio: bs.ratio, floor: bs.floor}
		bs.m[key] = b
	}
	return b
}

// retryConds is a set of the failures a config's retries.on names.
type retryConds uint16

const (
	condNoResponders retryConds = 1 << iota
	condOverloaded
	condMeshUnavailable
	condTimeout
	condUpstreamLost
	condUpstreamUnreachable
	cond502
	cond503
	cond504

	allRetryConds = 1<<iota - 1
)

// retryCondNames are the names of retries.on (config.RetryConditions).
var retryCondNames = map[string]retryConds{
	string(bus.NoResponders): condNoResponders, string(bus.Overloaded): condOverloaded,
	string(bus.MeshUnavailable): condMeshUnavailable, string(bus.Timeout): condTimeout,
	string(bus.UpstreamLost): condUpstreamLost, string(bus.UpstreamUnreachable): condUpstreamUnreachable,
	"502": cond502, "503": cond503, "504": cond504,
}

// cond is the condition of retries.on the outcome is, 0 if none.
func (o outcome) cond() retryConds {
	switch o.code {
	case bus.NoResponders:
		return condNoResponders
	case bus.Overloaded:
		return condOverloaded
	case bus.MeshUnavailable:
		return condMeshUnavailable
	case bus.Timeout:
		return condTimeout
	case bus.UpstreamLost:
		return condUpstreamLost
	case bus.UpstreamUnreachable:
		return condUpstreamUnreachable
	case "":
		switch o.status {
		case http.StatusBadGateway:
			return cond502
		case http.StatusServiceUnavailable:
			return cond503
		case http.StatusGatewayTimeout:
			return cond504
		}
	}
	return 0
}

// allows reports whether the outcome is one of the conditions.
func (c retryConds) allows(o outcome) bool { return c&o.cond() != 0 }

// String names the failure for logs.
func (o outcome) String() string {
	if o.code != "" {
		return string(o.code)
	}
	return "HTTP " + bus.StatusText(o.status)
}
