package proxy

import (
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/registry"
)

// Instance-aware load balancing. The queue policy lets NATS pick the
// instance (the queue group). round-robin, least-request and ring-hash pick
// one from the caller's registry view of the service and send to its own
// subject, <prefix>.inst.<id>. When the view has no candidate (it has not
// heard a heartbeat yet, or the Transport keeps no view), the call goes to
// the queue group instead.
const (
	// checkEvery is how often a call may look at the registry view's
	// revision, which changes when an instance comes, goes or changes
	// health.
	checkEvery = int64(20 * time.Millisecond)
	// refreshEvery is how often the instances' in-flight counts are read
	// from the view when nothing else changed (heartbeats bring them every
	// interval, 1 s by default).
	refreshEvery = int64(250 * time.Millisecond)
	// ringPoints is how many points each instance has on a hash ring.
	ringPoints = 160
	// rttDecay is the time constant over which an instance's latency
	// estimate fades when no call measures it, so that an instance avoided
	// for being slow is tried again after a while.
	rttDecay = 10 * time.Second
)

// endpoint is one instance a caller may pick.
type endpoint struct {
	id, subset, subject string
	hbInflight          atomic.Int64 // from its latest heartbeat
	inflight            atomic.Int64 // the caller's own attempts to it now
	rtt, rttAt          atomic.Int64 // the latency estimate (ns), and when it was measured (unix ns)
	// goneUntil (unix ns): NATS answered "no responders" on the instance's
	// subject, so it is gone, though the registry lists it until it expires
	// (3 heartbeat intervals); it is not picked until then.
	goneUntil atomic.Int64
}

// goneFor is how long an instance found gone is not picked: about as long as
// the registry takes to expire a dead instance by default. An instance that
// was only reconnecting is back in the choice after it.
const goneFor = 3 * time.Second

func (e *endpoint) gone(now int64) bool { return e.goneUntil.Load() > now }

// load is the instance's requests in flight as best known: its heartbeat's
// count (which includes this caller's, but is up to an interval old) or the
// caller's own, whichever is higher.
func (e *endpoint) load() int64 { return max(e.hbInflight.Load(), e.inflight.Load()) }

// observe updates the instance's latency estimate with one attempt's: a
// slower attempt raises it at once, faster ones lower it gradually (a peak
// EWMA, as in Finagle and Linkerd). Concurrent updates may lose one another,
// which only makes the estimate a little older.
func (e *endpoint) observe(d time.Duration, now int64) {
	old, cur := e.rtt.Load(), int64(d)
	if old != 0 && cur < old {
		cur = old + (cur-old)/8
	}
	e.rtt.Store(cur)
	e.rttAt.Store(now)
}

// cost is what least-request compares: the instance's requests in flight,
// plus one, times its latency estimate, which fades over rttDecay without
// new measurements. An instance not measured yet costs least, so that it
// is tried.
func (e *endpoint) cost(now int64) float64 {
	rtt := float64(e.rtt.Load())
	if age := now - e.rttAt.Load(); rtt > 0 && age > 0 {
		rtt *= math.Exp(-float64(age) / float64(rttDecay))
	}
	return (rtt + 1) * float64(e.load()+1)
}

// group is the passing instances of a service, or of one of its subsets,
// sorted by id; immutable, and kept by the next refresh while its members
// stay the same, so that its ring is built only when they change.
type group struct {
	eps      []*endpoint
	ringOnce sync.Once
	ring     *hashRing
}

func (g *group) hashRing() *hashRing {
	g.ringOnce.Do(func() { g.ring = newHashRing(g.eps) })
	return g.ring
}

func sameMembers(g *group, eps []*endpoint) bool {
	if g == nil || len(g.eps) != len(eps) {
		return false
	}
	for i := range eps {
		if g.eps[i] != eps[i] {
			return false
		}
	}
	return true
}

// instanceSet is one refresh of a service's instances.
type instanceSet struct {
	rev     uint64
	built   int64
	all     *group
	subsets map[string]*group
	byID    map[string]*endpoint
}

// endpoints is a caller's view of one service's instances, refreshed from
// the registry view by the calls themselves: at most one call every
// checkEvery looks at the view's revision, and rebuilds the set when it
// changed or refreshEvery has passed.
type endpoints struct {
	service    string
	view       *registry.View
	subj       bus.Subjects
	set        atomic.Pointer[instanceSet]
	checked    atomic.Int64
	refreshing atomic.Bool
	next       atomic.Uint64 // round-robin
}

func (e *endpoints) current(now int64) *instanceSet {
	s := e.set.Load()
	if s != nil && now-e.checked.Load() < checkEvery {
		return s
	}
	if !e.refreshing.CompareAndSwap(false, true) {
		return s
	}
	defer e.refreshing.Store(false)
	e.checked.Store(now)
	if s != nil && now-s.built < refreshEvery && e.view.Rev() == s.rev {
		return s
	}
	s = e.rebuild(s, now)
	e.set.Store(s)
	return s
}

// rebuild reads the service's passing instances from the view, keeping the
// endpoints (and their in-flight counts) and groups of prev that still hold.
func (e *endpoints) rebuild(prev *instanceSet, now int64) *instanceSet {
	snap := e.view.Snapshot(e.service)
	s := &instanceSet{rev: snap.Rev, built: now, subsets: make(map[string]*group), byID: make(map[string]*endpoint)}
	var all []*endpoint
	bySubset := make(map[string][]*endpoint)
	for _, in := range snap.Services[e.service] { // sorted by id
		if in.Health != registry.Passing {
			continue
		}
		var ep *endpoint
		if prev != nil {
			if old := prev.byID[in.Instance]; old != nil && old.subset == in.Subset {
				ep = old
			}
		}
		if ep == nil {
			ep = &endpoint{id: in.Instance, subset: in.Subset, subject: e.subj.Inst(in.Instance)}
		}
		ep.hbInflight.Store(int64(in.Inflight))
		s.byID[ep.id] = ep
		all = append(all, ep)
		if in.Subset != "" {
			bySubset[in.Subset] = append(bySubset[in.Subset], ep)
		}
	}
	s.all = &group{eps: all}
	if prev != nil && sameMembers(prev.all, all) {
		s.all = prev.all
	}
	for subset, eps := range bySubset {
		g := &group{eps: eps}
		if prev != nil && sameMembers(prev.subsets[subset], eps) {
			g = prev.subsets[subset]
		}
		s.subsets[subset] = g
	}
	return s
}

// pick chooses an instance of the service (subset "") or of one subset, as
// the policy says, avoiding the instance the previous attempt failed on when
// another is there, and instances found gone; nil when the view has none (the
// call goes to the queue group).
func (e *endpoints) pick(b balancePolicy, subset, key string, avoid *endpoint, now int64) *endpoint {
	s := e.current(now)
	if s == nil {
		return nil
	}
	g := s.all
	if subset != "" {
		g = s.subsets[subset]
	}
	if g == nil || len(g.eps) == 0 {
		return nil
	}
	eps := g.eps
	n := len(eps)
	switch {
	case n == 1:
		return firstUsable(eps, 0, avoid, now)
	case b == balanceRoundRobin:
		return firstUsable(eps, int(e.next.Add(1)%uint64(n)), avoid, now)
	case b == balanceLeastRequest:
		// Power of two choices: two distinct instances at random, the one
		// with the lower cost (requests in flight weighted by latency) wins.
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		a, c := eps[i], eps[j]
		ua, uc := usable(a, avoid, now), usable(c, avoid, now)
		switch {
		case ua && uc && c.cost(now) < a.cost(now):
			return c
		case ua:
			return a
		case uc:
			return c
		}
	case b == balanceRingHash && key != "":
		return g.hashRing().get(hashKey(key), avoid, now)
	}
	return firstUsable(eps, rand.IntN(n), avoid, now)
}

// usable reports whether ep may take a call: not the instance to avoid, and
// not found gone.
func usable(ep, avoid *endpoint, now int64) bool { return ep != avoid && !ep.gone(now) }

// firstUsable is the first usable instance from eps[start] on, round the
// list; else the avoided one if it is not gone (the only one left); else nil.
func firstUsable(eps []*endpoint, start int, avoid *endpoint, now int64) *endpoint {
	n := len(eps)
	for k := range n {
		if ep := eps[(start+k)%n]; usable(ep, avoid, now) {
			return ep
		}
	}
	if avoid != nil && !avoid.gone(now) {
		for _, ep := range eps {
			if ep == avoid {
				return ep
			}
		}
	}
	return nil
}

// hashRing is a consistent-hash ring with ringPoints points per instance: a
// key belongs to the instance of the first point at or after its hash, so
// when an instance leaves, only its keys move.
type hashRing struct {
	eps    []*endpoint
	points []uint64
	owners []int32 // index in eps of each point's instance
}

func newHashRing(eps []*endpoint) *hashRing {
	type point struct {
		h     uint64
		owner int32
	}
	pts := make([]point, 0, len(eps)*ringPoints)
	for i, ep := range eps {
		for v := 0; v < ringPoints; v++ {
			pts = append(pts, point{hashKey(ep.id + "#" + strconv.Itoa(v)), int32(i)})
		}
	}
	sort.Slice(pts, func(i, j int) bool {
		if pts[i].h != pts[j].h {
			return pts[i].h < pts[j].h
		}
		return pts[i].owner < pts[j].owner
	})
	r := &hashRing{eps: eps, points: make([]uint64, len(pts)), owners: make([]int32, len(pts))}
	for i, p := range pts {
		r.points[i], r.owners[i] = p.h, p.owner
	}
	return r
}

// get returns the instance that owns hash h or, if that is avoid or gone, the
// next usable instance on the ring (where the key moves when its instance
// leaves); the avoided one if it is the only one left; nil if all are gone.
func (r *hashRing) get(h uint64, avoid *endpoint, now int64) *endpoint {
	lo, hi := 0, len(r.points)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if r.points[m] < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for k := 0; k < len(r.points); k++ {
		if ep := r.eps[r.owners[(lo+k)%len(r.points)]]; usable(ep, avoid, now) {
			return ep
		}
	}
	return firstUsable(r.eps, 0, avoid, now)
}

// hashKey is 64-bit FNV-1a with a final mix, the same in every process, so
// that all callers place a key on the same instance.
func hashKey(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	// splitmix64's finalizer spreads FNV's similar hashes of similar keys.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
