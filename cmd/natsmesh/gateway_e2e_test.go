package main

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var gatewayReady = regexp.MustCompile(`gateway on (http://\S+)`)

// The gateway routes outside requests by path prefix to services behind
// sidecars, answers mesh failures with Mesh-Error, and exits 0 on SIGTERM.
func TestEndToEndGateway(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	_, alphaURL := startApp(t, "alpha")
	_, betaURL := startApp(t, "beta")
	startSidecar(t, natsURL, "alpha", "alpha-1", alphaURL)
	startSidecar(t, natsURL, "beta", "beta-1", betaURL)
	gw := start(t, "gateway", nil, natsmeshBin(t), "gateway", "--listen", "127.0.0.1:0", "--nats", natsURL,
		"--route", "/=alpha", "--route", "/work=beta", "--route", "/ghost=ghost", "--retries", "0")
	base := gw.waitOutput(t, gatewayReady, startTimeout)

	c := &http.Client{Timeout: 10 * time.Second}
	get := func(uri string) (*http.Response, string) {
		t.Helper()
		resp, err := c.Get(base + uri)
		if err != nil {
			t.Fatalf("GET %s: %v", uri, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := get("/work?ms=1&x=a%20b"); resp.StatusCode != 200 || body != appBody("beta", "gateway", "/work?ms=1&x=a%20b") {
		t.Errorf("GET /work: %d %q; want beta's answer to the gateway", resp.StatusCode, body)
	}
	if resp, body := get("/healthz"); resp.StatusCode != 200 || body != "ok\n" || resp.Header.Get("Mesh-Instance") != "alpha-1" {
		t.Errorf("GET /healthz: %d %q from %q; want alpha-1's ok", resp.StatusCode, body, resp.Header.Get("Mesh-Instance"))
	}
	if resp, body := get("/ghost/x"); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Mesh-Error") != "no-responders" {
		t.Errorf("GET /ghost/x: %d, Mesh-Error %q, %q; want 503 no-responders", resp.StatusCode, resp.Header.Get("Mesh-Error"), body)
	}

	gw.signal(t, syscall.SIGTERM)
	if code := gw.wait(t, 10*time.Second); code != 0 {
		t.Errorf("gateway exited with status %d after SIGTERM, want 0", code)
	}
}

func TestGatewayCommandErrors(t *testing.T) {
	t.Parallel()
	noNATS := "nats://" + freeAddr(t)
	t.Run("listen address in use", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, stderr, code := natsmesh(t, "gateway", "--route", "/=alpha", "--listen", ln.Addr().String(), "--nats", noNATS)
		msg := strings.TrimSpace(stderr)
		if code != 1 || strings.Contains(msg, "\n") || !strings.Contains(msg, "--listen") || !strings.Contains(msg, ln.Addr().String()) {
			t.Errorf("exit %d, stderr %q; want 1 and one line naming --listen and the address", code, stderr)
		}
	})
	for name, args := range map[string][]string{
		"no route":         {"gateway"},
		"bad route":        {"gateway", "--route", "api=details"},
		"bad service name": {"gateway", "--route", "/=Bad.Name"},
	} {
		t.Run(name, func(t *testing.T) {
			_, stderr, code := natsmesh(t, append(args, "--nats", noNATS)...)
			if code != 2 || !strings.Contains(stderr, "--route") {
				t.Errorf("exit %d, stderr %q; want 2 and a message naming --route", code, stderr)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		stdout, _, code := natsmesh(t, "gateway", "--help")
		for _, w := range []string{"--route", "--listen", "--nats", "--timeout", "--retries", "--breaker", "--max-body", "--per-try-timeout", "--drain-timeout", "--name", "X-Forwarded-For", "SIGTERM"} {
			if !strings.Contains(stdout, w) {
				t.Errorf("help does not mention %s", w)
			}
		}
		if code != 0 {
			t.Errorf("exit %d", code)
		}
	})
}
