package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/natsmesh/natsmesh/bus"
)

// Health is an instance's own account of whether it takes traffic.
type Health string

// The health states an instance reports.
const (
	Passing  Health = "passing"  // serving
	Failing  Health = "failing"  // its app fails health checks; it has left its queue group
	Draining Health = "draining" // shutting down; finishing the requests it holds
	Ejected  Health = "ejected"  // its app kept failing requests; it has left its queue groups for a while
)

// Heartbeat is the document an instance publishes on
// <prefix>.hb.<service>.<instance> every interval.
type Heartbeat struct {
	Service    string            `json:"service"`
	Subset     string            `json:"subset,omitempty"`
	Zone       string            `json:"zone,omitempty"` // where the instance runs; callers in the same zone prefer it
	Instance   string            `json:"instance"`
	Host       string            `json:"host"`
	PID        int               `json:"pid"`
	Started    time.Time         `json:"started"`
	Seq        uint64            `json:"seq"`
	IntervalMS int64             `json:"interval_ms"`
	Health     Health            `json:"health"`
	Inflight   int               `json:"inflight"`
	Meta       map[string]string `json:"meta,omitempty"`
}

// Limits on a heartbeat document; anything beyond them is rejected.
const (
	MaxHeartbeatSize = 16 << 10 // bytes of JSON
	MaxMetaEntries   = 32
	MaxMetaKey       = 63
	MaxMetaValue     = 256
	MinInterval      = 100 * time.Millisecond
	MaxInterval      = time.Hour
)

// ErrBadHeartbeat is wrapped by every heartbeat decoding error.
var ErrBadHeartbeat = errors.New("registry: bad heartbeat")

func badHeartbeat(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadHeartbeat}, args...)...)
}

// Interval is the announced heartbeat interval.
func (h *Heartbeat) Interval() time.Duration { return time.Duration(h.IntervalMS) * time.Millisecond }

// Validate checks the document's fields against the limits above.
func (h *Heartbeat) Validate() error {
	if err := bus.ValidateName("service", h.Service); err != nil {
		return badHeartbeat("%v", err)
	}
	if err := bus.ValidateName("instance", h.Instance); err != nil {
		return badHeartbeat("%v", err)
	}
	if h.Subset != "" {
		if err := bus.ValidateName("subset", h.Subset); err != nil {
			return badHeartbeat("%v", err)
		}
	}
	if h.Zone != "" {
		if err := bus.ValidateName("zone", h.Zone); err != nil {
			return badHeartbeat("%v", err)
		}
	}
	switch h.Health {
	case Passing, Failing, Draining, Ejected:
	default:
		return badHeartbeat("health %q is not passing, failing, draining or ejected", h.Health)
	}
	// Compared in milliseconds: Interval() of a huge interval_ms overflows
	// and could wrap into the valid range.
	if h.IntervalMS < MinInterval.Milliseconds() || h.IntervalMS > MaxInterval.Milliseconds() {
		return badHeartbeat("interval_ms %d is outside %d-%d", h.IntervalMS, MinInterval.Milliseconds(), MaxInterval.Milliseconds())
	}
	if h.Seq == 0 {
		return badHeartbeat("seq must start at 1")
	}
	if h.Inflight < 0 || h.PID < 0 {
		return badHeartbeat("inflight and pid cannot be negative")
	}
	if len(h.Host) > 255 {
		return badHeartbeat("host is longer than 255 bytes")
	}
	if len(h.Meta) > MaxMetaEntries {
		return badHeartbeat("meta has %d entries; the limit is %d", len(h.Meta), MaxMetaEntries)
	}
	for k, v := range h.Meta {
		if k == "" || len(k) > MaxMetaKey || len(v) > MaxMetaValue {
			return badHeartbeat("meta entry %.20q is empty or too long (keys up to %d bytes, values up to %d)", k, MaxMetaKey, MaxMetaValue)
		}
	}
	return nil
}

// DecodeHeartbeat parses and validates a heartbeat that arrived on the
// subject of service and instance; a body naming another service or
// instance than its subject is rejected.
func DecodeHeartbeat(service, instance string, data []byte) (Heartbeat, error) {
	var h Heartbeat
	if len(data) > MaxHeartbeatSize {
		return h, badHeartbeat("%d bytes; the limit is %d", len(data), MaxHeartbeatSize)
	}
	var ok bool
	if h, ok = decodeFast(data); !ok {
		h = Heartbeat{}
		if err := json.Unmarshal(data, &h); err != nil {
			return Heartbeat{}, badHeartbeat("not valid JSON: %v", err)
		}
	}
	if h.Service != service || h.Instance != instance {
		return Heartbeat{}, badHeartbeat("body names %s/%s but arrived on the subject of %s/%s", h.Service, h.Instance, service, instance)
	}
	if err := h.Validate(); err != nil {
		return Heartbeat{}, err
	}
	return h, nil
}
