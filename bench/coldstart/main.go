//go:build linux

// Command coldstart measures what a newcomer waits for on a fresh machine:
// `git clone` of the repository, then the README's first command, `go run
// ./cmd/natsmesh demo`, until the demo's page answers. Each round clones into
// a new temporary directory and gives go new, empty GOCACHE and GOMODCACHE
// directories, so every module is downloaded and the standard library and
// every package compiled, as on a machine that never built Go code.
//
// The module download is timed on its own first (`go mod download`), then
// `go run` with the modules in place: loading, compile and link, then the
// demo's start, until /productpage answers 200 with details and reviews on
// it. The total is the sum of the two.
//
//	go run ./bench/coldstart [-rounds 1] [-repo PATH|URL] [-timeout 5m] [-maxload 0.7]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/natsmesh/natsmesh/internal/procstat"
)

func main() {
	repo := flag.String("repo", "", "repository to clone, a path or URL (default: the git repository of the current directory, at its HEAD)")
	rounds := flag.Int("rounds", 1, "clone and run the demo this many times, each from nothing")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up on a step (clone, download, go run until the page answers) after this long")
	maxLoad := flag.Float64("maxload", 0.7, "before each round, wait until the 1-minute load average is below this (0: do not wait)")
	loadWait := flag.Duration("loadwait", 5*time.Minute, "wait at most this long for -maxload, then go on and say so")
	flag.Parse()
	if *rounds < 1 {
		fatalf("-rounds must be at least 1")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *repo, *rounds, *timeout, *maxLoad, *loadWait); err != nil {
		stop()
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench coldstart: "+format+"\n", args...)
	os.Exit(1)
}

// round is one round's figures; the last three count from go run's start.
type round struct {
	load      float64       // 1-minute load average at the round's start
	clone     time.Duration // git clone
	download  time.Duration // go mod download
	build     time.Duration // until the demo's process starts: loading, compile, link
	firstLine time.Duration // until the demo prints its first line
	page      time.Duration // until the page answers 200 with details and reviews
	stop      time.Duration // SIGINT to every process of the group gone
	others    time.Duration // CPU time the machine's other processes used meanwhile
	commit    string        // the clone's HEAD
}

func (r round) total() time.Duration { return r.download + r.page }

func run(ctx context.Context, repo string, rounds int, timeout time.Duration, maxLoad float64, loadWait time.Duration) error {
	if repo == "" {
		out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
		if err != nil {
			return fmt.Errorf("not in a git repository (give -repo): %w", err)
		}
		repo = strings.TrimSpace(string(out))
	}
	version, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return fmt.Errorf("go env: %w", err)
	}
	goflags, err := exec.Command("go", "env", "GOFLAGS").Output()
	if err != nil {
		return fmt.Errorf("go env: %w", err)
	}
	flags := strings.TrimSpace(strings.TrimSpace(string(goflags)) + " -modcacherw")

	fmt.Printf("cold start: git clone, then `go run ./cmd/natsmesh demo` until /productpage renders, with empty GOCACHE and GOMODCACHE\n")
	fmt.Printf("%s, %s %s/%s, %d CPUs, GOFLAGS=%q\n", time.Now().Format("2006-01-02 15:04 MST"),
		strings.TrimSpace(string(version)), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), flags)
	fmt.Printf("repository %s, cloned with --no-local (a local path is copied through git's transport, as from a remote, without the network)\n", repo)
	fmt.Printf("download: `go mod download` timed alone; then `go run`: loading, compile and link (build), the demo's start,\n")
	fmt.Printf("its first line and the page, each from go run's start; total = download + page;\n")
	fmt.Printf("others: CPU time the machine's other processes used during the round (/proc/stat less this program and its children)\n\n")

	var all []round
	for i := range rounds {
		load, err := waitLoad(ctx, maxLoad, loadWait)
		if err != nil {
			return err
		}
		r, err := runRound(ctx, repo, flags, timeout)
		if err != nil {
			return fmt.Errorf("round %d: %w", i+1, err)
		}
		r.load = load
		if i == 0 {
			fmt.Printf("%-6s %5s %8s %9s %8s %11s %8s %8s %7s %7s  %s\n", "round", "load", "clone", "download", "build", "first line", "page", "total", "stop", "others", "commit")
		}
		fmt.Printf("%-6d %5.2f %8s %9s %8s %11s %8s %8s %7s %7s  %s\n", i+1, r.load, secs(r.clone), secs(r.download),
			secs(r.build), secs(r.firstLine), secs(r.page), secs(r.total()), secs(r.stop), secs(r.others), r.commit)
		all = append(all, r)
	}
	if rounds > 1 {
		med := func(f func(round) time.Duration) string {
			v := make([]time.Duration, len(all))
			for i, r := range all {
				v[i] = f(r)
			}
			return secs(median(v))
		}
		fmt.Printf("%-6s %5s %8s %9s %8s %11s %8s %8s %7s %7s\n", "median", "",
			med(func(r round) time.Duration { return r.clone }),
			med(func(r round) time.Duration { return r.download }),
			med(func(r round) time.Duration { return r.build }),
			med(func(r round) time.Duration { return r.firstLine }),
			med(func(r round) time.Duration { return r.page }),
			med(round.total), med(func(r round) time.Duration { return r.stop }),
			med(func(r round) time.Duration { return r.others }))
	}
	return nil
}

// runRound clones repo, downloads the modules and runs the demo until its
// page answers, each in directories of its own, removed at the end.
func runRound(ctx context.Context, repo, goflags string, timeout time.Duration) (r round, err error) {
	machine0, ours0 := machineCPU()
	defer func() {
		machine1, ours1 := machineCPU()
		r.others = max(0, machine1-machine0-(ours1-ours0))
	}()
	root, err := os.MkdirTemp("", "natsmesh-coldstart-")
	if err != nil {
		return r, err
	}
	defer func() {
		if rerr := os.RemoveAll(root); rerr != nil && err == nil {
			err = rerr
		}
	}()
	src := filepath.Join(root, "src")
	tmp := filepath.Join(root, "tmp") // go run's work directory, the demo's data
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return r, err
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		for _, k := range []string{"GOCACHE=", "GOMODCACHE=", "GOFLAGS=", "GOTMPDIR=", "TMPDIR="} {
			if strings.HasPrefix(kv, k) {
				return true
			}
		}
		return false
	})
	env = append(env, "GOCACHE="+filepath.Join(root, "gocache"), "GOMODCACHE="+filepath.Join(root, "gomodcache"),
		"GOFLAGS="+goflags, "GOTMPDIR="+tmp, "TMPDIR="+tmp)

	if r.clone, err = timed(ctx, timeout, "", nil, "git", "clone", "--quiet", "--no-local", repo, src); err != nil {
		return r, err
	}
	out, err := exec.Command("git", "-C", src, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return r, fmt.Errorf("the clone's HEAD: %w", err)
	}
	r.commit = strings.TrimSpace(string(out))
	if r.download, err = timed(ctx, timeout, src, env, "go", "mod", "download"); err != nil {
		return r, err
	}
	err = runDemo(ctx, src, env, timeout, &r)
	return r, err
}

// machineCPU returns the CPU time the machine has spent busy and the part
// of it this process and its children that have exited spent.
func machineCPU() (machine, ours time.Duration) {
	machine, _ = procstat.MachineCPU()
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			ours += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return machine, ours
}

// timed runs a command to its end and returns how long it took.
func timed(ctx context.Context, timeout time.Duration, dir string, env []string, name string, args ...string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return d, nil
}

// runDemo runs `go run ./cmd/natsmesh demo` in dir, in a process group of
// its own, until its page answers; then stops it as Ctrl-C would.
func runDemo(ctx context.Context, dir string, env []string, timeout time.Duration, r *round) (err error) {
	gateway, err := procstat.FreeAddr()
	if err != nil {
		return err
	}
	natsAddr, err := procstat.FreeAddr()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "run", "./cmd/natsmesh", "demo", "--gateway", gateway, "--listen", natsAddr)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout := &lineTimer{first: make(chan struct{})}
	cmd.Stdout = stdout
	var stderr bytes.Buffer // read only once cmd.Wait has returned
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	pgid := cmd.Process.Pid
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		var serr error
		r.stop, serr = stopGroup(pgid, exited)
		if err == nil {
			err = serr
		}
		if err != nil {
			err = fmt.Errorf("%w\ngo run's output:\n%s%s", err, stdout.String(), tail(stderr.String(), 4000))
		} else if strings.Contains(stderr.String(), "go: downloading") {
			err = errors.New("go run downloaded modules that go mod download had not")
		}
	}()

	goRun, err := procstat.ReadStat(pgid)
	if err != nil {
		return err
	}
	page := "http://" + gateway + "/productpage"
	hc := &http.Client{Timeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if r.build == 0 {
			if demo, ok := child(pgid, "natsmesh"); ok {
				r.build = demo.Started - goRun.Started
			}
		}
		if ok, err := renders(ctx, hc, page); ok {
			r.page = time.Since(start)
			break
		} else if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s did not render within %s: %v", page, timeout, err)
		} else if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-exited:
			return fmt.Errorf("go run exited before the page rendered: %v", waitErr)
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	// The demo prints its first line once it has seen the page itself.
	select {
	case <-stdout.first:
		r.firstLine = stdout.at.Sub(start)
	case <-time.After(10 * time.Second):
		return errors.New("the page rendered, but the demo printed nothing within 10 s")
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.build == 0 {
		return errors.New("the demo's process was not seen under go run")
	}
	return nil
}

// renders says whether page answers 200 with the details and the reviews on
// it, as the demo itself waits for.
func renders(ctx context.Context, hc *http.Client, page string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, page, nil)
	if err != nil {
		return false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("status %d", resp.StatusCode)
	}
	if !bytes.Contains(body, []byte("Details served by")) || !bytes.Contains(body, []byte("Reviews served by")) {
		return false, errors.New("the page lacks details or reviews")
	}
	return true, nil
}

// child finds the process called comm that parent started.
func child(parent int, comm string) (procstat.Stat, bool) {
	all, _ := procstat.All()
	for _, st := range all {
		if st.PPid == parent && st.Comm == comm {
			return st, true
		}
	}
	return procstat.Stat{}, false
}

// alive lists the live processes of group pgid (zombies do not count).
func alive(pgid int) []int {
	all, _ := procstat.All()
	var pids []int
	for _, st := range all {
		if st.Pgrp == pgid && st.State != 'Z' {
			pids = append(pids, st.Pid)
		}
	}
	return pids
}

// stopGroup sends SIGINT to process group pgid, as Ctrl-C does, and waits
// for go run to exit (exited closed) and every process of the group to be
// gone; after 10 s it kills the group. It returns how long they took.
func stopGroup(pgid int, exited <-chan struct{}) (time.Duration, error) {
	start := time.Now()
	_ = syscall.Kill(-pgid, syscall.SIGINT)
	deadline := start.Add(10 * time.Second)
	killed := false
	for {
		select {
		case <-exited:
			if len(alive(pgid)) == 0 {
				d := time.Since(start)
				if killed {
					return d, errors.New("the demo did not stop within 10 s of SIGINT; killed")
				}
				return d, nil
			}
		default:
		}
		if time.Now().After(deadline) {
			if killed {
				return time.Since(start), fmt.Errorf("processes %v of group %d are still running after SIGKILL", alive(pgid), pgid)
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed = true
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitLoad waits until the 1-minute load average is below maxLoad, at most
// wait, and returns the last one read.
func waitLoad(ctx context.Context, maxLoad float64, wait time.Duration) (float64, error) {
	deadline := time.Now().Add(wait)
	said := false
	for {
		b, err := os.ReadFile("/proc/loadavg")
		if err != nil {
			return 0, err
		}
		load, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/loadavg: %w", err)
		}
		if maxLoad <= 0 || load < maxLoad {
			return load, nil
		}
		if time.Now().After(deadline) {
			fmt.Printf("(the load is still %.2f after %s of waiting for %.2f: measuring anyway)\n", load, wait, maxLoad)
			return load, nil
		}
		if !said {
			fmt.Printf("(waiting for the 1-minute load, %.2f, to fall below %.2f)\n", load, maxLoad)
			said = true
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// lineTimer keeps what is written to it and when its first line ended.
type lineTimer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	at    time.Time
	first chan struct{} // closed at the first line's end
}

func (w *lineTimer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.at.IsZero() && bytes.IndexByte(p, '\n') >= 0 {
		w.at = time.Now()
		close(w.first)
	}
	return w.buf.Write(p)
}

func (w *lineTimer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func median(v []time.Duration) time.Duration {
	v = slices.Clone(v)
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
