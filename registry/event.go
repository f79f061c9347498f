package registry

import "time"

// EventType says what happened to an instance.
type EventType string

// The event types.
const (
	Up      EventType = "up"      // the instance joined the view
	Down    EventType = "down"    // the instance left the view
	Changed EventType = "changed" // the instance's health changed
)

// Reason says why.
type Reason string

// The reasons.
const (
	Registered   Reason = "registered"   // first heartbeat (up)
	Deregistered Reason = "deregistered" // goodbye (down)
	Expired      Reason = "expired"      // 3 intervals without a heartbeat (down)
	HealthChange Reason = "health"       // health changed (changed)
)

// Event is one transition of one instance. Rev rises by one with every event
// of a view, so a watcher of the whole mesh that sees a gap in the revs
// missed an event. PrevRev is the rev of the previous event of the same
// service (0 for its first), so a watcher of one service missed an event
// when PrevRev is higher than the last rev it saw.
type Event struct {
	Type      EventType `json:"type"`
	Service   string    `json:"service"`
	Instance  string    `json:"instance"`
	Reason    Reason    `json:"reason"`
	Rev       uint64    `json:"rev"`
	PrevRev   uint64    `json:"prev_rev"`
	Origin    string    `json:"origin"` // the view that numbered the revs
	At        time.Time `json:"at"`
	Heartbeat Heartbeat `json:"heartbeat"`
}
