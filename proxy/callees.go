package proxy

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/natsmesh/natsmesh/registry"
)

// maxCallees bounds how many services a sidecar follows in the registry.
const maxCallees = 1024

// callees is a sidecar's registry view of the services its app calls, and
// only those: a service is followed (its heartbeats subscribed to) from its
// first call on, so no sidecar handles the heartbeats of a whole mesh. It
// lets the sidecar say why a service has no instance to answer.
type callees struct {
	view     *registry.View
	f        *registry.Follower
	followed sync.Map // service → struct{}
	n        atomic.Int64
}

// note follows service from now on, once; cheap after the first call.
func (c *callees) note(service string) {
	if _, ok := c.followed.Load(service); ok {
		return
	}
	if c.n.Load() >= maxCallees {
		return
	}
	if _, loaded := c.followed.LoadOrStore(service, struct{}{}); !loaded {
		c.n.Add(1)
		_ = c.f.Add(service)
	}
}

// explain says what the registry knows of a service nobody answered for.
func (c *callees) explain(service string) string {
	insts := c.view.Snapshot(service).Services[service]
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
