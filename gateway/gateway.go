package gateway

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy"
)

// DefaultListen is where a gateway takes traffic from outside the mesh.
const DefaultListen = "127.0.0.1:9080"

// DefaultCaller is the Mesh-Caller a gateway's calls carry.
const DefaultCaller = "gateway"

// Route sends requests whose Host matches (empty: any host) and whose
// path starts with Prefix to Service.
type Route struct {
	Host    string // exact host, without port; "" matches any
	Prefix  string // path prefix, starting with "/"
	Service string
}

// String is the route as ParseRoute reads it.
func (r Route) String() string { return r.Host + r.Prefix + "=" + r.Service }

// ParseRoute parses "PREFIX=SERVICE" or "HOST/PREFIX=SERVICE" (e.g.
// "/=productpage", "/api=details", "shop.example.com/=productpage").
func ParseRoute(s string) (Route, error) {
	left, service, ok := strings.Cut(s, "=")
	if !ok {
		return Route{}, fmt.Errorf("gateway: route %q has no '=': write PREFIX=SERVICE or HOST/PREFIX=SERVICE, for example /api=details", s)
	}
	var r Route
	if i := strings.IndexByte(left, '/'); i >= 0 {
		r.Host, r.Prefix = left[:i], left[i:]
	} else {
		return Route{}, fmt.Errorf("gateway: route %q: the path prefix must start with '/': write PREFIX=SERVICE or HOST/PREFIX=SERVICE, for example /api=%s", s, service)
	}
	r.Service = service
	if err := r.validate(); err != nil {
		return Route{}, fmt.Errorf("gateway: route %q: %w", s, err)
	}
	r.Host = strings.ToLower(r.Host)
	return r, nil
}

func (r Route) validate() error {
	if !strings.HasPrefix(r.Prefix, "/") {
		return fmt.Errorf("the path prefix %q must start with '/'", r.Prefix)
	}
	if strings.ContainsAny(r.Prefix, "?# \t") {
		return fmt.Errorf("the path prefix %q must be a path, without query, fragment or spaces", r.Prefix)
	}
	if h := r.Host; h != "" {
		if strings.ContainsAny(h, ":[] \t/@") {
			return fmt.Errorf("host %q must be a host name without port", h)
		}
	}
	return bus.ValidateName("service", r.Service)
}

// handler is the mesh's ingress: an http.Handler, a reverse proxy that takes
// ordinary requests from outside the mesh (browsers, curl) and calls the
// service of the route matching each one's host and path, through a
// Transport: with its timeouts, retries, breakers, per-service config and
// client spans, exactly as a sidecar calls for its app.
//
// The service receives the request's method, path, query, body and headers
// unchanged, with the client's own Host (Mesh-Host), and X-Forwarded-For
// (the client's address appended), X-Forwarded-Host (the client's Host) and
// X-Forwarded-Proto set as a reverse proxy does. Mesh-* headers from the
// client are dropped; the calls carry the Transport's Caller as Mesh-Caller.
// Failures, a request no route matches included (404, Mesh-Error: no-route),
// are answered as the mesh's error responses.
type handler struct {
	t      *proxy.Transport
	routes []Route // host-specific first, then by longer prefix
	list   string  // the routes, for the no-route sentence
	log    *slog.Logger
}

var _ http.Handler = (*handler)(nil)

// NewHandler makes an http.Handler that forwards each request to the service
// of the longest matching route (host-specific routes before host-less ones)
// through t; no route → 404 with a sentence listing the routes. Request path
// and query pass unchanged.
func NewHandler(t *proxy.Transport, routes []Route, log *slog.Logger) (http.Handler, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: the gateway needs a transport", ErrInvalidConfig)
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("%w: Config.Routes: the gateway needs at least one route, for example /=productpage", ErrInvalidConfig)
	}
	if log == nil {
		log = slog.Default()
	}
	rs := make([]Route, len(routes))
	seen := make(map[[2]string]string, len(routes))
	names := make([]string, len(routes))
	for i, r := range routes {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("%w: Config.Routes: route %s: %w", ErrInvalidConfig, r, err)
		}
		r.Host = strings.ToLower(r.Host)
		key := [2]string{r.Host, r.Prefix}
		if s, dup := seen[key]; dup && s != r.Service {
			return nil, fmt.Errorf("%w: Config.Routes: routes %s and %s have the same host and prefix", ErrInvalidConfig, r.Host+r.Prefix+"="+s, r)
		}
		seen[key] = r.Service
		rs[i] = r
		names[i] = r.String()
	}
	sort.SliceStable(rs, func(i, j int) bool {
		if (rs[i].Host != "") != (rs[j].Host != "") {
			return rs[i].Host != ""
		}
		return len(rs[i].Prefix) > len(rs[j].Prefix)
	})
	return &handler{t: t, routes: rs, list: strings.Join(names, ", "), log: log}, nil
}

// match is the route for a request's host and path, or nil.
func (g *handler) match(host, path string) *Route {
	host = requestHost(host)
	for i := range g.routes {
		r := &g.routes[i]
		if (r.Host == "" || r.Host == host) && strings.HasPrefix(path, r.Prefix) {
			return r
		}
	}
	return nil
}

// requestHost is a Host header's host name: without port, lower case,
// without a trailing dot.
func requestHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

func (g *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		proxy.WriteError(w, r, bus.Errorf(bus.BadRequest, "the gateway is not a forward proxy: send ordinary requests (GET /path with a Host header), not CONNECT"))
		return
	}
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	route := g.match(r.Host, path)
	if route == nil {
		g.log.Debug("no gateway route", "host", r.Host, "path", path)
		proxy.WriteError(w, r, &bus.Error{Code: bus.NoRoute, Status: http.StatusNotFound,
			Message: fmt.Sprintf("no gateway route matches host %q and path %q; the routes are %s", r.Host, path, g.list)})
		return
	}
	g.t.Forward(w, r, route.Service, r.Host, forwardedHeader(r))
}

// forwardedHeader is r's header with the X-Forwarded-* headers a reverse
// proxy sets: the client's address appended to X-Forwarded-For, as
// net/http/httputil.ReverseProxy does, and X-Forwarded-Host and
// X-Forwarded-Proto naming this hop's host and scheme.
func forwardedHeader(r *http.Request) http.Header {
	h := make(http.Header, len(r.Header)+3)
	for k, v := range r.Header {
		h[k] = v // the values are not modified; the codec copies them
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	h["X-Forwarded-Proto"] = []string{proto}
	return h
}
