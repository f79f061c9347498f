// Command configprop measures how fast a config change reaches the proxies:
// it runs `natsmesh server`, starts N watchers of one service's config, each
// on its own NATS connection (as N proxies would), then applies new
// revisions with `natsmesh apply` and records, for each, the time from the
// command's exit to each watcher holding the new revision.
//
//	go run ./bench/configprop [-proxies 100] [-rounds 50]
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/internal/procstat"
)

func main() {
	proxies := flag.Int("proxies", 100, "watchers, each on its own NATS connection")
	rounds := flag.Int("rounds", 50, "revisions applied, one after the other")
	flag.Parse()
	if err := run(*proxies, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench configprop:", err)
		os.Exit(1)
	}
}

// seen records when a watcher got each revision.
type seen struct {
	mu sync.Mutex
	at map[uint64]time.Time
}

func run(proxies, rounds int) error {
	dir, err := os.MkdirTemp("", "natsmesh-bench-config")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin, err := procstat.BuildNatsmesh(dir)
	if err != nil {
		return err
	}
	srv := exec.Command(bin, "server", "--allow-anonymous", "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data"), "--log-level", "warn")
	out, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	url := strings.TrimSpace(line[strings.LastIndex(line, " ")+1:])

	// The bucket is the server's; wait for it.
	ctl, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer ctl.Close()
	deadline := time.Now().Add(10 * time.Second)
	var store *config.Store
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		store, err = config.OpenStore(ctx, ctl, "")
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server's config bucket: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	all := make([]*seen, proxies)
	notify := make(chan struct{}, proxies*4)
	for i := range proxies {
		nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("proxy-%d", i)))
		if err != nil {
			return err
		}
		defer nc.Close()
		w, err := config.NewWatcher(nc, "", quiet)
		if err != nil {
			return err
		}
		s := &seen{at: map[uint64]time.Time{}}
		all[i] = s
		stop, err := w.Watch(context.Background(), "bench", func(doc *config.Service, rev uint64) {
			now := time.Now()
			s.mu.Lock()
			s.at[rev] = now
			s.mu.Unlock()
			select {
			case notify <- struct{}{}:
			default:
			}
		})
		if err != nil {
			return err
		}
		defer stop()
	}

	fmt.Printf("config propagation: %d watchers on %d NATS connections, %d revisions applied with `natsmesh apply`\n\n", proxies, proxies, rounds)
	var every, last, fromWrite []time.Duration
	early := 0 // watchers that had the revision before the command exited
	for r := range rounds {
		file := filepath.Join(dir, "bench.yaml")
		doc := fmt.Sprintf("service: bench\ntimeout: %dms\nroutes:\n  - split: {v1: %d, v2: %d}\n", 1000+r, 100-r%100, r%100)
		if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
			return err
		}
		cmd := exec.Command(bin, "apply", "-f", file, "--nats", url)
		b, err := cmd.CombinedOutput()
		returned := time.Now()
		if err != nil {
			return fmt.Errorf("apply: %v: %s", err, b)
		}
		rev, err := appliedRevision(string(b))
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := store.Get(ctx, "bench")
		cancel()
		if err != nil {
			return err
		}
		if e.Revision != rev {
			return fmt.Errorf("the store holds revision %d, apply said %d", e.Revision, rev)
		}
		written := e.Time // the server's time of the write, on this machine's clock
		var worst, worstWrite time.Duration
		wait := time.Now().Add(10 * time.Second)
		for i := 0; i < proxies; {
			s := all[i]
			s.mu.Lock()
			at, ok := s.at[rev]
			s.mu.Unlock()
			if !ok {
				if time.Now().After(wait) {
					return fmt.Errorf("watcher %d did not get revision %d within 10 s", i, rev)
				}
				select {
				case <-notify:
				case <-time.After(10 * time.Millisecond):
				}
				continue
			}
			worstWrite = max(worstWrite, at.Sub(written))
			d := at.Sub(returned)
			if d < 0 {
				early++ // the watcher got it before the command exited
				d = 0
			}
			every = append(every, d)
			worst = max(worst, d)
			i++
		}
		last = append(last, worst)
		fromWrite = append(fromWrite, worstWrite)
	}
	fmt.Printf("%-34s %9s %9s %9s\n", "", "p50", "p99", "max")
	fmt.Printf("%-34s %9s %9s %9s\n", "apply exit → each watcher", pct(every, 50), pct(every, 99), pct(every, 100))
	fmt.Printf("%-34s %9s %9s %9s\n", "apply exit → last of the watchers", pct(last, 50), pct(last, 99), pct(last, 100))
	fmt.Printf("%-34s %9s %9s %9s\n", "KV write → last of the watchers", pct(fromWrite, 50), pct(fromWrite, 99), pct(fromWrite, 100))
	fmt.Printf("\n%.0f %% of the deliveries came before `natsmesh apply` had exited (counted as 0)\n", 100*float64(early)/float64(len(every)))
	return nil
}

func appliedRevision(out string) (uint64, error) {
	for _, l := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(l, "bench: applied revision "); ok {
			return strconv.ParseUint(strings.Fields(rest)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("apply printed no revision: %q", out)
}

func pct(ds []time.Duration, p int) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	i = min(max(i-1, 0), len(s)-1)
	return s[i].Round(10 * time.Microsecond).String()
}
