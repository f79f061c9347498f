package httpguard_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/httpguard"
)

// serve runs h behind Guard(l) on a loopback listener limited to maxConns.
func serve(t *testing.T, l httpguard.Limits, h http.Handler) (*httpguard.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := httpguard.Limit(ln, l.MaxConns)
	srv := &http.Server{Handler: httpguard.Guard(h, l), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(lim) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lim, ln.Addr().String()
}

// readAll answers with what reading the body gave: the byte count, or the
// mesh error's status and sentence.
var readAll = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	var e *bus.Error
	if errors.As(err, &e) {
		http.Error(w, e.Message, e.Status)
		return
	}
	fmt.Fprintf(w, "read %d", n)
})

// A body that trickles is dropped with 408 once it falls under the minimum
// rate, and the connection is closed; memory is not taken from the
// declared length.
func TestSlowBodyDropped(t *testing.T) {
	t.Parallel()
	l := httpguard.Limits{BodyIdle: 5 * time.Second, BodyMinRate: 100, BodyGrace: 300 * time.Millisecond}
	_, addr := serve(t, l, readAll)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
	go func() { // a byte every 100 ms: 10 bytes a second, under 100
		for range 50 {
			time.Sleep(100 * time.Millisecond)
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "came too slowly") {
		t.Fatalf("%s %q, want 408 and the sentence", resp.Status, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dropped after %s, want soon after the 300 ms grace", d)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the connection stays open after the slow body")
	}
}

// A body that stalls is dropped after BodyIdle even before the rate rule.
func TestStalledBodyDropped(t *testing.T) {
	t.Parallel()
	l := httpguard.Limits{BodyIdle: 300 * time.Millisecond, BodyMinRate: -1}
	_, addr := serve(t, l, readAll)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("%s, want 408", resp.Status)
	}
}

// A body that keeps coming at a good rate is read whole, however long.
func TestSteadyBodyPasses(t *testing.T) {
	t.Parallel()
	l := httpguard.Limits{BodyIdle: time.Second, BodyMinRate: 1000, BodyGrace: 100 * time.Millisecond}
	_, addr := serve(t, l, readAll)
	pr, pw := io.Pipe()
	go func() {
		for range 20 { // 20 × 200 bytes over about a second: 4,000 bytes a second
			_, _ = pw.Write(make([]byte, 200))
			time.Sleep(50 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", pr)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "read 4000" {
		t.Fatalf("%s %q, want 200 read 4000", resp.Status, body)
	}
}

// Connections beyond the limit are answered 503 and closed, and counted;
// the ones held are served, and a freed place is taken again.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	lim, addr := serve(t, httpguard.Limits{MaxConns: 3}, readAll)
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	deadline := time.Now().Add(5 * time.Second)
	for lim.Open() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Mesh-Error") != "overloaded" || !strings.Contains(string(body), "limit of 3 client connections") {
		t.Fatalf("over the limit: %s %v %q", resp.Status, resp.Header, body)
	}
	if lim.Refused() != 1 {
		t.Errorf("Refused() = %d, want 1", lim.Refused())
	}
	// A held connection is served.
	fmt.Fprintf(held[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = held[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(held[0]), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a held connection: %v %v", resp, err)
	}
	// Freeing one lets a new one in.
	held[1].Close()
	for lim.Open() > 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	resp, err = http.Get("http://" + addr + "/")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after a place was freed: %v %v", resp, err)
	}
	resp.Body.Close()
}

// The bodies being received together are bounded: one that would take
// them past BodyBudget is refused overloaded, and the budget is given
// back when a request ends.
func TestBodyBudget(t *testing.T) {
	t.Parallel()
	release, holding := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		var e *bus.Error
		if errors.As(err, &e) {
			http.Error(w, e.Message, e.Status)
			return
		}
		if r.Header.Get("X-Hold") != "" {
			close(holding)
			<-release // hold the bytes read, as a call in flight does
		}
		fmt.Fprintf(w, "read %d", n)
	})
	_, addr := serve(t, httpguard.Limits{BodyBudget: 1 << 20}, h)
	post := func(hold bool) (*http.Response, error) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(strings.Repeat("x", 600<<10)))
		if hold {
			req.Header.Set("X-Hold", "1")
		}
		return http.DefaultClient.Do(req)
	}
	first := make(chan *http.Response, 1)
	go func() {
		resp, err := post(true)
		if err != nil {
			t.Error(err)
		}
		first <- resp
	}()
	select {
	case <-holding:
	case <-time.After(5 * time.Second):
		t.Fatal("the first body was not read")
	}
	// The second body takes the budget past 1 MiB while the first holds
	// 600 KiB of it.
	resp, err := post(false)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "limit of 1 MiB of request bodies") {
		t.Fatalf("a body past the budget: %s %q", resp.Status, body)
	}
	close(release)
	if r := <-first; r == nil || r.StatusCode != http.StatusOK {
		t.Fatalf("the first body: %v", r)
	}
	// Given back: the next one passes.
	resp, err = post(false)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the first ended: %v %v", resp, err)
	}
	resp.Body.Close()
}
