package metrics

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
)

// Direction says which side of a call an edge records.
type Direction uint8

const (
	// Outbound edges are calls this process made: the caller's view, which
	// includes the failures no callee saw (no-responders, circuit-open, ...).
	Outbound Direction = iota
	// Inbound edges are calls this process served.
	Inbound
)

func (d Direction) String() string {
	if d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// Other is the peer of the edge that takes the calls of every peer beyond a
// Set's MaxEdges. It is not a valid service name, so it never collides.
const Other = "(other)"

// DefaultMaxEdges bounds the edges of a Set, in each direction.
const DefaultMaxEdges = 1024

// maxBreakers bounds the breaker states a Set reports.
const maxBreakers = 1024

// codes are the Mesh-Error codes an edge counts one by one, bus's table;
// any other code (a newer peer's) counts as codeOther, and a response the
// app made as codeNone.
var codes = bus.Codes

const (
	codeNone  = 0
	codeOther = len(codes) + 1
	numCodes  = len(codes) + 2
	// classes are 1xx to 5xx; statuses outside 100–599 count as 5xx.
	numClasses = 5
)

var classNames = [numClasses]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

func codeName(i int) string {
	switch i {
	case codeNone:
		return ""
	case codeOther:
		return "other"
	}
	return string(codes[i-1])
}

func codeIndex(c bus.Code) int {
	if c == "" {
		return codeNone
	}
	for i, k := range codes {
		if k == c {
			return i + 1
		}
	}
	return codeOther
}

func classIndex(status int) int {
	if status < 100 || status > 599 {
		return numClasses - 1
	}
	return status/100 - 1
}

// Edge counts the calls between this process and one peer service (and
// subset): responses by status class and Mesh-Error code, retries, calls in
// flight and a latency histogram. Its methods are lock-free and allocate
// nothing.
type Edge struct {
	dir            Direction
	peer, subset   string
	responses      [numClasses][numCodes]atomic.Uint64
	retries        atomic.Uint64
	inflight       atomic.Int64
	latency        Histogram
	caller, callee string // the labels, from dir, peer and the Set's service
}

// Start counts a call in flight; Done ends it.
func (e *Edge) Start() { e.inflight.Add(1) }

// Done ends a call that Start counted, recording its outcome.
func (e *Edge) Done(status int, code bus.Code, attempts int, d time.Duration) {
	e.inflight.Add(-1)
	e.Record(status, code, attempts, d)
}

// Record counts one call: the status its client got (for a mesh error, the
// error's status), its Mesh-Error code or "", how many attempts it took and
// how long until its response's head.
func (e *Edge) Record(status int, code bus.Code, attempts int, d time.Duration) {
	e.responses[classIndex(status)][codeIndex(code)].Add(1)
	if attempts > 1 {
		e.retries.Add(uint64(attempts - 1))
	}
	e.latency.Observe(d)
}

// Options tune a Set.
type Options struct {
	// MaxEdges bounds the edges of each direction (default
	// DefaultMaxEdges): calls to or from further peers are counted on the
	// edge whose peer is Other. The directions are bounded apart, so that
	// callers naming many services (Mesh-Caller comes from the peer) never
	// take the process's own outbound edges.
	MaxEdges int
}

// Identity names the process a Set records.
type Identity struct {
	Service  string // the service it serves or calls as
	Subset   string
	Instance string
	// Kind is "sidecar", "gateway" or "library".
	Kind string
}

// Set holds the edges of one process. Edges are created on first use and
// kept for the life of the process, up to MaxEdges; paths, methods and
// instances are never part of an edge, so the number of series does not grow
// with traffic.
type Set struct {
	id       Identity
	started  time.Time
	max      int
	mu       sync.RWMutex
	edges    map[edgeKey]*Edge // guarded by mu
	list     []*Edge           // in creation order, guarded by mu
	count    [2]int            // the edges of each Direction, guarded by mu
	overflow atomic.Uint64

	state atomic.Pointer[string]

	bmu      sync.Mutex
	breakers map[string]breaker.State
}

type edgeKey struct {
	dir          Direction
	peer, subset string
}

// NewSet makes an empty Set.
func NewSet(id Identity, o Options) *Set {
	if o.MaxEdges <= 0 {
		o.MaxEdges = DefaultMaxEdges
	}
	return &Set{id: id, started: time.Now(), max: o.MaxEdges, edges: make(map[edgeKey]*Edge), breakers: make(map[string]breaker.State)}
}

// Identity is the process the Set records.
func (s *Set) Identity() Identity { return s.id }

// Edge returns the edge to or from peer's subset ("" for the whole
// service), creating it on first use. Beyond MaxEdges in its direction it
// returns the edge of the Other peer and counts the overflow.
func (s *Set) Edge(dir Direction, peer, subset string) *Edge {
	// Looked up under the read lock (no allocation); created once, under
	// the write lock.
	k := edgeKey{dir, peer, subset}
	s.mu.RLock()
	e := s.edges[k]
	if e == nil && s.count[dir] >= s.max {
		// Full: the Other edge, without the write lock, so that a flood
		// of unknown peers does not serialise the calls.
		e = s.edges[edgeKey{dir, Other, ""}]
		if e != nil {
			s.overflow.Add(1)
		}
	}
	s.mu.RUnlock()
	if e != nil {
		return e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.edges[k]; e != nil {
		return e
	}
	if s.count[dir] >= s.max {
		s.overflow.Add(1)
		k = edgeKey{dir, Other, ""}
		if e := s.edges[k]; e != nil {
			return e
		}
	}
	e = &Edge{dir: dir, peer: k.peer, subset: k.subset}
	e.caller, e.callee = s.id.Service, k.peer
	if dir == Inbound {
		e.caller, e.callee = k.peer, s.id.Service
	}
	s.edges[k] = e
	s.list = append(s.list, e)
	s.count[dir]++
	return e
}

// Overflow counts the calls that MaxEdges sent to the Other edge: one per
// lookup of an edge it refused, so a refused peer counts at each call.
func (s *Set) Overflow() uint64 { return s.overflow.Load() }

func (s *Set) all() []*Edge {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]*Edge(nil), s.list...)
}

// Instance states, for SetState.
const (
	StateServing  = "serving"  // in its queue groups
	StateFailing  = "failing"  // out of them: its health check fails
	StateEjected  = "ejected"  // out of them: outlier detection
	StateDraining = "draining" // leaving
)

// SetState records whether the instance is in its queue groups and why not.
func (s *Set) SetState(state string) { s.state.Store(&state) }

// State is the last state set, "" if none.
func (s *Set) State() string {
	if p := s.state.Load(); p != nil {
		return *p
	}
	return ""
}

// SetBreaker records the state of the circuit breaker for key (a service,
// or service/subset). It keeps at most 1,024 breakers, forgetting closed
// ones first.
func (s *Set) SetBreaker(key string, st breaker.State) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	if _, ok := s.breakers[key]; !ok && len(s.breakers) >= maxBreakers {
		for k, v := range s.breakers {
			if v == breaker.Closed {
				delete(s.breakers, k)
				break
			}
		}
		if len(s.breakers) >= maxBreakers {
			return
		}
	}
	s.breakers[key] = st
}

// CloseBreakers records as closed every breaker of service (its key is
// service or service/subset), for a caller that replaced them with new
// ones: a new breaker starts closed and reports only its changes.
func (s *Set) CloseBreakers(service string) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for k := range s.breakers {
		if name, _, _ := strings.Cut(k, "/"); name == service {
			s.breakers[k] = breaker.Closed
		}
	}
}

func (s *Set) breakerStates() map[string]breaker.State {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	m := make(map[string]breaker.State, len(s.breakers))
	for k, v := range s.breakers {
		m[k] = v
	}
	return m
}
