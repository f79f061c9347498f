package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// Client asks a registry service (run by `natsmesh server`) about the mesh.
type Client struct {
	nc   *nats.Conn
	subj bus.Subjects
}

// NewClient makes a client on a caller-owned connection.
func NewClient(nc *nats.Conn, prefix string) (*Client, error) {
	subj, err := bus.NewSubjects(prefix)
	if err != nil {
		return nil, err
	}
	return &Client{nc: nc, subj: subj}, nil
}

// ErrNoRegistry means no registry service answered.
var ErrNoRegistry = errors.New("registry: no registry service answered; is `natsmesh server` running on this NATS?")

func (c *Client) request(ctx context.Context, subject string, body []byte, v any) error {
	m, err := c.nc.RequestWithContext(ctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return ErrNoRegistry
	}
	if err != nil {
		return fmt.Errorf("registry: ask %s: %w", subject, err)
	}
	if code := m.Header.Get(bus.HeaderError); code != "" {
		if bus.Code(code) == codeStaleCursor {
			return ErrStaleCursor
		}
		return fmt.Errorf("registry: %s answered %s: %w", subject, code, &bus.Error{Code: bus.Code(code), Status: bus.Code(code).Status(), Message: string(m.Data)})
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return fmt.Errorf("registry: the answer on %s is not valid: %w", subject, err)
	}
	return nil
}

// List returns every service, counted.
func (c *Client) List(ctx context.Context) (List, error) {
	var l List
	return l, c.request(ctx, c.subj.RegistryList(), nil, &l)
}

// Get returns the instances of one service, at the registry's rev: every
// page of the registry's answer, however many instances it has. A service
// with no instance is an empty snapshot.
func (c *Client) Get(ctx context.Context, service string) (Snapshot, error) {
	if err := bus.ValidateName("service", service); err != nil {
		return Snapshot{}, err
	}
	return c.snapshot(ctx, c.subj.RegistryGet(service))
}

// maxRestarts bounds how often a paged snapshot starts over because the
// registry no longer held the snapshot it was paging through.
const maxRestarts = 5

// snapshot asks subject for every page of a snapshot, starting over when
// the registry moved on from the one it pages through.
func (c *Client) snapshot(ctx context.Context, subject string) (Snapshot, error) {
	for restarts := 0; ; restarts++ {
		s, err := c.pages(ctx, subject)
		if !errors.Is(err, ErrStaleCursor) || restarts == maxRestarts {
			return s, err
		}
	}
}

// pages asks subject for the pages of one snapshot and joins them.
func (c *Client) pages(ctx context.Context, subject string) (Snapshot, error) {
	req := pageRequest{MaxBytes: c.nc.MaxPayload()}
	var all Snapshot
	for got := 0; ; {
		body, _ := json.Marshal(req)
		var p Snapshot
		if err := c.request(ctx, subject, body, &p); err != nil {
			return Snapshot{}, err
		}
		n := 0
		for _, list := range p.Services {
			n += len(list)
		}
		switch {
		case req.Cursor == "":
			all = p
			all.Services = make(map[string][]Instance, len(p.Services))
		case p.Rev != all.Rev || p.Origin != all.Origin || p.Instances != all.Instances:
			return Snapshot{}, ErrStaleCursor // not the snapshot of the first page
		}
		if p.Offset != got || got+n > p.Instances || (n == 0 && p.Next != "") {
			return Snapshot{}, fmt.Errorf("registry: the page at %d on %s holds %d of %d instances from %d: not the next page", got, subject, n, p.Instances, p.Offset)
		}
		for svc, list := range p.Services {
			all.Services[svc] = append(all.Services[svc], list...)
		}
		if got += n; p.Next == "" && got != p.Instances && !p.Truncated {
			return Snapshot{}, fmt.Errorf("registry: the answers on %s ended after %d of %d instances", subject, got, p.Instances)
		}
		if p.Next == "" {
			// A registry too old to page says Truncated and no Next.
			all.Truncated, all.Offset, all.Next = p.Truncated, 0, ""
			return all, nil
		}
		req.Cursor = p.Next
	}
}

// Update is what a Mirror tells its owner: a whole snapshot (at the start
// and after a resynchronisation) or one event.
type Update struct {
	Snapshot *Snapshot
	Event    *Event
}

// Mirror keeps a copy of the registry's view of one service (or of every
// service's events) up to date from the registry's events. It follows the
// registry protocol: subscribe to events, take a snapshot, apply the events
// newer than the snapshot, and take a new snapshot when an event shows that
// one was missed; so its owner never misses or double-counts a transition.
type Mirror struct {
	c       *Client
	service string
	subs    []*nats.Subscription // the events, and registry takeovers
	ch      chan *nats.Msg
	fn      func(Update)
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	resyncs int
	mu      sync.Mutex
}

// Mirror starts mirroring service, or every service if service is "". Its
// snapshots hold every instance, fetched page by page. fn is called on one
// goroutine, in order.
func (c *Client) Mirror(ctx context.Context, service string, fn func(Update)) (*Mirror, error) {
	subject := c.subj.AllEvents()
	if service != "" {
		if err := bus.ValidateName("service", service); err != nil {
			return nil, err
		}
		subject = c.subj.Events(service)
	}
	m := &Mirror{c: c, service: service, ch: make(chan *nats.Msg, 4096), fn: fn, done: make(chan struct{})}
	for _, s := range []string{subject, c.subj.RegistryLeader()} {
		sub, err := c.nc.ChanSubscribe(s, m.ch)
		if err != nil {
			m.unsubscribe()
			return nil, fmt.Errorf("registry: subscribe to %s: %w", s, err)
		}
		m.subs = append(m.subs, sub)
	}
	snap, err := m.snapshot(ctx)
	if err != nil {
		m.unsubscribe()
		return nil, err
	}
	m.wg.Go(func() { m.run(snap) })
	return m, nil
}

func (m *Mirror) snapshot(ctx context.Context) (Snapshot, error) {
	if m.service != "" {
		return m.c.Get(ctx, m.service)
	}
	return m.c.snapshot(ctx, m.c.subj.RegistrySnapshot())
}

func (m *Mirror) run(snap Snapshot) {
	m.fn(Update{Snapshot: &snap})
	last, origin := snap.Rev, snap.Origin
	for {
		var msg *nats.Msg
		select {
		case msg = <-m.ch:
		case <-m.done:
			return
		}
		if msg.Subject == m.c.subj.RegistryLeader() {
			// A registry (another, or this one after losing the lease for a
			// while) has started publishing: it did not publish the events
			// of the meantime, so start over from its snapshot.
		} else {
			var ev Event
			if json.Unmarshal(msg.Data, &ev) != nil {
				continue
			}
			if ev.Origin == origin && ev.Rev <= last {
				continue // already in the snapshot
			}
			if ev.Origin == origin && m.contiguous(ev, last) {
				last = ev.Rev
				m.fn(Update{Event: &ev})
				continue
			}
		}
		// An event was missed, or comes from another registry (restarted, or
		// another server took over): start over from a new snapshot.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		fresh, err := m.snapshot(ctx)
		cancel()
		if err != nil {
			continue // the next event tries again
		}
		m.mu.Lock()
		m.resyncs++
		m.mu.Unlock()
		last, origin = fresh.Rev, fresh.Origin
		m.fn(Update{Snapshot: &fresh})
	}
}

// contiguous reports whether ev follows the last rev seen with nothing
// missed in between.
func (m *Mirror) contiguous(ev Event, last uint64) bool {
	if m.service == "" {
		return ev.Rev == last+1
	}
	return ev.PrevRev <= last && ev.Rev > last
}

// Resyncs is how many times the mirror had to take a new snapshot.
func (m *Mirror) Resyncs() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resyncs
}

// Stop ends the mirror. Safe to call twice.
func (m *Mirror) Stop() {
	m.once.Do(func() {
		m.unsubscribe()
		close(m.done)
		m.wg.Wait()
	})
}

func (m *Mirror) unsubscribe() {
	for _, s := range m.subs {
		_ = s.Unsubscribe()
	}
}
