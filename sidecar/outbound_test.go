package sidecar_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/sidecar"
)

// rawRequest sends one request line (and a Host header) to addr over a new
// TCP connection, as a client using the sidecar as its HTTP proxy writes
// it, and returns the response with its body read.
func rawRequest(t *testing.T, addr, requestLine, host string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\r\nHost: %s\r\nConnection: close\r\n\r\n", requestLine, host); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: %v", requestLine, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: body: %v", requestLine, err)
	}
	return resp, string(body)
}

// An absolute-form https:// request for a mesh service, as a client told to
// send https through a plain HTTP proxy writes it, is refused with a
// bad-request before anything is sent: carried as plain HTTP, the app would
// take its call for encrypted.
func TestOutboundRefusesHTTPSToMeshService(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var hits atomic.Int64
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "ratings")
	}))
	t.Cleanup(app.Close)
	sc, err := sidecar.Start(meshtest.Connect(t, s), sidecar.Config{
		Service: "ratings", Upstream: app.URL, Listen: "127.0.0.1:0", Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Shutdown(t.Context()) })
	addr := sc.OutboundAddr().String()

	// The same call over http:// reaches the app, so a refusal below is
	// the sidecar's choice, not a mesh that is not ready.
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, body := rawRequest(t, addr, "GET http://ratings/ HTTP/1.1", "ratings")
		if resp.StatusCode != http.StatusOK || body != "ratings" {
			return fmt.Errorf("GET http://ratings/: %s %q", resp.Status, body)
		}
		return nil
	})

	for _, tc := range []struct{ url, host string }{
		{"https://ratings/", "ratings"},
		{"https://ratings:8443/reviews?x=1", "ratings:8443"},
		{"https://ratings.mesh/", "ratings.mesh"},
	} {
		before, served := hits.Load(), sc.Inbound().Stats().Served
		resp, body := rawRequest(t, addr, "GET "+tc.url+" HTTP/1.1", tc.host)
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Mesh-Error") != "bad-request" {
			t.Errorf("GET %s: %s, Mesh-Error %q; want 400 bad-request", tc.url, resp.Status, resp.Header.Get("Mesh-Error"))
		}
		for _, want := range []string{"http://ratings/", "the mesh carries the call", "CONNECT"} {
			if !strings.Contains(body, want) {
				t.Errorf("GET %s: body %q does not say %q", tc.url, body, want)
			}
		}
		if strings.Count(strings.TrimSpace(body), "\n") != 0 {
			t.Errorf("GET %s: body %q is not one line", tc.url, body)
		}
		if n, sv := hits.Load(), sc.Inbound().Stats().Served; n != before || sv != served {
			t.Errorf("GET %s reached the service: app requests %d → %d, served %d → %d", tc.url, before, n, served, sv)
		}
	}
}
