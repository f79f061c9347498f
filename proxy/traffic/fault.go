package traffic

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/natsmesh/natsmesh/config"
)

// Fault is a compiled config.Fault: the caller's proxy holds a share of the
// calls before sending them, and answers a share itself without sending
// them.
type Fault struct {
	delayPercent float64
	delay        time.Duration
	abortPercent float64
	abortStatus  int
	abortBody    []byte
}

// Mesh-Fault values.
var (
	faultDelay = []string{"delay"}
	faultAbort = []string{"abort"}
	faultBoth  = []string{"delay, abort"}
)

func compileFault(service string, f *config.Fault) *Fault {
	if f == nil {
		return nil
	}
	c := &Fault{}
	if d := f.Delay; d != nil && d.Percent > 0 && d.Duration > 0 {
		c.delayPercent, c.delay = d.Percent, d.Duration.D()
	}
	if a := f.Abort; a != nil && a.Percent > 0 {
		c.abortPercent, c.abortStatus = a.Percent, a.Status
		c.abortBody = []byte(fmt.Sprintf("fault injected by the mesh config of service %s\n", service))
	}
	if c.delayPercent == 0 && c.abortPercent == 0 {
		return nil
	}
	return c
}

// String is the fault in a few words.
func (f *Fault) String() string {
	s := "fault"
	if f.delayPercent > 0 {
		s += fmt.Sprintf(" delay %g%% %s", f.delayPercent, f.delay)
	}
	if f.abortPercent > 0 {
		s += fmt.Sprintf(" abort %g%% %d", f.abortPercent, f.abortStatus)
	}
	return s
}

// Hit reports whether a call falls in percent of the calls.
func Hit(percent float64) bool {
	return percent >= 100 || rand.Float64()*100 < percent
}

// Roll decides whether the fault holds one call before it is sent, and for
// how long (0: not held); mark is the call's Mesh-Fault value, nil when the
// call is not held. Abort is decided after the hold.
func (f *Fault) Roll() (delay time.Duration, mark []string) {
	if f.delayPercent > 0 && Hit(f.delayPercent) {
		return f.delay, faultDelay
	}
	return 0, nil
}

// Abort decides whether a call (its Mesh-Fault value so far, mark) is
// aborted, and returns its Mesh-Fault value then.
func (f *Fault) Abort(mark []string) (bool, []string) {
	if f.abortPercent <= 0 || !Hit(f.abortPercent) {
		return false, mark
	}
	if mark == nil {
		return true, faultAbort
	}
	return true, faultBoth
}

// Delay is how long the fault holds a delayed call.
func (f *Fault) Delay() time.Duration { return f.delay }

// AbortStatus and AbortBody are the answer to an aborted call.
func (f *Fault) AbortStatus() int  { return f.abortStatus }
func (f *Fault) AbortBody() []byte { return f.abortBody }
