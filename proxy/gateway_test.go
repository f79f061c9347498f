package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

func TestParseGatewayRoute(t *testing.T) {
	tests := []struct {
		name, in string
		want     gateway.Route
		err      string // part of the error; "" for none
	}{
		{name: "root", in: "/=productpage", want: gateway.Route{Prefix: "/", Service: "productpage"}},
		{name: "prefix", in: "/api=details", want: gateway.Route{Prefix: "/api", Service: "details"}},
		{name: "host", in: "shop.example.com/=productpage", want: gateway.Route{Host: "shop.example.com", Prefix: "/", Service: "productpage"}},
		{name: "host and prefix", in: "Shop.Example.com/api/v1=details", want: gateway.Route{Host: "shop.example.com", Prefix: "/api/v1", Service: "details"}},
		{name: "no equals", in: "/api", err: "no '='"},
		{name: "prefix without slash", in: "api=details", err: "must start with '/'"},
		{name: "empty prefix", in: "=details", err: "must start with '/'"},
		{name: "empty service", in: "/=", err: "service"},
		{name: "invalid service", in: "/=Product.Page", err: "service"},
		{name: "service with slash", in: "/=a/b", err: "service"},
		{name: "host with port", in: "shop.example.com:80/=productpage", err: "without port"},
		{name: "query in prefix", in: "/api?x=details", err: "must be a path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := gateway.ParseRoute(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseGatewayRoute(%q) = %+v, %v; want an error with %q", tt.in, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseGatewayRoute(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if _, err := gateway.ParseRoute(got.String()); err != nil {
				t.Errorf("String %q does not parse: %v", got.String(), err)
			}
		})
	}
}

func TestNewGatewayRejects(t *testing.T) {
	s := meshtest.RunServer(t)
	tr := newTransport(t, s, proxy.TransportConfig{})
	for name, routes := range map[string][]gateway.Route{
		"none":      nil,
		"no slash":  {{Prefix: "api", Service: "details"}},
		"bad name":  {{Prefix: "/", Service: "Details"}},
		"duplicate": {{Prefix: "/a", Service: "one"}, {Prefix: "/a", Service: "two"}},
	} {
		if _, err := gateway.NewHandler(tr, routes, testLogger()); err == nil {
			t.Errorf("%s: NewGateway(%v) made a gateway", name, routes)
		}
	}
}

// startGateway serves a gateway with routes on a random port.
func startGateway(t testing.TB, s *embedded.Server, cfg proxy.TransportConfig, routes ...string) *httptest.Server {
	t.Helper()
	var rs []gateway.Route
	for _, r := range routes {
		gr, err := gateway.ParseRoute(r)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, gr)
	}
	if cfg.Caller == "" {
		cfg.Caller = gateway.DefaultCaller
	}
	gw, err := gateway.NewHandler(newTransport(t, s, cfg), rs, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	return srv
}

// named answers with its name, and the request as it arrived.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var meshHeaders []string
		for k := range r.Header {
			if strings.HasPrefix(k, "Mesh-") && k != bus.HeaderCaller {
				meshHeaders = append(meshHeaders, k)
			}
		}
		w.Header().Set("X-Service", name)
		w.Header().Set("X-Uri", r.RequestURI)
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-Caller", r.Header.Get(bus.HeaderCaller))
		w.Header().Set("X-Saw-Mesh", strings.Join(meshHeaders, ","))
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Traceparent"} {
			w.Header().Set("X-Saw-"+k, r.Header.Get(k))
		}
		w.Write(body)
	})
}

func TestGatewayRoutes(t *testing.T) {
	s := meshtest.RunServer(t)
	for _, name := range []string{"front", "api", "apiv2", "shop"} {
		serveHandler(t, s, named(name), proxy.ServeConfig{Service: name})
	}
	gw := startGateway(t, s, proxy.TransportConfig{}, "/=front", "/api=api", "/api/v2=apiv2", "shop.example.com/=shop")
	hc := httpClient(t, &http.Transport{DisableCompression: true})
	for _, tt := range []struct{ host, uri, want string }{
		{"", "/", "front"},
		{"", "/productpage?u=1", "front"},
		{"", "/api", "api"},
		{"", "/api/details/1", "api"},
		{"", "/api/v2/x", "apiv2"},
		{"", "/apiary", "api"}, // a plain prefix, as documented
		{"shop.example.com", "/api/v2/x", "shop"},
		{"SHOP.example.com:8080", "/", "shop"},
		{"other.example.com", "/api/v2", "apiv2"},
	} {
		req, _ := http.NewRequest(http.MethodGet, gw.URL+tt.uri, nil)
		if tt.host != "" {
			req.Host = tt.host
		}
		resp, _ := doRequest(t, hc, req)
		if got := resp.Header.Get("X-Service"); resp.StatusCode != http.StatusOK || got != tt.want {
			t.Errorf("Host %q %s: status %d, served by %q; want %q", tt.host, tt.uri, resp.StatusCode, got, tt.want)
		}
		if got := resp.Header.Get("X-Uri"); got != tt.uri {
			t.Errorf("%s reached the app as %q", tt.uri, got)
		}
	}

	// No route: 404, with the routes in the sentence.
	only := startGateway(t, s, proxy.TransportConfig{}, "/api=api", "shop.example.com/=shop")
	resp, body := doRequest(t, hc, gatewayRequest(t, http.MethodGet, only.URL+"/nope", nil))
	wantMeshError(t, resp, body, http.StatusNotFound, bus.NoRoute)
	for _, want := range []string{`"/nope"`, "/api=api", "shop.example.com/=shop"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no-route body %q does not mention %s", body, want)
		}
	}
}

func gatewayRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// The request reaches the service as the client sent it, with the client's
// Host, X-Forwarded-* set, no Mesh-* header of the client's, and a trace
// started for it.
func TestGatewayPassesRequest(t *testing.T) {
	s := meshtest.RunServer(t)
	serveHandler(t, s, named("api"), proxy.ServeConfig{Service: "api"})
	tp, exp := newTestTracing(t)
	gw := startGateway(t, s, proxy.TransportConfig{TracerProvider: tp}, "/=api")
	hc := httpClient(t, &http.Transport{DisableCompression: true})

	uri := "/a%2Fb/c?q=x%20y&q=2&empty="
	req := gatewayRequest(t, http.MethodPost, gw.URL+uri, strings.NewReader("hello body"))
	req.Host = "www.example.com"
	req.Header.Set("X-Forwarded-For", "10.1.2.3")
	req.Header.Set("X-Forwarded-Host", "spoofed")
	req.Header.Set(bus.HeaderCaller, "intruder")
	req.Header.Set(bus.HeaderPath, "/admin")
	req.Header.Set(bus.HeaderTimeout, "1")
	req.Header.Set("Mesh-Whatever", "x")
	resp, body := doRequest(t, hc, req)
	if resp.StatusCode != http.StatusOK || string(body) != "hello body" {
		t.Fatalf("status %d, body %q", resp.StatusCode, body)
	}
	for k, want := range map[string]string{
		"X-Uri":                   uri,
		"X-Method":                http.MethodPost,
		"X-Host":                  "www.example.com",
		"X-Caller":                "gateway",
		"X-Saw-Mesh":              "",
		"X-Saw-X-Forwarded-For":   "10.1.2.3, 127.0.0.1",
		"X-Saw-X-Forwarded-Host":  "www.example.com",
		"X-Saw-X-Forwarded-Proto": "http",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q; want %q", k, got, want)
		}
	}
	if tp := resp.Header.Get("X-Saw-Traceparent"); tp == "" {
		t.Error("the app got no traceparent: the gateway started no trace")
	}
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Parent.IsValid() {
		t.Errorf("spans %d; want one client span, a root", len(spans))
	}

	// A client's trace goes on.
	exp.Reset()
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	req = gatewayRequest(t, http.MethodGet, gw.URL+"/", nil)
	req.Header.Set("Traceparent", parent)
	resp, _ = doRequest(t, hc, req)
	if got := resp.Header.Get("X-Saw-Traceparent"); !strings.HasPrefix(got, "00-0af7651916cd43dd8448eb211c80319c-") || got == parent {
		t.Errorf("the app got traceparent %q; want the client's trace with the gateway's span", got)
	}
}

func TestGatewayMeshErrors(t *testing.T) {
	s := meshtest.RunServer(t)
	gw := startGateway(t, s, proxy.TransportConfig{Retry: traffic.RetryPolicy{Retries: -1}}, "/=ghost")
	hc := httpClient(t, &http.Transport{DisableCompression: true})
	resp, body := doRequest(t, hc, gatewayRequest(t, http.MethodGet, gw.URL+"/", nil))
	wantMeshError(t, resp, body, http.StatusServiceUnavailable, bus.NoResponders)

	req := gatewayRequest(t, http.MethodGet, gw.URL+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	resp, body = doRequest(t, hc, req)
	wantMeshError(t, resp, body, http.StatusNotImplemented, bus.NotSupported)
}

// Bodies over one NATS message stream through the gateway both ways.
func TestGatewayStreams(t *testing.T) {
	s := meshtest.RunServer(t)
	const size = 5 << 20
	big := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			w.Write(big)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Write([]byte(strconv.FormatInt(n, 10) + " " + string(h.Sum(nil))))
	}), proxy.ServeConfig{Service: "files"})
	gw := startGateway(t, s, proxy.TransportConfig{}, "/files=files")
	hc := httpClient(t, &http.Transport{DisableCompression: true})

	resp, body := doRequest(t, hc, gatewayRequest(t, http.MethodGet, gw.URL+"/files/big", nil))
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, big) {
		t.Fatalf("download: status %d, %d bytes; want 200, %d bytes", resp.StatusCode, len(body), size)
	}
	sum := sha256.Sum256(big)
	want := strconv.Itoa(size) + " " + string(sum[:])
	// Known length, and unknown (chunked).
	for _, r := range []io.Reader{bytes.NewReader(big), io.MultiReader(bytes.NewReader(big))} {
		resp, body = doRequest(t, hc, gatewayRequest(t, http.MethodPost, gw.URL+"/files/up", r))
		if resp.StatusCode != http.StatusOK || string(body) != want {
			t.Fatalf("upload: status %d, %q", resp.StatusCode, body)
		}
	}
}

// The service's config applies to the gateway's calls: a header route.
func TestGatewayConfig(t *testing.T) {
	s := meshtest.RunServer(t)
	for _, subset := range []string{"v1", "v2"} {
		serveHandler(t, s, named(subset), proxy.ServeConfig{Service: "reviews", Subset: subset})
	}
	cfgs := newMemConfigs()
	cfgs.apply(t, `
service: reviews
routes:
  - match: {headers: {x-user: jason}}
    split: {v2: 100}
  - split: {v1: 100}
`)
	gw := startGateway(t, s, proxy.TransportConfig{Configs: cfgs}, "/=reviews")
	hc := httpClient(t, &http.Transport{DisableCompression: true})
	for user, want := range map[string]string{"jason": "v2", "bob": "v1", "": "v1"} {
		for range 3 {
			req := gatewayRequest(t, http.MethodGet, gw.URL+"/reviews/1", nil)
			if user != "" {
				req.Header.Set("X-User", user)
			}
			resp, _ := doRequest(t, hc, req)
			if got := resp.Header.Get("X-Service"); got != want {
				t.Fatalf("x-user %q: served by %q; want %s", user, got, want)
			}
		}
	}
}
