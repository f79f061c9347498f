package traffic

import (
	"math"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/config"
)

// Instance-aware load balancing. The queue policy lets NATS pick the
// instance (the queue group). round-robin, least-request and ring-hash pick
// one from the caller's registry view of the service (a Group) and send to
// its own subject, <prefix>.inst.<id>. When the view has no candidate, the
// call goes to the queue group instead.
const (
	// ringPoints is how many points each instance has on a hash ring.
	ringPoints = 160
	// rttDecay is the time constant over which an instance's latency
	// estimate fades when no call measures it, so that an instance avoided
	// for being slow is tried again after a while.
	rttDecay = 10 * time.Second
	// GoneFor is how long an instance found gone is not picked: about as
	// long as the registry takes to expire a dead instance by default. An
	// instance that was only reconnecting is back in the choice after it.
	GoneFor = 3 * time.Second
)

// Endpoint is one instance a caller may pick. Its counters are updated by
// the calls that pick it; a caller keeps one per instance across refreshes
// of its view.
type Endpoint struct {
	ID, Subset, Subject string
	Zone                string       // where the instance runs, "" if it does not say
	hbInflight          atomic.Int64 // from its latest heartbeat
	inflight            atomic.Int64 // the caller's own attempts to it now
	rtt, rttAt          atomic.Int64 // the latency estimate (ns), and when it was measured (unix ns)
	// goneUntil (unix ns): NATS answered "no responders" on the instance's
	// subject, so it is gone, though the registry lists it until it expires
	// (3 heartbeat intervals); it is not picked until then.
	goneUntil atomic.Int64
}

// NewEndpoint is an instance of a service; subject is its own subject.
func NewEndpoint(id, subset, subject string) *Endpoint {
	return &Endpoint{ID: id, Subset: subset, Subject: subject}
}

// SetHeartbeatInflight records the requests in flight its latest heartbeat
// reported.
func (e *Endpoint) SetHeartbeatInflight(n int64) { e.hbInflight.Store(n) }

// Started counts an attempt sent to the instance; Finished, its end.
func (e *Endpoint) Started()  { e.inflight.Add(1) }
func (e *Endpoint) Finished() { e.inflight.Add(-1) }

// Gone marks the instance gone (NATS answered no responders on its
// subject) until GoneFor after now.
func (e *Endpoint) Gone(now time.Time) { e.goneUntil.Store(now.Add(GoneFor).UnixNano()) }

func (e *Endpoint) gone(now int64) bool { return e.goneUntil.Load() > now }

// load is the instance's requests in flight as best known: its heartbeat's
// count (which includes this caller's, but is up to an interval old) or the
// caller's own, whichever is higher.
func (e *Endpoint) load() int64 { return max(e.hbInflight.Load(), e.inflight.Load()) }

// Observe updates the instance's latency estimate with one attempt's: a
// slower attempt raises it at once, faster ones lower it gradually (a peak
// EWMA, as in Finagle and Linkerd). Concurrent updates may lose one another,
// which only makes the estimate a little older. Only answers and timeouts
// measure an instance's latency: a failure that comes at once is not a fast
// instance.
func (e *Endpoint) Observe(d time.Duration, now int64) {
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
func (e *Endpoint) cost(now int64) float64 {
	rtt := float64(e.rtt.Load())
	if age := now - e.rttAt.Load(); rtt > 0 && age > 0 {
		rtt *= math.Exp(-float64(age) / float64(rttDecay))
	}
	return (rtt + 1) * float64(e.load()+1)
}

// Group is the passing instances of a service, or of one of its subsets,
// sorted by id; immutable, and kept by the next refresh while its members
// stay the same, so that its ring (and its same-zone group) is built only
// when they change.
type Group struct {
	eps      []*Endpoint
	local    *Group // the members in the caller's zone, when some are and some are not
	ringOnce sync.Once
	ring     *hashRing
}

// NewGroup is a group of eps, sorted by id, for a caller in zone ("" for
// none): Pick prefers the members in that zone while one of them is usable.
func NewGroup(eps []*Endpoint, zone string) *Group {
	g := &Group{eps: eps}
	if zone == "" {
		return g
	}
	var local []*Endpoint
	for _, ep := range eps {
		if ep.Zone == zone {
			local = append(local, ep)
		}
	}
	if len(local) > 0 && len(local) < len(eps) {
		g.local = &Group{eps: local}
	}
	return g
}

// Len is the number of instances in the group.
func (g *Group) Len() int { return len(g.eps) }

// Same reports whether g's members are eps.
func (g *Group) Same(eps []*Endpoint) bool {
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

func (g *Group) hashRing() *hashRing {
	g.ringOnce.Do(func() { g.ring = newHashRing(g.eps) })
	return g.ring
}

// Picker is a load-balancing policy: it picks one of a group of two or
// more instances for a call, avoiding avoid (the instance the previous
// attempt failed on) and instances found gone when it can; key is the
// request's hash key. now is in unix nanoseconds.
type Picker interface {
	Pick(g *Group, key string, avoid *Endpoint, now int64) *Endpoint
	String() string
}

var (
	_ Picker = (*Random)(nil)
	_ Picker = (*RoundRobin)(nil)
	_ Picker = (*LeastRequest)(nil)
	_ Picker = (*RingHash)(nil)
)

func newPicker(lb *config.LoadBalancer) Picker {
	switch lb.Policy {
	case config.PolicyRoundRobin:
		return new(RoundRobin)
	case config.PolicyLeastRequest:
		return LeastRequest{}
	case config.PolicyRingHash:
		return &RingHash{Header: http.CanonicalHeaderKey(lb.HashHeader)}
	}
	return nil // queue
}

// Pick is the load-balancing pick: the instance of g the call goes to, as
// policy chooses, or nil when g has none usable (the call then goes to the
// queue group). The members in the caller's zone come first: the policy
// picks among them, and among all only when none of them is usable but the
// one to avoid. A group of one needs no policy.
func Pick(policy Picker, g *Group, key string, avoid *Endpoint, now int64) *Endpoint {
	if g == nil {
		return nil
	}
	if g.local != nil {
		if ep := pickIn(policy, g.local, key, avoid, now); ep != nil && ep != avoid {
			return ep
		}
	}
	return pickIn(policy, g, key, avoid, now)
}

func pickIn(policy Picker, g *Group, key string, avoid *Endpoint, now int64) *Endpoint {
	switch len(g.eps) {
	case 0:
		return nil
	case 1:
		return firstUsable(g.eps, 0, avoid, now)
	}
	return policy.Pick(g, key, avoid, now)
}

// Random picks an instance at random.
type Random struct{}

func (Random) Pick(g *Group, _ string, avoid *Endpoint, now int64) *Endpoint {
	return firstUsable(g.eps, rand.IntN(len(g.eps)), avoid, now)
}

func (Random) String() string { return "random" }

// RoundRobin picks the instances in turn.
type RoundRobin struct{ next atomic.Uint64 }

func (r *RoundRobin) Pick(g *Group, _ string, avoid *Endpoint, now int64) *Endpoint {
	return firstUsable(g.eps, int(r.next.Add(1)%uint64(len(g.eps))), avoid, now)
}

func (*RoundRobin) String() string { return config.PolicyRoundRobin }

// LeastRequest picks by the power of two choices: two distinct instances at
// random, the one with the lower cost (requests in flight weighted by
// latency) wins.
type LeastRequest struct{}

func (LeastRequest) Pick(g *Group, _ string, avoid *Endpoint, now int64) *Endpoint {
	eps := g.eps
	n := len(eps)
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
	return Random{}.Pick(g, "", avoid, now)
}

func (LeastRequest) String() string { return config.PolicyLeastRequest }

// RingHash places each request's key (the value of Header) on a
// consistent-hash ring of the instances, so that a key keeps its instance
// while the instances stay; a request without the header goes to a random
// instance.
type RingHash struct {
	Header string // canonical
}

func (r *RingHash) Pick(g *Group, key string, avoid *Endpoint, now int64) *Endpoint {
	if key == "" {
		return Random{}.Pick(g, key, avoid, now)
	}
	return g.hashRing().get(hashKey(key), avoid, now)
}

func (*RingHash) String() string { return config.PolicyRingHash }

// usable reports whether ep may take a call: not the instance to avoid, and
// not found gone.
func usable(ep, avoid *Endpoint, now int64) bool { return ep != avoid && !ep.gone(now) }

// firstUsable is the first usable instance from eps[start] on, round the
// list; else the avoided one if it is not gone (the only one left); else nil.
func firstUsable(eps []*Endpoint, start int, avoid *Endpoint, now int64) *Endpoint {
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
	eps    []*Endpoint
	points []uint64
	owners []int32 // index in eps of each point's instance
}

func newHashRing(eps []*Endpoint) *hashRing {
	type point struct {
		h     uint64
		owner int32
	}
	pts := make([]point, 0, len(eps)*ringPoints)
	for i, ep := range eps {
		for v := 0; v < ringPoints; v++ {
			pts = append(pts, point{hashKey(ep.ID + "#" + strconv.Itoa(v)), int32(i)})
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
func (r *hashRing) get(h uint64, avoid *Endpoint, now int64) *Endpoint {
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
