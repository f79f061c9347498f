package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// rssMB is a process's resident memory in MB, from /proc.
func rssMB(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// slowClients opens n connections to addr, each declaring a 1 MB body
// and sending one byte, then a byte every 5 s; it returns a channel that
// gets, for each connection, how long until the proxy answered or closed it.
func slowClients(t *testing.T, addr, host string, n int) <-chan time.Duration {
	t.Helper()
	done := make(chan time.Duration, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Errorf("slow client %d: %v", i, err)
				done <- -1
				return
			}
			defer c.Close()
			start := time.Now()
			fmt.Fprintf(c, "POST http://%s/work HTTP/1.1\r\nHost: %s\r\nContent-Length: 1000000\r\n\r\nx", host, host)
			go func() {
				for {
					time.Sleep(5 * time.Second)
					if _, err := c.Write([]byte("x")); err != nil {
						return
					}
				}
			}()
			_ = c.SetReadDeadline(time.Now().Add(70 * time.Second))
			_, _ = bufio.NewReader(c).ReadByte() // the 408, or the close
			done <- time.Since(start)
		}()
	}
	return done
}

// 1,000 clients that declare a 1 MB body and trickle it, against a sidecar
// and against the gateway: the proxy's memory stays bounded, each is cut
// off well within 60 s, and ordinary calls meanwhile are answered at once.
func TestSlowClientsBounded(t *testing.T) {
	t.Parallel()
	const clients = 1000
	limitMB := 100.0
	if raceEnabled() {
		limitMB = 600 // the race detector's shadow memory
	}
	_, natsURL := startServer(t)
	_, appURL := startApp(t, "app")
	startSidecar(t, natsURL, "app", "app-1", appURL)
	_, webApp := startApp(t, "web")
	web, webOut := startSidecar(t, natsURL, "web", "web-1", webApp)
	gw := start(t, "gateway", nil, natsmeshBin(t), "gateway", "--listen", "127.0.0.1:0", "--nats", natsURL, "--route", "/=app")
	gwBase := gw.waitOutput(t, gatewayReady, startTimeout)
	gwAddr := strings.TrimPrefix(gwBase, "http://")

	for _, tc := range []struct {
		name, addr string
		p          *proc
	}{{"sidecar", webOut, web}, {"gateway", gwAddr, gw}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hc := &http.Client{Timeout: 5 * time.Second}
			call := func() (time.Duration, error) {
				req, _ := http.NewRequest(http.MethodPost, "http://"+tc.addr+"/work", strings.NewReader("hello"))
				req.Host = "app"
				start := time.Now()
				resp, err := hc.Do(req)
				if err != nil {
					return 0, err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return 0, fmt.Errorf("%s", resp.Status)
				}
				return time.Since(start), nil
			}
			if _, err := call(); err != nil {
				t.Fatalf("before the slow clients: %v", err)
			}
			base := rssMB(t, tc.p.cmd.Process.Pid)
			done := slowClients(t, tc.addr, "app", clients)
			var peak float64
			var lat []time.Duration
			var worst time.Duration
			for got := 0; got < clients; {
				select {
				case d := <-done:
					got++
					worst = max(worst, d)
				case <-time.After(200 * time.Millisecond):
					peak = max(peak, rssMB(t, tc.p.cmd.Process.Pid))
					d, err := call()
					if err != nil {
						t.Fatalf("an ordinary call among the slow clients: %v", err)
					}
					lat = append(lat, d)
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			p50 := time.Duration(0)
			if len(lat) > 0 {
				p50 = lat[len(lat)/2]
			}
			t.Logf("%s: RSS %.0f MB before, %.0f MB at most with %d slow clients; the last cut off after %s; ordinary calls meanwhile: %d, p50 %s", tc.name, base, peak, clients, worst.Round(time.Millisecond), len(lat), p50)
			if peak > limitMB {
				t.Errorf("RSS reached %.0f MB, want at most %.0f", peak, limitMB)
			}
			if worst > 60*time.Second || worst < 0 {
				t.Errorf("a slow client was held %s, want it cut off within 60 s", worst)
			}
			if len(lat) == 0 {
				t.Fatal("no ordinary call was made while the slow clients were held")
			}
			if want := 50 * time.Millisecond; p50 > want && !raceEnabled() {
				t.Errorf("ordinary calls among the slow clients: p50 %s, want at most %s", p50, want)
			}
		})
	}
}

// Connections beyond --max-conns are refused with a 503 at once, 10,000 of
// them, and the proxy serves again as soon as places are free.
func TestConnectionCapRefuses(t *testing.T) {
	t.Parallel()
	const held, beyond = 50, 10000
	_, natsURL := startServer(t)
	_, appURL := startApp(t, "app")
	startSidecar(t, natsURL, "app", "app-1", appURL)
	_, webApp := startApp(t, "web")
	_, webOut := startSidecar(t, natsURL, "web", "web-1", webApp, "--max-conns", strconv.Itoa(held))
	var idle []net.Conn
	for range held {
		c, err := net.Dial("tcp", webOut)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// The held connections are first in the listener's queue, so they are
	// the ones accepted.
	refused := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	start := time.Now()
	for range beyond {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", webOut, 5*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Mesh-Error") == "overloaded" {
				mu.Lock()
				refused++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d connections beyond the cap of %d refused in %s", refused, beyond, held, time.Since(start).Round(time.Millisecond))
	if refused != beyond {
		t.Errorf("%d of %d connections beyond the cap were refused with 503 overloaded", refused, beyond)
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, "http://"+webOut+"/work", nil)
		req.Host = "app"
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sidecar does not serve after the held connections closed: %v %v", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// One caller sends 2,000 streamed request heads and never their bodies:
// each holds a slot of the callee until its body times out. It can hold
// only its share of the slots, and another caller's calls keep succeeding
// meanwhile.
func TestStalledStreamsLeaveOthersServed(t *testing.T) {
	t.Parallel()
	const heads = 2000
	natsURL, data := startSecureServer(t)
	_, appURL := startApp(t, "app")
	startSidecar(t, natsURL, "app", "app-1", appURL)
	_, webApp := startApp(t, "web")
	_, webOut := startSidecar(t, natsURL, "web", "web-1", webApp)

	hog := issue(t, data, "hog")
	nc, err := nats.Connect(natsURL, nats.UserCredentials(hog), nats.CustomInboxPrefix("mesh.inbox.hog"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	replies := make(chan *nats.Msg, 2*heads)
	inbox := nc.NewInbox()
	if _, err := nc.ChanSubscribe(inbox+".*", replies); err != nil {
		t.Fatal(err)
	}
	for i := range heads {
		h := nats.Header{}
		bus.EncodeRequest(h, http.MethodPost, "/stream/upload", "app", http.Header{"Content-Length": {"1000000"}})
		h.Set(bus.HeaderStream, "1")
		h.Set(bus.HeaderTimeout, "300000")
		if err := nc.PublishMsg(&nats.Msg{Subject: bus.Subjects{Caller: "hog"}.Call("app"), Reply: inbox + "." + strconv.Itoa(i), Header: h}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The hog holds its share, three quarters of the callee's 1,024 slots;
	// the rest of its heads are refused overloaded at once.
	const share = 1024 - 1024/4
	overloaded := 0
	for deadline := time.After(20 * time.Second); overloaded < heads-share; {
		select {
		case m := <-replies:
			if bus.First(m.Header, bus.HeaderError) == string(bus.Overloaded) {
				overloaded++
			}
		case <-deadline:
			t.Fatalf("%d of %d stalled heads refused overloaded, want %d: the hog may hold %d of the callee's slots", overloaded, heads, heads-share, share)
		}
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	ok, total := 0, 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); total++ {
		req, _ := http.NewRequest(http.MethodGet, "http://"+webOut+"/work", nil)
		req.Host = "app"
		resp, err := hc.Do(req)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				ok++
			}
			resp.Body.Close()
		}
	}
	t.Logf("%d of %d stalled heads refused; web's calls meanwhile: %d of %d ok", overloaded, heads, ok, total)
	if total == 0 || float64(ok) < 0.99*float64(total) {
		t.Errorf("web's calls while the hog stalls: %d of %d ok, want at least 99 %%", ok, total)
	}
}
