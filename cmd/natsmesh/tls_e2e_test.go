//go:build unix

package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

var (
	anyServerReady = regexp.MustCompile(`listening on ((?:nats|tls)://\S+)`)
	tlsCAPrinted   = regexp.MustCompile(`clients connect with --tls-ca (\S+)`)
)

// startTLSServer runs `natsmesh server --tls-auto` on a free loopback port
// with its data in dir, and returns it, its tls:// URL and the CA file it
// printed, once it accepts TLS clients that trust that CA.
func startTLSServer(t *testing.T, dir string) (p *proc, natsURL, ca string) {
	t.Helper()
	p = start(t, "tls server", nil, natsmeshBin(t), "server", "--tls-auto", "--listen", "127.0.0.1:0", "--data", dir)
	natsURL = p.waitOutput(t, anyServerReady, startTimeout)
	ca = p.waitOutput(t, tlsCAPrinted, startTimeout)
	if !strings.HasPrefix(natsURL, "tls://127.0.0.1:") {
		t.Fatalf("server with --tls-auto listens on %s, want tls://127.0.0.1:...", natsURL)
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if _, stderr, code := natsmesh(t, "services", "--nats", natsURL, "--tls-ca", ca); code != 0 {
			return fmt.Errorf("services: exit %d: %s", code, stderr)
		}
		return nil
	})
	return p, natsURL, ca
}

// A mesh on a --tls-auto server: sidecars, call and services given the CA
// it printed work, over tls:// and nats:// URLs; a client without the CA is
// refused with advice to pass --tls-ca; a restart reuses the CA.
func TestTLSAutoEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, natsURL, ca := startTLSServer(t, dir)
	if !strings.HasPrefix(ca, dir) {
		t.Errorf("CA %s is not under the data directory %s", ca, dir)
	}
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}

	_, appURL := startApp(t, "ratings-1")
	startSidecar(t, natsURL, "ratings", "ratings-1", appURL, "--tls-ca", ca)
	plainURL := strings.Replace(natsURL, "tls://", "nats://", 1)
	_, outbound := startSidecar(t, plainURL, "web", "web-1", appURL, "--tls-ca", ca)

	client := &http.Client{Timeout: 10 * time.Second}
	meshtest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		status, _, body, err := meshGet(client, outbound, "ratings", "/work")
		if err != nil || status != http.StatusOK || !strings.HasPrefix(body, "app=ratings-1 caller=web ") {
			return fmt.Errorf("through the web sidecar: %d %q %v", status, body, err)
		}
		return nil
	})
	stdout, stderr, code := natsmesh(t, "call", "ratings", "/work", "--nats", natsURL, "--tls-ca", ca)
	if code != 0 || !strings.HasPrefix(stdout, "app=ratings-1 ") {
		t.Errorf("call over TLS: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		stdout, stderr, code := natsmesh(t, "services", "--nats", plainURL, "--tls-ca", ca)
		if code != 0 || !regexp.MustCompile(`(?m)^ratings\s+1\s+1\b`).MatchString(stdout) || !regexp.MustCompile(`(?m)^web\s`).MatchString(stdout) {
			return fmt.Errorf("services over TLS: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		return nil
	})

	for _, u := range []string{natsURL, plainURL} {
		_, stderr, code := natsmesh(t, "services", "--nats", u)
		if code == 0 || !strings.Contains(stderr, "pass --tls-ca") || strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
			t.Errorf("services --nats %s without the CA: exit %d, stderr %q; want a failure of one line advising --tls-ca", u, code, stderr)
		}
	}

	srv.signal(t, os.Interrupt)
	if code := srv.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("server exited %d", code)
	}
	again, _, ca2 := startTLSServer(t, dir)
	if !strings.Contains(again.stdout.String(), "(made before)") {
		t.Errorf("restarted server did not say it reuses its CA: %q", again.stdout)
	}
	if b, _ := os.ReadFile(ca2); ca2 != ca || !bytes.Equal(b, caPEM) {
		t.Errorf("restart changed the CA (%s, was %s)", ca2, ca)
	}
}

// Off loopback, plaintext is refused in one sentence naming the TLS flags
// and the escape; with the escape the server starts.
func TestServerPlaintextOffLoopback(t *testing.T) {
	t.Parallel()
	_, stderr, code := natsmesh(t, "server", "--listen", "0.0.0.0:0", "--data", t.TempDir())
	msg := strings.TrimSpace(stderr)
	if code != 2 || strings.Contains(msg, "\n") {
		t.Errorf("exit %d, stderr %q; want 2 and one line", code, stderr)
	}
	for _, w := range []string{"--tls-cert/--tls-key", "--tls-auto", "--insecure-plaintext", "0.0.0.0"} {
		if !strings.Contains(msg, w) {
			t.Errorf("refusal %q does not name %s", msg, w)
		}
	}

	p := start(t, "plaintext server", nil, natsmeshBin(t), "server", "--listen", "0.0.0.0:0", "--insecure-plaintext", "--data", t.TempDir())
	natsURL := p.waitOutput(t, anyServerReady, startTimeout)
	u, err := url.Parse(natsURL)
	if err != nil || u.Scheme != "nats" {
		t.Fatalf("server printed %q (%v); want a nats:// URL", natsURL, err)
	}
	local := "nats://127.0.0.1:" + u.Port()
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if _, stderr, code := natsmesh(t, "services", "--nats", local); code != 0 {
			return fmt.Errorf("services: exit %d: %s", code, stderr)
		}
		return nil
	})
}

// TLS flags that cannot mean anything together are usage errors.
func TestServerTLSFlagMistakes(t *testing.T) {
	t.Parallel()
	noNATS := "nats://" + freeAddr(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "c.pem"}, "--tls-key"},
		{[]string{"--tls-auto", "--tls-cert", "c.pem", "--tls-key", "k.pem"}, "--tls-auto"},
		{[]string{"--tls-auto", "--tls-ca", "ca.pem"}, "--tls-ca"},
		{[]string{"--tls-auto", "--insecure-plaintext"}, "--insecure-plaintext"},
		{[]string{"--tls-auto", "--nats", noNATS}, "--nats"},
	} {
		full := append([]string{"server", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...)
		_, stderr, code := natsmesh(t, full...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("server %v: exit %d, stderr %q; want 2 and a message naming %s", tc.args, code, stderr, tc.want)
		}
	}
	_, stderr, code := natsmesh(t, "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--tls-cert", "missing.pem", "--tls-key", "missing-key.pem")
	if code == 0 || !strings.Contains(stderr, "--tls-cert") {
		t.Errorf("server with a missing certificate: exit %d, stderr %q; want a failure naming --tls-cert", code, stderr)
	}
}
