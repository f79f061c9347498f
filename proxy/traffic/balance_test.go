package traffic_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

func ringEndpoints(ids ...string) []*traffic.Endpoint {
	eps := make([]*traffic.Endpoint, len(ids))
	for i, id := range ids {
		eps[i] = traffic.NewEndpoint(id, "", "")
	}
	return eps
}

// goneUntil marks ep gone until the instant until (unix ns).
func goneUntil(ep *traffic.Endpoint, until int64) {
	ep.Gone(time.Unix(0, until).Add(-traffic.GoneFor))
}

// A key stays on its instance; when one leaves, only its keys move, and
// they spread over the others.
func TestHashRing(t *testing.T) {
	t.Parallel()
	three := ringEndpoints("a-1", "b-2", "c-3")
	two := []*traffic.Endpoint{three[0], three[2]}
	g3, g2 := traffic.NewGroup(three, ""), traffic.NewGroup(two, "")
	rh := &traffic.RingHash{Header: "X-User"}
	get := func(g *traffic.Group, key string, avoid *traffic.Endpoint, now int64) *traffic.Endpoint {
		return traffic.Pick(rh, g, key, avoid, now)
	}
	counts := map[string]int{}
	moved := map[string]int{}
	const keys = 3000
	for k := 0; k < keys; k++ {
		key := fmt.Sprintf("user-%d", k)
		before, after := get(g3, key, nil, 0), get(g2, key, nil, 0)
		counts[before.ID]++
		if get(g3, key, nil, 0) != before {
			t.Fatal("the same key reached two instances")
		}
		if before.ID != "b-2" && after != before {
			t.Fatalf("key %d moved from %s, which stayed, to %s", k, before.ID, after.ID)
		}
		if before.ID == "b-2" {
			moved[after.ID]++
		}
		// Avoiding its instance sends a key to the one it would move to.
		if alt := get(g3, key, before, 0); alt == before {
			t.Fatal("get avoided nothing")
		} else if before.ID == "b-2" && alt != after {
			t.Fatalf("key %d: the retry goes to %s, the ring without b-2 to %s", k, alt.ID, after.ID)
		}
	}
	for id, n := range counts {
		if n < keys/3*7/10 || n > keys/3*13/10 {
			t.Errorf("instance %s owns %d of %d keys; the ring is uneven: %v", id, n, keys, counts)
		}
	}
	if moved["a-1"] == 0 || moved["c-3"] == 0 {
		t.Errorf("the keys of the instance that left all went to one: %v", moved)
	}
	// An instance found gone gives its keys to where they would move; when
	// all are gone, there is no pick (the call goes to the queue group).
	now := time.Now().UnixNano()
	goneUntil(three[1], now+int64(time.Second))
	for k := 0; k < 300; k++ {
		key := fmt.Sprintf("user-%d", k)
		if got, want := get(g3, key, nil, now), get(g2, key, nil, now); got != want {
			t.Fatalf("key %d: %s with b-2 gone, want %s as without it", k, got.ID, want.ID)
		}
	}
	goneUntil(three[0], now+int64(time.Second))
	goneUntil(three[2], now+int64(time.Second))
	if ep := get(g3, "x", nil, now); ep != nil {
		t.Errorf("all gone: picked %s, want none", ep.ID)
	}
	if ep := get(g3, "x", nil, now+int64(2*time.Second)); ep == nil {
		t.Error("the gone mark does not wear off")
	}
}

// rttDecay is the time constant over which an unmeasured instance's
// latency estimate fades (traffic's rttDecay).
const rttDecay = 10 * time.Second

// cheaper is the one of a and b that least-request picks at now, which with
// two instances compares both: the one that costs less, or nil when they
// cost the same and it picks either (64 picks all alike by chance: 2⁻⁶³).
func cheaper(a, b *traffic.Endpoint, now int64) *traffic.Endpoint {
	g := traffic.NewGroup([]*traffic.Endpoint{a, b}, "")
	picked := map[*traffic.Endpoint]bool{}
	for range 64 {
		picked[traffic.LeastRequest{}.Pick(g, "", nil, now)] = true
	}
	switch {
	case len(picked) > 1:
		return nil
	case picked[a]:
		return a
	}
	return b
}

// measured is an instance whose latency was measured once, at d, at now,
// with hb requests in flight by its heartbeat.
func measured(id string, d time.Duration, hb int64, now int64) *traffic.Endpoint {
	ep := traffic.NewEndpoint(id, "", "")
	ep.Observe(d, now)
	ep.SetHeartbeatInflight(hb)
	return ep
}

// least-request's cost: requests in flight weighted by a peak-EWMA latency
// that rises at once, falls gradually and fades without measurements.
func TestEndpointCost(t *testing.T) {
	now := time.Now().UnixNano()
	fresh := traffic.NewEndpoint("fresh", "", "")
	fast, slow := measured("fast", 2*time.Millisecond, 0, now), measured("slow", 20*time.Millisecond, 0, now)
	if cheaper(fresh, fast, now) != fresh || cheaper(fast, slow, now) != fast {
		t.Fatalf("costs not in the order unmeasured, fast, slow")
	}
	// Busy enough, the fast instance costs more than the idle slow one.
	for range 12 {
		fast.Started()
	}
	if cheaper(fast, slow, now) != slow {
		t.Errorf("fast with 12 in flight is not dearer than slow idle")
	}
	for range 12 {
		fast.Finished()
	}
	// The heartbeat's count and the caller's own are not added: the
	// heartbeat's includes the caller's. Its cost is that of an instance of
	// the same latency with 3 in flight.
	fast.SetHeartbeatInflight(3)
	fast.Started()
	fast.Started()
	if c := cheaper(fast, measured("ref", 2*time.Millisecond, 3, now), now); c != nil {
		t.Errorf("with 3 in the heartbeat and 2 of the caller's, %s costs less than an instance with 3 in flight; want the load 3", c.ID)
	}
	// A slower measurement counts at once; faster ones pull it down by an
	// eighth of the difference each.
	fast.Observe(10*time.Millisecond, now)
	if c := cheaper(fast, measured("ref", 10*time.Millisecond, 3, now), now); c != nil {
		t.Errorf("after a 10ms attempt, %s costs less than an instance measured at 10ms; want the estimate 10ms", c.ID)
	}
	fast.Observe(2*time.Millisecond, now)
	if c := cheaper(fast, measured("ref", 9*time.Millisecond, 3, now), now); c != nil {
		t.Errorf("after a 2ms attempt, %s costs less than an instance measured at 9ms; want the estimate 9ms", c.ID)
	}
	// Unmeasured for a time constant, the slow instance's cost fades to
	// about a third (1/e): between that of instances measured just now at
	// 0.36 and 0.38 of its latency.
	later := now + int64(rttDecay)
	lo := measured("lo", time.Duration(0.36*float64(20*time.Millisecond)), 0, later)
	hi := measured("hi", time.Duration(0.38*float64(20*time.Millisecond)), 0, later)
	if cheaper(slow, lo, later) == slow {
		t.Errorf("after %s without measurements the cost is below 0.36 of what it was, want 1/e", rttDecay)
	}
	if cheaper(slow, hi, later) == hi {
		t.Errorf("after %s without measurements the cost is above 0.38 of what it was, want 1/e", rttDecay)
	}
}

// Round-robin's turn goes on across revisions of the service's config: a
// new revision (a timeout changed, say) does not send the next call back to
// the first instance.
func TestRoundRobinTurnSurvivesRevisions(t *testing.T) {
	t.Parallel()
	eps := []*traffic.Endpoint{
		traffic.NewEndpoint("a", "", "mesh.inst.a"),
		traffic.NewEndpoint("b", "", "mesh.inst.b"),
		traffic.NewEndpoint("c", "", "mesh.inst.c"),
	}
	g := traffic.NewGroup(eps, "")
	now := time.Now().UnixNano()
	base := &traffic.Base{Timeout: time.Second, Retry: traffic.RetryPolicy{}.WithDefaults()}
	doc := func(timeout string) *config.Service {
		docs, err := config.Parse("t.yaml", []byte("service: svc\ntimeout: "+timeout+"\nloadBalancer: {policy: round-robin}\n"))
		if err != nil {
			t.Fatal(err)
		}
		return docs[0]
	}
	var got []string
	p := traffic.Compile(subj, "svc", doc("1s"), 1, base, nil)
	for range 2 {
		got = append(got, traffic.Pick(p.Balancer(), g, "", nil, now).ID)
	}
	p = traffic.Compile(subj, "svc", doc("2s"), 2, base, p)
	for range 3 {
		got = append(got, traffic.Pick(p.Balancer(), g, "", nil, now).ID)
	}
	if want := []string{"b", "c", "a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("picks across a revision %v, want %v (the turn going on)", got, want)
	}
	// Another policy starts its own.
	ql := traffic.Compile(subj, "svc", parseDoc(t, "service: svc\nloadBalancer: {policy: least-request}\n"), 3, base, p)
	if _, ok := ql.Balancer().(traffic.LeastRequest); !ok {
		t.Errorf("a least-request revision has balancer %v", ql.Balancer())
	}
}
