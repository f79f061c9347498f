// Command stream measures large and streaming bodies through the mesh: the
// throughput of a large download and a large upload, and the time to the
// first byte of a streamed response, each called directly and through
// natsmesh (server + caller sidecar + callee sidecar, each its own process,
// the app a process of its own too), one after the other, in rounds whose
// order alternates.
//
//	go run ./bench/stream [-size 100] [-rounds 3] [-ttfb 50]
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/internal/procstat"
)

const appEnv = "NATSMESH_BENCH_STREAM_APP" // set: this process is the app, listening there

const mib = 1 << 20

func main() {
	if addr := os.Getenv(appEnv); addr != "" {
		runApp(addr)
		return
	}
	size := flag.Int("size", 100, "size of the download and of the upload, in MiB")
	rounds := flag.Int("rounds", 3, "direct and mesh measured one after the other this many times, in alternating order")
	ttfbN := flag.Int("ttfb", 50, "streamed responses per path for the time to first byte")
	hold := flag.Duration("hold", 20*time.Millisecond, "how long the app holds a streamed response open after its first event")
	flag.Parse()
	if *size < 1 || *rounds < 1 || *ttfbN < 1 {
		fatalf("-size, -rounds and -ttfb must be at least 1")
	}
	if err := run(int64(*size)*mib, *rounds, *ttfbN, *hold); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/stream: "+format+"\n", args...)
	os.Exit(1)
}

// runApp is the app: GET /download?size=N sends N bytes with
// Content-Length; POST /upload reads the body and answers its length; GET
// /events sends a server-sent event, flushes it, holds the stream open for
// ?hold=ms and ends it with a second event; /healthz answers ok.
func runApp(addr string) {
	block := make([]byte, mib)
	_, _ = rand.NewChaCha8([32]byte{}).Read(block) // incompressible
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /download", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(block)))
			if _, err := w.Write(block[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("hold"))
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: first\n\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			return
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: last\n\n")
	})
	if err := http.ListenAndServe(addr, mux); err != nil {
		fatalf("app: %v", err)
	}
}

func newClient(proxy *url.URL) *http.Client {
	t := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}
	if proxy != nil {
		t.Proxy = http.ProxyURL(proxy)
	}
	return &http.Client{Transport: t, Timeout: 5 * time.Minute}
}

// path is one way to the app: direct, or through the caller's sidecar.
type path struct {
	name string
	c    *http.Client
	base string // URL of the app by this path
}

func run(size int64, rounds, ttfbN int, hold time.Duration) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench-stream")
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
	maxBody := strconv.FormatInt(2*size, 10)
	app, err := p.Start(self, []string{appEnv + "=" + appAddr})
	if err != nil {
		return err
	}
	srv, err := p.Start(bin, nil, "server", "--allow-anonymous", "--listen", natsAddr, "--data", filepath.Join(dir, "data"), "--log-level", "warn")
	if err != nil {
		return err
	}
	callee, err := p.Start(bin, nil, "sidecar", "--nats", natsURL, "--service", "app", "--upstream", "http://"+appAddr,
		"--listen", calleeAddr, "--max-body", maxBody, "--log-level", "warn")
	if err != nil {
		return err
	}
	caller, err := p.Start(bin, nil, "sidecar", "--nats", natsURL, "--service", "client", "--upstream", "http://"+appAddr,
		"--listen", callerAddr, "--max-body", maxBody, "--log-level", "warn")
	if err != nil {
		return err
	}
	proxyURL, _ := url.Parse("http://" + callerAddr)
	direct := path{"direct", newClient(nil), "http://" + appAddr}
	mesh := path{"mesh", newClient(proxyURL), "http://app"}
	for _, pt := range []path{direct, mesh} {
		if err := procstat.WaitHTTP(pt.c, pt.base+"/healthz"); err != nil {
			return err
		}
	}

	fmt.Printf("natsmesh streaming benchmark: %d MiB transfers, %d rounds, %d CPUs\n\n", size/mib, rounds, runtime.NumCPU())
	fmt.Printf("%-6s %-9s %-7s %10s %10s\n", "round", "transfer", "path", "MiB/s", "time")
	pids := []int{caller.Process.Pid, callee.Process.Pid}
	peaks := make([]int64, len(pids))
	// CPU time of every process during the mesh transfers, by kind.
	cpuNames := []string{"client", "app", "caller sidecar", "server", "callee sidecar"}
	cpuPids := []int{os.Getpid(), app.Process.Pid, caller.Process.Pid, srv.Process.Pid, callee.Process.Pid}
	cpu := map[string][]time.Duration{"download": make([]time.Duration, len(cpuPids)), "upload": make([]time.Duration, len(cpuPids))}
	var meshTime = map[string]time.Duration{}
	type rates struct{ direct, mesh []float64 }
	results := map[string]*rates{"download": {}, "upload": {}}
	for r := range rounds {
		order := []path{direct, mesh}
		if r%2 == 1 {
			order = []path{mesh, direct}
		}
		for _, kind := range []string{"download", "upload"} {
			for _, pt := range order {
				var stop func() []int64
				var before []time.Duration
				if pt.name == "mesh" {
					stop = sampleRSS(pids)
					before = cpuTimes(cpuPids)
				}
				var took time.Duration
				var err error
				if kind == "download" {
					took, err = download(pt, size)
				} else {
					took, err = upload(pt, size)
				}
				if stop != nil {
					for i, t := range cpuTimes(cpuPids) {
						cpu[kind][i] += t - before[i]
					}
					meshTime[kind] += took
					for i, v := range stop() {
						peaks[i] = max(peaks[i], v)
					}
				}
				if err != nil {
					return fmt.Errorf("%s %s: %w", pt.name, kind, err)
				}
				rate := float64(size) / mib / took.Seconds()
				if pt.name == "direct" {
					results[kind].direct = append(results[kind].direct, rate)
				} else {
					results[kind].mesh = append(results[kind].mesh, rate)
				}
				fmt.Printf("%-6d %-9s %-7s %10.0f %10s\n", r+1, kind, pt.name, rate, took.Round(time.Millisecond))
			}
		}
	}

	fmt.Printf("\nthroughput, median of %d rounds [lowest, highest]:\n", rounds)
	for _, kind := range []string{"download", "upload"} {
		res := results[kind]
		ratios := make([]float64, rounds)
		for i := range ratios {
			ratios[i] = res.mesh[i] / res.direct[i]
		}
		fmt.Printf("  %-8s direct %s MiB/s, mesh %s MiB/s, mesh/direct %sx\n", kind,
			medianRange(res.direct, "%.0f"), medianRange(res.mesh, "%.0f"), medianRange(ratios, "%.2f"))
	}
	fmt.Printf("sidecar peak RSS during the mesh transfers: caller %.1f MiB, callee %.1f MiB\n",
		float64(peaks[0])/mib, float64(peaks[1])/mib)
	fmt.Printf("CPU time per MiB through the mesh, by process (all rounds; the client's includes its measuring):\n")
	for _, kind := range []string{"download", "upload"} {
		var parts []string
		var total time.Duration
		for i, name := range cpuNames {
			parts = append(parts, fmt.Sprintf("%s %.2f ms", name, float64(cpu[kind][i])/float64(time.Millisecond)/float64(rounds*int(size/mib))))
			total += cpu[kind][i]
		}
		fmt.Printf("  %-8s %s; in all %.0f%% of one core over the transfers\n", kind, strings.Join(parts, ", "), 100*total.Seconds()/meshTime[kind].Seconds())
	}

	// Time to first byte of a streamed response, the paths interleaved.
	// For comparison, a small response that goes in one message, the
	// requests interleaved with the streamed ones.
	heads, firsts, small := map[string][]time.Duration{}, map[string][]time.Duration{}, map[string][]time.Duration{}
	for i := range 2 * ttfbN {
		pt := direct
		if i%2 == 1 {
			pt = mesh
		}
		h, f, err := firstEvent(pt, hold)
		if err != nil {
			return fmt.Errorf("%s stream: %w", pt.name, err)
		}
		heads[pt.name] = append(heads[pt.name], h)
		firsts[pt.name] = append(firsts[pt.name], f)
		start := time.Now()
		if err := procstat.WaitHTTP(pt.c, pt.base+"/healthz"); err != nil {
			return err
		}
		small[pt.name] = append(small[pt.name], time.Since(start))
	}
	fmt.Printf("\nstreamed response (the app flushes its head and a first event, then holds the stream %s), %d each:\n", hold, ttfbN)
	for _, name := range []string{"direct", "mesh"} {
		fmt.Printf("  %-7s first event %s; response head %s\n", name, percentiles(firsts[name]), percentiles(heads[name]))
	}
	fmt.Printf("a small response in one message, for comparison:\n")
	for _, name := range []string{"direct", "mesh"} {
		fmt.Printf("  %-7s %s\n", name, percentiles(small[name]))
	}
	return nil
}

// download gets size bytes and returns how long it took, from sending the
// request to the body's last byte.
func download(pt path, size int64) (time.Duration, error) {
	start := time.Now()
	resp, err := pt.c.Get(fmt.Sprintf("%s/download?size=%d", pt.base, size))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK || n != size {
		return 0, fmt.Errorf("status %d, %d bytes, want 200 and %d", resp.StatusCode, n, size)
	}
	return took, nil
}

// upload sends size bytes with Content-Length and returns how long it took,
// from sending the request to the app's answer.
func upload(pt path, size int64) (time.Duration, error) {
	body := &zeroReader{left: size}
	req, err := http.NewRequest(http.MethodPost, pt.base+"/upload", body)
	if err != nil {
		return 0, err
	}
	req.ContentLength = size
	start := time.Now()
	resp, err := pt.c.Do(req)
	if err != nil {
		return 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK || string(b) != fmt.Sprintf("%d\n", size) {
		return 0, fmt.Errorf("status %d, answer %q", resp.StatusCode, b)
	}
	return took, nil
}

// zeroReader is a body of left bytes whose content does not matter (the
// mesh neither compresses nor looks at it).
type zeroReader struct{ left int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.left == 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.left))
	clear(p[:n])
	z.left -= int64(n)
	return n, nil
}

// firstEvent opens a streamed response and returns the times from sending
// the request to reading the response's head and its first event; then it
// reads the stream to its end.
func firstEvent(pt path, hold time.Duration) (head, first time.Duration, err error) {
	start := time.Now()
	resp, err := pt.c.Get(fmt.Sprintf("%s/events?hold=%d", pt.base, hold.Milliseconds()))
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	head = time.Since(start)
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, 0, fmt.Errorf("before the first event: %w", err)
		}
		if line == "\n" {
			break
		}
	}
	first = time.Since(start)
	rest, err := io.ReadAll(br)
	if err != nil {
		return 0, 0, err
	}
	if string(rest) != "data: last\n\n" {
		return 0, 0, errors.New("the stream did not end with its last event")
	}
	return head, first, nil
}

// cpuTimes returns each process's CPU time so far.
func cpuTimes(pids []int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, pid := range pids {
		out[i] = procstat.CPU(pid)
	}
	return out
}

// sampleRSS samples the processes' resident memory every 50 ms until the
// returned function is called, which returns each one's peak.
func sampleRSS(pids []int) func() []int64 {
	peaks := make([]int64, len(pids))
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			for i, pid := range pids {
				peaks[i] = max(peaks[i], procstat.RSS(pid))
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() []int64 {
		close(stop)
		<-done
		return peaks
	}
}

// percentiles formats the p50, p90 and highest of l.
func percentiles(l []time.Duration) string {
	l = slices.Clone(l)
	slices.Sort(l)
	return fmt.Sprintf("p50 %s, p90 %s, max %s", fmtDur(l[len(l)/2]), fmtDur(l[len(l)*9/10]), fmtDur(l[len(l)-1]))
}

// medianRange formats the median, lowest and highest of v.
func medianRange(v []float64, format string) string {
	v = slices.Clone(v)
	slices.Sort(v)
	f := func(x float64) string { return fmt.Sprintf(format, x) }
	return fmt.Sprintf("%s [%s, %s]", f(v[len(v)/2]), f(v[0]), f(v[len(v)-1]))
}

func fmtDur(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
	return d.Round(100 * time.Microsecond).String()
}
