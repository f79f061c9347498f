//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/metrics"
)

// TestEndToEndTop sends a scripted load of 20 requests a second through a
// caller's sidecar to a service whose app takes 30 ms and answers one
// request in ten with a 500, the sidecars publishing stats every 200 ms, and
// checks what natsmesh top reports of the service and the edge; then the
// live table and Ctrl-C, and the server's NATS metrics.
func TestEndToEndTop(t *testing.T) {
	const (
		rps      = 20
		failEach = 10 // the app answers every 10th request 500
		appDelay = 30 * time.Millisecond
		window   = 5 * time.Second
	)
	metricsAddr := freeAddr(t)
	srv := start(t, "server", nil, natsmeshBin(t), "server", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--metrics", metricsAddr)
	natsURL := srv.waitOutput(t, serverReady, startTimeout)

	var served atomic.Int64
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		select {
		case <-time.After(appDelay):
		case <-r.Context().Done():
			return
		}
		if n%failEach == 0 {
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(app.Close)
	stats := []string{"--stats-interval", "200ms"}
	startSidecar(t, natsURL, "work", "work-1", app.URL, stats...)
	_, outbound := startSidecar(t, natsURL, "client", "client-1", app.URL, stats...)

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	meshtest.CheckFor(t, 15*time.Second, 10*time.Millisecond, func() error {
		_, inst, body, err := meshGet(hc, outbound, "work", "/warm")
		if err != nil || inst != "work-1" {
			return fmt.Errorf("instance %q, body %q, error %v", inst, body, err)
		}
		return nil
	})

	// The load: one request every 50 ms, whatever the previous ones do.
	var (
		stop      = make(chan struct{})
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies []time.Duration
		statuses  = map[int]int{}
		completed atomic.Int64
	)
	loadStart := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / rps)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				begin := time.Now()
				status, _, _, err := meshGet(hc, outbound, "work", "/work")
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					status = -1
				}
				statuses[status]++
				latencies = append(latencies, time.Since(begin))
				completed.Add(1)
			}()
		}
	}()
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)

	// Once the load has run for the window and a second more, ask while it
	// goes on, so that the window holds nothing but the load.
	meshtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := completed.Load(); n < int64((window+time.Second).Seconds()*rps) {
			return fmt.Errorf("%d requests completed in %s", n, time.Since(loadStart).Round(time.Millisecond))
		}
		return nil
	})
	all := topJSON(t, "--nats", natsURL, "--window", window.String())
	only := topJSON(t, "client", "--nats", natsURL, "--window", window.String())
	loadTook := time.Since(loadStart)
	stopLoad()

	mu.Lock()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	t.Logf("load: %d requests in %s (%.1f/s), statuses %v, client-side median %s",
		len(latencies), loadTook.Round(time.Millisecond), float64(len(latencies))/loadTook.Seconds(), statuses, latencies[len(latencies)/2].Round(100*time.Microsecond))
	mu.Unlock()
	data, _ := json.Marshal(all)
	t.Logf("natsmesh top --json --window %s: %s", window, data)

	if all.WindowMS != window.Milliseconds() || all.Instances != 2 {
		t.Errorf("window %d ms and %d instances, want %d and 2", all.WindowMS, all.Instances, window.Milliseconds())
	}
	var work *metrics.ServiceStats
	for i := range all.Services {
		if all.Services[i].Name == "work" {
			work = &all.Services[i]
		}
	}
	if work == nil || len(all.Edges) != 1 || all.Edges[0].From != "client" || all.Edges[0].To != "work" {
		t.Fatalf("services %+v, edges %+v; want work among them and the one edge client → work", all.Services, all.Edges)
	}
	edge := all.Edges[0]
	if work.Instances != 1 {
		t.Errorf("work: %d instances, want 1", work.Instances)
	}
	// 30 ms of the app's, and the mesh's overhead: the 20-50 ms bucket.
	lo, hi := metrics.Bounds[5]*1000, metrics.Bounds[6]*1000
	for _, tc := range []struct {
		what string
		sig  metrics.Signals
	}{{"service work", work.Signals}, {"edge client → work", edge.Signals}} {
		if tc.sig.RPS < rps*0.75 || tc.sig.RPS > rps*1.25 {
			t.Errorf("%s: %.2f rps, want %d ± 25 %%", tc.what, tc.sig.RPS, rps)
		}
		if tc.sig.Success == nil || math.Abs(*tc.sig.Success-0.9) > 0.05 {
			t.Errorf("%s: success %v, want 0.9 ± 0.05", tc.what, tc.sig.Success)
		}
		if p := tc.sig.P50MS; p == nil || *p <= lo || *p > hi {
			t.Errorf("%s: p50 %v ms, want in the bucket of %g to %g ms", tc.what, p, lo, hi)
		}
		if tc.sig.P95MS == nil || tc.sig.P99MS == nil || *tc.sig.P99MS < *tc.sig.P95MS || *tc.sig.P95MS < *tc.sig.P50MS {
			t.Errorf("%s: quantiles p50 %v, p95 %v, p99 %v not in order", tc.what, tc.sig.P50MS, tc.sig.P95MS, tc.sig.P99MS)
		}
		if len(tc.sig.Errors) != 1 || tc.sig.Errors[metrics.AppErrors] == 0 {
			t.Errorf("%s: errors %v, want only the app's", tc.what, tc.sig.Errors)
		}
	}
	if len(only.Services) != 1 || only.Services[0].Name != "client" || len(only.Edges) != 1 || only.Edges[0].From != "client" {
		t.Errorf("natsmesh top client: services %+v, edges %+v; want client and client → work", only.Services, only.Edges)
	}

	// The live table, one after another when stdout is not a terminal,
	// until Ctrl-C, which exits 0.
	live := start(t, "top", nil, natsmeshBin(t), "top", "--nats", natsURL, "--interval", "200ms")
	live.waitStdout(t, "two tables", 10*time.Second, func(out string) bool { return strings.Count(out, "RETRIES/S") >= 2 })
	live.signal(t, os.Interrupt)
	if code := live.wait(t, 10*time.Second); code != 0 {
		t.Errorf("natsmesh top exited %d after Ctrl-C, want 0", code)
	}
	out := live.stdout.String()
	for _, re := range []string{
		`(?m)^NAME +INSTANCES +RPS +SUCCESS +P50 +P95 +P99 +BREAKER$`,
		`(?m)^work +1 +[0-9.]+ +[0-9.]+% +[0-9.]+ms +[0-9.]+ms +[0-9.]+ms +(closed|-)$`,
		`(?m)^FROM +TO +RPS +SUCCESS +P50 +P95 +P99 +RETRIES/S +ERRORS$`,
		`(?m)^client +work +[0-9.]+ +[0-9.]+% +[0-9.]+ms +[0-9.]+ms +[0-9.]+ms +[0-9.]+ +app:[0-9]+$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("the table has no line matching %s:\n%s", re, out)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("escape codes in output that is not a terminal: %q", out)
	}

	// The embedded NATS server's figures on the server's /metrics.
	fams := topScrape(t, "http://"+metricsAddr+"/metrics")
	for name, min := range map[string]float64{
		"natsmesh_nats_connections":             3, // the server's own and the two sidecars
		"natsmesh_nats_received_messages_total": 100,
		"natsmesh_nats_sent_bytes_total":        1000,
		"natsmesh_nats_subscriptions":           1,
		"natsmesh_nats_jetstream_enabled":       1,
	} {
		if v, ok := fams[name]; !ok || v < min {
			t.Errorf("%s = %g (present %v), want at least %g", name, v, ok, min)
		}
	}
	if v, ok := fams["natsmesh_nats_slow_consumers_total"]; !ok || v != 0 {
		t.Errorf("natsmesh_nats_slow_consumers_total = %g (present %v), want 0", v, ok)
	}

	// A second server on the same NATS (--nats): it follows the stats too
	// but answers only once it has heard every instance, so every answer
	// still counts both; its /metrics has no NATS server figures.
	metrics2 := freeAddr(t)
	srv2 := start(t, "server 2", nil, natsmeshBin(t), "server", "--nats", natsURL, "--metrics", metrics2)
	srv2.waitStdout(t, "that it serves", startTimeout, func(out string) bool { return strings.Contains(out, "serving the registry on") })
	for range 3 {
		if s := topJSON(t, "--nats", natsURL); s.Instances != 2 {
			t.Errorf("with two servers: %d instances, want 2", s.Instances)
		}
	}
	fams2 := topScrape(t, "http://"+metrics2+"/metrics")
	for name := range fams2 {
		if strings.HasPrefix(name, "natsmesh_nats_") {
			t.Errorf("server --nats exposes %s", name)
		}
	}
	if _, ok := fams2["process_resident_memory_bytes"]; !ok {
		t.Errorf("server --nats does not expose its process's metrics")
	}
}

// topJSON runs natsmesh top --json with args and decodes its summary.
func topJSON(t *testing.T, args ...string) metrics.Summary {
	t.Helper()
	stdout, stderr, code := natsmesh(t, append([]string{"top", "--json"}, args...)...)
	var s metrics.Summary
	if code != 0 {
		t.Fatalf("natsmesh top --json %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("natsmesh top --json printed %q: %v", stdout, err)
	}
	return s
}

// topScrape reads the unlabelled samples of a /metrics page.
func topScrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		var name string
		var v float64
		if strings.HasPrefix(line, "#") {
			continue
		}
		if n, _ := fmt.Sscanf(line, "%s %g", &name, &v); n == 2 && !strings.Contains(name, "{") {
			out[name] = v
		}
	}
	return out
}

func TestTopErrors(t *testing.T) {
	t.Parallel()
	bare := meshtest.RunServer(t) // NATS, and no natsmesh server on it
	noNATS := "nats://" + freeAddr(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no natsmesh server", []string{"--nats", bare.ClientURL()}, 1,
			"natsmesh top: metrics: no natsmesh server answers stats on mesh.stats.summary; start one with natsmesh server, or point --nats at the mesh's NATS\n"},
		{"no server on another prefix", []string{"--json", "--prefix", "prod", "--nats", bare.ClientURL()}, 1, "on prod.stats.summary"},
		{"no NATS", []string{"--nats", noNATS}, 1, "cannot connect to NATS"},
		{"bad service", []string{"Reviews", "--nats", noNATS}, 2, `"Reviews"`},
		{"two services", []string{"a", "b", "--nats", noNATS}, 2, "at most one service"},
		{"window too long", []string{"--window", "10m", "--nats", noNATS}, 2, "--window 10m0s"},
		{"interval too short", []string{"--interval", "1ms", "--nats", noNATS}, 2, "--interval 1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := natsmesh(t, append([]string{"top"}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || stdout != "" {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d and %q", code, stdout, stderr, tc.code, tc.want)
			}
		})
	}
	t.Run("help", func(t *testing.T) {
		stdout, _, code := natsmesh(t, "top", "--help")
		for _, f := range []string{"--json", "--interval", "--window", "--nats", "--prefix"} {
			if !strings.Contains(stdout, "\n  "+f+" ") && !strings.Contains(stdout, "\n  "+f+"\n") {
				t.Errorf("help does not list %s", f)
			}
		}
		if code != 0 || !strings.Contains(stdout, "natsmesh top [SERVICE]") {
			t.Errorf("exit %d, help:\n%s", code, stdout)
		}
	})
}
