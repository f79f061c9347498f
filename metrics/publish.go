package metrics

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// DefaultInterval is how often an instance publishes its stats.
const DefaultInterval = 5 * time.Second

// Publisher publishes a Set's snapshot every interval on
// mesh.stats.<service>.<instance>. A publish that fails (the connection is
// down) is skipped; the next one carries the cumulative counts anyway.
type Publisher struct {
	nc       *nats.Conn
	subject  string
	set      *Set
	interval time.Duration
	log      *slog.Logger
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// StartPublisher starts publishing; interval ≤ 0 means DefaultInterval.
// The Set's Identity names the subject, so its Service and Instance must be
// valid names.
func StartPublisher(nc *nats.Conn, prefix string, set *Set, interval time.Duration, log *slog.Logger) (*Publisher, error) {
	subj, err := bus.NewSubjects(prefix)
	if err != nil {
		return nil, err
	}
	id := set.Identity()
	if err := bus.ValidateName("service", id.Service); err != nil {
		return nil, err
	}
	if err := bus.ValidateName("instance", id.Instance); err != nil {
		return nil, err
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Publisher{
		nc: nc, subject: subj.Stats(id.Service, id.Instance), set: set, interval: interval, log: log,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go p.run()
	return p, nil
}

func (p *Publisher) run() {
	defer close(p.done)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.Publish(now)
		}
	}
}

// Publish sends one snapshot now.
func (p *Publisher) Publish(now time.Time) {
	data, err := json.Marshal(p.set.Snapshot(now, p.interval))
	if err != nil {
		p.log.Error("stats snapshot not encoded", "error", err)
		return
	}
	if err := p.nc.Publish(p.subject, data); err != nil {
		p.log.Debug("stats snapshot not published", "subject", p.subject, "error", err)
	}
}

// Stop publishes a last snapshot, so the final counts are seen, and stops.
// Safe to call twice.
func (p *Publisher) Stop() {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		p.Publish(time.Now())
	})
}
