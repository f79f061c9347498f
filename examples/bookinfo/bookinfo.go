// Package bookinfo is Istio's bookinfo sample as four small net/http apps
// that know nothing of NATS: productpage renders a page about a book from
// details and reviews, and reviews (in versions v1, v2 and v3) asks ratings
// for stars. Each app calls the others by service name (http://reviews/...)
// through the outbound proxy of its own sidecar, as HTTP_PROXY would send
// it, and passes on the trace headers and the end user (x-user) of the
// request it is serving, so that the mesh can route and trace by them.
//
// The apps run in-process in `natsmesh demo`, and as separate processes
// with examples/bookinfo/cmd/bookinfo.
package bookinfo

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Config says which bookinfo service an app is and how it reaches the others.
type Config struct {
	Service string // "productpage", "details", "reviews" or "ratings"
	Version string // "v1" (default), and for reviews "v2" or "v3"
	// Proxy is the outbound proxy of the app's own sidecar (host:port, as
	// HTTP_PROXY would say); "" takes HTTP_PROXY from the environment.
	Proxy string
}

// Services lists the four services in the order they should start (callees
// first).
var Services = []string{"ratings", "details", "reviews", "productpage"}

// Versions lists the versions each service comes in.
var Versions = map[string][]string{
	"productpage": {"v1"},
	"details":     {"v1"},
	"reviews":     {"v1", "v2", "v3"},
	"ratings":     {"v1"},
}

// ErrUnknown is returned by Handler for a service or version bookinfo does
// not have.
var ErrUnknown = errors.New("bookinfo: unknown service or version")

// Timeouts of the apps' calls. productpage gives details and reviews less
// time than reviews gives ratings, as Istio's sample does, so that a delay
// injected into ratings (ratings-delay.yaml) shows on the page as reviews
// being unavailable.
const (
	ProductPageTimeout = 1500 * time.Millisecond // productpage → details, reviews
	ReviewsTimeout     = 5 * time.Second         // reviews → ratings
)

// Handler returns the app's HTTP handler; an error for an unknown service or
// version.
func Handler(cfg Config) (http.Handler, error) {
	if cfg.Version == "" {
		cfg.Version = "v1"
	}
	versions, ok := Versions[cfg.Service]
	if !ok {
		return nil, fmt.Errorf("%w: service %q (want one of %s)", ErrUnknown, cfg.Service, strings.Join(Services, ", "))
	}
	if !slices.Contains(versions, cfg.Version) {
		return nil, fmt.Errorf("%w: %s has no version %q (it has %s)", ErrUnknown, cfg.Service, cfg.Version, strings.Join(versions, ", "))
	}
	proxy, err := proxyFunc(cfg.Proxy)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	switch cfg.Service {
	case "productpage":
		p := &productPage{c: newCaller(proxy, ProductPageTimeout)}
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/productpage", http.StatusFound)
		})
		mux.HandleFunc("GET /productpage", p.serve)
	case "details":
		mux.HandleFunc("GET /details/{id}", serveDetails)
	case "reviews":
		rv := &reviews{version: cfg.Version}
		if cfg.Version != "v1" {
			rv.c = newCaller(proxy, ReviewsTimeout)
		}
		mux.HandleFunc("GET /reviews/{id}", rv.serve)
	case "ratings":
		mux.HandleFunc("GET /ratings/{id}", serveRatings)
	}
	return mux, nil
}

// proxyFunc turns Config.Proxy into the proxy setting of an http.Transport.
func proxyFunc(addr string) (func(*http.Request) (*url.URL, error), error) {
	if addr == "" {
		return http.ProxyFromEnvironment, nil
	}
	raw := addr
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("bookinfo: proxy %q: want host:port, as in 127.0.0.1:15001", addr)
	}
	return http.ProxyURL(u), nil
}
