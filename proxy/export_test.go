package proxy

import "time"

// PassingInstances is how many passing instances of service (or of one of
// its subsets) the Transport's registry view offers its load balancer now,
// -1 if it keeps no view of the service.
func PassingInstances(t *Transport, service, subset string) int {
	if t.callees == nil {
		return -1
	}
	v, ok := t.callees.followed.Load(service)
	if !ok {
		return -1
	}
	e := v.(*endpoints)
	e.checked.Store(0) // look now
	s := e.current(time.Now().UnixNano())
	if s == nil {
		return 0
	}
	if g := s.group(subset); g != nil {
		return g.Len()
	}
	return 0
}

// SetRewatchAfter sets how long a service whose config watch failed runs on
// the defaults before it is watched again, and returns a func restoring it.
func SetRewatchAfter(d time.Duration) func() {
	old := rewatchAfter
	rewatchAfter = d
	return func() { rewatchAfter = old }
}
