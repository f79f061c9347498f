package traffic

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// maxDestinations bounds the breakers and budgets a policy keeps: the
// service and the subsets its routes name.
const maxDestinations = 4 * config.MaxSubsets

// Base is what a caller's own configuration says for every service, from
// which a service's config document overrides field by field.
type Base struct {
	Timeout time.Duration
	Retry   RetryPolicy      // with its defaults applied
	Breaker breaker.Settings // as configured, before DisableBreaker
	// DisableBreaker turns breakers off unless a document turns them on.
	DisableBreaker bool
}

// Policy is how a caller calls one service: the base, or a service's config
// document compiled over it. It is immutable once made; a new revision is a
// new Policy, swapped in whole, and a call reads the policy once at its
// start and uses it for all its attempts.
type Policy struct {
	revision uint64
	fromDoc  bool

	timeout time.Duration
	retry   RetryPolicy // defaults applied; Retries is the count
	retryOn retryConds

	// dests are the service's breakers and retry budgets; a new revision
	// keeps them unless their settings change.
	dests       destinations
	newBreakers bool
	breakerKey  breakerKey
	openTimeout time.Duration

	own      Target  // the whole service; zero in the defaults
	routes   []route // in order
	balancer Picker  // nil: the queue group
	fault    *Fault
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

// breakerSettings are the breaker settings of a document over the base.
func (b *Base) breakerSettings(doc *config.Breaker) breaker.Settings {
	s, disabled := b.Breaker, b.DisableBreaker
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

// Defaults is the policy of every service without a config document: the
// base, with breakers and budgets for up to maxDests destinations.
func Defaults(base *Base, maxDests int) *Policy {
	p := &Policy{timeout: base.Timeout, retry: base.Retry, retryOn: allRetryConds}
	bs := base.breakerSettings(nil)
	p.setBreaker(bs)
	p.dests.breakers = breaker.NewSet(bs, maxDests)
	p.dests.budgets = newBudgets(p.retry.BudgetRatio, p.retry.BudgetMinPerSecond, maxDests)
	return p
}

// Compile makes the policy of service from its validated document (nil: the
// base) at revision, keeping prev's breakers and budgets when their settings
// are the same.
func Compile(subj bus.Subjects, service string, doc *config.Service, revision uint64, base *Base, prev *Policy) *Policy {
	p := &Policy{
		revision: revision, fromDoc: doc != nil,
		timeout: base.Timeout, retry: base.Retry, retryOn: allRetryConds,
		own: ServiceTarget(subj, service),
	}
	var docBreaker *config.Breaker
	if doc != nil {
		if doc.Timeout > 0 {
			p.timeout = doc.Timeout.D()
		}
		p.compileRetries(doc.Retries)
		docBreaker = doc.Breaker
		if lb := doc.LoadBalancer; lb != nil {
			p.balancer = newPicker(lb)
			if rr, ok := prev.Balancer().(*RoundRobin); ok && lb.Policy == config.PolicyRoundRobin {
				p.balancer = rr // the turn goes on across revisions
			}
		}
		for i := range doc.Routes {
			if r := compileRoute(subj, service, &doc.Routes[i]); len(r.targets) > 0 {
				p.routes = append(p.routes, r)
			}
		}
		p.fault = compileFault(service, doc.Fault)
	}
	bs := base.breakerSettings(docBreaker)
	p.setBreaker(bs)
	if prev != nil && prev.breakerKey == p.breakerKey {
		p.dests.breakers = prev.dests.breakers
	} else {
		p.dests.breakers = breaker.NewSet(bs, maxDestinations)
		p.newBreakers = true
	}
	if prev != nil && prev.retry.BudgetRatio == p.retry.BudgetRatio && prev.retry.BudgetMinPerSecond == p.retry.BudgetMinPerSecond {
		p.dests.budgets = prev.dests.budgets
	} else {
		p.dests.budgets = newBudgets(p.retry.BudgetRatio, p.retry.BudgetMinPerSecond, maxDestinations)
	}
	return p
}

func (p *Policy) setBreaker(bs breaker.Settings) {
	p.breakerKey = keyOfBreaker(bs)
	p.openTimeout = bs.OpenTimeout
	if p.openTimeout <= 0 {
		p.openTimeout = breaker.DefaultOpenTimeout
	}
}

// compileRetries sets the document's retries over the base's.
func (p *Policy) compileRetries(r *config.Retries) {
	if r == nil {
		return
	}
	if r.Attempts != nil {
		p.retry.Retries = *r.Attempts
	}
	if len(r.On) > 0 {
		p.retryOn = condsOf(r.On)
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

// Revision is the config revision the policy was compiled from, 0 for the
// base.
func (p *Policy) Revision() uint64 { return p.revision }

// FromDoc reports whether the policy was compiled from a config document.
func (p *Policy) FromDoc() bool { return p.fromDoc }

// NewBreakers reports whether Compile made new breakers (which start
// closed) rather than keeping the previous revision's.
func (p *Policy) NewBreakers() bool { return p.newBreakers }

// Timeout bounds a call, its retries included.
func (p *Policy) Timeout() time.Duration { return p.timeout }

// PerTryTimeout bounds each attempt; 0: all the time left.
func (p *Policy) PerTryTimeout() time.Duration { return p.retry.PerTryTimeout }

// Retries is how many retries a call may make.
func (p *Policy) Retries() int { return p.retry.Retries }

// OpenTimeout is how long the policy's breakers stay open.
func (p *Policy) OpenTimeout() time.Duration { return p.openTimeout }

// Destination is the breaker and retry budget of a target's key.
func (p *Policy) Destination(key string) Destination { return p.dests.get(key) }

// Balancer is the policy's instance picker; nil lets the queue group pick.
func (p *Policy) Balancer() Picker {
	if p == nil {
		return nil
	}
	return p.balancer
}

// HashKey is the request's key for a ring-hash balancer, "" for others.
func (p *Policy) HashKey(hdr http.Header) string {
	if rh, ok := p.balancer.(*RingHash); ok {
		if v := hdr[rh.Header]; len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// Fault is the fault the policy injects; nil if none.
func (p *Policy) Fault() *Fault { return p.fault }

// Routes is how many routes the policy has.
func (p *Policy) Routes() int { return len(p.routes) }

// String is the policy in a few words, for the line logged when it applies.
func (p *Policy) String() string {
	var parts []string
	switch b := p.balancer.(type) {
	case nil:
		parts = append(parts, config.PolicyQueue)
	case *RingHash:
		parts = append(parts, "ring-hash on "+b.Header)
	default:
		parts = append(parts, b.String())
	}
	parts = append(parts, "timeout "+p.timeout.String())
	parts = append(parts, "retries "+strconv.Itoa(p.retry.Retries))
	if p.breakerKey.failures < 0 && p.breakerKey.ratio < 0 {
		parts = append(parts, "breaker off")
	}
	if f := p.fault; f != nil {
		parts = append(parts, f.String())
	}
	return strings.Join(parts, ", ")
}
