package registry

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
)

// DefaultInterval is the default heartbeat interval.
const DefaultInterval = time.Second

// AnnouncerConfig describes the instance an Announcer announces.
type AnnouncerConfig struct {
	Service  string // required
	Subset   string
	Zone     string // where the instance runs, if it says
	Instance string // required
	Prefix   string
	// Interval between heartbeats; defaults to DefaultInterval.
	Interval time.Duration
	Meta     map[string]string
	// Status reports the instance's health and requests in flight for each
	// heartbeat; nil means always passing with nothing in flight.
	Status func() (Health, int)
	Logger *slog.Logger
}

// Announcer publishes an instance's heartbeat every interval, at once when
// told its status changed, and a goodbye when it stops.
type Announcer struct {
	nc      *nats.Conn
	hb      Heartbeat // template; Seq, Health and Inflight change per beat
	hbSubj  string
	byeSubj string
	status  func() (Health, int)
	log     *slog.Logger

	mu   sync.Mutex // serialises beats and the goodbye, so seq rises in publish order and nothing follows the goodbye
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NewAnnouncer checks the config and starts announcing at once.
func NewAnnouncer(nc *nats.Conn, cfg AnnouncerConfig) (*Announcer, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Status == nil {
		cfg.Status = func() (Health, int) { return Passing, 0 }
	}
	subj, err := bus.NewSubjects(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	meta := make(map[string]string, len(cfg.Meta)) // ours: the caller may change theirs
	for k, v := range cfg.Meta {
		meta[k] = v
	}
	if len(meta) == 0 {
		meta = nil
	}
	a := &Announcer{
		nc: nc,
		hb: Heartbeat{
			Service: cfg.Service, Subset: cfg.Subset, Zone: cfg.Zone, Instance: cfg.Instance,
			Host: host, PID: os.Getpid(), Started: time.Now().UTC(),
			IntervalMS: cfg.Interval.Milliseconds(), Health: Passing, Meta: meta,
		},
		hbSubj:  subj.Heartbeat(cfg.Service, cfg.Instance),
		byeSubj: subj.Bye(cfg.Service, cfg.Instance),
		status:  cfg.Status,
		log:     cfg.Logger,
		done:    make(chan struct{}),
	}
	probe := a.hb
	probe.Seq = 1
	if err := probe.Validate(); err != nil {
		return nil, fmt.Errorf("registry: announcer: %w", err)
	}
	a.wg.Go(func() { a.run(cfg.Interval) })
	return a, nil
}

func (a *Announcer) run(interval time.Duration) {
	a.beat()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-a.done:
			return
		}
		a.beat()
	}
}

func (a *Announcer) beat() {
	a.mu.Lock()
	defer a.mu.Unlock()
	select {
	case <-a.done: // Stop has begun: a heartbeat now could follow the goodbye
		return
	default:
	}
	a.hb.Seq++
	a.hb.Health, a.hb.Inflight = a.status()
	data, err := json.Marshal(a.hb)
	if err != nil {
		a.log.Error("encode heartbeat", "error", err)
		return
	}
	if err := a.nc.Publish(a.hbSubj, data); err != nil {
		a.log.Debug("heartbeat not sent", "error", err)
	}
}

// Beat sends a heartbeat now, without waiting for the interval: call it when
// the status changed. It does nothing after Stop.
func (a *Announcer) Beat() {
	select {
	case <-a.done:
	default:
		a.beat()
	}
}

// Stop stops heartbeats and says goodbye. Safe to call twice.
func (a *Announcer) Stop() {
	a.once.Do(func() {
		close(a.done)
		a.wg.Wait()
		a.mu.Lock() // waits for a Beat under way; later ones see done
		if err := a.nc.Publish(a.byeSubj, nil); err != nil {
			a.log.Debug("goodbye not sent", "error", err)
		}
		a.mu.Unlock()
		_ = a.nc.FlushTimeout(time.Second)
	})
}
