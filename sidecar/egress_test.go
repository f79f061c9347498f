package sidecar_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/sidecar"
)

// Every test here sends traffic to loopback only: a name that looks public
// resolves, through fakeNet, to a documentation address, and the dialer maps
// that address to a local listener.

// fakeNet is an EgressConfig's Resolver and Dial: it maps names to
// addresses and addresses to local listeners, and records every lookup and
// dial it is asked for.
type fakeNet struct {
	names    map[string][]string // name → addresses
	routes   map[string]string   // ip:port asked → the loopback address dialed
	fallback string              // dialed for an ip:port routes does not name; "" fails

	mu      sync.Mutex
	lookups []string
	dials   []string
}

func (f *fakeNet) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	f.lookups = append(f.lookups, host)
	f.mu.Unlock()
	var ips []netip.Addr
	for _, a := range f.names[host] {
		ips = append(ips, netip.MustParseAddr(a))
	}
	if ips == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return ips, nil
}

func (f *fakeNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dials = append(f.dials, addr)
	f.mu.Unlock()
	to, ok := f.routes[addr]
	if !ok {
		to = f.fallback
	}
	if to == "" {
		return nil, fmt.Errorf("the test has no route to %s", addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

func (f *fakeNet) seen() (lookups, dials []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lookups), slices.Clone(f.dials)
}

func (f *fakeNet) config(mode sidecar.EgressMode, allow ...string) sidecar.EgressConfig {
	return sidecar.EgressConfig{Mode: mode, Allow: allow, Resolver: f, Dial: f.Dial}
}

// startEgress starts a sidecar on s whose egress is ec, shut down when the
// test ends.
func startEgress(t *testing.T, s *embedded.Server, ec sidecar.EgressConfig) *sidecar.Sidecar {
	t.Helper()
	sc, err := sidecar.Start(meshtest.Connect(t, s), sidecar.Config{
		Service: "front", Upstream: app(t).URL, Listen: "127.0.0.1:0", Logger: quiet,
		StatsInterval: -1, Egress: ec,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sc.Shutdown(ctx)
	})
	return sc
}

// app is a plain HTTP server on loopback that says which Host it was asked.
func app(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "outside app for "+r.Host)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// request is one way an app sends a call for dest (host:port) to its
// sidecar.
type request func(t *testing.T, sc *sidecar.Sidecar, dest string) (*http.Response, string)

// viaProxy sends GET http://dest/ with the sidecar as HTTP_PROXY.
func viaProxy(t *testing.T, sc *sidecar.Sidecar, dest string) (*http.Response, string) {
	t.Helper()
	pu := &url.URL{Scheme: "http", Host: sc.OutboundAddr().String()}
	tr := &http.Transport{Proxy: http.ProxyURL(pu)}
	defer tr.CloseIdleConnections()
	return send(t, tr, "http://"+dest+"/", "")
}

// viaHost sends GET / to the sidecar with Host: dest.
func viaHost(t *testing.T, sc *sidecar.Sidecar, dest string) (*http.Response, string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	return send(t, tr, "http://"+sc.OutboundAddr().String()+"/", dest)
}

func send(t *testing.T, tr http.RoundTripper, target, host string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET %s (Host %q): %v", target, host, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// viaConnect sends CONNECT dest to the sidecar and returns its answer.
func viaConnect(t *testing.T, sc *sidecar.Sidecar, dest string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", sc.OutboundAddr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", dest, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, ""
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp, string(body)
}

var forms = map[string]request{"proxy": viaProxy, "host": viaHost, "connect": viaConnect}

// wantRefused checks a refusal of dest: 403 forbidden, one sentence naming
// dest, the reason and the flag that allows it.
func wantRefused(t *testing.T, what string, resp *http.Response, body, dest, reason string) {
	t.Helper()
	want := "egress to " + dest + " is refused: "
	hint := "; list it with --egress-allow " + dest + " if the app must reach it"
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get(bus.HeaderError) != string(bus.Forbidden) ||
		!strings.HasPrefix(body, want) || !strings.Contains(body, reason) || !strings.HasSuffix(strings.TrimSpace(body), hint) {
		t.Errorf("%s: %s, Mesh-Error %q, body %q; want 403 forbidden, %q…%q…%q", what, resp.Status, resp.Header.Get(bus.HeaderError), body, want, reason, hint)
	}
}

// The attacks of the issue: through its sidecar an app must reach neither
// NATS, nor another sidecar, nor an app on its own port, nor the cloud
// metadata service, in any form — and nothing is dialed to find out.
func TestEgressRefusesThisMachine(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	fake := &fakeNet{names: map[string][]string{
		"localhost":                {"127.0.0.1", "::1"},
		"metadata.google.internal": {"169.254.169.254"},
	}}
	other := startEgress(t, s, sidecar.EgressConfig{})
	victim := app(t)
	_, victimPort, _ := net.SplitHostPort(victim.Listener.Addr().String())
	for _, mode := range []sidecar.EgressMode{sidecar.EgressAllowPublic, sidecar.EgressAllow} {
		sc := startEgress(t, s, fake.config(mode))
		for _, tc := range []struct{ dest, reason string }{
			{s.Addr().String(), "it is a loopback address"},             // NATS
			{other.OutboundAddr().String(), "it is a loopback address"}, // another sidecar
			{victim.Listener.Addr().String(), "it is a loopback address"},
			{"127.0.0.1:443", "it is a loopback address"},
			{"127.9.9.9:443", "it is a loopback address"},
			{"[::1]:443", "it is a loopback address"},
			{"[::ffff:127.0.0.1]:" + victimPort, "it is a loopback address"},
			{"localhost:" + victimPort, "it resolves to 127.0.0.1, a loopback address"},
			{"169.254.169.254:80", "it is a link-local address"},
			{"169.254.169.254:443", "it is a link-local address"},
			{"metadata.google.internal:80", "it resolves to 169.254.169.254, a link-local address"},
			{"[fe80::1]:443", "it is a link-local address"},
			{"[fd00:ec2::254]:80", "it is a cloud metadata address"},
			{"0.0.0.0:" + victimPort, "it is an unspecified address"},
			{"[::]:443", "it is an unspecified address"},
		} {
			for name, form := range forms {
				want := tc.reason
				if name == "connect" && !strings.HasSuffix(tc.dest, ":443") {
					want = "CONNECT reaches port 443 only"
				}
				dest := strings.Replace(tc.dest, "[::ffff:127.0.0.1]", "127.0.0.1", 1) // as the sentence writes it
				resp, body := form(t, sc, tc.dest)
				wantRefused(t, fmt.Sprintf("%s, %s to %s", mode, name, tc.dest), resp, body, dest, want)
			}
		}
	}
	lookups, dials := fake.seen()
	if len(dials) != 0 {
		t.Errorf("refused destinations were dialed: %q", dials)
	}
	for _, l := range lookups {
		if l != "localhost" && l != "metadata.google.internal" {
			t.Errorf("looked up %q: an IP address needs no lookup", l)
		}
	}
}

// With the real dialer too, a refused destination sees no connection: a
// listener on it accepts only the test's own, made after the refusals.
func TestEgressRefusalConnectsNothing(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan string, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	sc := startEgress(t, s, sidecar.EgressConfig{})
	dest := ln.Addr().String()
	for name, form := range forms {
		resp, body := form(t, sc, dest)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s to %s: %s %q; want 403", name, dest, resp.Status, body)
		}
	}
	// Connections are accepted in the order they were made: if the
	// sentinel's is the first, none came before it.
	sentinel, err := net.Dial("tcp", dest)
	if err != nil {
		t.Fatal(err)
	}
	defer sentinel.Close()
	select {
	case from := <-accepted:
		if from != sentinel.LocalAddr().String() {
			t.Fatalf("the refused destination accepted a connection from %s before the test's own", from)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the sentinel connection was not accepted within 10s")
	}
}

// A listed host:port is reached whatever the mode refuses, by plain HTTP and
// by CONNECT on a port other than 443.
func TestEgressAllowListed(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	plain := app(t)
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "tls app")
	}))
	t.Cleanup(tlsApp.Close)
	_, port, _ := net.SplitHostPort(plain.Listener.Addr().String())
	for _, mode := range []sidecar.EgressMode{sidecar.EgressAllowPublic, sidecar.EgressAllow, sidecar.EgressDeny} {
		sc := startEgress(t, s, sidecar.EgressConfig{Mode: mode, Allow: []string{
			plain.Listener.Addr().String(), "LocalHost.:" + port, tlsApp.Listener.Addr().String(),
		}})
		for _, dest := range []string{plain.Listener.Addr().String(), "localhost:" + port} {
			for _, name := range []string{"proxy", "host"} {
				resp, body := forms[name](t, sc, dest)
				if resp.StatusCode != http.StatusOK || body != "outside app for "+dest {
					t.Errorf("%s, %s to listed %s: %s %q; want the app's answer", mode, name, dest, resp.Status, body)
				}
			}
		}
		pu := &url.URL{Scheme: "http", Host: sc.OutboundAddr().String()}
		tr := &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: tlsApp.Client().Transport.(*http.Transport).TLSClientConfig}
		resp, body := send(t, tr, tlsApp.URL+"/", "")
		tr.CloseIdleConnections()
		if resp.StatusCode != http.StatusOK || body != "tls app" {
			t.Errorf("%s, CONNECT to listed %s: %s %q", mode, tlsApp.Listener.Addr(), resp.Status, body)
		}
		if mode == sidecar.EgressDeny {
			resp, body := viaProxy(t, sc, "example.com:80")
			wantRefused(t, "deny, proxy to unlisted example.com:80", resp, body, "example.com:80", "this sidecar runs with --egress=deny")
		}
	}
}

// A public destination goes out in allow-public: the name is resolved once,
// the checked address is dialed (never the name), and the Host and the TLS
// server name stay the app's.
func TestEgressPublicDestination(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	plain := app(t)
	var sni sync.Map
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni.Store(r.TLS.ServerName, true)
		_, _ = io.WriteString(w, "tls app for "+r.Host)
	}))
	t.Cleanup(tlsApp.Close)
	fake := &fakeNet{
		names: map[string][]string{"example.com": {"203.0.113.7"}, "rebind.example": {"203.0.113.8", "127.0.0.1"}},
		routes: map[string]string{
			"203.0.113.7:80":  plain.Listener.Addr().String(),
			"203.0.113.7:443": tlsApp.Listener.Addr().String(),
		},
	}
	sc := startEgress(t, s, fake.config(""))
	for _, name := range []string{"proxy", "host"} {
		resp, body := forms[name](t, sc, "example.com")
		if resp.StatusCode != http.StatusOK || body != "outside app for example.com" {
			t.Errorf("%s to example.com: %s %q; want the app's answer for Host example.com", name, resp.Status, body)
		}
	}
	pu := &url.URL{Scheme: "http", Host: sc.OutboundAddr().String()}
	roots := tlsApp.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	tr := &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: roots}}
	resp, body := send(t, tr, "https://example.com/", "")
	tr.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK || body != "tls app for example.com" {
		t.Errorf("CONNECT example.com:443: %s %q", resp.Status, body)
	}
	if _, ok := sni.Load("example.com"); !ok {
		t.Error("the TLS server was not asked for example.com (SNI)")
	}
	// A name with one address on loopback is refused as a whole.
	resp, body = viaProxy(t, sc, "rebind.example")
	wantRefused(t, "proxy to rebind.example", resp, body, "rebind.example:80", "it resolves to 127.0.0.1, a loopback address")

	lookups, dials := fake.seen()
	for _, d := range dials {
		if d != "203.0.113.7:80" && d != "203.0.113.7:443" {
			t.Errorf("dialed %q; want only example.com's checked addresses", d)
		}
	}
	if len(dials) == 0 || len(lookups) != len(dials)+1 { // one lookup per connection, and rebind.example's
		t.Errorf("lookups %q for dials %q; want one lookup per connection dialed", lookups, dials)
	}
}

// allow-public refuses private ranges unless listed; allow reaches them.
func TestEgressPrivateRanges(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	plain := app(t)
	names := map[string][]string{"db.corp": {"10.0.0.5"}}
	// public's dialer reaches only the listed address and the public ones.
	fake := &fakeNet{names: names, routes: map[string]string{}}
	for _, a := range []string{"192.168.7.7:80", "172.15.0.1:80", "172.32.0.1:80", "100.128.0.1:80", "203.0.113.9:80"} {
		fake.routes[a] = plain.Listener.Addr().String()
	}
	public := startEgress(t, s, fake.config(sidecar.EgressAllowPublic, "192.168.7.7:80"))
	reach := &fakeNet{names: names, fallback: plain.Listener.Addr().String()}
	private := startEgress(t, s, reach.config(sidecar.EgressAllow))
	for _, tc := range []struct{ dest, reason string }{
		{"10.1.2.3:80", "it is a private address"},
		{"172.16.0.1:80", "it is a private address"},
		{"172.31.255.1:80", "it is a private address"},
		{"192.168.1.1:80", "it is a private address"},
		{"100.64.0.1:80", "it is a private address"},
		{"[fd00::1]:80", "it is a private address"},
		{"db.corp:80", "it resolves to 10.0.0.5, a private address"},
		{"[64:ff9b::a01:203]:80", "it is a private address"}, // 10.1.2.3 through NAT64
	} {
		resp, body := viaProxy(t, public, tc.dest)
		wantRefused(t, "allow-public to "+tc.dest, resp, body, tc.dest, tc.reason)
		if _, dials := fake.seen(); len(dials) != 0 {
			t.Fatalf("allow-public dialed %q for %s", dials, tc.dest)
		}
		if resp, body := viaProxy(t, private, tc.dest); resp.StatusCode != http.StatusOK {
			t.Errorf("allow to %s: %s %q; want the app's answer", tc.dest, resp.Status, body)
		}
	}
	if resp, body := viaHost(t, public, "192.168.7.7:80"); resp.StatusCode != http.StatusOK {
		t.Errorf("allow-public to listed 192.168.7.7:80: %s %q", resp.Status, body)
	}
	for _, dest := range []string{"172.15.0.1:80", "172.32.0.1:80", "100.128.0.1:80", "203.0.113.9:80"} {
		if resp, body := viaProxy(t, public, dest); resp.StatusCode != http.StatusOK {
			t.Errorf("allow-public to public %s: %s %q", dest, resp.Status, body)
		}
	}
}

// CONNECT reaches port 443 only, unless the destination is listed; the
// refusal needs neither a lookup nor a dial.
func TestEgressConnectPort(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	plain := app(t)
	fake := &fakeNet{names: map[string][]string{"example.com": {"203.0.113.7"}}, fallback: plain.Listener.Addr().String()}
	sc := startEgress(t, s, fake.config("", "example.com:8443"))
	for _, dest := range []string{"example.com:22", "example.com:80", "203.0.113.7:25"} {
		resp, body := viaConnect(t, sc, dest)
		wantRefused(t, "CONNECT "+dest, resp, body, dest, "CONNECT reaches port 443 only")
	}
	if lookups, dials := fake.seen(); len(lookups)+len(dials) != 0 {
		t.Errorf("a CONNECT refused for its port looked up %q and dialed %q", lookups, dials)
	}
	for _, dest := range []string{"example.com:443", "example.com:8443"} {
		if resp, body := viaConnect(t, sc, dest); resp.StatusCode != http.StatusOK {
			t.Errorf("CONNECT %s: %s %q; want the tunnel", dest, resp.Status, body)
		}
	}
	// But a plain HTTP request may go to any port of a public address.
	if resp, body := viaProxy(t, sc, "example.com:8080"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET http://example.com:8080/: %s %q", resp.Status, body)
	}
}

// Start refuses a bad egress config, naming the field.
func TestEgressBadConfig(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, tc := range []struct {
		name string
		ec   sidecar.EgressConfig
		want string
	}{
		{"unknown mode", sidecar.EgressConfig{Mode: "open"}, "Config.Egress.Mode"},
		{"no port", sidecar.EgressConfig{Allow: []string{"example.com"}}, "Config.Egress.Allow"},
		{"bad entry after good", sidecar.EgressConfig{Allow: []string{"example.com:443", "x:0"}}, "Config.Egress.Allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := sidecar.Start(nc, sidecar.Config{Service: "front", Upstream: "http://127.0.0.1:1", Listen: "127.0.0.1:0", Logger: quiet, Egress: tc.ec})
			if err == nil {
				_ = sc.Shutdown(context.Background())
				t.Fatalf("Start succeeded; want an error naming %s", tc.want)
			}
			if !errors.Is(err, sidecar.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "--") {
				t.Errorf("Start: %v; want an ErrInvalidConfig naming %s and no flag", err, tc.want)
			}
		})
	}
}

func TestValidateDestination(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"api.example.com:443", "API.Example.COM.:443", "10.0.0.5:5432", "[fd00::5]:5432", "[::ffff:10.0.0.5]:1", "db_1.internal:65535", "localhost:8080"} {
		if err := sidecar.ValidateDestination(ok); err != nil {
			t.Errorf("ValidateDestination(%q): %v", ok, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "not host:port"},
		{"api.example.com", "not host:port"},
		{":443", "not host:port"},
		{"[::1:80", "not host:port"},
		{"api.example.com:0", "use a number from 1 to 65535"},
		{"api.example.com:65536", "use a number from 1 to 65535"},
		{"api.example.com:https", "use a number from 1 to 65535"},
		{"api.example.com:-1", "use a number from 1 to 65535"},
		{"bad host:80", "neither an IP address nor a host name"},
		{"-x.example:80", "neither an IP address nor a host name"},
		{"a..b:80", "neither an IP address nor a host name"},
		{"http://x:80", "not host:port"},
		{"x/y:80", "neither an IP address nor a host name"},
		{"*.example.com:443", "neither an IP address nor a host name"},
		{"[fe80::1% x]:80", "use an interface name"},
	} {
		err := sidecar.ValidateDestination(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
			t.Errorf("ValidateDestination(%q): %v; want an error quoting it and saying %q", tc.in, err, tc.want)
		}
	}
}

func FuzzValidateDestination(f *testing.F) {
	for _, s := range []string{"api.example.com:443", "[fd00::5]:5432", "10.0.0.5:80", "x:0", "[::1%eth0]:80", "[::% ]:1", "a.b.:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if sidecar.ValidateDestination(s) != nil {
			return
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" || strings.ContainsAny(host, " /*\x00\n") {
			t.Fatalf("ValidateDestination accepted %q", s)
		}
	})
}

// The mesh's own ports are refused even where the mode reaches their
// address: here the sidecar's own app, on a private address, in allow mode.
func TestEgressRefusesMeshPorts(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	fake := &fakeNet{fallback: app(t).Listener.Addr().String()}
	sc, err := sidecar.Start(meshtest.Connect(t, s), sidecar.Config{
		Service: "front", Upstream: "http://10.9.9.9:8080", Listen: "127.0.0.1:0", Logger: quiet,
		StatsInterval: -1, Outlier: sidecar.OutlierConfig{Consecutive: -1}, Egress: fake.config(sidecar.EgressAllow),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Shutdown(context.Background()) })
	resp, body := viaProxy(t, sc, "10.9.9.9:8080")
	wantRefused(t, "allow, proxy to the app's own port", resp, body, "10.9.9.9:8080", "it is one of the mesh's own ports")
	if _, dials := fake.seen(); len(dials) != 0 {
		t.Errorf("dialed %q", dials)
	}
	if resp, body := viaProxy(t, sc, "10.9.9.9:8081"); resp.StatusCode != http.StatusOK {
		t.Errorf("allow, proxy to another port of the app's address: %s %q", resp.Status, body)
	}
}
