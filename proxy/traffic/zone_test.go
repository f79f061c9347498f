package traffic_test

import (
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// zoned is instances a-1, a-2 in zone a and b-1, b-2, b-3 in zone b.
func zoned() []*traffic.Endpoint {
	eps := ringEndpoints("a-1", "a-2", "b-1", "b-2", "b-3")
	for _, ep := range eps {
		ep.Zone = ep.ID[:1]
	}
	return eps
}

func zonePickers() []traffic.Picker {
	return []traffic.Picker{new(traffic.RoundRobin), traffic.LeastRequest{}, &traffic.RingHash{Header: "X-User"}, traffic.Random{}}
}

// Every instance-aware policy picks in the caller's zone while it has a
// usable instance, and elsewhere once it has none.
func TestPickPrefersCallersZone(t *testing.T) {
	t.Parallel()
	for _, p := range zonePickers() {
		t.Run(p.String(), func(t *testing.T) {
			eps := zoned()
			g := traffic.NewGroup(eps, "a")
			now := time.Now().UnixNano()
			seen := map[string]int{}
			for i := range 400 {
				key := string(rune('a' + i%26))
				ep := traffic.Pick(p, g, key, nil, now)
				if ep == nil || ep.Zone != "a" {
					t.Fatalf("pick %d went to %v, outside zone a", i, ep)
				}
				seen[ep.ID]++
			}
			if p.String() != "ring-hash" && (seen["a-1"] == 0 || seen["a-2"] == 0) {
				t.Errorf("picks %v: not spread over zone a", seen)
			}
			// A retry avoiding a-1 stays in the zone on a-2.
			if ep := traffic.Pick(p, g, "k", eps[0], now); ep != eps[1] {
				t.Errorf("avoiding a-1 picked %v, want a-2", ep)
			}
			// a-1 gone and a-2 to avoid: the zone has nothing left, so b.
			eps[0].Gone(time.Unix(0, now))
			if ep := traffic.Pick(p, g, "k", eps[1], now); ep == nil || ep.Zone != "b" {
				t.Errorf("with zone a spent, picked %v, want an instance in b", ep)
			}
			// Both gone: every pick falls back to zone b, spread there.
			eps[1].Gone(time.Unix(0, now))
			for i := range 100 {
				if ep := traffic.Pick(p, g, string(rune('a'+i%26)), nil, now); ep == nil || ep.Zone != "b" {
					t.Fatalf("with zone a gone, pick %d went to %v", i, ep)
				}
			}
			// Once they are back, the zone is preferred again.
			later := now + int64(traffic.GoneFor) + 1
			if ep := traffic.Pick(p, g, "k", nil, later); ep == nil || ep.Zone != "a" {
				t.Errorf("after zone a came back, picked %v", ep)
			}
		})
	}
}

// A zone without instances, or no zone at all, picks among all of them.
func TestPickFallsBackWithoutZoneInstances(t *testing.T) {
	t.Parallel()
	for _, zone := range []string{"", "c"} {
		for _, p := range zonePickers() {
			g := traffic.NewGroup(zoned(), zone)
			seen := map[string]bool{}
			for i := range 500 {
				ep := traffic.Pick(p, g, string(rune('a'+i%26)), nil, 0)
				if ep == nil {
					t.Fatalf("zone %q, %s: no pick", zone, p)
				}
				seen[ep.Zone] = true
			}
			if !seen["a"] || !seen["b"] {
				t.Errorf("zone %q, %s: picks reached zones %v, want both", zone, p, seen)
			}
		}
	}
}

func BenchmarkPickZone(b *testing.B) {
	g := traffic.NewGroup(zoned(), "a")
	p := traffic.LeastRequest{}
	b.ReportAllocs()
	for b.Loop() {
		traffic.Pick(p, g, "", nil, 1)
	}
}

func TestPickZoneAllocatesNothing(t *testing.T) {
	g := traffic.NewGroup(zoned(), "a")
	for _, p := range zonePickers() {
		if n := testing.AllocsPerRun(100, func() { traffic.Pick(p, g, "user-1", nil, 1) }); n != 0 {
			t.Errorf("%s: %v allocations per pick", p, n)
		}
	}
}
