// Command bench measures what the mesh costs: it runs the same small HTTP app
// called directly and through natsmesh (server + caller sidecar + callee
// sidecar, each its own process) at several concurrency levels, one after the
// other in one run, and prints requests/s, p50 and p99 latency, the ratios
// between the two, and the sidecars' memory.
//
//	go run ./bench [-duration 5s] [-conns 1,50] [-rounds 3]
//	go run ./bench -resilience [-baseline REV] [-conns 50]   # cost of retries, breakers, tracing
//	go run ./bench -routes [-conns 50]                       # cost of a 5-route config
//	go run ./bench -metrics [-conns 50]                      # cost of recording metrics
//	go run ./bench -tls [-conns 50]                          # cost of TLS between sidecars and server
//	go run ./bench -security [-conns 50]                     # cost of credentials and permissions
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/internal/procstat"
)

const appEnv = "NATSMESH_BENCH_APP" // set: this process is the app

func main() {
	if addr := os.Getenv(appEnv); addr != "" {
		runApp(addr)
		return
	}
	duration := flag.Duration("duration", 5*time.Second, "how long each measurement runs")
	warmup := flag.Duration("warmup", time.Second, "unmeasured load before each measurement")
	connsFlag := flag.String("conns", "1,50", "comma-separated concurrent connections to measure at")
	size := flag.Int("size", 64, "response body size in bytes")
	rounds := flag.Int("rounds", 3, "direct and mesh measured one after the other this many times per concurrency")
	resilience := flag.Bool("resilience", false, "instead: compare the mesh with retries and breakers off, on (the defaults), and on with tracing (sampling off), at the first -conns")
	baseline := flag.String("baseline", "", "with -resilience: also run the mesh as built from this git revision")
	routes := flag.Bool("routes", false, "instead: compare the mesh with no config for the service and with a 5-route config applied, at the first -conns")
	metricsCost := flag.Bool("metrics", false, "instead: compare the mesh recording no metrics (--stats-interval 0), recording them (the default) and serving them on --metrics, at the first -conns")
	security := flag.Bool("security", false, "instead: compare the mesh on a server that accepts anonymous clients (--allow-anonymous) with the secure default, both sidecars on service identities with their permissions, at the first -conns")
	tlsCost := flag.Bool("tls", false, "instead: compare the mesh with both sidecars connected to the server in plaintext and over TLS (a second server, with --tls-auto, on loopback), at the first -conns")
	flag.Parse()
	var conns []int
	for _, c := range strings.Split(*connsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fatalf("-conns: %q is not a positive number", c)
		}
		conns = append(conns, n)
	}
	if *rounds < 1 {
		fatalf("-rounds must be at least 1")
	}
	if *security {
		if err := runVariants(securityVariants(), conns[0], *duration, *warmup, *size, *rounds); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if *tlsCost {
		if err := runVariants(tlsVariants(), conns[0], *duration, *warmup, *size, *rounds); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if *metricsCost {
		if err := runVariants(metricsVariants(), conns[0], *duration, *warmup, *size, *rounds); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if *routes {
		if err := runVariants(routeVariants(), conns[0], *duration, *warmup, *size, *rounds); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if *resilience {
		var bin string
		if *baseline != "" {
			dir, err := os.MkdirTemp("", "natsmesh-baseline")
			if err != nil {
				fatalf("%v", err)
			}
			defer os.RemoveAll(dir)
			if bin, err = buildAt(*baseline, dir); err != nil {
				fatalf("%v", err)
			}
		}
		if err := runVariants(resilienceVariants(bin), conns[0], *duration, *warmup, *size, *rounds); err != nil {
			fatalf("%v", err)
		}
		return
	}
	if err := run(conns, *duration, *warmup, *size, *rounds); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// runApp is the app under test: a plain net/http server.
func runApp(addr string) {
	size, _ := strconv.Atoi(os.Getenv("NATSMESH_BENCH_SIZE"))
	body := []byte(strings.Repeat("x", size))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})
	if err := http.ListenAndServe(addr, mux); err != nil {
		fatalf("app: %v", err)
	}
}

func run(conns []int, duration, warmup time.Duration, size, rounds int) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procstat.BuildNatsmesh(dir)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var p procstat.Procs
	defer p.StopAll()

	appAddr, _ := procstat.FreeAddr()
	natsAddr, _ := procstat.FreeAddr()
	callerAddr, _ := procstat.FreeAddr()
	calleeAddr, _ := procstat.FreeAddr()
	natsURL := "nats://" + natsAddr
	app, err := p.Start(self, []string{appEnv + "=" + appAddr, "NATSMESH_BENCH_SIZE=" + strconv.Itoa(size)})
	if err != nil {
		return err
	}
	srv, err := p.Start(bin, nil, "server", "--listen", natsAddr, "--data", filepath.Join(dir, "data"), "--log-level", "warn")
	if err != nil {
		return err
	}
	appCreds, err := identityFlags(bin, filepath.Join(dir, "data"), "app")
	if err != nil {
		return err
	}
	clientCreds, err := identityFlags(bin, filepath.Join(dir, "data"), "client")
	if err != nil {
		return err
	}
	callee, err := p.Start(bin, nil, append([]string{"sidecar", "--nats", natsURL, "--service", "app", "--upstream", "http://" + appAddr, "--listen", calleeAddr, "--log-level", "warn"}, appCreds...)...)
	if err != nil {
		return err
	}
	caller, err := p.Start(bin, nil, append([]string{"sidecar", "--nats", natsURL, "--service", "client", "--upstream", "http://" + appAddr, "--listen", callerAddr, "--log-level", "warn"}, clientCreds...)...)
	if err != nil {
		return err
	}
	proxyURL, _ := url.Parse("http://" + callerAddr)
	direct := newClient(nil, 64)
	mesh := newClient(proxyURL, 64)
	if err := procstat.WaitHTTP(direct, "http://"+appAddr+"/"); err != nil {
		return err
	}
	if err := procstat.WaitHTTP(mesh, "http://app/"); err != nil {
		return err
	}
	direct.CloseIdleConnections()
	mesh.CloseIdleConnections()

	fmt.Printf("natsmesh benchmark: %d-byte responses, %s per measurement, %d CPUs\n\n", size, duration, runtime.NumCPU())
	fmt.Printf("%-6s %-6s %-7s %12s %10s %10s\n", "conns", "round", "path", "req/s", "p50", "p99")
	var peakCaller, peakCallee int64
	var cpuNotes []string
	var rows [][]pair
	for _, n := range conns {
		var pairs []pair
		for r := 0; r < rounds; r++ {
			d := load(newClient(nil, n), "http://"+appAddr+"/", n, warmup, duration, nil)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // sample the sidecars' resident memory during the mesh run
				defer wg.Done()
				t := time.NewTicker(100 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						peakCaller = max(peakCaller, procstat.RSS(caller.Process.Pid))
						peakCallee = max(peakCallee, procstat.RSS(callee.Process.Pid))
					}
				}
			}()
			pids := []int{os.Getpid(), app.Process.Pid, caller.Process.Pid, srv.Process.Pid, callee.Process.Pid}
			var before []time.Duration
			m := load(newClient(proxyURL, n), "http://app/", n, warmup, duration, func() { before = cpuTimes(pids) })
			after := cpuTimes(pids)
			close(stop)
			wg.Wait()
			if r == 0 && m.n > 0 {
				cpu := make([]string, len(pids))
				for i, name := range []string{"client", "app", "caller sidecar", "server", "callee sidecar"} {
					cpu[i] = fmt.Sprintf("%s %.0fµs", name, float64(after[i]-before[i])/float64(time.Microsecond)/float64(m.n))
				}
				cpuNotes = append(cpuNotes, fmt.Sprintf("  %3d conns: %s", n, strings.Join(cpu, ", ")))
			}
			if d.errors > 0 || m.errors > 0 {
				fmt.Printf("warning: %d direct and %d mesh requests failed at %d conns\n", d.errors, m.errors, n)
			}
			fmt.Printf("%-6d %-6d %-7s %12.0f %10s %10s\n", n, r+1, "direct", d.rps(), fmtDur(d.p(50)), fmtDur(d.p(99)))
			fmt.Printf("%-6d %-6d %-7s %12.0f %10s %10s\n", n, r+1, "mesh", m.rps(), fmtDur(m.p(50)), fmtDur(m.p(99)))
			pairs = append(pairs, pair{d, m})
		}
		rows = append(rows, pairs)
	}
	fmt.Printf("\nratios (mesh / direct), median of %d rounds [lowest, highest]:\n", rounds)
	for i, n := range conns {
		tp := roundRatios(rows[i], func(p pair) float64 { return p.mesh.rps() / p.direct.rps() })
		p50 := roundRatios(rows[i], func(p pair) float64 { return ratio(p.mesh.p(50), p.direct.p(50)) })
		p99 := roundRatios(rows[i], func(p pair) float64 { return ratio(p.mesh.p(99), p.direct.p(99)) })
		fmt.Printf("  %3d conns: throughput %s, p50 %s, p99 %s\n", n, tp, p50, p99)
	}
	fmt.Printf("\nCPU time per mesh request, by process (the client's includes its measuring):\n%s\n", strings.Join(cpuNotes, "\n"))
	fmt.Printf("\nsidecar peak RSS under load: caller %.1f MB, callee %.1f MB\n", float64(peakCaller)/1e6, float64(peakCallee)/1e6)
	return nil
}

type pair struct{ direct, mesh result }

// roundRatios formats the median, lowest and highest of f over the rounds.
func roundRatios(ps []pair, f func(pair) float64) string {
	v := make([]float64, len(ps))
	for i, p := range ps {
		v[i] = f(p)
	}
	return medianRange(v)
}

// medianRange formats the median, lowest and highest of v.
func medianRange(v []float64) string {
	v = slices.Clone(v)
	slices.Sort(v)
	return fmt.Sprintf("%.2fx [%.2f, %.2f]", v[len(v)/2], v[0], v[len(v)-1])
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
}

func newClient(proxy *url.URL, conns int) *http.Client {
	t := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return &http.Client{Transport: t, Timeout: 10 * time.Second}
}

type result struct {
	n       int64
	errors  int64
	elapsed time.Duration
	lat     []time.Duration // sorted
}

func (r result) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r result) p(q float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(float64(len(r.lat)-1) * q / 100)
	return r.lat[i]
}

// load runs n closed-loop workers against u: warmup unmeasured, then duration measured.
func load(c *http.Client, u string, n int, warmup, duration time.Duration, onStart func()) result {
	var measuring atomic.Bool
	var count, errs atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer c.CloseIdleConnections() // no connections linger into the next measurement
	lats := make([][]time.Duration, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			buf := make([]time.Duration, 0, 1<<16)
			for ctx.Err() == nil {
				start := time.Now()
				resp, err := c.Get(u)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = errors.New(resp.Status)
					}
				}
				el := time.Since(start)
				if !measuring.Load() || ctx.Err() != nil {
					continue
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				count.Add(1)
				buf = append(buf, el)
			}
			lats[i] = buf
		}(i)
	}
	time.Sleep(warmup)
	if onStart != nil {
		onStart()
	}
	measuring.Store(true)
	start := time.Now()
	time.Sleep(duration)
	cancel()
	elapsed := time.Since(start)
	wg.Wait()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	return result{n: count.Load(), errors: errs.Load(), elapsed: elapsed, lat: all}
}

// cpuTimes returns each process's CPU time so far.
func cpuTimes(pids []int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		out[i] = procstat.CPU(pid)
	}
	return out
}
