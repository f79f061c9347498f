package main

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// startCluster starts n natsmesh servers clustered on loopback, sharing the
// first one's trust roots, all at once, and returns them and their client
// URLs.
func startCluster(t *testing.T, n int) ([]*proc, []string) {
	t.Helper()
	routes := make([]string, n)
	for i := range routes {
		routes[i] = "nats://" + freeAddr(t)
	}
	data := make([]string, n)
	for i := range data {
		data[i] = t.TempDir()
	}
	trust := filepath.Join(data[0], "trust")
	var procs []*proc
	for i := range n {
		p := start(t, fmt.Sprintf("server %d", i+1), nil, natsmeshBin(t), "server",
			"--listen", "127.0.0.1:0", "--data", data[i], "--trust", trust,
			"--name", fmt.Sprintf("n%d", i+1), "--cluster", strings.TrimPrefix(routes[i], "nats://"),
			"--routes", strings.Join(routes, ","))
		procs = append(procs, p)
	}
	var urls []string
	for _, p := range procs {
		urls = append(urls, p.waitOutput(t, serverReady, startTimeout))
	}
	return procs, urls
}

// Three natsmesh servers form a cluster with nothing else installed: a
// caller on one reaches instances on all three, and when one server is
// killed, no GET fails and the registry answers again.
func TestServerCluster(t *testing.T) {
	t.Parallel()
	servers, urls := startCluster(t, 3)
	all := strings.Join(urls, ",")
	var instances []string
	for i, u := range urls {
		_, app := startApp(t, fmt.Sprintf("app-%d", i+1))
		id := fmt.Sprintf("work-%d", i+1)
		startSidecar(t, u, "work", id, app)
		instances = append(instances, id)
	}
	_, webApp := startApp(t, "web")
	_, webOut := startSidecar(t, all, "web", "web-1", webApp)
	meshtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		stdout, stderr, code := natsmesh(t, "services", "--nats", all)
		if code != 0 || !regexp.MustCompile(`(?m)^work\s+3\s+3\b`).MatchString(stdout) {
			return fmt.Errorf("services: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	// The buckets are there, on all three servers, before the kill.
	doc := filepath.Join(t.TempDir(), "work.yaml")
	if err := os.WriteFile(doc, []byte("service: work\ntimeout: 7s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		if stdout, stderr, code := natsmesh(t, "apply", "-f", doc, "--nats", all); code != 0 {
			return fmt.Errorf("apply before the kill: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	pu, _ := url.Parse("http://" + webOut)
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	get := func() (string, error) {
		resp, err := hc.Get("http://work/work")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s", resp.Status)
		}
		return resp.Header.Get("Mesh-Instance"), nil
	}
	seen := map[string]bool{}
	meshtest.CheckFor(t, 20*time.Second, 5*time.Millisecond, func() error {
		inst, err := get()
		if err != nil {
			return err
		}
		seen[inst] = true
		if len(seen) < 3 {
			return fmt.Errorf("calls reached %v, want all three instances", seen)
		}
		return nil
	})

	// Steady load, then kill -9 a server that is not the caller's own.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := get(); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond) // load before the kill
	victim := servers[2]
	_ = victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.done
	killedAt := time.Now()
	time.Sleep(3 * time.Second) // load after the kill
	close(stop)
	wg.Wait()
	t.Logf("%d GETs ok, %d failed across the kill", ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d of %d GETs failed when a server was killed (first: %v)", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	// The instance whose sidecar was given only the killed server's URL
	// carries on through the others, which NATS told it of: all three are
	// still there.
	alive := strings.Join(urls[:2], ",")
	meshtest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		stdout, stderr, code := natsmesh(t, "services", "--nats", alive)
		if code != 0 || !regexp.MustCompile(`(?m)^work\s+3\s+3\b`).MatchString(stdout) {
			return fmt.Errorf("services after the kill: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	t.Logf("the registry answered again %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	// The config bucket has a replica on each server: apply and get go on.
	if err := os.WriteFile(doc, []byte("service: work\ntimeout: 8s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 15*time.Second, 200*time.Millisecond, func() error {
		if stdout, stderr, code := natsmesh(t, "apply", "-f", doc, "--nats", alive); code != 0 {
			return fmt.Errorf("apply after the kill: exit %d\n%s%s", code, stdout, stderr)
		}
		stdout, stderr, code := natsmesh(t, "config", "get", "work", "--nats", alive)
		if code != 0 || !strings.Contains(stdout, "timeout: 8s") {
			return fmt.Errorf("config get after the kill: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	seen = map[string]bool{}
	meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		inst, err := get()
		if err != nil {
			return err
		}
		seen[inst] = true
		if !seen[instances[2]] {
			return fmt.Errorf("calls reached %v, not yet %s, whose server was killed", seen, instances[2])
		}
		return nil
	})
}

// The cluster flags' mistakes get one sentence each.
func TestServerClusterFlagErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster", "127.0.0.1:0"}, "--cluster needs --name"},
		{[]string{"--routes", "nats://127.0.0.1:6222"}, "--routes needs --cluster"},
		{[]string{"--name", "n1", "--cluster", "nohostport"}, `--cluster "nohostport"`},
		{[]string{"--name", "n1", "--cluster", "127.0.0.1:0", "--routes", "http://x:1"}, `--routes: "http://x:1" is no route URL`},
		{[]string{"--name", "N1", "--cluster", "127.0.0.1:0"}, "--name:"},
		{[]string{"--name", "n1", "--cluster", "127.0.0.1:0", "--nats", "nats://127.0.0.1:1"}, "--cluster joins embedded servers"},
	} {
		args := append([]string{"server", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...)
		_, stderr, code := natsmesh(t, args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("natsmesh %s: exit %d, stderr %q; want 2 and %q", strings.Join(args, " "), code, stderr, tc.want)
		}
	}
}
