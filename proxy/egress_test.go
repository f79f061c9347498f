package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// Hosts that are not mesh names go out as through a forward proxy, so an
// app with HTTP_PROXY set keeps reaching the outside world. The outside apps
// of these tests are on loopback, which a sidecar refuses unless its
// Egress.Allow lists them (sidecar's own tests cover the refusals).

// outsideApp is a server outside the mesh that records what it received.
func outsideApp(t *testing.T, rec *recorder) (addr string) {
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.record(r, body)
		w.Header().Set("X-Outside", "yes")
		_, _ = io.WriteString(w, "outside: "+string(body))
	}))
	return app.Listener.Addr().String()
}

func TestEgressPlainHTTP(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	addr := outsideApp(t, rec) // 127.0.0.1:PORT
	_, port, _ := net.SplitHostPort(addr)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Egress.Allow = []string{addr, "localhost:" + port} })
	const uri = "/x/a%20b?q=a%20b&r=%E2%9C%93&s=1+2&empty="

	for _, tc := range []struct {
		form, host string
	}{
		{formProxy, addr},                // HTTP_PROXY, http://127.0.0.1:PORT/...
		{formHost, "localhost:" + port},  // Host: localhost:PORT to the outbound listener
		{formProxy, "localhost:" + port}, // localhost is never a mesh name
		{formHost, "127.0.0.1:" + port},  // an IP address is never a mesh name
	} {
		c := sidecarClient(t, tc.form, caller, "frontend")
		req := c.newRequest(t, http.MethodPost, tc.host, uri, strings.NewReader("hello"))
		id := newTestID()
		req.Header.Set("X-Test-Id", id)
		resp, body := c.do(t, req)
		if resp.StatusCode != http.StatusOK || string(body) != "outside: hello" || resp.Header.Get("X-Outside") != "yes" {
			t.Fatalf("%s to %s: status %d body %q, want the outside app's answer", tc.form, tc.host, resp.StatusCode, body)
		}
		if got := resp.Header.Get(bus.HeaderInstance); got != "" {
			t.Errorf("%s to %s: egress answer carries Mesh-Instance %q", tc.form, tc.host, got)
		}
		seen := rec.one(t, id)
		if seen.Host != tc.host {
			t.Errorf("%s: the outside app saw Host %q, want %q", tc.form, seen.Host, tc.host)
		}
		if seen.RequestURI != uri {
			t.Errorf("%s: the outside app saw %q, want %q", tc.form, seen.RequestURI, uri)
		}
		if got := seen.Header.Get(bus.HeaderCaller); got != "" {
			t.Errorf("%s: egress leaks Mesh-Caller %q to the outside", tc.form, got)
		}
	}
}

func TestEgressConnectTunnel(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "not over TLS", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "secret "+r.URL.RawQuery)
	}))
	t.Cleanup(tlsApp.Close)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Egress.Allow = []string{tlsApp.Listener.Addr().String()} })
	tr := proxyTransport(caller.OutboundAddr().String())
	tr.TLSClientConfig = tlsApp.Client().Transport.(*http.Transport).TLSClientConfig
	hc := httpClient(t, tr)
	for i := range 3 { // the tunnel is kept alive across requests
		req, err := http.NewRequest(http.MethodGet, tlsApp.URL+"/secure?n=1", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := doRequest(t, hc, req)
		if resp.StatusCode != http.StatusOK || string(body) != "secret n=1" {
			t.Fatalf("request %d through CONNECT: status %d body %q", i, resp.StatusCode, body)
		}
		if resp.TLS == nil {
			t.Fatalf("request %d: the client did not speak TLS end to end", i)
		}
	}
}

// rawConnect sends CONNECT target to the proxy at addr and returns the answer.
func rawConnect(t *testing.T, addr, target string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(clientTimeout))
	if _, err := io.WriteString(conn, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp, body
}

func TestEgressDenied(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	addr := outsideApp(t, rec)
	_, port, _ := net.SplitHostPort(addr)
	startCallee(t, s, "svc", okApp, nil)
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Egress.Mode = sidecar.EgressDeny })

	for _, tc := range []struct{ form, host string }{
		{formProxy, addr},
		{formHost, "localhost:" + port},
	} {
		c := sidecarClient(t, tc.form, caller, "frontend")
		resp, body := c.get(t, tc.host, "/x")
		wantMeshError(t, resp, body, http.StatusForbidden, bus.Forbidden)
		if !strings.Contains(string(body), tc.host) {
			t.Errorf("%s: the explanation %q does not name the host", tc.form, body)
		}
		// Mesh calls are still served.
		if resp, body := c.get(t, "svc", "/"); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: mesh call with egress denied: status %d %q", tc.form, resp.StatusCode, body)
		}
	}
	resp, body := rawConnect(t, caller.OutboundAddr().String(), addr)
	wantMeshError(t, resp, body, http.StatusForbidden, bus.Forbidden)

	// A library Transport without Egress refuses as well.
	lib := libraryClient(t, s, proxy.TransportConfig{})
	resp, body = lib.get(t, addr, "/x")
	wantMeshError(t, resp, body, http.StatusForbidden, bus.Forbidden)

	if n := rec.count(""); n != 0 {
		t.Fatalf("denied egress reached the outside app %d times", n)
	}
}

// A request addressed to the outbound listener itself is egress to itself:
// it must be refused, not forwarded round and round, even when the
// listener's address is listed as a destination.
func TestEgressLoopRefused(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	self := ln.Addr().String()
	caller := startCaller(t, s, "frontend", func(c *sidecar.Config) { c.Listener, c.Egress.Allow = ln, []string{self} })
	for _, form := range []string{formProxy, formHost} {
		c := sidecarClient(t, form, caller, "frontend")
		start := time.Now()
		resp, body := c.get(t, self, "/loop")
		wantMeshError(t, resp, body, http.StatusBadRequest, bus.BadRequest)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s: the loop was refused only after %s", form, d)
		}
	}
}

// The library Transport forwards non-mesh hosts to its Egress round tripper.
func TestLibraryTransportEgress(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	rec := newRecorder()
	addr := outsideApp(t, rec)
	egress := &http.Transport{}
	t.Cleanup(egress.CloseIdleConnections)
	lib := libraryClient(t, s, proxy.TransportConfig{Egress: egress})
	req := lib.newRequest(t, http.MethodPost, addr, "/out?q=%E2%9C%93", strings.NewReader("lib"))
	id := newTestID()
	req.Header.Set("X-Test-Id", id)
	resp, body := lib.do(t, req)
	if resp.StatusCode != http.StatusOK || string(body) != "outside: lib" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if seen := rec.one(t, id); seen.RequestURI != "/out?q=%E2%9C%93" {
		t.Fatalf("the outside app saw %q", seen.RequestURI)
	}
}
