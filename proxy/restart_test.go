package proxy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// The NATS server stops for 2 s under GET and POST load and comes back on
// the same port: calls during the gap fail fast with mesh-unavailable (a
// POST caught in flight with upstream-lost) or succeed within their timeout
// once the connection is back; traffic resumes within 2 s of the server's
// return with no restart, and the sidecars end with no more goroutines than
// they started with.
//
// Not parallel: it counts the process's goroutines.
func TestNATSRestartUnderLoad(t *testing.T) {
	s := meshtest.RunServer(t)
	port := s.Addr().(*net.TCPAddr).Port
	startCallee(t, s, "svc", okApp, nil)
	caller := startCaller(t, s, "frontend", nil)
	clients := []meshClient{sidecarClient(t, formProxy, caller, "frontend"), sidecarClient(t, formHost, caller, "frontend")}
	for _, c := range clients {
		meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, callOK(c, "svc"))
	}
	baseline := runtime.NumGoroutine()

	type outcome struct {
		method   string
		start    time.Time
		took     time.Duration
		status   int
		code     string
		clientOK bool
	}
	var (
		mu       sync.Mutex
		outcomes []outcome
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	for i := range 4 {
		c := clients[i%2]
		method := http.MethodGet
		if i >= 2 {
			method = http.MethodPost
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load() && n < 100_000; n++ {
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader("order")
				}
				req := c.newRequest(t, method, "svc", "/load", body)
				start := time.Now()
				resp, err := c.hc.Do(req)
				o := outcome{method: method, start: start, took: time.Since(start)}
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					o.status, o.code, o.clientOK = resp.StatusCode, resp.Header.Get(bus.HeaderError), true
				}
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
				if o.status != http.StatusOK {
					time.Sleep(5 * time.Millisecond) // a client pacing its retries
				}
			}
		}()
	}
	// Some load before the stop.
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(outcomes) < 50 {
			return fmt.Errorf("%d calls so far", len(outcomes))
		}
		return nil
	})
	s.Shutdown()
	stopped := time.Now()
	time.Sleep(2 * time.Second) // the outage itself
	s2, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restart the server on port %d: %v", port, err)
	}
	t.Cleanup(s2.Shutdown)
	back := time.Now()
	// Traffic resumes within 2 s: a call of each method that started after
	// the server came back succeeds by then.
	meshtest.CheckFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		ok := map[string]bool{}
		for _, o := range outcomes {
			if o.start.After(back) && o.status == http.StatusOK {
				ok[o.method] = true
			}
		}
		if !ok[http.MethodGet] || !ok[http.MethodPost] {
			return fmt.Errorf("successful calls started after the restart: %v", ok)
		}
		return nil
	})
	resumed := time.Since(back)
	time.Sleep(300 * time.Millisecond) // a little steady traffic after the return
	stop.Store(true)
	wg.Wait()

	var failed int
	for _, o := range outcomes {
		switch {
		case !o.clientOK:
			t.Errorf("%s at +%s: the client got no response", o.method, o.start.Sub(stopped))
		case o.status == http.StatusOK:
			if o.took > proxy.DefaultTimeout {
				t.Errorf("%s at +%s succeeded after %s, beyond its timeout", o.method, o.start.Sub(stopped), o.took)
			}
		case o.code == string(bus.MeshUnavailable), o.method == http.MethodPost && o.code == string(bus.UpstreamLost):
			failed++
			if o.took >= time.Second {
				t.Errorf("%s at +%s: %s after %s, want it within 1s", o.method, o.start.Sub(stopped), o.code, o.took)
			}
		default:
			t.Errorf("%s at +%s: status %d Mesh-Error %q after %s; want success, mesh-unavailable or (POST) upstream-lost", o.method, o.start.Sub(stopped), o.status, o.code, o.took)
		}
	}
	t.Logf("%d calls, %d failed fast during the outage, traffic resumed %s after the server's return", len(outcomes), failed, resumed.Round(time.Millisecond))
	if failed == 0 {
		t.Errorf("no call failed during a 2 s outage; the load did not run through it")
	}

	// No goroutine is left behind by the outage: the clients' idle
	// connections are closed, and the count comes back to where it was.
	for _, c := range clients {
		c.hc.CloseIdleConnections()
	}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > baseline+5 {
			return fmt.Errorf("%d goroutines, %d before the outage", n, baseline)
		}
		return nil
	})
}
