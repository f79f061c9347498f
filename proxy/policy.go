package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/config"
)

// ConfigSource delivers the config documents of services as they change.
type ConfigSource interface {
	// Watch delivers service's document to apply, now and at every change:
	// nil when the service has none (never written, or deleted). It returns
	// once the current value has been delivered (or after a short bound,
	// about 1 s, if the store cannot answer, in which case apply is not called
	// until it can); stop ends the watch.
	Watch(ctx context.Context, service string, apply func(doc *config.Service, revision uint64)) (stop func(), err error)
}

// maxConfigWatches bounds how many services' documents a Transport watches;
// calls to services beyond them use the defaults.
const maxConfigWatches = 1024

// maxServiceDestinations bounds the breakers and budgets a service with a
// config keeps: the service and the subsets its routes name.
const maxServiceDestinations = 4 * config.MaxSubsets

// balancePolicy is a compiled config.LoadBalancer policy.
type balancePolicy uint8

const (
	balanceQueue balancePolicy = iota
	balanceRoundRobin
	balanceLeastRequest
	balanceRingHash
)

var balanceNames = [...]string{config.PolicyQueue, config.PolicyRoundRobin, config.PolicyLeastRequest, config.PolicyRingHash}

func (b balancePolicy) String() string { return balanceNames[b] }

func balanceOf(name string) balancePolicy {
	for i, n := range balanceNames {
		if n == name {
			return balancePolicy(i)
		}
	}
	return balanceQueue
}

// policy is how a Transport calls one service: the transport's defaults, or
// a service's config document compiled. It is immutable once made; a new
// revision is a new policy, swapped in whole, and a call reads the policy
// once at its start and uses it for all its attempts.
type policy struct {
	revision uint64
	fromDoc  bool

	timeout time.Duration
	retry   RetryPolicy // defaults applied; Retries is the count
	retryOn retryConds

	// dests are the service's breakers and retry budgets; a new revision
	// keeps them unless their settings change.
	dests       destinations
	breakerKey  breakerKey
	openTimeout time.Duration

	own        target  // the whole service; zero in the transport's defaults
	routes     []route // in order
	balance    balancePolicy
	hashHeader string // canonical
	fault      *fault
}

// breakerKey is what makes two breakers' settings equal.
type breakerKey struct {
	failures, minRequests, probes int
	ratio                         float64
	window, open                  time.Duration
}

func keyOfBreaker(s breaker.Settings) breakerKey {
	return breakerKey{
		failures: s.ConsecutiveFailures, minRequests: s.MinRequests, probes: s.HalfOpenProbes,
		ratio: s.FailureRatio, window: s.Window, open: s.OpenTimeout,
	}
}

// policyBase is what a Transport's flags say, from which documents override
// field by field.
type policyBase struct {
	timeout  time.Duration
	retry    RetryPolicy      // defaults applied
	breaker  breaker.Settings // as configured, before DisableBreaker
	disabled bool             // DisableBreaker
}

// breakerSettings are the breaker settings of a document over the base.
func (b *policyBase) breakerSettings(doc *config.Breaker) breaker.Settings {
	s, disabled := b.breaker, b.disabled
	if doc != nil {
		if doc.Enabled != nil {
			disabled = !*doc.Enabled
		}
		if doc.Failures > 0 {
			s.ConsecutiveFailures = doc.Failures
		}
		if doc.Ratio > 0 {
			s.FailureRatio = doc.Ratio
		}
		if doc.MinRequests > 0 {
			s.MinRequests = doc.MinRequests
		}
		if doc.Window > 0 {
			s.Window = doc.Window.D()
		}
		if doc.Open > 0 {
			s.OpenTimeout = doc.Open.D()
		}
		if doc.Probes > 0 {
			s.HalfOpenProbes = doc.Probes
		}
	}
	if disabled {
		s.ConsecutiveFailures, s.FailureRatio = -1, -1
	}
	return s
}

// compile makes the policy of service from its validated document (nil: the
// defaults), keeping prev's breakers and budgets when their settings are the
// same.
func (t *Transport) compile(service string, doc *config.Service, revision uint64, prev *policy) *policy {
	b := &t.base
	p := &policy{
		revision: revision, fromDoc: doc != nil,
		timeout: b.timeout, retry: b.retry, retryOn: allRetryConds,
		own: serviceTarget(t.subj, service),
	}
	var docBreaker *config.Breaker
	if doc != nil {
		if doc.Timeout > 0 {
			p.timeout = doc.Timeout.D()
		}
		if r := doc.Retries; r != nil {
			if r.Attempts != nil {
				p.retry.Retries = *r.Attempts
			}
			if len(r.On) > 0 {
				p.retryOn = 0
				for _, c := range r.On {
					p.retryOn |= retryCondNames[c]
				}
			}
			if r.PerTryTimeout > 0 {
				p.retry.PerTryTimeout = r.PerTryTimeout.D()
			}
			if r.Backoff > 0 {
				p.retry.BackoffBase = r.Backoff.D()
			}
			if r.BackoffMax > 0 {
				p.retry.BackoffMax = r.BackoffMax.D()
			}
			p.retry.BackoffMax = max(p.retry.BackoffMax, p.retry.BackoffBase)
			if bg := r.Budget; bg != nil {
				if bg.Ratio != nil {
					p.retry.BudgetRatio = *bg.Ratio
				}
				if bg.MinPerSecond != nil {
					p.retry.BudgetMinPerSecond = *bg.MinPerSecond
				}
			}
		}
		docBreaker = doc.Breaker
		if lb := doc.LoadBalancer; lb != nil {
			p.balance = balanceOf(lb.Policy)
			if p.balance == balanceRingHash {
				p.hashHeader = http.CanonicalHeaderKey(lb.HashHeader)
			}
		}
		for i := range doc.Routes {
			if r := compileRoute(t.subj, service, &doc.Routes[i]); len(r.targets) > 0 {
				p.routes = append(p.routes, r)
			}
		}
		p.fault = compileFault(service, doc.Fault)
	}

	bs := b.breakerSettings(docBreaker)
	p.breakerKey = keyOfBreaker(bs)
	p.openTimeout = bs.OpenTimeout
	if p.openTimeout <= 0 {
		p.openTimeout = breaker.DefaultOpenTimeout
	}
	if prev != nil && prev.breakerKey == p.breakerKey {
		p.dests.breakers = prev.dests.breakers
	} else {
		p.dests.breakers = breaker.NewSet(bs, maxServiceDestinations)
		if t.metrics != nil && service != "" {
			// Any earlier breakers of the service are dropped for these,
			// which start closed.
			t.metrics.CloseBreakers(service)
		}
	}
	if prev != nil && prev.retry.BudgetRatio == p.retry.BudgetRatio && prev.retry.BudgetMinPerSecond == p.retry.BudgetMinPerSecond {
		p.dests.budgets = prev.dests.budgets
	} else {
		p.dests.budgets = newBudgets(p.retry.BudgetRatio, p.retry.BudgetMinPerSecond, maxServiceDestinations)
	}
	return p
}

// describe is the policy in a few words, for the line logged when it
// applies.
func (p *policy) describe() string {
	var parts []string
	if p.balance == balanceRingHash {
		parts = append(parts, "ring-hash on "+p.hashHeader)
	} else {
		parts = append(parts, p.balance.String())
	}
	parts = append(parts, "timeout "+p.timeout.String())
	parts = append(parts, "retries "+strconv.Itoa(p.retry.Retries))
	if p.breakerKey.failures < 0 && p.breakerKey.ratio < 0 {
		parts = append(parts, "breaker off")
	}
	if f := p.fault; f != nil {
		parts = append(parts, f.describe())
	}
	return strings.Join(parts, ", ")
}

// serviceConfig is a watched service's current policy.
type serviceConfig struct {
	p       atomic.Pointer[policy]
	ready   chan struct{} // closed once Watch has returned
	isReady atomic.Bool
	mu      sync.Mutex // orders applies
	// retryAt (unix ns) is set when Watch failed: the service runs on the
	// defaults, and the first call after retryAt watches it again.
	retryAt atomic.Int64
}

// rewatchAfter is how long a service whose watch failed (no JetStream, or
// JetStream not answering for a moment) runs on the defaults before a call
// tries to watch it again.
var rewatchAfter = 30 * time.Second

// policyFor returns the policy a call to service uses. The first call to a
// service starts watching its document and waits until the watch has
// delivered it (bounded by the ConfigSource); later calls read it with one
// atomic load.
func (t *Transport) policyFor(service string) *policy {
	if t.configs == nil {
		return t.defaults
	}
	v, ok := t.cfgs.Load(service)
	if !ok {
		if v = t.watch(service); v == nil {
			return t.defaults
		}
	}
	sc := v.(*serviceConfig)
	if !sc.isReady.Load() {
		select {
		case <-sc.ready:
		case <-t.done:
		}
	}
	if r := sc.retryAt.Load(); r != 0 && time.Now().UnixNano() > r && t.cfgs.CompareAndDelete(service, sc) {
		t.cfgCount.Add(-1) // the next call watches again
	}
	return sc.p.Load()
}

// watch starts watching service's document, unless maxConfigWatches are
// watched already (nil then). A call that finds the watch started by another
// waits for it like the one that started it.
func (t *Transport) watch(service string) any {
	if t.cfgCount.Load() >= maxConfigWatches {
		t.logs.log(slog.LevelWarn, "too many services to watch the configs of; calls to this one use the defaults", "service", service, "limit", maxConfigWatches)
		return nil
	}
	sc := &serviceConfig{ready: make(chan struct{})}
	sc.p.Store(t.compile(service, nil, 0, nil))
	if v, loaded := t.cfgs.LoadOrStore(service, sc); loaded {
		return v
	}
	t.cfgCount.Add(1)
	defer func() {
		sc.isReady.Store(true)
		close(sc.ready)
	}()
	stop, err := t.configs.Watch(t.watchCtx, service, func(doc *config.Service, revision uint64) {
		t.applyConfig(sc, service, doc, revision)
	})
	if err != nil {
		t.watchErr.Do(func() {
			t.logs.always(slog.LevelWarn, "cannot watch service configs; calls use the defaults", "service", service, "error", err)
		})
		sc.retryAt.Store(time.Now().Add(rewatchAfter).UnixNano())
		return sc
	}
	t.watchMu.Lock()
	if t.isClosed() {
		t.watchMu.Unlock()
		stop()
		return sc
	}
	t.watchStops = append(t.watchStops, stop)
	t.watchMu.Unlock()
	return sc
}

// applyConfig swaps in the policy of a new revision of service's document.
func (t *Transport) applyConfig(sc *serviceConfig, service string, doc *config.Service, revision uint64) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	prev := sc.p.Load()
	if doc == nil {
		if !prev.fromDoc {
			return
		}
		p := t.compile(service, nil, revision, prev)
		sc.p.Store(p)
		t.logs.always(slog.LevelInfo, "service config removed; calls use the defaults", "service", service, "revision", revision, "policy", p.describe())
		return
	}
	if doc.Service != service {
		t.logs.always(slog.LevelWarn, "service config ignored: it names another service; keeping the last good one", "service", service, "revision", revision, "names", doc.Service)
		return
	}
	if problems := doc.Validate(); len(problems) > 0 {
		t.logs.always(slog.LevelWarn, "service config ignored: invalid; keeping the last good one", "service", service, "revision", revision, "problem", problems[0].String(), "problems", len(problems))
		return
	}
	p := t.compile(service, doc, revision, prev)
	sc.p.Store(p)
	t.logs.always(slog.LevelInfo, "service config applied", "service", service, "revision", revision, "routes", len(p.routes), "policy", p.describe())
}

// stopWatches ends the config watches; Close calls it once.
func (t *Transport) stopWatches() {
	if t.watchCancel != nil {
		t.watchCancel()
	}
	t.watchMu.Lock()
	stops := t.watchStops
	t.watchStops = nil
	t.watchMu.Unlock()
	for _, stop := range stops {
		stop()
	}
}
