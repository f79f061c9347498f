package metrics

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// Snapshot is what an instance publishes on mesh.stats.<service>.<instance>
// every few seconds (JSON; docs/architecture.md "Golden metrics" describes
// it). Counters are cumulative since Started, as Prometheus counters are, so
// a lost snapshot loses nothing: a reader takes the difference of two.
type Snapshot struct {
	Service    string    `json:"service"`
	Subset     string    `json:"subset,omitempty"`
	Instance   string    `json:"instance"`
	Kind       string    `json:"kind"`
	State      string    `json:"state,omitempty"`
	Started    time.Time `json:"started"`
	At         time.Time `json:"at"`
	IntervalMS int64     `json:"interval_ms"`
	// Bounds are the latency buckets' upper bounds in seconds (the last
	// bucket, +Inf, has none); a reader merges only snapshots whose bounds
	// equal its own.
	Bounds   []float64         `json:"bounds"`
	Edges    []EdgeSnapshot    `json:"edges,omitempty"`
	Breakers map[string]string `json:"breakers,omitempty"`
	// Overflow counts the calls whose peer was beyond the process's limit
	// of edges (they are on the edge whose peer is "(other)").
	Overflow uint64 `json:"edges_overflow,omitempty"`
}

// EdgeSnapshot is one edge's counters.
type EdgeSnapshot struct {
	Direction string `json:"dir"` // "outbound" or "inbound"
	Peer      string `json:"peer"`
	Subset    string `json:"subset,omitempty"`
	// Responses counts responses by status class, and by Mesh-Error code
	// for those the mesh made: "2xx", "5xx", "5xx:timeout", "4xx:bad-request".
	Responses map[string]uint64 `json:"responses,omitempty"`
	Retries   uint64            `json:"retries,omitempty"`
	InFlight  int64             `json:"inflight,omitempty"`
	Latency   LatencySnapshot   `json:"latency"`
}

// LatencySnapshot is a histogram on the wire: Counts per bucket, not
// cumulative, the last one +Inf; Sum in seconds.
type LatencySnapshot struct {
	Counts []uint64 `json:"counts"`
	Sum    float64  `json:"sum"`
}

// Histogram converts l, which Valid checked, back to a HistogramSnapshot.
func (l LatencySnapshot) Histogram() HistogramSnapshot {
	var h HistogramSnapshot
	copy(h.Counts[:], l.Counts)
	h.Sum = l.Sum
	return h
}

// Requests is the number of responses counted.
func (e *EdgeSnapshot) Requests() uint64 {
	var n uint64
	for _, c := range e.Responses {
		n += c
	}
	return n
}

// Failures is the number of responses that failed: every 5xx, the app's or
// the mesh's. A 4xx is the client's doing, not the service's.
func (e *EdgeSnapshot) Failures() uint64 {
	var n uint64
	for k, c := range e.Responses {
		if strings.HasPrefix(k, "5xx") {
			n += c
		}
	}
	return n
}

// Snapshot reads the Set at now.
func (s *Set) Snapshot(now time.Time, interval time.Duration) Snapshot {
	snap := Snapshot{
		Service: s.id.Service, Subset: s.id.Subset, Instance: s.id.Instance, Kind: s.id.Kind,
		State: s.State(), Started: s.started.UTC(), At: now.UTC(), IntervalMS: interval.Milliseconds(),
		Bounds: Bounds, Overflow: s.Overflow(),
	}
	for _, e := range s.all() {
		es := EdgeSnapshot{
			Direction: e.dir.String(), Peer: e.peer, Subset: e.subset,
			Retries: e.retries.Load(), InFlight: e.inflight.Load(),
		}
		for c := range e.responses {
			for k := range e.responses[c] {
				if n := e.responses[c][k].Load(); n > 0 {
					if es.Responses == nil {
						es.Responses = make(map[string]uint64)
					}
					es.Responses[responseKey(c, k)] = n
				}
			}
		}
		h := e.latency.Snapshot()
		es.Latency = LatencySnapshot{Counts: h.Counts[:], Sum: h.Sum}
		snap.Edges = append(snap.Edges, es)
	}
	if bs := s.breakerStates(); len(bs) > 0 {
		snap.Breakers = make(map[string]string, len(bs))
		for k, v := range bs {
			snap.Breakers[k] = v.String()
		}
	}
	return snap
}

func responseKey(class, code int) string {
	if code == codeNone {
		return classNames[class]
	}
	return classNames[class] + ":" + codeName(code)
}

// Limits of a snapshot a reader accepts.
const (
	maxSnapshotEdges = 4096
	maxResponseKeys  = numClasses * numCodes
)

// ErrInvalidSnapshot is wrapped by the errors of DecodeSnapshot.
var ErrInvalidSnapshot = errors.New("invalid stats snapshot")

// DecodeSnapshot parses and checks a published snapshot: valid names, the
// same buckets as this process's, bounded sizes (edges, and breakers as a
// Set keeps them).
func DecodeSnapshot(data []byte) (Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	return s, s.Valid()
}

// Valid checks a snapshot as DecodeSnapshot does.
func (s *Snapshot) Valid() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSnapshot, fmt.Sprintf(format, a...))
	}
	if err := bus.ValidateName("service", s.Service); err != nil {
		return bad("%v", err)
	}
	if err := bus.ValidateName("instance", s.Instance); err != nil {
		return bad("%v", err)
	}
	if s.Subset != "" {
		if err := bus.ValidateName("subset", s.Subset); err != nil {
			return bad("%v", err)
		}
	}
	if len(s.Bounds) != len(Bounds) {
		return bad("%d latency buckets, want %d", len(s.Bounds), len(Bounds))
	}
	for i, b := range s.Bounds {
		if b != Bounds[i] {
			return bad("latency bucket %d is %g, want %g", i, b, Bounds[i])
		}
	}
	if len(s.Breakers) > maxBreakers {
		return bad("%d breakers, more than %d", len(s.Breakers), maxBreakers)
	}
	if len(s.Edges) > maxSnapshotEdges {
		return bad("%d edges, more than %d", len(s.Edges), maxSnapshotEdges)
	}
	for i := range s.Edges {
		e := &s.Edges[i]
		if e.Direction != Outbound.String() && e.Direction != Inbound.String() {
			return bad("edge %d: direction %q", i, e.Direction)
		}
		if len(e.Latency.Counts) != numBuckets {
			return bad("edge %d: %d latency counts, want %d", i, len(e.Latency.Counts), numBuckets)
		}
		if len(e.Responses) > maxResponseKeys {
			return bad("edge %d: %d response classes", i, len(e.Responses))
		}
	}
	return nil
}
