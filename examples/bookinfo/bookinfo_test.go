package bookinfo_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/examples/bookinfo"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// app is one bookinfo app running behind its own sidecar, with the headers
// of the requests it received.
type app struct {
	URL  string
	sc   *sidecar.Sidecar
	mu   sync.Mutex
	seen []http.Header
}

func (a *app) headers() []http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]http.Header(nil), a.seen...)
}

// startApp serves a bookinfo app on a real socket behind a sidecar of its
// own (in subset version, for reviews), its calls going out through that
// sidecar. wrap, if not nil, wraps the app's handler.
func startApp(t *testing.T, s *embedded.Server, configs proxy.ConfigSource, service, version string, wrap func(http.Handler) http.Handler) *app {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	cfg := sidecar.Config{
		Service:   service,
		Upstream:  "http://" + ts.Listener.Addr().String(),
		Listen:    "127.0.0.1:0",
		Logger:    slog.New(slog.DiscardHandler),
		Transport: proxy.TransportConfig{Configs: configs},
	}
	if service == "reviews" {
		cfg.Subset = version
	}
	sc, err := sidecar.Start(meshtest.Connect(t, s), cfg)
	if err != nil {
		t.Fatalf("start sidecar of %s: %v", service, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sc.Shutdown(ctx)
	})
	h, err := bookinfo.Handler(bookinfo.Config{Service: service, Version: version, Proxy: sc.OutboundAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		h = wrap(h)
	}
	a := &app{sc: sc}
	ts.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, r.Header.Clone())
		a.mu.Unlock()
		h.ServeHTTP(w, r)
	})
	ts.Start()
	t.Cleanup(ts.Close) // before the sidecar's shutdown: cleanups run last-in first-out
	a.URL = ts.URL
	return a
}

// bookinfoMesh starts an embedded NATS server and the given apps, named
// service or service:version.
func bookinfoMesh(t *testing.T, apps ...string) map[string]*app {
	t.Helper()
	return bookinfoMeshWith(t, nil, apps...)
}

// bookinfoMeshWith is bookinfoMesh with the sidecars taking their config
// documents from configs.
func bookinfoMeshWith(t *testing.T, configs proxy.ConfigSource, apps ...string) map[string]*app {
	t.Helper()
	s := meshtest.RunServer(t)
	out := make(map[string]*app)
	for _, name := range apps {
		service, version, _ := strings.Cut(name, ":")
		out[name] = startApp(t, s, configs, service, version, nil)
	}
	return out
}

// get fetches url with the given headers and returns the body.
func get(t *testing.T, url string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	maps(req.Header, header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func maps(dst, src http.Header) {
	for k, v := range src {
		dst[k] = v
	}
}

// page fetches productpage until details and reviews are on it (the
// sidecars' subscriptions reach the server within moments).
func page(t *testing.T, productpage *app, query string, header http.Header) string {
	t.Helper()
	var body string
	meshtest.CheckFor(t, 3*time.Second, 20*time.Millisecond, func() error {
		resp, b := get(t, productpage.URL+"/productpage"+query, header)
		body = b
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("productpage answered %s", resp.Status)
		}
		if !strings.Contains(body, "Reviews served by") || !strings.Contains(body, "William Shakespeare") {
			return errors.New("the page has no details or no reviews yet:\n" + body)
		}
		return nil
	})
	return body
}

func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("the page lacks %q:\n%s", w, body)
		}
	}
}

func TestProductPageReviewsV1HasNoStars(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "ratings", "details", "reviews:v1", "productpage")
	body := page(t, apps["productpage"], "", nil)
	mustContain(t, body,
		"The Comedy of Errors", "PublisherA", "123-1234567890", // details
		"An extremely entertaining play by Shakespeare", // reviews
		"Reviews served by reviews-v1 (instance "+apps["reviews:v1"].sc.Instance()+")",
		"Details served by instance "+apps["details"].sc.Instance(),
	)
	if strings.Contains(body, "★") || strings.Contains(body, "currently unavailable") {
		t.Errorf("reviews v1 shows no stars and nothing is unavailable:\n%s", body)
	}
	if n := len(apps["ratings"].headers()); n != 0 {
		t.Errorf("reviews v1 called ratings %d times; it has no ratings", n)
	}
}

func TestProductPageReviewsV2HasBlackStars(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "ratings", "details", "reviews:v2", "productpage")
	body := page(t, apps["productpage"], "", nil)
	mustContain(t, body, "Reviews served by reviews-v2", "★★★★★", "★★★★☆", `style="color: black"`, "(black stars)")
	if len(apps["ratings"].headers()) == 0 {
		t.Error("reviews v2 did not call ratings")
	}
}

func TestProductPageReviewsV3HasRedStars(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "ratings", "details", "reviews:v3", "productpage")
	body := page(t, apps["productpage"], "", nil)
	mustContain(t, body, "Reviews served by reviews-v3", "★★★★★", `style="color: red"`, "(red stars)")
}

func TestProductPageWithoutRatings(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "details", "reviews:v2", "productpage")
	body := page(t, apps["productpage"], "", nil)
	mustContain(t, body, "Reviews served by reviews-v2", "Ratings service is currently unavailable", "Mesh-Error: no-responders")
	if strings.Contains(body, "★") {
		t.Errorf("stars without ratings:\n%s", body)
	}
}

func TestProductPageWithoutReviewsAndDetails(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "productpage")
	_, body := get(t, apps["productpage"].URL+"/productpage", nil)
	mustContain(t, body,
		"The Comedy of Errors",
		"Error fetching product details: details are currently unavailable (503 Service Unavailable, Mesh-Error: no-responders",
		"Error fetching product reviews: reviews are currently unavailable (503 Service Unavailable, Mesh-Error: no-responders",
	)
}

func TestProductPageTimesOutOnSlowReviews(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startApp(t, s, nil, "details", "", nil)
	startApp(t, s, nil, "reviews", "v1", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(bookinfo.ProductPageTimeout + 300*time.Millisecond):
			case <-r.Context().Done():
			}
			h.ServeHTTP(w, r)
		})
	})
	pp := startApp(t, s, nil, "productpage", "", nil)
	meshtest.CheckFor(t, 4*time.Second, 20*time.Millisecond, func() error {
		_, body := get(t, pp.URL+"/productpage", nil)
		if !strings.Contains(body, "PublisherA") {
			return errors.New("no details yet")
		}
		want := fmt.Sprintf("reviews are currently unavailable (no answer within %s)", bookinfo.ProductPageTimeout)
		if !strings.Contains(body, want) {
			return fmt.Errorf("the page lacks %q:\n%s", want, body)
		}
		return nil
	})
}

func TestUserAndTraceHeadersArePropagated(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "ratings", "details", "reviews:v2", "productpage")
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	in := http.Header{
		"Traceparent": {"00-" + traceID + "-b7ad6b7169203331-01"},
		"Tracestate":  {"vendor=value"},
		"Baggage":     {"tenant=books"},
	}
	body := page(t, apps["productpage"], "?u=jason", in)
	mustContain(t, body, "Signed in as <b>jason</b>")
	for _, name := range []string{"details", "reviews:v2", "ratings"} {
		seen := apps[name].headers()
		if len(seen) == 0 {
			t.Fatalf("%s received no request", name)
		}
		h := seen[len(seen)-1]
		if got := h.Get("X-User"); got != "jason" {
			t.Errorf("%s received x-user %q, want jason", name, got)
		}
		if got := h.Get("Traceparent"); !strings.Contains(got, traceID) {
			t.Errorf("%s received traceparent %q, want trace id %s", name, got, traceID)
		}
		if got := h.Get("Baggage"); got != "tenant=books" {
			t.Errorf("%s received baggage %q", name, got)
		}
	}
}

func TestUserFromHeaderAndCookie(t *testing.T) {
	t.Parallel()
	apps := bookinfoMesh(t, "ratings", "details", "reviews:v1", "productpage")
	pp := apps["productpage"]
	resp, _ := get(t, pp.URL+"/productpage?u=jason", nil)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		cookie = c
	}
	if cookie == nil || cookie.Value != "jason" {
		t.Fatalf("?u=jason set no user cookie: %v", resp.Cookies())
	}
	for name, h := range map[string]http.Header{
		"cookie": {"Cookie": {cookie.String()}},
		"header": {"X-User": {"jason"}},
	} {
		body := page(t, pp, "", h)
		mustContain(t, body, "Signed in as <b>jason</b>")
		seen := apps["reviews:v1"].headers()
		if got := seen[len(seen)-1].Get("X-User"); got != "jason" {
			t.Errorf("with the user in a %s, reviews received x-user %q", name, got)
		}
	}
	resp, body := get(t, pp.URL+"/productpage?u=", http.Header{"Cookie": {cookie.String()}})
	mustContain(t, body, "Not signed in")
	if c := resp.Cookies(); len(c) != 1 || c[0].MaxAge >= 0 {
		t.Errorf("?u= did not clear the cookie: %v", c)
	}
	seen := apps["reviews:v1"].headers()
	if got := seen[len(seen)-1].Get("X-User"); got != "" {
		t.Errorf("signed out, reviews received x-user %q", got)
	}
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, service, version, path string
		status                       int
		want                         string
	}{
		{"root redirects", "productpage", "", "/", http.StatusFound, ""},
		{"details", "details", "", "/details/1", http.StatusOK, `"ISBN-10": "1234567890"`},
		{"details bad id", "details", "", "/details/x", http.StatusBadRequest, "positive integer"},
		{"ratings", "ratings", "v1", "/ratings/1", http.StatusOK, `"Reviewer2": 4`},
		{"reviews v1", "reviews", "v1", "/reviews/1", http.StatusOK, `"version": "v1"`},
		{"healthz", "reviews", "v3", "/healthz", http.StatusOK, "ok"},
		{"healthz productpage", "productpage", "", "/healthz", http.StatusOK, "ok"},
		{"unknown path", "ratings", "", "/details/1", http.StatusNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := bookinfo.Handler(bookinfo.Config{Service: tc.service, Version: tc.version, Proxy: "127.0.0.1:1"})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("GET %s: %d %q, want %d with %q", tc.path, rec.Code, rec.Body, tc.status, tc.want)
			}
			if tc.service == "reviews" && tc.path != "/healthz" && rec.Header().Get("X-Reviews-Version") != tc.version {
				t.Errorf("X-Reviews-Version %q", rec.Header().Get("X-Reviews-Version"))
			}
		})
	}
}

func TestHandlerRejectsUnknown(t *testing.T) {
	t.Parallel()
	for _, cfg := range []bookinfo.Config{
		{Service: "cart"},
		{Service: "reviews", Version: "v4"},
		{Service: "details", Version: "v2"},
		{Service: "productpage", Proxy: "http://%zz"},
	} {
		if _, err := bookinfo.Handler(cfg); err == nil {
			t.Errorf("Handler(%+v) accepted it", cfg)
		}
	}
	for _, s := range bookinfo.Services {
		if _, err := bookinfo.Handler(bookinfo.Config{Service: s}); err != nil {
			t.Errorf("Handler(%s): %v", s, err)
		}
	}
}
