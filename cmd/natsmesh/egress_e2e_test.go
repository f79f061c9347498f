package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// egressGet sends GET / for dest through the sidecar at outbound: as its
// HTTP proxy (form "proxy") or with Host: dest (form "host").
func egressGet(t *testing.T, outbound, form, dest string) (*http.Response, string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	target, host := "http://"+outbound+"/", dest
	if form == "proxy" {
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: outbound})
		target, host = "http://"+dest+"/", ""
	}
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s GET for %s through %s: %v", form, dest, outbound, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// egressConnect sends CONNECT dest to the sidecar at outbound.
func egressConnect(t *testing.T, outbound, dest string) (*http.Response, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", outbound, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(conn, "CONNECT "+dest+" HTTP/1.1\r\nHost: "+dest+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s through %s: %v", dest, outbound, err)
	}
	if resp.StatusCode == http.StatusOK { // the tunnel: its body is the connection
		return resp, ""
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp, string(body)
}

// The sidecar's outbound listener is no open proxy: NATS, another sidecar,
// an app on its own port and the cloud metadata address are refused in
// every form, with nothing dialed; a listed destination passes.
func TestEndToEndEgressRefusals(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	u, err := url.Parse(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	_, backURL := startApp(t, "back")
	back, _ := url.Parse(backURL)
	_, backOut := startSidecar(t, natsURL, "back", "back-1", backURL)
	_, frontURL := startApp(t, "front")
	_, frontOut := startSidecar(t, natsURL, "front", "front-1", frontURL)

	// A loopback port that records who connects, to see that none did.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan string, 64)
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()

	for _, tc := range []struct{ what, dest, reason string }{
		{"NATS", u.Host, "it is a loopback address"},
		{"another sidecar", backOut, "it is a loopback address"},
		{"an app on its own port", back.Host, "it is a loopback address"},
		{"a loopback port", ln.Addr().String(), "it is a loopback address"},
		{"cloud metadata", "169.254.169.254:80", "it is a link-local address, where cloud metadata services answer"},
		{"cloud metadata over TLS", "169.254.169.254:443", "it is a link-local address, where cloud metadata services answer"},
	} {
		check := func(form string, resp *http.Response, body, reason string) {
			t.Helper()
			want := "egress to " + tc.dest + " is refused: " + reason + "; list it with --egress-allow " + tc.dest + " if the app must reach it"
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Mesh-Error") != "forbidden" || !strings.HasPrefix(body, want) {
				t.Errorf("%s to %s (%s): %s, Mesh-Error %q, body %q; want 403 forbidden and %q", form, tc.what, tc.dest, resp.Status, resp.Header.Get("Mesh-Error"), body, want)
			}
		}
		for _, form := range []string{"proxy", "host"} {
			resp, body := egressGet(t, frontOut, form, tc.dest)
			check(form, resp, body, tc.reason)
		}
		reason := tc.reason
		if !strings.HasSuffix(tc.dest, ":443") {
			reason = "CONNECT reaches port 443 only"
		}
		resp, body := egressConnect(t, frontOut, tc.dest)
		check("CONNECT", resp, body, reason)
	}
	// Connections are accepted in the order they were made: if the test's
	// own is the first, the sidecar made none.
	sentinel, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer sentinel.Close()
	select {
	case from := <-accepted:
		if from != sentinel.LocalAddr().String() {
			t.Errorf("a refused destination was connected to, from %s", from)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the test's own connection was not accepted within 15s")
	}

	// Mesh calls are untouched.
	if status, _, body, err := meshGet(http.DefaultClient, frontOut, "back", "/work"); err != nil || status != http.StatusOK || body != appBody("back", "front", "/work") {
		t.Errorf("mesh call to back: %d %q %v", status, body, err)
	}

	// Listed, the app's own port is reached (plain HTTP and CONNECT).
	_, openOut := startSidecar(t, natsURL, "front", "front-2", frontURL, "--egress-allow", back.Host+", 169.254.169.254:80")
	for _, form := range []string{"proxy", "host"} {
		resp, body := egressGet(t, openOut, form, back.Host)
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Mesh-Error") != "" {
			// The app answers / with its own 404: it was reached.
			t.Errorf("%s to listed %s: %s, Mesh-Error %q, body %q; want the app's own 404", form, back.Host, resp.Status, resp.Header.Get("Mesh-Error"), body)
		}
	}
	if resp, body := egressConnect(t, openOut, back.Host); resp.StatusCode != http.StatusOK {
		t.Errorf("CONNECT to listed %s: %s %q; want the tunnel", back.Host, resp.Status, body)
	}
}

func TestEndToEndEgressFlags(t *testing.T) {
	t.Parallel()
	noNATS := "nats://" + freeAddr(t)
	base := []string{"sidecar", "--service", "work", "--upstream", "http://127.0.0.1:1", "--nats", noNATS}
	for _, tc := range []struct {
		name  string
		args  []string
		words []string
	}{
		{"unknown mode", []string{"--egress", "open"}, []string{"--egress", `"open"`, "allow-public"}},
		{"entry without port", []string{"--egress-allow", "api.example.com"}, []string{"--egress-allow", `"api.example.com"`, "host:port"}},
		{"bad port", []string{"--egress-allow", "10.0.0.5:5432,db:99999"}, []string{"--egress-allow", `"db:99999"`, "1 to 65535"}},
		{"bad host", []string{"--egress-allow", "a b:80"}, []string{"--egress-allow", `"a b:80"`, "host name"}},
		{"empty entry", []string{"--egress-allow", "db:5432,"}, []string{"--egress-allow", "host:port"}},
		{"listen off loopback", []string{"--listen", "0.0.0.0:0"}, []string{"--listen 0.0.0.0:0", "--listen-public"}},
		{"listen on all interfaces", []string{"--listen", ":15001"}, []string{"--listen :15001", "--listen-public"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := natsmesh(t, append(base, tc.args...)...)
			msg := strings.TrimSpace(stderr)
			ok := code == 2 && !strings.Contains(msg, "\n")
			for _, w := range tc.words {
				ok = ok && strings.Contains(msg, w)
			}
			if !ok {
				t.Errorf("exit %d, stderr %q; want 2 and one line with %q", code, stderr, tc.words)
			}
		})
	}
	t.Run("listen off loopback with --listen-public", func(t *testing.T) {
		_, natsURL := startServer(t)
		_, appURL := startApp(t, "work")
		_, out := startSidecar(t, natsURL, "work", "work-1", appURL, "--listen", "0.0.0.0:0", "--listen-public")
		if _, port, err := net.SplitHostPort(out); err != nil || port == "0" {
			t.Errorf("the sidecar printed outbound address %q", out)
		}
	})
}
