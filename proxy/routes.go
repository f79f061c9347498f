package proxy

import (
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// target is where a call goes: the whole service (subset "") or one subset,
// with the subject its queue group listens on and the key of its breaker and
// retry budget ("reviews", "reviews/v2").
type target struct {
	subset  string
	subject string
	key     string
}

func serviceTarget(subj bus.Subjects, service string) target {
	return target{subject: subj.RPC(service), key: service}
}

func subsetTarget(subj bus.Subjects, service, subset string) target {
	return target{subset: subset, subject: subj.RPCSubset(service, subset), key: service + "/" + subset}
}

// route is a compiled config.Route: its match, and its split as a table of
// cumulative weights over the subsets sorted by name.
type route struct {
	name    string
	prefix  string        // "" matches every path
	methods []string      // empty matches every method
	headers []headerMatch // all must hold
	targets []target      // subsets with a weight above 0, by name
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
	sort.Slice(c.headers, func(i, j int) bool { return c.headers[i].name < c.headers[j].name })
	subsets := make([]string, 0, len(r.Split))
	for subset, w := range r.Split {
		if w > 0 {
			subsets = append(subsets, subset)
		}
	}
	sort.Strings(subsets)
	sum := 0
	for _, subset := range subsets {
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
	if len(r.methods) > 0 {
		found := false
		for _, m := range r.methods {
			if m == method {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for i := range r.headers {
		if !headerHas(hdr, r.headers[i].name, r.headers[i].value) {
			return false
		}
	}
	return true
}

// headerHas reports whether one of the values of header name is value. name
// is in canonical form, as net/http keeps the names of the requests it reads
// and http.Header.Set those it is given.
func headerHas(hdr http.Header, name, value string) bool {
	for _, v := range hdr[name] {
		if v == value {
			return true
		}
	}
	return false
}

// pick chooses a subset by weight; n is a number in [0, 100).
func (r *route) pick(n int) *target {
	for i, c := range r.cum {
		if n < c {
			return &r.targets[i]
		}
	}
	return &r.targets[len(r.targets)-1]
}

// routeRequest returns the target of the first route that matches the
// request, nil if none does (the call goes to the whole service).
func (p *policy) routeRequest(method, uri string, hdr http.Header) *target {
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
	return nil
}
