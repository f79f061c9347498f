package proxy_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// startInstances starts n instances of service behind sidecars that beat
// every 100 ms; delay, if set, says how long instance i takes to answer.
func startInstances(t *testing.T, s *embedded.Server, service string, n int, delay func(i int) time.Duration) []*sidecar.Sidecar {
	t.Helper()
	scs := make([]*sidecar.Sidecar, n)
	for i := range n {
		d := time.Duration(0)
		if delay != nil {
			d = delay(i)
		}
		_, scs[i] = startCallee(t, s, service, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d > 0 {
				time.Sleep(d)
			}
			io.WriteString(w, "ok\n")
		}), func(c *sidecar.Config) {
			c.Instance = fmt.Sprintf("%s-%d", service, i)
			c.Heartbeat = 100 * time.Millisecond
			noOutlier(c)
		})
	}
	return scs
}

// balancedTransport is a library Transport that follows its callees, with
// service's load-balancing policy set by a document; it returns once its
// registry view offers want passing instances.
func balancedTransport(t *testing.T, s *embedded.Server, service, lb string, want int) (*proxy.Transport, *http.Client) {
	t.Helper()
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: "+service+"\nloadBalancer: "+lb+"\n")
	tr := newTransport(t, s, proxy.TransportConfig{Configs: cfgs, Follow: true})
	hc := httpClient(t, tr)
	// The first call follows the service; heartbeats then fill the view.
	callBody(t, hc, "http://"+service+"/")
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := proxy.PassingInstances(tr, service, ""); n != want {
			return fmt.Errorf("the view offers %d instances, want %d", n, want)
		}
		return nil
	})
	return tr, hc
}

// instanceOf calls service with header key (if not "") and returns the
// instance that answered.
func instanceOf(t *testing.T, hc *http.Client, service, key string) string {
	t.Helper()
	var kv []string
	if key != "" {
		kv = []string{"X-User", key}
	}
	code, body, h := callBody(t, hc, "http://"+service+"/", kv...)
	if code != http.StatusOK {
		t.Fatalf("call with key %q: %d %s", key, code, body)
	}
	return h.Get(bus.HeaderInstance)
}

// ring-hash keeps each key on its instance; when one of three instances
// stops, only its keys move.
func TestRingHash(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	scs := startInstances(t, s, "carts", 3, nil)
	_, hc := balancedTransport(t, s, "carts", "{policy: ring-hash, hashHeader: x-user}", 3)
	const keys = 240
	owner := make([]string, keys)
	perInstance := map[string]int{}
	for round := 0; round < 3; round++ {
		for k := range keys {
			got := instanceOf(t, hc, "carts", fmt.Sprintf("user-%d", k))
			if round == 0 {
				owner[k] = got
				perInstance[got]++
			} else if got != owner[k] {
				t.Fatalf("round %d: key %d went to %s, before to %s", round, k, got, owner[k])
			}
		}
	}
	if len(perInstance) != 3 {
		t.Fatalf("keys spread over %d instances, want 3: %v", len(perInstance), perInstance)
	}
	// Requests without the key spread at random.
	spread := map[string]bool{}
	for range 60 {
		spread[instanceOf(t, hc, "carts", "")] = true
	}
	if len(spread) < 2 {
		t.Fatalf("requests without the hash header all went to %v", spread)
	}

	gone := scs[1].Instance()
	if err := scs[1].Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for k := range keys {
		got := instanceOf(t, hc, "carts", fmt.Sprintf("user-%d", k))
		switch {
		case got == gone:
			t.Fatalf("key %d reached %s after it stopped", k, gone)
		case owner[k] != gone && got != owner[k]:
			t.Fatalf("key %d moved from %s, which is still up, to %s", k, owner[k], got)
		case owner[k] == gone:
			moved++
		}
	}
	if moved != perInstance[gone] {
		t.Fatalf("%d keys moved, the stopped instance had %d", moved, perInstance[gone])
	}
	t.Logf("keys per instance %v; %d moved", perInstance, moved)
}

// round-robin takes the instances in turn.
func TestRoundRobin(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startInstances(t, s, "carts", 3, nil)
	_, hc := balancedTransport(t, s, "carts", "{policy: round-robin}", 3)
	counts := map[string]int{}
	for range 300 {
		counts[instanceOf(t, hc, "carts", "")]++
	}
	for id, n := range counts {
		if n < 98 || n > 102 {
			t.Fatalf("round-robin: %s took %d of 300 calls: %v", id, n, counts)
		}
	}
	if len(counts) != 3 {
		t.Fatalf("calls reached %d instances: %v", len(counts), counts)
	}
}

// least-request sends clearly fewer calls than the queue group does to an
// instance ten times slower than the other three.
func TestLeastRequest(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	scs := startInstances(t, s, "carts", 4, func(i int) time.Duration {
		if i == 0 {
			return 20 * time.Millisecond
		}
		return 2 * time.Millisecond
	})
	slow := scs[0].Instance()
	share := func(hc *http.Client) float64 {
		const n = 600
		var toSlow, failed atomic.Int64
		var once sync.Once
		var firstErr string
		parallel(n, 12, func(int) {
			resp, err := hc.Get("http://carts/")
			if err != nil {
				failed.Add(1)
				once.Do(func() { firstErr = err.Error() })
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed.Add(1)
				once.Do(func() { firstErr = resp.Status })
				return
			}
			if resp.Header.Get(bus.HeaderInstance) == slow {
				toSlow.Add(1)
			}
		})
		if failed.Load() > 0 {
			t.Fatalf("%d calls failed: %s", failed.Load(), firstErr)
		}
		return float64(toSlow.Load()) / n
	}
	_, queue := balancedTransport(t, s, "carts", "{policy: queue}", 4)
	_, least := balancedTransport(t, s, "carts", "{policy: least-request}", 4)
	q, l := share(queue), share(least)
	t.Logf("the slow instance took %.1f %% of the calls under queue, %.1f %% under least-request", 100*q, 100*l)
	if q < 0.15 {
		t.Fatalf("under queue the slow instance took only %.1f %%; the test expects about 25 %%", 100*q)
	}
	if l > q/2 {
		t.Fatalf("least-request sent %.1f %% of the calls to the slow instance, queue %.1f %%: want clearly fewer", 100*l, 100*q)
	}
}

// Without a registry view, or before it hears of any instance, an
// instance-aware policy sends to the queue group.
func TestBalanceFallsBackToQueue(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	serveSubset(t, s, "carts", "")
	cfgs := newMemConfigs()
	cfgs.apply(t, "service: carts\nloadBalancer: {policy: least-request}\n")
	for _, follow := range []bool{false, true} {
		tr := newTransport(t, s, proxy.TransportConfig{Configs: cfgs, Follow: follow})
		hc := httpClient(t, tr)
		// The library instance sends no heartbeats: the view stays empty.
		for range 20 {
			if code, body, _ := callBody(t, hc, "http://carts/"); code != http.StatusOK {
				t.Fatalf("follow %v: %d %s", follow, code, body)
			}
		}
	}
}

// An instance whose subscriptions are gone while the registry still lists
// it (a crash, until its heartbeats expire) costs one retried call, not a
// retry on every call that picks it.
func TestBalanceSkipsGoneInstance(t *testing.T) {
	t.Parallel()
	for _, lb := range []string{"{policy: least-request}", "{policy: round-robin}", "{policy: ring-hash, hashHeader: x-user}"} {
		t.Run(lb, func(t *testing.T) {
			t.Parallel()
			s := meshtest.RunServer(t)
			scs := startInstances(t, s, "carts", 4, nil)
			_, hc := balancedTransport(t, s, "carts", lb, 4)
			victim := scs[0]
			victim.Inbound().Stop() // it still heartbeats passing
			// Calls start once the server has dropped its subscriptions:
			// before that, one sent to it would be lost, not refused, and
			// retried only after the ack wait.
			nc := meshtest.Connect(t, s)
			meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				_, err := nc.Request(bus.Subjects{}.Inst("carts", victim.Instance()), nil, time.Second)
				if !errors.Is(err, nats.ErrNoResponders) {
					return fmt.Errorf("the stopped instance's subject: %v, want no responders", err)
				}
				return nil
			})
			retried := 0
			start := time.Now()
			for i := range 200 {
				code, body, h := callBody(t, hc, "http://carts/", "X-User", fmt.Sprintf("user-%d", i))
				if code != http.StatusOK {
					t.Fatalf("call %d: %d %s", i, code, body)
				}
				if h.Get(bus.HeaderInstance) == victim.Instance() {
					t.Fatalf("call %d was answered by the stopped instance", i)
				}
				if h.Get(bus.HeaderAttempts) != "1" {
					retried++
				}
			}
			// The instance still heartbeats, so the registry never drops it:
			// it is tried again, once, each time its gone mark wears off.
			allowed := 1 + int(time.Since(start)/(3*time.Second))
			if retried > allowed {
				t.Errorf("%d of 200 calls needed a retry after one instance went away (in %s), want at most %d", retried, time.Since(start).Round(time.Millisecond), allowed)
			}
		})
	}
}
