package proxy

import (
	"sync"
)

// callerSlots keeps how many of an instance's in-flight slots each caller
// holds, so that no caller can take them all: once fewer than reserve slots
// are free, a caller that already holds reserve of them is refused, and the
// free ones are left to the other callers. A caller alone may use all but
// reserve of the slots. An instance of fewer than callerReserve slots keeps
// none.
type callerSlots struct {
	mu      sync.Mutex
	held    map[string]int64 // callers holding a slot now; none at 0
	reserve int64
}

// callerReserve is the share of the slots kept for the other callers of
// one that holds many.
const callerReserve = 4 // a quarter

func newCallerSlots(limit int64) *callerSlots {
	return &callerSlots{held: make(map[string]int64), reserve: limit / callerReserve}
}

// take counts a slot for caller, given total, the slots in use with it
// (out of max); it reports false, counting nothing, when caller holds its
// share of a busy instance.
func (c *callerSlots) take(caller string, total, max int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.held[caller]
	if c.reserve > 0 && total > max-c.reserve && n >= c.reserve {
		return false
	}
	c.held[caller] = n + 1
	return true
}

// give returns caller's slot.
func (c *callerSlots) give(caller string) {
	c.mu.Lock()
	if n := c.held[caller] - 1; n > 0 {
		c.held[caller] = n
	} else {
		delete(c.held, caller)
	}
	c.mu.Unlock()
}
