package proxy

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/proxy/traffic"
	"github.com/natsmesh/natsmesh/registry"
)

// maxCallees bounds how many services a sidecar follows in the registry.
const maxCallees = 1024

// callees is a Transport's registry view of the services it calls (a
// sidecar's app, or a library Transport with Follow), and only those: a
// service is followed (its heartbeats subscribed to) from its first call on,
// so no sidecar handles the heartbeats of a whole mesh. It lets the
// Transport say why a service has no instance to answer, and the
// instance-aware load-balancing policies pick from it.
type callees struct {
	view     *registry.View
	f        *registry.Follower
	subj     bus.Subjects
	zone     string   // the caller's
	followed sync.Map // service → *endpoints
	n        atomic.Int64
}

func newCallees(nc *nats.Conn, subj bus.Subjects, zone string) (*callees, error) {
	view := registry.NewView(registry.ViewConfig{})
	f, err := registry.NewFollower(nc, view, subj.Prefix)
	if err != nil {
		return nil, err
	}
	return &callees{view: view, f: f, subj: subj, zone: zone}, nil
}

// note follows service from now on, once; cheap after the first call. It
// returns the service's instances, nil beyond maxCallees services.
func (c *callees) note(service string) *endpoints {
	if v, ok := c.followed.Load(service); ok {
		return v.(*endpoints)
	}
	if c.n.Load() >= maxCallees {
		return nil
	}
	e := &endpoints{service: service, view: c.view, subj: c.subj, zone: c.zone}
	v, loaded := c.followed.LoadOrStore(service, e)
	if !loaded {
		c.n.Add(1)
		_ = c.f.Add(service)
	}
	return v.(*endpoints)
}

// explain says what the registry knows of a service (or of one of its
// subsets, if subset is not "") nobody answered for.
func (c *callees) explain(service, subset string) string {
	var insts []registry.Instance
	for _, in := range c.view.Snapshot(service).Services[service] {
		if subset == "" || in.Subset == subset {
			insts = append(insts, in)
		}
	}
	if len(insts) == 0 {
		return ""
	}
	counts := map[registry.Health]int{}
	for _, in := range insts {
		counts[in.Health]++
	}
	var parts []string
	for _, h := range []registry.Health{registry.Failing, registry.Ejected, registry.Draining, registry.Passing} {
		if counts[h] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[h], h))
		}
	}
	return fmt.Sprintf("; the registry knows %d instance(s), %s", len(insts), strings.Join(parts, ", "))
}

func (c *callees) stop() { c.f.Stop() }

const (
	// checkEvery is how often a call may look at the registry view's
	// revision, which changes when an instance comes, goes or changes
	// health.
	checkEvery = int64(20 * time.Millisecond)
	// refreshEvery is how often the instances' in-flight counts are read
	// from the view when nothing else changed (heartbeats bring them every
	// interval, 1 s by default).
	refreshEvery = int64(250 * time.Millisecond)
)

// instanceSet is one refresh of a service's instances.
type instanceSet struct {
	rev     uint64
	built   int64
	all     *traffic.Group
	subsets map[string]*traffic.Group
	byID    map[string]*traffic.Endpoint
}

// group is the passing instances of the service (subset "") or of one of
// its subsets.
func (s *instanceSet) group(subset string) *traffic.Group {
	if subset == "" {
		return s.all
	}
	return s.subsets[subset]
}

// endpoints is a caller's view of one service's instances, refreshed from
// the registry view by the calls themselves: at most one call every
// checkEvery looks at the view's revision, and rebuilds the set when it
// changed or refreshEvery has passed.
type endpoints struct {
	service    string
	view       *registry.View
	subj       bus.Subjects
	zone       string // the caller's: its groups prefer the instances there
	set        atomic.Pointer[instanceSet]
	checked    atomic.Int64
	refreshing atomic.Bool
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
// endpoints (and their in-flight counts) and groups of prev that still hold;
// a new group finds its members in the caller's zone once, here.
func (e *endpoints) rebuild(prev *instanceSet, now int64) *instanceSet {
	snap := e.view.Snapshot(e.service)
	s := &instanceSet{rev: snap.Rev, built: now, subsets: make(map[string]*traffic.Group), byID: make(map[string]*traffic.Endpoint)}
	var all []*traffic.Endpoint
	bySubset := make(map[string][]*traffic.Endpoint)
	for _, in := range snap.Services[e.service] { // sorted by id
		if in.Health != registry.Passing {
			continue
		}
		var ep *traffic.Endpoint
		if prev != nil {
			if old := prev.byID[in.Instance]; old != nil && old.Subset == in.Subset && old.Zone == in.Zone {
				ep = old
			}
		}
		if ep == nil {
			ep = traffic.NewEndpoint(in.Instance, in.Subset, e.subj.Inst(e.service, in.Instance))
			ep.Zone = in.Zone
		}
		ep.SetHeartbeatInflight(int64(in.Inflight))
		s.byID[ep.ID] = ep
		all = append(all, ep)
		if in.Subset != "" {
			bySubset[in.Subset] = append(bySubset[in.Subset], ep)
		}
	}
	if prev != nil && prev.all.Same(all) {
		s.all = prev.all
	} else {
		s.all = traffic.NewGroup(all, e.zone)
	}
	for subset, eps := range bySubset {
		if prev != nil && prev.subsets[subset].Same(eps) {
			s.subsets[subset] = prev.subsets[subset]
		} else {
			s.subsets[subset] = traffic.NewGroup(eps, e.zone)
		}
	}
	return s
}

// pick chooses an instance of the service (subset "") or of one subset with
// the policy's picker (traffic.Pick); nil when the view has none (the call
// goes to the queue group).
func (e *endpoints) pick(p traffic.Picker, subset, key string, avoid *traffic.Endpoint, now int64) *traffic.Endpoint {
	s := e.current(now)
	if s == nil {
		return nil
	}
	return traffic.Pick(p, s.group(subset), key, avoid, now)
}
