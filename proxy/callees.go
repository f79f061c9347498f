package proxy

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
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
	followed sync.Map // service → *endpoints
	n        atomic.Int64
}

func newCallees(nc *nats.Conn, subj bus.Subjects) (*callees, error) {
	view := registry.NewView(registry.ViewConfig{})
	f, err := registry.NewFollower(nc, view, subj.Prefix)
	if err != nil {
		return nil, err
	}
	return &callees{view: view, f: f, subj: subj}, nil
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
	e := &endpoints{service: service, view: c.view, subj: c.subj}
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
