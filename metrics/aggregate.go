package metrics

import (
	"bytes"
	"context"
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

	"github.com/natsmesh/natsmesh/bus"
)

// Defaults and limits of an Aggregator.
const (
	// DefaultWindow is the window of a summary asked for with none.
	DefaultWindow = 30 * time.Second
	// MaxWindow is the longest window: an instance's history covers it.
	MaxWindow = 5 * time.Minute
	// DefaultMaxInstances bounds the instances an Aggregator follows.
	DefaultMaxInstances = 20_000
	// DefaultHistory bounds the snapshots kept per instance.
	DefaultHistory = 64
	// DefaultMaxSamples is the edge samples (one edge of one kept
	// snapshot, about 330 bytes: BenchmarkAggregatorMemory) all instances'
	// histories hold together, about 80 MB: each keeps at most its share,
	// and at least two snapshots. A new instance whose two snapshots would
	// not fit is refused, and a snapshot that would take the total past
	// twice the budget is dropped, so memory stays bounded however many
	// edges instances report.
	DefaultMaxSamples = 250_000
	// DefaultSummaryServices and DefaultSummaryEdges bound a Summary; the
	// busiest are kept.
	DefaultSummaryServices = 1_000
	DefaultSummaryEdges    = 2_000

	// StatsQueue is the queue group aggregators answer summaries in, so
	// that one of several natsmesh servers answers.
	StatsQueue = "stats"

	// instanceSamples bounds the edge samples of one instance: an instance
	// with many edges keeps fewer snapshots (at least two).
	instanceSamples = 4096
	// staleIntervals is how many of its intervals an instance may stay
	// silent before it is forgotten.
	staleIntervals = 3
	sweepEvery     = time.Second
	pendingMsgs    = 65_536
	pendingBytes   = 64 << 20
	warnEvery      = 10 * time.Second
)

// Clock tells the time; tests pass a fake one.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// AggregatorConfig configures an Aggregator. The zero value is usable.
type AggregatorConfig struct {
	// Prefix is the mesh's subject prefix (default bus.DefaultPrefix).
	Prefix string
	// Alive, when set, tells whether the registry lists an instance. An
	// instance the registry has listed and no longer does is left out of
	// summaries (it left or expired), whether or not its last snapshots
	// still arrive; one the registry has never listed (a gateway, or one
	// whose heartbeat has not arrived yet) is kept until its snapshots stop.
	// It is never called with the Aggregator's lock held.
	Alive func(service, instance string) bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock defaults to the real time; it judges when an instance has gone
	// silent. Windows are measured on the snapshots' own timestamps.
	Clock Clock
	// MaxInstances, History and MaxSamples bound the memory (defaults
	// DefaultMaxInstances, DefaultHistory, DefaultMaxSamples).
	MaxInstances, History, MaxSamples int
	// SummaryServices and SummaryEdges bound a Summary (defaults
	// DefaultSummaryServices, DefaultSummaryEdges).
	SummaryServices, SummaryEdges int
	// Warmup is how long an Aggregator that starts while another one
	// answers follows the snapshots before it answers too, so that no
	// summary comes from one that has not heard every instance yet.
	// Default: the longest stats interval seen (at least DefaultInterval)
	// and a second. An Aggregator that finds no other answers at once.
	Warmup time.Duration
}

// AggregatorStats count what an Aggregator did with the snapshots it was
// sent.
type AggregatorStats struct {
	Snapshots uint64 `json:"snapshots"` // accepted
	Invalid   uint64 `json:"invalid"`   // undecodable, invalid, or published on another instance's subject
	Stale     uint64 `json:"stale"`     // not newer than the instance's newest (repeated or reordered)
	Refused   uint64 `json:"refused"`   // of instances beyond MaxInstances
	Dropped   uint64 `json:"dropped"`   // dropped by the NATS client before they were read (slow consumer)
	Forgotten uint64 `json:"forgotten"` // instances forgotten because their snapshots stopped
	Gone      int    `json:"gone"`      // instances left out now because the registry no longer lists them
}

// Aggregator follows the stats snapshots of every instance of a mesh and
// computes, over a window, each service's and each edge's golden signals
// (Summary). It answers summary requests on StatsSummary, in queue group
// StatsQueue, so that one of the mesh's aggregators answers each; one that
// starts while another answers waits until it has heard every instance
// (Warmup). It takes a caller-owned connection.
type Aggregator struct {
	cfg   AggregatorConfig
	nc    *nats.Conn
	subj  bus.Subjects
	log   *slog.Logger
	clock Clock

	statsSub *nats.Subscription
	start    time.Time // on the clock

	joinMu     sync.Mutex
	summarySub *nats.Subscription // nil until it answers; guarded by joinMu
	joined     atomic.Bool

	mu          sync.Mutex
	insts       map[instKey]*instance
	samples     int           // edge samples held by every history
	maxInterval time.Duration // the longest stats interval seen

	snapshots, invalid, stale, refused, forgotten atomic.Uint64
	lastWarn                                      atomic.Int64 // unix nanos of the last warning about a bad snapshot

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

type instKey struct{ service, instance string }

// instance is what an Aggregator knows of one instance.
type instance struct {
	kind       string
	started    time.Time
	interval   time.Duration
	lastSeen   time.Time         // on the Aggregator's clock
	breakers   map[string]string // of the newest snapshot; never modified
	history    []*sample         // oldest first, strictly rising times
	samples    int               // the edge samples of history
	registered bool              // Alive has said yes at least once
	gone       bool              // Alive said no after that
}

// sample is one snapshot, kept compact and never modified.
type sample struct {
	at    time.Time
	edges []edgeSample
}

func (s *sample) cost() int { return max(1, len(s.edges)) }

// edgeSample is one edge of a snapshot.
type edgeSample struct {
	inbound      bool
	peer, subset string
	responses    []responseCount // sorted by key
	retries      uint64
	latency      HistogramSnapshot
}

type responseCount struct {
	key string
	n   uint64
}

// responseKeys interns the response keys a Set publishes, so that kept
// samples share their strings.
var responseKeys = func() map[string]string {
	m := make(map[string]string, numClasses*numCodes)
	for c := range numClasses {
		for k := range numCodes {
			s := responseKey(c, k)
			m[s] = s
		}
	}
	return m
}()

func newSample(s *Snapshot) *sample {
	out := &sample{at: s.At, edges: make([]edgeSample, len(s.Edges))}
	for i := range s.Edges {
		e := &s.Edges[i]
		es := edgeSample{
			inbound: e.Direction == Inbound.String(), peer: e.Peer, subset: e.Subset,
			retries: e.Retries, latency: e.Latency.Histogram(),
			responses: make([]responseCount, 0, len(e.Responses)),
		}
		for k, n := range e.Responses {
			if c, ok := responseKeys[k]; ok {
				k = c
			}
			es.responses = append(es.responses, responseCount{k, n})
		}
		slices.SortFunc(es.responses, func(a, b responseCount) int { return strings.Compare(a.key, b.key) })
		out.edges[i] = es
	}
	return out
}

// StartAggregator subscribes to every instance's stats on nc and starts
// answering summary requests.
func StartAggregator(nc *nats.Conn, cfg AggregatorConfig) (*Aggregator, error) {
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.MaxInstances <= 0 {
		cfg.MaxInstances = DefaultMaxInstances
	}
	if cfg.History < 2 {
		cfg.History = DefaultHistory
	}
	if cfg.MaxSamples <= 0 {
		cfg.MaxSamples = DefaultMaxSamples
	}
	if cfg.SummaryServices <= 0 {
		cfg.SummaryServices = DefaultSummaryServices
	}
	if cfg.SummaryEdges <= 0 {
		cfg.SummaryEdges = DefaultSummaryEdges
	}
	a := &Aggregator{
		cfg: cfg, nc: nc, subj: subj, log: cfg.Logger, clock: cfg.Clock,
		insts: make(map[instKey]*instance), start: cfg.Clock.Now(),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if a.statsSub, err = nc.Subscribe(subj.AllStats(), a.onStats); err != nil {
		return nil, fmt.Errorf("metrics: subscribe to %s: %w", subj.AllStats(), err)
	}
	if err := a.statsSub.SetPendingLimits(pendingMsgs, pendingBytes); err != nil {
		_ = a.statsSub.Unsubscribe()
		return nil, fmt.Errorf("metrics: subscribe to %s: %w", subj.AllStats(), err)
	}
	if err := nc.Flush(); err != nil {
		a.log.Warn("stats subscription not confirmed by NATS yet", "error", err)
	}
	if a.othersAnswer() {
		a.log.Info("another natsmesh server answers natsmesh top; this one will too once it has heard every instance", "after", a.warmup())
	} else if _, err := a.join(); err != nil {
		_ = a.statsSub.Unsubscribe()
		return nil, err
	}
	go a.run()
	return a, nil
}

func (a *Aggregator) run() {
	defer close(a.done)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			a.sweep()
		}
	}
}

// Stop stops following and answering, letting a summary being computed be
// sent. Safe to call twice.
func (a *Aggregator) Stop() {
	a.once.Do(func() {
		close(a.stop)
		<-a.done
		_ = a.statsSub.Unsubscribe()
		a.joinMu.Lock()
		defer a.joinMu.Unlock()
		a.joined.Store(true) // never join after this
		if a.summarySub != nil {
			_ = a.summarySub.Drain()
		}
	})
}

// othersAnswer tells whether another Aggregator answers summaries already.
func (a *Aggregator) othersAnswer() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := a.nc.RequestWithContext(ctx, a.subj.StatsSummary(), []byte(`{"window_ms":1000}`))
	return err == nil || errors.Is(err, context.DeadlineExceeded)
}

func (a *Aggregator) warmup() time.Duration {
	if a.cfg.Warmup > 0 {
		return a.cfg.Warmup
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return max(DefaultInterval, a.maxInterval) + time.Second
}

// join starts answering summary requests; now says whether this call did.
func (a *Aggregator) join() (now bool, err error) {
	a.joinMu.Lock()
	defer a.joinMu.Unlock()
	if a.joined.Load() {
		return false, nil
	}
	sub, err := a.nc.QueueSubscribe(a.subj.StatsSummary(), StatsQueue, a.onSummary)
	if err != nil {
		return false, fmt.Errorf("metrics: subscribe to %s: %w", a.subj.StatsSummary(), err)
	}
	a.summarySub = sub
	a.joined.Store(true)
	return true, nil
}

// Answering tells whether the Aggregator answers summary requests yet.
func (a *Aggregator) Answering() bool {
	a.joinMu.Lock()
	defer a.joinMu.Unlock()
	return a.summarySub != nil
}

// Stats returns the Aggregator's counters.
func (a *Aggregator) Stats() AggregatorStats {
	st := AggregatorStats{
		Snapshots: a.snapshots.Load(), Invalid: a.invalid.Load(), Stale: a.stale.Load(),
		Refused: a.refused.Load(), Forgotten: a.forgotten.Load(),
	}
	if n, err := a.statsSub.Dropped(); err == nil {
		st.Dropped = uint64(n)
	}
	a.mu.Lock()
	for _, in := range a.insts {
		if in.gone {
			st.Gone++
		}
	}
	a.mu.Unlock()
	return st
}

func (a *Aggregator) onStats(m *nats.Msg) {
	snap, err := DecodeSnapshot(m.Data)
	if err == nil && m.Subject != a.subj.Stats(snap.Service, snap.Instance) {
		err = fmt.Errorf("%w: %s.%s published on %s", ErrInvalidSnapshot, snap.Service, snap.Instance, m.Subject)
	}
	if err != nil {
		a.invalid.Add(1)
		a.warn("stats snapshot dropped", "subject", m.Subject, "error", err)
		return
	}
	a.add(&snap, a.clock.Now())
}

// warn logs at most one line per warnEvery.
func (a *Aggregator) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := a.lastWarn.Load()
	if now-last < int64(warnEvery) || !a.lastWarn.CompareAndSwap(last, now) {
		return
	}
	a.log.Warn(msg, args...)
}

// add keeps a valid snapshot received at now.
func (a *Aggregator) add(snap *Snapshot, now time.Time) {
	s := newSample(snap)
	k := instKey{snap.Service, snap.Instance}
	a.mu.Lock()
	defer a.mu.Unlock()
	in := a.insts[k]
	if in == nil {
		if len(a.insts) >= a.cfg.MaxInstances {
			a.refused.Add(1)
			a.warn("stats of an instance beyond the aggregator's limit dropped", "service", k.service, "instance", k.instance, "limit", a.cfg.MaxInstances)
			return
		}
		if a.samples+2*s.cost() > a.cfg.MaxSamples {
			a.refused.Add(1)
			a.warn("stats of an instance beyond the aggregator's memory budget dropped", "service", k.service, "instance", k.instance, "samples", a.samples, "budget", a.cfg.MaxSamples)
			return
		}
		in = &instance{started: snap.Started}
		a.insts[k] = in
	}
	if n := len(in.history); n > 0 {
		switch {
		case snap.Started.Before(in.started), !snap.Started.After(in.started) && !snap.At.After(in.history[n-1].at):
			a.stale.Add(1) // a late snapshot of an earlier process, or not newer
			return
		case snap.Started.After(in.started):
			// The process restarted under the same name: its counters
			// started again, so the old ones are no base for the new.
			a.trim(in, 0, n)
		}
	}
	in.started = snap.Started
	in.history = append(in.history, s)
	in.samples += s.cost()
	a.samples += s.cost()
	a.thin(in)
	if a.samples > 2*a.cfg.MaxSamples {
		// Instances kept at two snapshots each grew their edges past the
		// budget: this snapshot is not kept.
		a.trim(in, len(in.history)-1, len(in.history))
		if len(in.history) == 0 {
			delete(a.insts, k)
		}
		a.refused.Add(1)
		a.warn("a stats snapshot beyond the aggregator's memory budget dropped", "service", k.service, "instance", k.instance, "samples", a.samples, "budget", a.cfg.MaxSamples)
		return
	}
	in.kind, in.breakers, in.lastSeen = snap.Kind, snap.Breakers, now
	in.interval = time.Duration(snap.IntervalMS) * time.Millisecond
	if in.interval <= 0 {
		in.interval = DefaultInterval
	}
	in.interval = min(max(in.interval, 100*time.Millisecond), time.Minute)
	a.maxInterval = max(a.maxInterval, in.interval)
	a.snapshots.Add(1)
}

// trim removes in.history[i:j].
func (a *Aggregator) trim(in *instance, i, j int) {
	for _, s := range in.history[i:j] {
		in.samples -= s.cost()
		a.samples -= s.cost()
	}
	in.history = append(in.history[:i], in.history[j:]...)
	clear(in.history[len(in.history):cap(in.history)])
}

// thin bounds an instance's history after a snapshot was added. It keeps
// the newest snapshot at or before MaxWindow ago and none older; then,
// while the history has more than History snapshots or more edge samples
// than the instance's share of MaxSamples, it removes the snapshot whose
// removal widens a gap the least relative to its age, so the history keeps
// fine steps near the newest snapshot and coarser ones further back (a
// window's start is then off by a similar fraction whatever its length).
// Two snapshots, the newest and the oldest, always stay.
func (a *Aggregator) thin(in *instance) {
	h := in.history
	newest := h[len(h)-1].at
	cut := newest.Add(-MaxWindow)
	first := 0
	for j := 1; j < len(h) && !h[j].at.After(cut); j++ {
		first = j
	}
	a.trim(in, 0, first)
	share := min(a.cfg.MaxSamples/len(a.insts), instanceSamples)
	for len(in.history) > 2 && (len(in.history) > a.cfg.History || in.samples > share) {
		h := in.history
		best, bestCost := 1, 0.0
		for j := 1; j < len(h)-1; j++ {
			c := float64(h[j+1].at.Sub(h[j-1].at)) / float64(newest.Sub(h[j].at))
			if j == 1 || c < bestCost {
				best, bestCost = j, c
			}
		}
		a.trim(in, best, best+1)
	}
}

// sweep forgets the instances whose snapshots stopped, and asks Alive
// about the others.
func (a *Aggregator) sweep() {
	now := a.clock.Now()
	if !a.joined.Load() && now.Sub(a.start) >= a.warmup() {
		if joined, err := a.join(); err != nil {
			a.warn("not answering natsmesh top yet", "error", err)
		} else if joined {
			a.log.Info("answering natsmesh top now, with the other natsmesh servers")
		}
	}
	var ask []instKey
	a.mu.Lock()
	for k, in := range a.insts {
		if now.Sub(in.lastSeen) > staleIntervals*in.interval {
			a.trim(in, 0, len(in.history))
			delete(a.insts, k)
			a.forgotten.Add(1)
			continue
		}
		if a.cfg.Alive != nil {
			ask = append(ask, k)
		}
	}
	a.mu.Unlock()
	if len(ask) == 0 {
		return
	}
	alive := make([]bool, len(ask))
	for i, k := range ask {
		alive[i] = a.cfg.Alive(k.service, k.instance)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, k := range ask {
		in := a.insts[k]
		switch {
		case in == nil:
		case alive[i]:
			in.registered, in.gone = true, false
		case in.registered:
			in.gone = true
		}
	}
}

// span is one instance's part of a summary: its newest sample and the
// sample it is compared with (nil: zero counters, the instance started
// within the window), elapsed seconds apart; elapsed 0 when the instance
// has sent too few snapshots for a rate yet.
type span struct {
	service, kind string
	breakers      map[string]string
	cur, prev     *sample
	elapsed       float64
}

// spans reads, under the lock, what a summary over window needs. Samples
// are never modified, so the summary is computed after the lock is left.
func (a *Aggregator) spans(window time.Duration) []span {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]span, 0, len(a.insts))
	for k, in := range a.insts {
		if in.gone || len(in.history) == 0 {
			continue
		}
		h := in.history
		sp := span{service: k.service, kind: in.kind, breakers: in.breakers, cur: h[len(h)-1]}
		cut := sp.cur.at.Add(-window)
		var base *sample
		for j := len(h) - 2; j >= 0; j-- {
			if !h[j].at.After(cut) {
				base = h[j]
				break
			}
		}
		switch {
		case base != nil:
			sp.prev = base
			sp.elapsed = sp.cur.at.Sub(base.at).Seconds()
		case !in.started.Before(cut):
			// Started within the window: from zero at its start.
			sp.elapsed = max(0, sp.cur.at.Sub(in.started).Seconds())
		case len(h) > 1:
			sp.prev = h[0] // as far back as the history goes
			sp.elapsed = sp.cur.at.Sub(h[0].at).Seconds()
		}
		out = append(out, sp)
	}
	return out
}

// Summary computes the golden signals of every service and edge over the
// window (DefaultWindow if ≤ 0, at most MaxWindow) ending at each
// instance's newest snapshot.
func (a *Aggregator) Summary(window time.Duration) Summary {
	if window <= 0 {
		window = DefaultWindow
	}
	window = min(window, MaxWindow)
	a.sweep()
	s := summarize(a.spans(window), a.cfg.SummaryServices, a.cfg.SummaryEdges)
	s.At = a.clock.Now().UTC()
	s.WindowMS = window.Milliseconds()
	s.Stats = a.Stats()
	return s
}

// SummaryRequest is the optional JSON payload of a request on
// StatsSummary.
type SummaryRequest struct {
	// WindowMS is the window in milliseconds (default 30,000, at most
	// 300,000).
	WindowMS int64 `json:"window_ms,omitempty"`
}

// summaryReply is the answer on StatsSummary: a Summary, or an error.
type summaryReply struct {
	Summary
	Error string `json:"error,omitempty"`
}

func (a *Aggregator) onSummary(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	var req SummaryRequest
	if len(bytes.TrimSpace(m.Data)) > 0 {
		if err := json.Unmarshal(m.Data, &req); err != nil {
			a.respond(m, summaryReply{Error: fmt.Sprintf(`the request is not {"window_ms":N}: %v`, err)})
			return
		}
	}
	if req.WindowMS < 0 {
		a.respond(m, summaryReply{Error: fmt.Sprintf("window_ms %d: use a positive number of milliseconds", req.WindowMS)})
		return
	}
	s := a.Summary(time.Duration(req.WindowMS) * time.Millisecond)
	data, err := json.Marshal(s)
	// A summary that does not fit one message keeps the busiest half of
	// its services and edges until it does.
	for limit := a.nc.MaxPayload(); err == nil && int64(len(data)) > limit && len(s.Services)+len(s.Edges) > 0; {
		s.Services, _ = keepBusiest(s.Services, len(s.Services)/2, serviceRequests, compareServices)
		s.Edges, _ = keepBusiest(s.Edges, len(s.Edges)/2, edgeRequests, compareEdges)
		s.Truncated = true
		data, err = json.Marshal(s)
	}
	if err != nil {
		a.log.Error("stats summary not encoded", "error", err)
		return
	}
	if err := m.Respond(data); err != nil {
		a.log.Warn("stats summary not sent", "subject", m.Subject, "error", err)
	}
}

func (a *Aggregator) respond(m *nats.Msg, v any) {
	data, err := json.Marshal(v)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil {
		a.log.Warn("stats summary not sent", "subject", m.Subject, "error", err)
	}
}
