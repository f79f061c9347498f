// Command lb compares load-balancing policies when one instance is slow: four
// instances of a service, one of whose apps answers 10× slower than the
// others, called in closed loop through a caller sidecar, once per policy
// set in the service's config document. It prints each policy's latency
// percentiles and throughput.
//
// Everything runs in this process (an embedded NATS server, five sidecars,
// the apps), through real sockets.
//
//	go run ./bench/lb [-conns 16] [-duration 5s] [-fast 2ms]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

func main() {
	conns := flag.Int("conns", 16, "concurrent clients")
	duration := flag.Duration("duration", 5*time.Second, "how long each policy is measured")
	fast := flag.Duration("fast", 2*time.Millisecond, "how long a fast instance's app takes; the slow one takes 10×")
	policies := flag.String("policies", "queue,least-request,round-robin", "policies to compare")
	flag.Parse()
	if err := run(*conns, *duration, *fast, strings.Split(*policies, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "bench lb:", err)
		os.Exit(1)
	}
}

func run(conns int, duration, fast time.Duration, policies []string) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench-lb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()

	ctl, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: "bench-control"})
	if err != nil {
		return err
	}
	defer ctl.Close()
	store, err := config.CreateStore(ctx, ctl, "")
	if err != nil {
		return err
	}

	var slowHits, hits atomic.Int64
	for i := range 4 {
		delay := fast
		if i == 0 {
			delay = 10 * fast
		}
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			if i == 0 {
				slowHits.Add(1)
			}
			time.Sleep(delay)
			_, _ = io.WriteString(w, "ok\n")
		}))
		defer app.Close()
		nc, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: fmt.Sprintf("svc-%d", i)})
		if err != nil {
			return err
		}
		defer nc.Close()
		sc, err := sidecar.Start(nc, sidecar.Config{
			Service: "svc", Instance: fmt.Sprintf("svc-%d", i), Upstream: app.URL, Listen: "127.0.0.1:0",
			Heartbeat: 200 * time.Millisecond, Logger: quiet,
		})
		if err != nil {
			return err
		}
		defer func() { _ = sc.Shutdown(context.Background()) }()
	}
	cnc, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: "caller"})
	if err != nil {
		return err
	}
	defer cnc.Close()
	watcher, err := config.NewWatcher(cnc, "", quiet)
	if err != nil {
		return err
	}
	caller, err := sidecar.Start(cnc, sidecar.Config{
		Service: "client", Upstream: "http://127.0.0.1:1", Listen: "127.0.0.1:0",
		Logger: quiet, Transport: proxy.TransportConfig{Configs: watcher},
	})
	if err != nil {
		return err
	}
	defer func() { _ = caller.Shutdown(context.Background()) }()
	pu, _ := url.Parse("http://" + caller.OutboundAddr().String())
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), MaxIdleConnsPerHost: conns}, Timeout: 10 * time.Second}

	fmt.Printf("load balancers: 4 instances, one answering in %s and three in %s; %d clients in closed loop, %s per policy\n\n", 10*fast, fast, conns, duration)
	fmt.Printf("%-15s %9s %9s %9s %9s %12s\n", "policy", "req/s", "p50", "p99", "max", "slow's share")
	for _, policy := range policies {
		doc := &config.Service{Service: "svc", LoadBalancer: &config.LoadBalancer{Policy: strings.TrimSpace(policy)}}
		if _, err := store.Apply(ctx, []*config.Service{doc}); err != nil {
			return err
		}
		// Warm up: the caller follows the service in the registry and
		// applies the document from its first call on.
		load(hc, conns, time.Second)
		slowHits.Store(0)
		hits.Store(0)
		lat, failed := load(hc, conns, duration)
		if failed > 0 {
			return fmt.Errorf("%s: %d calls failed", policy, failed)
		}
		share := float64(slowHits.Load()) / float64(max(hits.Load(), 1))
		fmt.Printf("%-15s %9.0f %9s %9s %9s %11.1f%%\n", policy, float64(len(lat))/duration.Seconds(),
			pct(lat, 50), pct(lat, 99), pct(lat, 100), 100*share)
	}
	return nil
}

// load runs conns clients in closed loop for d and returns every call's
// latency and how many failed.
func load(hc *http.Client, conns int, d time.Duration) ([]time.Duration, int) {
	var (
		mu     sync.Mutex
		all    []time.Duration
		failed int
		wg     sync.WaitGroup
	)
	end := time.Now().Add(d)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			for time.Now().Before(end) {
				start := time.Now()
				resp, err := hc.Get("http://svc/")
				if err != nil {
					bad++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					bad++
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			all = append(all, mine...)
			failed += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, failed
}

func pct(ds []time.Duration, p int) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(max((len(s)*p+99)/100-1, 0), len(s)-1)
	return s[i].Round(10 * time.Microsecond).String()
}
