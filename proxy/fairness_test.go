package proxy_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
)

// One caller that pins every slot it can leaves a share of them to the
// others: its calls past its share are refused overloaded, the others'
// calls are served.
func TestCallerShareOfSlots(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	srv, err := proxy.Serve(nc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(bus.HeaderCaller) == "hog" {
			<-release
		}
		fmt.Fprint(w, "ok")
	}), proxy.ServeConfig{Service: "svc", MaxInflight: 8, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	call := func(caller string) (*nats.Msg, error) {
		h := nats.Header{}
		bus.EncodeRequest(h, http.MethodGet, "/", "svc", nil)
		return nc.RequestMsg(&nats.Msg{Subject: bus.Subjects{Caller: caller}.Call("svc"), Header: h}, 10*time.Second)
	}
	// The hog sends 20 calls that its handler holds.
	overloaded := make(chan bool, 20)
	for range 20 {
		go func() {
			m, err := call("hog")
			overloaded <- err == nil && bus.First(m.Header, bus.HeaderError) == string(bus.Overloaded)
		}()
	}
	// 8 slots, 2 kept for others: 6 held, 14 refused at once.
	refused := 0
	for range 14 {
		select {
		case o := <-overloaded:
			if !o {
				t.Fatal("a hog call ended otherwise than overloaded while the others were held")
			}
			refused++
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of the hog's calls were refused, want 14 (it may hold 6 of the 8 slots)", refused)
		}
	}
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := srv.Inflight(); n != 6 {
			return fmt.Errorf("%d in flight, want the hog's 6", n)
		}
		return nil
	})
	// Another caller is served, twice at once, while the hog holds its share.
	var wg sync.WaitGroup
	for _, c := range []string{"web", "web"} {
		wg.Go(func() {
			m, err := call(c)
			if err != nil || bus.First(m.Header, bus.HeaderStatus) != "200" {
				t.Errorf("%s's call while the hog holds its share: %v %v", c, err, m)
			}
		})
	}
	wg.Wait()
	// A refusal says why.
	m, err := call("hog")
	if err != nil || bus.First(m.Header, bus.HeaderError) != string(bus.Overloaded) || !strings.Contains(string(m.Data), "hog holds its share") {
		t.Errorf("the hog's next call: %v %q", err, m.Data)
	}
	once.Do(func() { close(release) })
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := srv.Inflight(); n != 0 {
			return fmt.Errorf("%d in flight after the release", n)
		}
		return nil
	})
	// With the instance idle, the hog may use all but the reserve again.
	if m, err := call("hog"); err != nil || bus.First(m.Header, bus.HeaderStatus) != "200" {
		t.Errorf("the hog's call on an idle instance: %v %v", err, m)
	}
}
