package traffic

import (
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// Target is where a call goes: the whole service (Subset "") or one subset,
// with the subject its queue group listens on and the key of its breaker and
// retry budget ("reviews", "reviews/v2").
type Target struct {
	Subset  string
	Subject string
	Key     string
}

// ServiceTarget is the target of the whole service.
func ServiceTarget(subj bus.Subjects, service string) Target {
	return Target{Subject: subj.Call(service), Key: service}
}

func subsetTarget(subj bus.Subjects, service, subset string) Target {
	return Target{Subset: subset, Subject: subj.CallSubset(service, subset), Key: service + "/" + subset}
}

// route is a compiled config.Route: its match, and its split as a table of
// cumulative weights over the subsets sorted by name.
type route struct {
	name    string
	prefix  string        // "" matches every path
	methods []string      // empty matches every method
	headers []headerMatch // all must hold
	targets []Target      // subsets with a weight above 0, by name
	cum     []int         // cum[i]: the sum of the weights of targets[:i+1]; the last is 100
}

// headerMatch is one header condition, its name in canonical form.
type headerMatch struct {
	name, value string
}

// compileRoute compiles a validated route.
func compileRoute(subj bus.Subjects, service string, r *config.Route) route {
	c := route{name: r.Name, prefix: r.Match.PathPrefix, methods: r.Match.Methods}
	for name, value := range r.Match.Headers {
		c.headers = append(c.headers, headerMatch{name: http.CanonicalHeaderKey(name), value: value})
	}
	slices.SortFunc(c.headers, func(a, b headerMatch) int { return strings.Compare(a.name, b.name) })
	sum := 0
	for _, subset := range slices.Sorted(maps.Keys(r.Split)) {
		if r.Split[subset] <= 0 {
			continue
		}
		sum += r.Split[subset]
		c.targets = append(c.targets, subsetTarget(subj, service, subset))
		c.cum = append(c.cum, sum)
	}
	return c
}

// matches reports whether the route takes a request: path is the request
// URI, whose query does not count.
func (r *route) matches(method, uri string, hdr http.Header) bool {
	if r.prefix != "" {
		path := uri
		if i := strings.IndexByte(uri, '?'); i >= 0 {
			path = uri[:i]
		}
		if !strings.HasPrefix(path, r.prefix) {
			return false
		}
	}
	if len(r.methods) > 0 && !slices.Contains(r.methods, method) {
		return false
	}
	// Header names are in canonical form, as net/http keeps the names of
	// the requests it reads and http.Header.Set those it is given.
	for i := range r.headers {
		if !slices.Contains(hdr[r.headers[i].name], r.headers[i].value) {
			return false
		}
	}
	return true
}

// pick chooses a subset by weight; n is a number in [0, 100).
func (r *route) pick(n int) *Target {
	for i, c := range r.cum {
		if n < c {
			return &r.targets[i]
		}
	}
	return &r.targets[len(r.targets)-1]
}

// Route is the routing decision: the target of the first route of the
// service's config that matches the request (a subset, picked by the
// route's weights), else the whole service; nil for the defaults policy of
// services without a config, whose caller targets the service itself.
func (p *Policy) Route(method, uri string, hdr http.Header) *Target {
	for i := range p.routes {
		r := &p.routes[i]
		if !r.matches(method, uri, hdr) {
			continue
		}
		if len(r.targets) == 1 {
			return &r.targets[0]
		}
		return r.pick(rand.IntN(100))
	}
	if p.own.Subject == "" {
		return nil
	}
	return &p.own
}
