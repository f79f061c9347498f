package proxy

import (
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// Liveness of the instance holding a call.
//
// A callee acknowledges a request it has not answered within AckAfter, naming
// itself. While the caller waits past that, it probes the instance's own
// subject every ProbeInterval: an instance that is alive answers at once, and
// for one that is gone NATS itself answers "no responders", so the caller
// learns of a death within a probe interval instead of at its deadline. A
// call that gets no acknowledgement within AckWait is treated the same way:
// the instance that took it died before it could acknowledge.
const (
	// AckAfter is how long a callee waits before acknowledging a request.
	AckAfter = 100 * time.Millisecond
	// DefaultAckWait is how long a caller waits for an answer or an
	// acknowledgement before it counts the request lost.
	DefaultAckWait = time.Second
	// DefaultProbeInterval is how often a caller probes the instance
	// holding an acknowledged call.
	DefaultProbeInterval = 250 * time.Millisecond

	probeFresh     = 100 * time.Millisecond // a probe result is reused this long
	maxProbeStates = 1024
)

// ackAfterValue is the Mesh-Ack value callers send.
var ackAfterValue = []string{"100"}

// prober probes instances, sharing one probe among the calls waiting on the
// same instance.
type prober struct {
	nc      *nats.Conn
	subj    bus.Subjects
	timeout time.Duration

	mu sync.Mutex
	m  map[string]*probeState
}

type probeState struct {
	at      time.Time
	dead    bool
	running chan struct{} // closed when the probe in flight ends
}

func newProber(nc *nats.Conn, subj bus.Subjects, timeout time.Duration) *prober {
	return &prober{nc: nc, subj: subj, timeout: timeout, m: make(map[string]*probeState)}
}

// dead reports whether instance is known to be gone: NATS answered a probe
// to it with "no responders". A probe that times out proves nothing.
func (p *prober) dead(service, instance string) bool {
	p.mu.Lock()
	st, ok := p.m[instance]
	switch {
	case ok && st.running != nil:
		ch := st.running
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
		defer p.mu.Unlock()
		return st.dead
	case ok && time.Since(st.at) < probeFresh:
		// A result, dead or alive, is reused only while fresh: an
		// instance can come back under its name (a restart with a fixed
		// --instance, a reconnect), and its acknowledgement says so.
		defer p.mu.Unlock()
		return st.dead
	case !ok:
		if len(p.m) >= maxProbeStates {
			p.forget()
		}
		st = &probeState{}
		p.m[instance] = st
	}
	st.running = make(chan struct{})
	p.mu.Unlock()

	dead := p.probe(service, instance)

	p.mu.Lock()
	st.at, st.dead = time.Now(), dead
	close(st.running)
	st.running = nil
	p.mu.Unlock()
	return dead
}

// forget drops the states that are not being probed; p.mu held.
func (p *prober) forget() {
	for k, st := range p.m {
		if st.running == nil {
			delete(p.m, k)
		}
	}
}

func (p *prober) probe(service, instance string) bool {
	msg := &nats.Msg{Subject: p.subj.Inst(service, instance), Header: nats.Header{bus.HeaderProbe: {"1"}}}
	_, err := p.nc.RequestMsg(msg, p.timeout)
	return errors.Is(err, nats.ErrNoResponders)
}
