//go:build unix

package main

import (
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Every command stops the same way: a sidecar draining a slow request
// ignores a second SIGTERM that arrives with the first (go run passing its
// Ctrl-C on), and stops at once, with status 1, on one more than a second
// later.
func TestEndToEndSignalStopsAtOnce(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)
	app, appURL := startApp(t, "slow")
	sc, outbound := startSidecar(t, natsURL, "slow", "slow-1", appURL)
	const slowURI = "/work?ms=30000"
	go func() {
		hc := &http.Client{Timeout: time.Minute}
		_ = meshCall(hc, outbound, "slow", http.MethodGet, slowURI)
	}()
	app.waitStdout(t, "the slow request", 10*time.Second, func(out string) bool {
		return strings.Contains(out, "begin "+slowURI)
	})

	sc.signal(t, syscall.SIGTERM)
	sc.signal(t, syscall.SIGTERM)
	time.Sleep(1500 * time.Millisecond) // what the test is about: a second and more without a signal
	if sc.exited() {
		t.Fatalf("the sidecar exited (%s) while draining a 30 s request after two SIGTERMs at once; stderr:\n%s", sc.cmd.ProcessState, sc.stderr)
	}
	sc.signal(t, syscall.SIGTERM)
	if code := sc.wait(t, 5*time.Second); code != 1 {
		t.Errorf("the sidecar exited with status %d after a signal 1.5 s after the first, want 1", code)
	}
	if !strings.Contains(sc.stderr.String(), "natsmesh sidecar: stopping at once\n") {
		t.Errorf("the sidecar did not say it stops at once:\n%s", sc.stderr)
	}
}
