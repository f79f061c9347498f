package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// 20 % of calls are aborted, within 3 %; aborted calls never reach the app,
// are not retried, and say so.
func TestFaultAbort(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := serveSubset(t, s, "ratings", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\nfault:\n  abort: {percent: 20, status: 503}\n")
	hc := configClient(t, s, cfgs, nil)
	const n = 2000
	var aborted, ok, other atomic.Int64
	var bad atomic.Value
	parallel(n, 8, func(int) {
		resp, err := hc.Get("http://ratings/")
		if err != nil {
			other.Add(1)
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK && resp.Header.Get(bus.HeaderFault) == "":
			ok.Add(1)
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(bus.HeaderFault) == "abort":
			aborted.Add(1)
			if string(body) != "fault injected by the mesh config of service ratings\n" || resp.Header.Get(bus.HeaderAttempts) != "" || resp.Header.Get(bus.HeaderError) != "" {
				bad.Store(fmt.Sprintf("aborted call: body %q, headers %v", body, resp.Header))
			}
		default:
			other.Add(1)
			bad.Store(fmt.Sprintf("status %d, headers %v, body %q", resp.StatusCode, resp.Header, body))
		}
	})
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
	share := float64(aborted.Load()) / n * 100
	if share < 17 || share > 23 || other.Load() > 0 {
		t.Fatalf("%d aborted (%.1f %%), %d ok, %d other; want 20 ± 3 %% aborted", aborted.Load(), share, ok.Load(), other.Load())
	}
	if got := app.served.Load(); got != ok.Load() {
		t.Fatalf("the app served %d requests, %d calls succeeded: aborted calls reached it", got, ok.Load())
	}
}

// Aborted calls are not counted by the breaker: a hundred of them in a row
// leave it closed.
func TestFaultAbortNotCountedByBreaker(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := serveSubset(t, s, "ratings", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\nfault:\n  abort: {percent: 100, status: 500}\nbreaker: {failures: 2}\n")
	hc := configClient(t, s, cfgs, nil)
	for range 100 {
		code, _, h := callBody(t, hc, "http://ratings/")
		if code != http.StatusInternalServerError || h.Get(bus.HeaderFault) != "abort" {
			t.Fatalf("status %d, Mesh-Fault %q", code, h.Get(bus.HeaderFault))
		}
	}
	if app.served.Load() != 0 {
		t.Fatalf("aborted calls reached the app %d times", app.served.Load())
	}
	// Same breaker settings: the same breaker, which saw no failure.
	cfgs.apply(t, "service: ratings\nbreaker: {failures: 2}\n")
	if code, body, h := callBody(t, hc, "http://ratings/"); code != http.StatusOK || h.Get(bus.HeaderFault) != "" {
		t.Fatalf("after the fault was removed: %d %q %v", code, body, h)
	}
}

// 10 % of calls are held for 30 ms, within 3 %, and say so.
func TestFaultDelay(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveSubset(t, s, "ratings", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\nfault:\n  delay: {percent: 10, duration: 30ms}\n")
	hc := configClient(t, s, cfgs, nil)
	const n = 1000
	var delayed, short atomic.Int64
	parallel(n, 16, func(int) {
		start := time.Now()
		code, _, h := callBody(t, hc, "http://ratings/")
		if code != http.StatusOK {
			t.Errorf("status %d", code)
			return
		}
		if h.Get(bus.HeaderFault) == "delay" {
			delayed.Add(1)
			if time.Since(start) < 30*time.Millisecond {
				short.Add(1)
			}
		}
	})
	share := float64(delayed.Load()) / n * 100
	if share < 7 || share > 13 {
		t.Fatalf("%d of %d calls delayed (%.1f %%), want 10 ± 3 %%", delayed.Load(), n, share)
	}
	if short.Load() > 0 {
		t.Fatalf("%d delayed calls took less than the delay", short.Load())
	}
}

// A delay longer than the call's deadline ends in a timeout at the
// deadline, without sending the call.
func TestFaultDelayWithinDeadline(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	app := serveSubset(t, s, "ratings", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\ntimeout: 100ms\nfault:\n  delay: {percent: 100, duration: 10s}\n")
	hc := configClient(t, s, cfgs, nil)
	start := time.Now()
	resp, body := doRequest(t, hc, mustRequest(t, "http://ratings/"))
	wantMeshError(t, resp, body, http.StatusGatewayTimeout, bus.Timeout)
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("the call took %s; the delay must stay within the 100ms timeout", el)
	}
	if resp.Header.Get(bus.HeaderFault) != "delay" || app.served.Load() != 0 {
		t.Fatalf("Mesh-Fault %q, app served %d", resp.Header.Get(bus.HeaderFault), app.served.Load())
	}
}

// The document's timeout replaces the Transport's; a shorter deadline of the
// request itself still wins. Its retries replace the flags' field by field.
func TestServiceTimeoutAndRetries(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var hits atomic.Int64
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/slow" {
			<-r.Context().Done()
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}), proxy.ServeConfig{Service: "ratings"})
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: ratings\ntimeout: 150ms\nretries: {attempts: 0}\n")
	hc := configClient(t, s, cfgs, func(c *proxy.TransportConfig) {
		c.Timeout = time.Minute
		c.Retry.Retries = 3
		c.DisableBreaker = true
	})
	start := time.Now()
	resp, body := doRequest(t, hc, mustRequest(t, "http://ratings/slow"))
	wantMeshError(t, resp, body, http.StatusGatewayTimeout, bus.Timeout)
	if el := time.Since(start); el < 150*time.Millisecond || el > 3*time.Second {
		t.Fatalf("the call timed out after %s, want the document's 150ms", el)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	resp, body = doRequest(t, hc, mustRequest(t, "http://ratings/slow").WithContext(ctx))
	wantMeshError(t, resp, body, http.StatusGatewayTimeout, bus.Timeout)
	// The request's own deadline, not the document's 150 ms, is the one
	// the call kept: the answer names it (elapsed time alone would blame
	// a busy machine).
	if m := regexp.MustCompile(`within (\S+)`).FindStringSubmatch(string(body)); m == nil {
		t.Fatalf("a request with a 50ms deadline: %q names no deadline", body)
	} else if d, err := time.ParseDuration(m[1]); err != nil || d > 60*time.Millisecond {
		t.Fatalf("a request with a 50ms deadline was answered %q, want its own deadline, not the document's", body)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("a request with a 50ms deadline took %s", el)
	}

	hits.Store(0)
	if code, _, _ := callBody(t, hc, "http://ratings/unavailable"); code != http.StatusServiceUnavailable || hits.Load() != 1 {
		t.Fatalf("attempts: 0: status %d after %d attempts, want 503 after 1", code, hits.Load())
	}
	// A document that leaves attempts out keeps the Transport's 3 retries,
	// and retries.on narrows which failures they are for.
	cfgs.apply(t, "service: ratings\nretries: {backoff: 1ms}\n")
	hits.Store(0)
	if code, _, h := callBody(t, hc, "http://ratings/unavailable"); code != http.StatusServiceUnavailable || hits.Load() != 4 || h.Get(bus.HeaderAttempts) != "4" {
		t.Fatalf("status %d after %d attempts (Mesh-Attempts %s), want 503 after 4", code, hits.Load(), h.Get(bus.HeaderAttempts))
	}
	cfgs.apply(t, "service: ratings\nretries: {backoff: 1ms, on: [timeout, \"502\"]}\n")
	hits.Store(0)
	if code, _, _ := callBody(t, hc, "http://ratings/unavailable"); code != http.StatusServiceUnavailable || hits.Load() != 1 {
		t.Fatalf("on: [timeout, 502]: a 503 was tried %d times, want once", hits.Load())
	}
	// A POST is not retried on a 503, whatever the document says.
	cfgs.apply(t, "service: ratings\nretries: {backoff: 1ms, on: [\"503\"]}\n")
	hits.Store(0)
	resp, err := hc.Post("http://ratings/unavailable", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Fatalf("a POST answered 503 was tried %d times", hits.Load())
	}
}
