package config

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// MaxTimeout is the longest timeout a config may set, the longest a callee
// lets any request run.
const MaxTimeout = 5 * time.Minute

// Limits on the size of a document, so that one config cannot make every
// proxy's request path slow.
const (
	MaxRoutes         = 64
	MaxSubsets        = 16
	MaxMatchHeaders   = 16
	MaxCallers        = 256
	maxMethods        = 16
	maxHeaderValueLen = 1024
)

// RetryConditions are the failures Retries.On may name: the codes of bus's
// table that a retry may help (bus.Failure's Unsent or MaybeSent), and an
// app's 502, 503 and 504.
var RetryConditions = retryConditions()

func retryConditions() []string {
	var cs []string
	for _, c := range bus.Codes {
		if f := c.Failure(); f.Unsent || f.MaybeSent {
			cs = append(cs, string(c))
		}
	}
	return append(cs, "502", "503", "504")
}

// Problem is one thing wrong with a document: the field, as a path from the
// document's root (routes[0].split), and what is wrong with it.
type Problem struct {
	Path string
	Msg  string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Msg
	}
	return p.Path + ": " + p.Msg
}

type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Validate reports every problem of s; nil means s is valid.
func (s *Service) Validate() []Problem {
	var ps problems
	validServiceName(&ps, s.Service)
	validTimeout(&ps, "timeout", s.Timeout)
	validRetries(&ps, s.Retries)
	validBreaker(&ps, s.Breaker)
	validLoadBalancer(&ps, s.LoadBalancer)
	validRoutes(&ps, s.Routes)
	validFault(&ps, s.Fault)
	validCallers(&ps, s.Callers)
	return ps
}

// validServiceName checks the name of the service the document configures.
func validServiceName(ps *problems, name string) {
	if name == "" {
		ps.add("service", "missing; name the service this document configures")
	} else if err := bus.ValidateName("service", name); err != nil {
		ps.add("service", "%v", err)
	}
}

// validRetries checks retries, if there are any.
func validRetries(ps *problems, r *Retries) {
	if r == nil {
		return
	}
	if r.Attempts != nil && (*r.Attempts < 0 || *r.Attempts > 10) {
		ps.add("retries.attempts", "%d is out of range; use 0 (no retries) to 10", *r.Attempts)
	}
	for i, c := range r.On {
		if !slices.Contains(RetryConditions, c) {
			ps.add(fmt.Sprintf("retries.on[%d]", i), "unknown condition %q; use one of %s", c, strings.Join(RetryConditions, ", "))
		}
	}
	validTimeout(ps, "retries.perTryTimeout", r.PerTryTimeout)
	validTimeout(ps, "retries.backoff", r.Backoff)
	validTimeout(ps, "retries.backoffMax", r.BackoffMax)
	if r.Backoff > 0 && r.BackoffMax > 0 && r.BackoffMax < r.Backoff {
		ps.add("retries.backoffMax", "%s is shorter than backoff (%s)", r.BackoffMax, r.Backoff)
	}
	validBudget(ps, r.Budget)
}

// validBudget checks a retry budget, if there is one.
func validBudget(ps *problems, b *Budget) {
	if b == nil {
		return
	}
	if b.Ratio != nil && !inRange(*b.Ratio, 0, 1) {
		ps.add("retries.budget.ratio", "%g is out of range; use 0 to 1", *b.Ratio)
	}
	if b.MinPerSecond != nil && !inRange(*b.MinPerSecond, 0, 1e6) {
		ps.add("retries.budget.minPerSecond", "%g is out of range; use 0 to 1000000", *b.MinPerSecond)
	}
}

// validBreaker checks the breaker's settings, if there are any.
func validBreaker(ps *problems, b *Breaker) {
	if b == nil {
		return
	}
	if b.Failures < 0 {
		ps.add("breaker.failures", "%d is negative", b.Failures)
	}
	if !inRange(b.Ratio, 0, 1) {
		ps.add("breaker.ratio", "%g is out of range; use 0 to 1", b.Ratio)
	}
	if b.MinRequests < 0 {
		ps.add("breaker.minRequests", "%d is negative", b.MinRequests)
	}
	validTimeout(ps, "breaker.window", b.Window)
	validTimeout(ps, "breaker.open", b.Open)
	if b.Probes < 0 || b.Probes > 100 {
		ps.add("breaker.probes", "%d is out of range; use 1 to 100", b.Probes)
	}
}

// validLoadBalancer checks the policy and its hash header, if a load
// balancer is set.
func validLoadBalancer(ps *problems, lb *LoadBalancer) {
	if lb == nil {
		return
	}
	switch {
	case !slices.Contains(Policies, lb.Policy):
		ps.add("loadBalancer.policy", "unknown policy %q; use one of %s", lb.Policy, strings.Join(Policies, ", "))
	case lb.Policy == PolicyRingHash && lb.HashHeader == "":
		ps.add("loadBalancer.hashHeader", "missing; ring-hash needs the name of the header to hash")
	case lb.Policy != PolicyRingHash && lb.HashHeader != "":
		ps.add("loadBalancer.hashHeader", "only ring-hash uses a hash header, and the policy is %s", lb.Policy)
	}
	if lb.HashHeader != "" {
		if why := headerProblem(lb.HashHeader); why != "" {
			ps.add("loadBalancer.hashHeader", "%s", why)
		}
	}
}

// validRoutes checks how many routes there are, and each of them.
func validRoutes(ps *problems, routes []Route) {
	if len(routes) > MaxRoutes {
		ps.add("routes", "%d routes; at most %d are allowed", len(routes), MaxRoutes)
	}
	for i := range routes {
		validRoute(ps, fmt.Sprintf("routes[%d]", i), &routes[i])
	}
}

// validFault checks the delay and the abort to inject, if there are any.
func validFault(ps *problems, f *Fault) {
	if f == nil {
		return
	}
	if d := f.Delay; d != nil {
		validPercent(ps, "fault.delay.percent", d.Percent)
		if d.Duration <= 0 {
			ps.add("fault.delay.duration", "missing; say how long to delay, such as 2s")
		}
		validTimeout(ps, "fault.delay.duration", d.Duration)
	}
	if a := f.Abort; a != nil {
		validPercent(ps, "fault.abort.percent", a.Percent)
		if a.Status < 400 || a.Status > 599 {
			ps.add("fault.abort.status", "%d is not an error status; use 400 to 599", a.Status)
		}
	}
}

// validCallers checks the list of services allowed to call, if there is
// one: valid names, none twice, at most MaxCallers.
func validCallers(ps *problems, callers Names) {
	if len(callers) > MaxCallers {
		ps.add("callers", "%d services; at most %d are allowed", len(callers), MaxCallers)
		return
	}
	for i, c := range callers {
		path := fmt.Sprintf("callers[%d]", i)
		if err := bus.ValidateName("service", c); err != nil {
			ps.add(path, "%v", err)
		} else if j := slices.Index(callers[:i], c); j >= 0 {
			ps.add(path, "%q is listed twice, also as callers[%d]; name each service once", c, j)
		}
	}
}

// inRange reports whether lo <= x <= hi; NaN is in no range.
func inRange(x, lo, hi float64) bool { return x >= lo && x <= hi }

func validTimeout(ps *problems, path string, d Duration) {
	switch {
	case d < 0:
		ps.add(path, "%s is negative", d)
	case d.D() > MaxTimeout:
		ps.add(path, "%s is longer than the limit of %s", d, MaxTimeout)
	}
}

func validPercent(ps *problems, path string, p float64) {
	if !inRange(p, 0, 100) {
		ps.add(path, "%g is out of range; use 0 to 100", p)
	}
}

func validRoute(ps *problems, path string, r *Route) {
	if r.Name != "" {
		if err := bus.ValidateName("route name", r.Name); err != nil {
			ps.add(path+".name", "%v", err)
		}
	}
	m := &r.Match
	if m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/") {
		ps.add(path+".match.pathPrefix", "%q does not start with /", m.PathPrefix)
	}
	if len(m.Methods) > maxMethods {
		ps.add(path+".match.methods", "%d methods; at most %d are allowed", len(m.Methods), maxMethods)
	}
	for i, meth := range m.Methods {
		if meth == "" || meth != strings.ToUpper(meth) || strings.ContainsAny(meth, " \t/:") {
			ps.add(fmt.Sprintf("%s.match.methods[%d]", path, i), "%q is not an HTTP method in upper case, such as GET", meth)
		}
	}
	if len(m.Headers) > MaxMatchHeaders {
		ps.add(path+".match.headers", "%d headers; at most %d are allowed", len(m.Headers), MaxMatchHeaders)
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		if why := headerProblem(name); why != "" {
			ps.add(path+".match.headers."+name, "%s", why)
		}
		if len(m.Headers[name]) > maxHeaderValueLen {
			ps.add(path+".match.headers."+name, "the value is longer than %d bytes", maxHeaderValueLen)
		}
	}
	if len(r.Split) == 0 {
		ps.add(path+".split", "missing; say which subsets get the route's traffic, such as {v1: 90, v2: 10}")
		return
	}
	if len(r.Split) > MaxSubsets {
		ps.add(path+".split", "%d subsets; at most %d are allowed", len(r.Split), MaxSubsets)
	}
	sum := 0
	for _, subset := range slices.Sorted(maps.Keys(r.Split)) {
		w := r.Split[subset]
		if err := bus.ValidateName("subset", subset); err != nil {
			ps.add(path+".split."+subset, "%v", err)
		}
		if w < 0 || w > 100 {
			ps.add(path+".split."+subset, "weight %d is out of range; use 0 to 100", w)
		}
		sum += w
	}
	if sum != 100 {
		ps.add(path+".split", "weights add up to %d; they must add up to 100", sum)
	}
}

// headerProblem says what is wrong with a header name to match or hash on,
// "" if nothing.
func headerProblem(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
		if !ok {
			return fmt.Sprintf("%q is not a valid header name", s)
		}
	}
	switch c := http.CanonicalHeaderKey(s); {
	case s == "":
		return "the header name is empty"
	case strings.HasPrefix(c, "Mesh-"):
		// The sidecar drops Mesh-* headers from apps' requests.
		return fmt.Sprintf("%s is one of the mesh's own headers, which apps cannot send", c)
	case c == "Host":
		return "Host names the service itself; use another header"
	}
	return ""
}
