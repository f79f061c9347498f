package registry

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Clock tells the time. Tests pass a fake one so that expiry needs no sleep.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Defaults of ViewConfig.
const (
	DefaultMaxInstances = 100_000
	DefaultExpireAfter  = 3 // missed intervals
	DefaultWatchBuffer  = 1024
)

// ViewConfig configures a View. The zero value is usable.
type ViewConfig struct {
	// Clock defaults to the real time.
	Clock Clock
	// MaxInstances bounds the view; heartbeats of further instances are
	// dropped and counted. Defaults to DefaultMaxInstances.
	MaxInstances int
	// ExpireAfter is how many intervals an instance may miss before it
	// expires. Defaults to DefaultExpireAfter.
	ExpireAfter int
}

// Instance is one instance as the view knows it: its last heartbeat and when
// that arrived.
type Instance struct {
	Heartbeat
	LastSeen time.Time `json:"last_seen"`
}

// Snapshot is the view at one revision: every instance of every service.
// Revs are only comparable between snapshots and events of the same Origin.
type Snapshot struct {
	Rev       uint64                `json:"rev"`
	Origin    string                `json:"origin"`
	Services  map[string][]Instance `json:"services"`
	Instances int                   `json:"instances"`
	// Truncated: this message does not hold every instance. A page of the
	// registry's answer that has more after it is truncated and says Next;
	// a registry too old to page leaves the instances out and says no Next.
	Truncated bool `json:"truncated,omitempty"`
	// Offset is the position of this page's first instance among all of
	// the snapshot's (by service, then by id), on a page of the registry's
	// answer after the first.
	Offset int `json:"offset,omitempty"`
	// Next is the cursor of the page after this one; "" on the last page.
	// Client.Get and Mirror fetch every page and return the whole.
	Next string `json:"next,omitempty"`
}

// Stats count what a view did with what it was sent.
type Stats struct {
	Heartbeats      uint64 `json:"heartbeats"`       // accepted
	Malformed       uint64 `json:"malformed"`        // undecodable or invalid documents, subject/body mismatch
	Stale           uint64 `json:"stale"`            // duplicate or out-of-order seq
	Flood           uint64 `json:"flood"`            // faster than a quarter of the announced interval
	Future          uint64 `json:"future"`           // a start time ahead of the view's clock by more than MaxClockSkew
	Overflow        uint64 `json:"overflow"`         // new instances beyond MaxInstances
	Expired         uint64 `json:"expired"`          // instances that stopped heartbeating
	Deregistered    uint64 `json:"deregistered"`     // instances that said goodbye
	WatchersDropped uint64 `json:"watchers_dropped"` // slow watchers cut off
}

type record struct {
	hb         Heartbeat
	lastSeen   time.Time
	lastChange time.Time // of health or run
	burst      int       // changes since the last quiet quarter interval
}

// maxBurst is how many changes of health or run an instance may report
// within a quarter of its interval.
const maxBurst = 3

// View is the materialised set of services and instances built from
// heartbeats. It emits an event for each transition exactly once and never
// waits for a watcher.
type View struct {
	origin      string // random, so that revs of two views are never confused
	clock       Clock
	max         int
	expireAfter time.Duration // multiplier, as a count of intervals

	mu       sync.Mutex
	services map[string]map[string]*record
	count    int
	rev      uint64
	lastRev  map[string]uint64 // per service: the rev of its latest event
	watchers map[*Watcher]struct{}

	heartbeats, malformed, stale, flood, future, overflow, expired, deregistered, dropped atomic.Uint64
}

// MaxClockSkew is how far ahead of a view's clock a heartbeat's start time
// may be: one further ahead is ignored.
const MaxClockSkew = 30 * time.Second

// NewView makes an empty view.
func NewView(cfg ViewConfig) *View {
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.MaxInstances <= 0 {
		cfg.MaxInstances = DefaultMaxInstances
	}
	if cfg.ExpireAfter <= 0 {
		cfg.ExpireAfter = DefaultExpireAfter
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &View{
		origin:      hex.EncodeToString(b[:]),
		clock:       cfg.Clock,
		max:         cfg.MaxInstances,
		expireAfter: time.Duration(cfg.ExpireAfter),
		services:    make(map[string]map[string]*record),
		lastRev:     make(map[string]uint64),
		watchers:    make(map[*Watcher]struct{}),
	}
}

// Observe applies a validated heartbeat.
func (v *View) Observe(hb Heartbeat) {
	now := v.clock.Now()
	if hb.Started.After(now.Add(MaxClockSkew)) {
		// A start time in the future would make every true beat of the
		// instance look like one of an earlier run until then.
		v.future.Add(1)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	insts := v.services[hb.Service]
	r := insts[hb.Instance]
	if r == nil {
		if v.count >= v.max {
			v.overflow.Add(1)
			return
		}
		if insts == nil {
			insts = make(map[string]*record)
			v.services[hb.Service] = insts
		}
		insts[hb.Instance] = &record{hb: hb, lastSeen: now}
		v.count++
		v.heartbeats.Add(1)
		v.emit(Up, Registered, hb, now)
		return
	}
	sameRun := hb.Started.Equal(r.hb.Started)
	changes := hb.Health != r.hb.Health || !sameRun
	// The rate limit comes from the interval the view already knows, so a
	// sender cannot lift it by announcing a tiny one.
	quarter := r.hb.Interval() / 4
	switch {
	case hb.Started.Before(r.hb.Started), sameRun && hb.Seq <= r.hb.Seq:
		// A late beat of an earlier run, a duplicate or out of order.
		v.stale.Add(1)
		return
	case now.Sub(r.lastSeen) < quarter && (!changes || r.burst >= maxBurst && now.Sub(r.lastChange) < quarter):
		// Faster than a quarter interval: a few changes of health (or
		// restarts) may come at once — failing, then draining — but no
		// more than maxBurst in a quarter interval; the rest is a flood.
		v.flood.Add(1)
		return
	}
	prev := r.hb.Health
	r.hb, r.lastSeen = hb, now
	if changes {
		if now.Sub(r.lastChange) >= quarter {
			r.burst = 0
		}
		r.burst++
		r.lastChange = now
	}
	v.heartbeats.Add(1)
	if hb.Health != prev {
		v.emit(Changed, HealthChange, hb, now)
	}
}

// Bye removes an instance that said goodbye.
func (v *View) Bye(service, instance string) {
	now := v.clock.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.services[service][instance]
	if r == nil {
		return
	}
	v.remove(service, instance)
	v.deregistered.Add(1)
	v.emit(Down, Deregistered, r.hb, now)
}

// Sweep expires the instances that missed ExpireAfter intervals.
func (v *View) Sweep() {
	now := v.clock.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	for svc, insts := range v.services {
		for id, r := range insts {
			if now.Sub(r.lastSeen) > v.expireAfter*r.hb.Interval() {
				v.remove(svc, id)
				v.expired.Add(1)
				v.emit(Down, Expired, r.hb, now)
			}
		}
	}
}

func (v *View) remove(service, instance string) {
	insts := v.services[service]
	delete(insts, instance)
	if len(insts) == 0 {
		delete(v.services, service)
	}
	v.count--
}

// emit gives an event the next rev and hands it to the watchers, under v.mu.
// A watcher whose buffer is full is cut off: it would otherwise stall the
// view or miss events silently.
func (v *View) emit(t EventType, reason Reason, hb Heartbeat, now time.Time) {
	v.rev++
	ev := Event{Type: t, Service: hb.Service, Instance: hb.Instance, Reason: reason, Rev: v.rev, PrevRev: v.lastRev[hb.Service], Origin: v.origin, At: now, Heartbeat: hb}
	v.lastRev[hb.Service] = v.rev
	if len(v.lastRev) > v.max {
		// Only churn through more service names than MaxInstances gets
		// here: forget the services that are gone, to stay bounded.
		for svc := range v.lastRev {
			if _, ok := v.services[svc]; !ok && svc != hb.Service {
				delete(v.lastRev, svc)
			}
		}
	}
	for w := range v.watchers {
		if w.service != "" && w.service != hb.Service {
			continue
		}
		select {
		case w.ch <- ev:
		default:
			delete(v.watchers, w)
			w.err = ErrSlowWatcher
			close(w.ch)
			v.dropped.Add(1)
		}
	}
}

// Origin identifies the view whose revs its events and snapshots carry.
func (v *View) Origin() string { return v.origin }

// Rev is the revision of the view: the rev of its latest event.
func (v *View) Rev() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rev
}

// Has tells whether the view lists instance of service now, whatever its
// health.
func (v *View) Has(service, instance string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.services[service][instance]
	return ok
}

// Snapshot returns the view now, or only service's instances if service is
// not "". Instances are sorted by id.
func (v *View) Snapshot(service string) Snapshot {
	s, _ := v.snapshotVersion(service)
	return s
}

// snapshotVersion is Snapshot with its version (see version), taken at once.
// The copy is made under the lock and sorted after it, so that a large
// service does not hold up heartbeats while it is sorted.
func (v *View) snapshotVersion(service string) (Snapshot, uint64) {
	v.mu.Lock()
	s, ver := v.snapshot(service), v.versionLocked(service)
	v.mu.Unlock()
	sortSnapshot(s)
	return s, ver
}

// version is what the snapshot of service depends on: the rev of the
// service's latest event, or the view's rev for the whole mesh (""). Two
// snapshots of the same version list the same instances.
func (v *View) version(service string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.versionLocked(service)
}

func (v *View) versionLocked(service string) uint64 {
	if service == "" {
		return v.rev
	}
	return v.lastRev[service]
}

// snapshot copies the view under v.mu, unsorted.
func (v *View) snapshot(service string) Snapshot {
	s := Snapshot{Rev: v.rev, Origin: v.origin, Services: make(map[string][]Instance)}
	for svc, insts := range v.services {
		if service != "" && svc != service {
			continue
		}
		list := make([]Instance, 0, len(insts))
		for _, r := range insts {
			list = append(list, Instance{Heartbeat: r.hb, LastSeen: r.lastSeen})
		}
		s.Services[svc] = list
		s.Instances += len(list)
	}
	return s
}

// sortSnapshot sorts each service's instances by id.
func sortSnapshot(s Snapshot) {
	for _, list := range s.Services {
		slices.SortFunc(list, func(a, b Instance) int { return strings.Compare(a.Instance, b.Instance) })
	}
}

// Stats returns the view's counters.
func (v *View) Stats() Stats {
	return Stats{
		Heartbeats: v.heartbeats.Load(), Malformed: v.malformed.Load(), Stale: v.stale.Load(),
		Flood: v.flood.Load(), Future: v.future.Load(), Overflow: v.overflow.Load(), Expired: v.expired.Load(),
		Deregistered: v.deregistered.Load(), WatchersDropped: v.dropped.Load(),
	}
}

// ErrSlowWatcher is a watcher's Err after the view cut it off for not
// keeping up.
var ErrSlowWatcher = errors.New("registry: watcher fell behind and was dropped; watch again and start from a new snapshot")

// Watcher receives a view's events from the revision of the snapshot it was
// made with.
type Watcher struct {
	v       *View
	service string
	ch      chan Event
	err     error // set before ch is closed
}

// Watch returns the view's snapshot (of service, or all if "") and a watcher
// that receives every later event, atomically: nothing is missed or seen
// twice between the two. buffer bounds the events waiting to be read
// (DefaultWatchBuffer if 0); a watcher that lets it fill is cut off.
func (v *View) Watch(service string, buffer int) (Snapshot, *Watcher) {
	if buffer <= 0 {
		buffer = DefaultWatchBuffer
	}
	w := &Watcher{v: v, service: service, ch: make(chan Event, buffer)}
	v.mu.Lock()
	v.watchers[w] = struct{}{}
	s := v.snapshot(service)
	v.mu.Unlock()
	sortSnapshot(s)
	return s, w
}

// Events delivers the events; it is closed by Stop or when the watcher is
// cut off (then Err says so).
func (w *Watcher) Events() <-chan Event { return w.ch }

// Err is nil while the watcher runs or after Stop, and ErrSlowWatcher after
// it was cut off. Read it after Events is closed.
func (w *Watcher) Err() error {
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	return w.err
}

// Stop ends the watcher and closes Events. Safe to call twice.
func (w *Watcher) Stop() {
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	if _, ok := w.v.watchers[w]; ok {
		delete(w.v.watchers, w)
		close(w.ch)
	}
}
