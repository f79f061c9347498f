package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/bus"
)

// publishBuffer bounds the events waiting to be published.
var publishBuffer = 64 * 1024

// ServiceSummary is one service in the registry's list.
type ServiceSummary struct {
	Name      string `json:"name"`
	Instances int    `json:"instances"`
	Passing   int    `json:"passing"`
	Failing   int    `json:"failing"`
	Draining  int    `json:"draining"`
	Ejected   int    `json:"ejected"`
}

// List is the answer to <prefix>.registry.list: every service, counted, at
// one revision of the view.
type List struct {
	Rev      uint64           `json:"rev"`
	Origin   string           `json:"origin"`
	Services []ServiceSummary `json:"services"`
	Stats    Stats            `json:"stats"`
	// Dropped counts heartbeats and goodbyes NATS dropped before they
	// reached the view, because the registry fell behind.
	Dropped uint64 `json:"dropped"`
}

// Config configures the registry service.
type Config struct {
	Prefix string
	View   ViewConfig
	// LeaseTTL bounds how long events pause when the registry service that
	// publishes them dies and another takes over; default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Replicas is how many replicas the lease bucket gets when this
	// registry makes it: 1 to 5, or 0 (the default) for 3 on a NATS
	// cluster whose JetStream can place them and 1 otherwise.
	Replicas int
	Logger   *slog.Logger
}

// Registry is the mesh's registry service, run by `natsmesh server`: it
// follows every heartbeat, answers <prefix>.registry.list and
// <prefix>.registry.get.<svc> with snapshots stamped with their rev, and
// publishes every event of its view on <prefix>.events.<svc>.
//
// Several servers may run one on the same NATS: every one keeps a view, but
// only the holder of a lease in the JetStream KV bucket <prefix>_registry
// answers and publishes, so each event is published once; when it dies the
// lease expires and another takes over. Without JetStream, every registry
// answers and publishes.
type Registry struct {
	nc     *nats.Conn
	subj   bus.Subjects
	view   *View
	follow *Follower
	leader atomic.Bool

	leaseMu sync.Mutex
	lease   *lease
	stopped bool
	done    chan struct{}
	log     *slog.Logger

	subMu sync.Mutex
	subs  []*nats.Subscription

	watchMu sync.Mutex
	watch   *Watcher // nil once stopped

	pages pageCache // the encoded snapshots of get and snapshot answers

	wg   sync.WaitGroup
	once sync.Once
}

// Start starts the registry service on a caller-owned connection.
func Start(nc *nats.Conn, cfg Config) (*Registry, error) {
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if err := bus.ValidateReplicas(cfg.Replicas); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Registry{nc: nc, subj: subj, view: NewView(cfg.View), log: cfg.Logger, done: make(chan struct{})}
	// Watch before following, so that the first event is published too.
	_, s.watch = s.view.Watch("", publishBuffer)
	s.wg.Go(s.publish)
	if s.follow, err = Follow(nc, s.view, cfg.Prefix); err != nil {
		s.Stop()
		return nil, err
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	err = s.startLease(cfg)
	switch {
	case err == nil:
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, nats.ErrNoResponders): // nobody answers the JetStream API
		cfg.Logger.Warn("no JetStream for the registry lease; this server publishes events on its own: run one natsmesh server per mesh", "error", err)
		if err := s.lead(true); err != nil {
			s.Stop()
			return nil, err
		}
		if errors.Is(err, nats.ErrNoResponders) {
			// JetStream may only be unreachable for now (a leaf link, a
			// domain coming up): keep trying the lease, which then decides.
			s.wg.Go(func() { s.retryLease(cfg) })
		}
	default:
		// JetStream is there but not ready (a leader election, say):
		// keep trying, and do not lead meanwhile.
		cfg.Logger.Warn("registry lease not available yet; retrying", "error", err)
		s.wg.Go(func() { s.retryLease(cfg) })
	}
	return s, nil
}

func (s *Registry) startLease(cfg Config) error {
	l, err := startLease(s.nc, leaseConfig{prefix: cfg.Prefix, id: s.view.Origin(), ttl: cfg.LeaseTTL, replicas: cfg.Replicas, log: cfg.Logger}, func(on bool) { _ = s.lead(on) })
	if err != nil {
		return err
	}
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.stopped {
		l.stop()
		return nil
	}
	s.lease = l
	return nil
}

func (s *Registry) retryLease(cfg Config) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if err := s.startLease(cfg); err == nil {
			return
		}
	}
}

// lead starts or stops answering queries, as the lease is won or lost.
func (s *Registry) lead(on bool) error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.leader.Store(on)
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
	if !on {
		return nil
	}
	for subject, h := range map[string]nats.MsgHandler{
		s.subj.RegistryList():     s.onList,
		s.subj.RegistryGetAll():   s.onGet,
		s.subj.RegistrySnapshot(): s.onSnapshot,
	} {
		sub, err := s.nc.Subscribe(subject, h)
		if err != nil {
			s.log.Error("registry cannot answer", "subject", subject, "error", err)
			return fmt.Errorf("registry: subscribe to %s: %w", subject, err)
		}
		s.subs = append(s.subs, sub)
	}
	// Mirrors of a registry that died take a new snapshot from this one.
	data, _ := json.Marshal(leaderNote{Origin: s.view.Origin()})
	if err := s.nc.Publish(s.subj.RegistryLeader(), data); err != nil {
		s.log.Warn("cannot announce the registry's takeover", "error", err)
	}
	return nil
}

// leaderNote is published on <prefix>.registry.leader by a registry service
// that starts answering and publishing.
type leaderNote struct {
	Origin string `json:"origin"`
}

// Leader reports whether this service holds the lease: it answers queries
// and publishes events.
func (s *Registry) Leader() bool { return s.leader.Load() }

// View is the service's view of the mesh.
func (s *Registry) View() *View { return s.view }

// publish sends the view's events on NATS, in rev order.
func (s *Registry) publish() {
	for {
		s.watchMu.Lock()
		w := s.watch
		s.watchMu.Unlock()
		if w == nil {
			return // stopped
		}
		for ev := range w.Events() {
			if !s.leader.Load() {
				continue
			}
			data, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			if err := s.nc.Publish(s.subj.Events(ev.Service), data); err != nil {
				s.log.Warn("registry event not published", "service", ev.Service, "rev", ev.Rev, "error", err)
			}
		}
		if w.Err() == nil {
			return // stopped
		}
		// Cut off for falling behind: watch again. The revs skipped show
		// every mirror a gap, so they take a new snapshot.
		s.log.Warn("registry event publisher fell behind; events skipped, watchers resynchronise", "error", w.Err())
		s.watchMu.Lock()
		if s.watch != nil {
			_, s.watch = s.view.Watch("", publishBuffer)
		}
		s.watchMu.Unlock()
	}
}

func (s *Registry) onList(m *nats.Msg) {
	snap := s.view.Snapshot("")
	l := List{Rev: snap.Rev, Origin: snap.Origin, Services: make([]ServiceSummary, 0, len(snap.Services)), Stats: s.view.Stats(), Dropped: s.follow.Dropped()}
	for name, insts := range snap.Services {
		sum := ServiceSummary{Name: name, Instances: len(insts)}
		for _, in := range insts {
			switch in.Health {
			case Passing:
				sum.Passing++
			case Failing:
				sum.Failing++
			case Draining:
				sum.Draining++
			case Ejected:
				sum.Ejected++
			}
		}
		l.Services = append(l.Services, sum)
	}
	slices.SortFunc(l.Services, func(a, b ServiceSummary) int { return strings.Compare(a.Name, b.Name) })
	s.reply(m, l)
}

func (s *Registry) onGet(m *nats.Msg) {
	svc := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if bus.ValidateName("service", svc) != nil {
		return // the wildcard cannot match anything else; nothing to answer
	}
	s.answerPage(m, svc)
}

func (s *Registry) onSnapshot(m *nats.Msg) { s.answerPage(m, "") }

// answerPage answers a page of the snapshot of scope (a service, or "" for
// every service): the first, or the one the request's cursor names, within
// the connection's max payload.
func (s *Registry) answerPage(m *nats.Msg, scope string) {
	if m.Reply == "" {
		return
	}
	req, cur, err := parsePageRequest(m.Data)
	if err != nil {
		s.answerError(m, bus.BadRequest, err.Error())
		return
	}
	e, offset := s.pages.current(s.view, scope), 0
	if cur != nil {
		if e, err = s.pages.at(s.view, scope, *cur); err != nil {
			s.answerError(m, codeStaleCursor, err.Error())
			return
		}
		if offset = cur.offset; offset > e.count() {
			s.answerError(m, bus.BadRequest, fmt.Sprintf("cursor %q points past the snapshot's %d instances", req.Cursor, e.count()))
			return
		}
	}
	data := e.page(offset, req.Limit, pageBytes(req.MaxBytes, s.nc.MaxPayload()))
	if err := m.Respond(data); err != nil {
		s.log.Warn("registry answer not sent", "subject", m.Subject, "bytes", len(data), "error", err)
	}
}

// codeStaleCursor is the Mesh-Error code of a registry answer to a cursor
// into a snapshot it no longer holds (ErrStaleCursor).
const codeStaleCursor bus.Code = "stale-cursor"

// answerError answers a registry request that cannot be answered: the code
// in Mesh-Error and one sentence as the body.
func (s *Registry) answerError(m *nats.Msg, code bus.Code, sentence string) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(bus.HeaderError, string(code))
	r.Data = []byte(sentence)
	if err := m.RespondMsg(r); err != nil {
		s.log.Warn("registry answer not sent", "subject", m.Subject, "error", err)
	}
}

func (s *Registry) reply(m *nats.Msg, v any) {
	if m.Reply == "" {
		return
	}
	data, err := json.Marshal(v)
	if err != nil {
		return
	}
	if err := m.Respond(data); err != nil {
		s.log.Warn("registry answer not sent", "subject", m.Subject, "error", err)
	}
}

// Stop stops answering, following and publishing. Safe to call twice.
func (s *Registry) Stop() {
	s.once.Do(func() {
		close(s.done)
		s.leaseMu.Lock()
		s.stopped = true
		l := s.lease
		s.leaseMu.Unlock()
		if l != nil {
			l.stop() // hands the lease over
		}
		_ = s.lead(false)
		if s.follow != nil {
			s.follow.Stop()
		}
		s.watchMu.Lock()
		w := s.watch
		s.watch = nil
		s.watchMu.Unlock()
		w.Stop()
		s.wg.Wait()
	})
}
