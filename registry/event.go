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
// of a view, so a gap in the revs a watcher sees means it missed one.
type Event struct {
	Type      EventType `json:"type"`
	Service   string    `json:"service"`
	Instance  string    `json:"instance"`
	Reason    Reason    `json:"reason"`
	Rev       uint64    `json:"rev"`
	At        time.Time `json:"at"`
	Heartbeat Heartbeat `json:"heartbeat"`
}
