package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// A streamed request head whose body never comes holds its slot for
// BodyStart, not for the deadline it asks.
func TestStalledStreamedHeadEnds(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	srv := serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusRequestTimeout)
		}
	}), proxy.ServeConfig{Service: "up", BodyStart: 300 * time.Millisecond})
	nc := meshtest.Connect(t, s)
	h := nats.Header{}
	bus.EncodeRequest(h, http.MethodPost, "/", "up", http.Header{"Content-Length": {"5000000"}})
	h.Set(bus.HeaderStream, "1")
	h.Set(bus.HeaderTimeout, "300000") // it asks five minutes
	inbox := nc.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := nc.PublishMsg(&nats.Msg{Subject: bus.Subjects{Caller: "hog"}.Call("up"), Reply: inbox, Header: h}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no answer to the stalled head: %v (in flight: %d)", err, srv.Inflight())
		}
		if m.Header.Get(bus.HeaderStatus) == "" {
			continue // the credit the head was granted
		}
		if !strings.Contains(string(m.Data), "no chunk of the request body arrived for 300ms") {
			t.Fatalf("the stalled head ended with %v %q", m.Header, m.Data)
		}
		break
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the stalled head held its slot %s", d)
	}
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := srv.Inflight(); n != 0 {
			return fmt.Errorf("%d in flight", n)
		}
		return nil
	})
}

// A streamed body whose client is slow to start still goes: its first
// bytes are sent as they come, within the callee's BodyStart.
func TestSlowStartingStreamedBodyPasses(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveHandler(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d", n)
	}), proxy.ServeConfig{Service: "up", BodyStart: 500 * time.Millisecond})
	hc := libraryClient(t, s, proxy.TransportConfig{Caller: "web"})
	const size = 3 << 20
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("start"))
		time.Sleep(time.Second) // longer than BodyStart, after the first bytes
		_, _ = pw.Write(make([]byte, size-5))
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, "http://up/", pr)
	req.ContentLength = size
	resp, body := hc.do(t, req)
	if resp.StatusCode != http.StatusOK || string(body) != fmt.Sprint(size) {
		t.Fatalf("%s %q, want 200 and the %d bytes", resp.Status, body, size)
	}
}
