package registry

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// SweepEvery is how often a followed view looks for expired instances.
const SweepEvery = 250 * time.Millisecond

// followBuffer bounds the messages waiting to be applied. Heartbeats are
// cheap to handle; a backlog this deep means the process cannot keep up, and
// dropping is better than growing.
const followBuffer = 64 * 1024

// Follower feeds a View from NATS: heartbeats and goodbyes, of every service
// or only of those it was told to follow, and expires instances as time
// passes.
type Follower struct {
	v    *View
	nc   *nats.Conn
	subj bus.Subjects

	mu   sync.Mutex
	subs map[string][]*nats.Subscription // by service; "" is every service
	gone uint64                          // drops of subscriptions since removed

	// msgs gets the messages of every subscription, in the order NATS
	// delivered them, so that an instance's goodbye is never applied before
	// the heartbeat it sent just before it (async subscriptions each have a
	// goroutine of their own, which would reorder them).
	msgs chan *nats.Msg

	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Follow starts feeding v from nc. With no services it follows the whole
// mesh; otherwise only the services named (more can be added with Add), so a
// process that calls a few services never handles the heartbeats of all.
func Follow(nc *nats.Conn, v *View, prefix string, services ...string) (*Follower, error) {
	f, err := NewFollower(nc, v, prefix)
	if err != nil {
		return nil, err
	}
	if len(services) == 0 {
		services = []string{""}
	}
	for _, svc := range services {
		if err := f.Add(svc); err != nil {
			f.Stop()
			return nil, err
		}
	}
	return f, nil
}

// NewFollower starts a follower of no service yet: Add the ones to follow.
func NewFollower(nc *nats.Conn, v *View, prefix string) (*Follower, error) {
	subj, err := bus.NewSubjects(prefix)
	if err != nil {
		return nil, err
	}
	f := &Follower{v: v, nc: nc, subj: subj, subs: make(map[string][]*nats.Subscription), msgs: make(chan *nats.Msg, followBuffer), done: make(chan struct{})}
	f.wg.Add(2)
	go f.apply()
	go f.sweep()
	return f, nil
}

// Add follows one more service ("" for every service). Following a service
// twice is harmless.
func (f *Follower) Add(service string) error {
	if service != "" {
		if err := bus.ValidateName("service", service); err != nil {
			return fmt.Errorf("registry: %w", err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.done:
		return errors.New("registry: the follower is stopped")
	default:
	}
	if _, ok := f.subs[service]; ok {
		return nil
	}
	var subs []*nats.Subscription
	for _, s := range []string{f.subj.Heartbeats(service), f.subj.Byes(service)} {
		sub, err := f.nc.ChanSubscribe(s, f.msgs)
		if err != nil {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
			return fmt.Errorf("registry: subscribe to %s: %w", s, err)
		}
		subs = append(subs, sub)
	}
	f.subs[service] = subs
	if f.nc.IsConnected() {
		// Once Add returns, the server sends every heartbeat our way.
		_ = f.nc.FlushTimeout(2 * time.Second)
	}
	return nil
}

// Remove stops following a service.
func (f *Follower) Remove(service string) {
	f.mu.Lock()
	subs := f.subs[service]
	delete(f.subs, service)
	for _, sub := range subs {
		if d, err := sub.Dropped(); err == nil && d > 0 {
			f.gone += uint64(d)
		}
	}
	f.mu.Unlock()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
}

func (f *Follower) onMsg(m *nats.Msg) {
	kind, svc, inst, ok := f.subj.ParseInstanceSubject(m.Subject)
	if !ok {
		f.v.malformed.Add(1)
		return
	}
	if kind == "bye" {
		f.v.Bye(svc, inst)
		return
	}
	hb, err := DecodeHeartbeat(svc, inst, m.Data)
	if err != nil {
		f.v.malformed.Add(1)
		return
	}
	f.v.Observe(hb)
}

func (f *Follower) apply() {
	defer f.wg.Done()
	for {
		select {
		case m := <-f.msgs:
			f.onMsg(m)
		case <-f.done:
			return
		}
	}
}

func (f *Follower) sweep() {
	defer f.wg.Done()
	t := time.NewTicker(SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.v.Sweep()
		case <-f.done:
			return
		}
	}
}

// Dropped is how many heartbeats and goodbyes NATS dropped because the
// follower fell behind (its buffer of followBuffer messages was full).
func (f *Follower) Dropped() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n uint64
	for _, subs := range f.subs {
		for _, sub := range subs {
			if d, err := sub.Dropped(); err == nil && d > 0 {
				n += uint64(d)
			}
		}
	}
	return n + f.gone
}

// Stop unsubscribes and stops expiring. Safe to call twice.
func (f *Follower) Stop() {
	f.once.Do(func() {
		close(f.done)
		f.mu.Lock()
		for svc, subs := range f.subs {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
			delete(f.subs, svc)
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
}
