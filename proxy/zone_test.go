package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// zoneOf calls stock through hc and returns the zone of the instance that
// answered (its id is stock-<zone>-<n>).
func zoneOf(hc *http.Client) (string, error) {
	resp, err := hc.Get("http://stock/")
	if err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s (%s)", resp.Status, resp.Header.Get(bus.HeaderError))
	}
	_, rest, _ := strings.Cut(resp.Header.Get(bus.HeaderInstance), "stock-")
	zone, _, _ := strings.Cut(rest, "-")
	return zone, nil
}

// A caller in zone a under least-request keeps its calls in zone a while
// zone a has passing instances, and sends them to zone b once they stop.
func TestZonePreferred(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	var inA []*sidecar.Sidecar
	for _, id := range []string{"a-0", "a-1", "b-0", "b-1"} {
		_, sc := startCallee(t, s, "stock", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok\n")
		}), func(c *sidecar.Config) {
			c.Instance, c.Zone = "stock-"+id, id[:1]
			c.Heartbeat = 100 * time.Millisecond
			noOutlier(c)
		})
		if id[0] == 'a' {
			inA = append(inA, sc)
		}
	}
	// heartbeats flow: a plain follower sees all four passing.
	_, _ = balancedTransport(t, s, "stock", "{policy: least-request}", 4)

	cfgs := newMemConfigs()
	cfgs.apply(t, "service: stock\nloadBalancer: {policy: least-request}\n")
	caller := startCaller(t, s, "shop", func(c *sidecar.Config) {
		c.Zone, c.Transport.Configs = "a", cfgs
	})
	hc := sidecarClient(t, formProxy, caller, "shop").hc
	// The first call follows stock; until its heartbeats fill the caller's
	// view, calls go to the queue group, in either zone. Twenty calls in a
	// row in zone a by chance would be one in a million.
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for i := range 20 {
			zone, err := zoneOf(hc)
			if err != nil {
				return err
			}
			if zone != "a" {
				return fmt.Errorf("call %d answered from zone %q", i, zone)
			}
		}
		return nil
	})

	counts := func(n int) map[string]int {
		got := map[string]int{}
		for i := range n {
			zone, err := zoneOf(hc)
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			got[zone]++
		}
		return got
	}
	if got := counts(200); got["a"] < 190 {
		t.Fatalf("of 200 calls from zone a, %v: want at least 95 %% in zone a", got)
	}

	for _, sc := range inA {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := sc.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", sc.Instance(), err)
		}
		cancel()
	}
	// The goodbyes take zone a out of the view; calls then go to zone b.
	meshtest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		for range 20 {
			zone, err := zoneOf(hc)
			if err != nil {
				return err
			}
			if zone != "b" {
				return fmt.Errorf("answered from zone %q after zone a stopped", zone)
			}
		}
		return nil
	})
	if got := counts(200); got["b"] != 200 {
		t.Fatalf("with zone a stopped, 200 calls went to %v: want all in zone b", got)
	}
}

// A Transport's zone is a name like a service's.
func TestTransportZoneValidated(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	for _, zone := range []string{"A", "a.b", "*", strings.Repeat("z", 64)} {
		if tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Zone: zone}); err == nil {
			tr.Close()
			t.Errorf("zone %q: NewTransport accepted it", zone)
		}
	}
	tr, err := proxy.NewTransport(nc, proxy.TransportConfig{Zone: "eu-west-1a", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
}
