package bus_test

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A server that hangs without closing its sockets (a stopped process, a
// frozen machine, a partition) is noticed by the client's PINGs within
// PingInterval × (MaxPingsOut+1), and the client reconnects to the other
// URL of its list, where requests work again.
func TestHungServerIsLeft(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		interval time.Duration
		max      int
	}{
		{name: "defaults"},
		{name: "configured", interval: 300 * time.Millisecond, max: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			interval, max := tc.interval, tc.max
			if interval == 0 {
				interval, max = bus.DefaultPingInterval, bus.DefaultMaxPingsOut
			}
			checkHungServerIsLeft(t, bus.ConnectConfig{PingInterval: tc.interval, MaxPingsOut: tc.max},
				interval*time.Duration(max+1)+2*time.Second)
		})
	}
}

func checkHungServerIsLeft(t *testing.T, cfg bus.ConnectConfig, notice time.Duration) {
	s := meshtest.RunServer(t)
	responder := meshtest.Connect(t, s)
	if _, err := responder.Subscribe("hung.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := responder.Flush(); err != nil {
		t.Fatal(err)
	}
	fwd := map[string]*forwarder{}
	var urls []string
	for range 2 {
		f := newForwarder(t, s.Addr().String())
		fwd[f.url()] = f
		urls = append(urls, f.url())
	}

	disconnected := make(chan time.Time, 8)
	reconnected := make(chan string, 8)
	cfg.URL, cfg.Name = strings.Join(urls, ","), t.Name()
	nc, err := bus.Connect(cfg,
		nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnected <- time.Now() }),
		nats.ReconnectHandler(func(nc *nats.Conn) { reconnected <- nc.ConnectedUrl() }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := nc.Request("hung.echo", []byte("hi"), 2*time.Second); err != nil {
		t.Fatalf("request before the freeze: %v", err)
	}

	first := nc.ConnectedUrl()
	hung, ok := fwd[first]
	if !ok {
		t.Fatalf("connected to %s, not one of %v", first, urls)
	}
	hung.freeze()
	frozen := time.Now()

	select {
	case at := <-disconnected:
		t.Logf("hung server noticed after %s", at.Sub(frozen).Round(time.Millisecond))
	case <-time.After(notice):
		t.Fatalf("no disconnect within %s of the server hanging", notice)
	}
	select {
	case url := <-reconnected:
		if url == first {
			t.Fatalf("reconnected to the hung server %s", url)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no reconnect within 5s of the disconnect")
	}
	meshtest.CheckFor(t, 3*time.Second, 50*time.Millisecond, func() error {
		_, err := nc.Request("hung.echo", []byte("hi"), 500*time.Millisecond)
		return err
	})
}

// forwarder relays TCP connections to a server, and can be frozen: it then
// stops relaying in both directions without closing anything, as a stopped
// process would.
type forwarder struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	gate   chan struct{} // closed while relaying
	conns  []net.Conn
	done   chan struct{}
	closed bool
	wg     sync.WaitGroup
}

func newForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, gate: make(chan struct{}), done: make(chan struct{})}
	close(f.gate)
	f.wg.Go(f.accept)
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) url() string { return "nats://" + f.ln.Addr().String() }

func (f *forwarder) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = make(chan struct{})
}

func (f *forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		if !f.track(c, s) {
			return
		}
		f.wg.Go(func() { f.relay(s, c) })
		f.wg.Go(func() { f.relay(c, s) })
	}
}

// track remembers conns to close them at the end, false when that has come.
func (f *forwarder) track(conns ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	f.conns = append(f.conns, conns...)
	return true
}

// relay copies from src to dst while the gate is open; frozen, it holds
// what it read.
func (f *forwarder) relay(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			gate := f.gate
			f.mu.Unlock()
			select {
			case <-gate:
			case <-f.done:
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		close(f.done)
		f.ln.Close()
		for _, c := range f.conns {
			c.Close()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func TestPingOptionsRejectNegatives(t *testing.T) {
	for _, cfg := range []bus.ConnectConfig{{PingInterval: -time.Second}, {MaxPingsOut: -1}} {
		if _, err := cfg.Options(); err == nil {
			t.Errorf("%+v: Options accepted it", cfg)
		}
	}
	if _, err := (bus.ConnectConfig{}).Options(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}
