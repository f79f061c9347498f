package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/httpguard"
	"github.com/natsmesh/natsmesh/registry"
)

// ErrInvalidConfig is wrapped by the errors of a Config that Start refuses.
var ErrInvalidConfig = errors.New("sidecar: invalid config")

// Config configures one service instance's sidecar. Zero values are the
// documented defaults.
type Config struct {
	Service string // required
	// Subset, if set, puts the instance in a subset of its service (a
	// version, say), which config routes can send a share of the calls to:
	// it joins <prefix>.rpc.<service>.<subset> in queue group
	// <service>.<subset> besides the service's own, and its heartbeats name
	// the subset.
	Subset string
	// Zone, if set, says where the instance runs (a name like Subset's):
	// its heartbeats name it, and its app's calls prefer instances in the
	// same zone when the callee's load-balancing policy picks instances
	// (round-robin, least-request, ring-hash), not with queue.
	Zone     string
	Instance string // default "<service>-<random>"
	Upstream string // the app, http://127.0.0.1:PORT; required
	// Listener, if set, takes the app's outbound calls; else the sidecar
	// listens on Listen (default DefaultListen).
	Listener net.Listener
	Listen   string
	// Clients bounds the app's connections to the outbound listener: how
	// slowly a request body may come, how many connections it holds.
	Clients httpguard.Limits
	Prefix  string
	// Egress says where the app's calls for hosts outside the mesh may go
	// (default: public addresses only; see EgressMode).
	Egress EgressConfig
	// Heartbeat is the interval of the instance's heartbeats (default 1 s).
	Heartbeat time.Duration
	// HealthCheck, when its Path is set, probes the app: while it fails, the
	// instance leaves its queue group and reports failing.
	HealthCheck HealthCheckConfig
	// Outlier configures outlier ejection of this instance.
	Outlier OutlierConfig
	// StatsInterval is how often the instance publishes its stats snapshot
	// on <prefix>.stats.<service>.<instance> (default
	// metrics.DefaultInterval). Negative records no metrics at all.
	StatsInterval time.Duration
	// TracerProvider, if set, records a client span per outbound call and a
	// server span per inbound request.
	TracerProvider trace.TracerProvider
	Logger         *slog.Logger

	// Transport configures the app's outbound calls (timeouts, retries,
	// breakers, config documents, body limit). The sidecar sets its Caller
	// (Service), Zone, Prefix, Logger, TracerProvider, Follow and Metrics.
	Transport proxy.TransportConfig
	// Serve configures the inbound side (concurrency limit, the deadline of
	// requests that carry none, which defaults to Transport.Timeout: one
	// deadline both ways; the config documents, which default to
	// Transport.Configs, so that the instance enforces its own service's
	// callers list). The sidecar sets its Service, Subset, Instance, Prefix,
	// Logger, TracerProvider, Outcome and Metrics.
	Serve proxy.ServeConfig
}

// invalid is an error of field f of a Config.
func invalid(f string, err error) error {
	return fmt.Errorf("%w: Config.%s: %w", ErrInvalidConfig, f, err)
}

// validate checks cfg and sets its defaults.
func (cfg *Config) validate() error {
	if err := bus.ValidateName("service", cfg.Service); err != nil {
		return invalid("Service", err)
	}
	if cfg.Subset != "" {
		if err := bus.ValidateName("subset", cfg.Subset); err != nil {
			return invalid("Subset", err)
		}
	}
	if cfg.Zone != "" {
		if err := bus.ValidateName("zone", cfg.Zone); err != nil {
			return invalid("Zone", err)
		}
	}
	if cfg.Upstream == "" {
		return invalid("Upstream", errors.New("required: the URL of the app this sidecar serves, for example http://127.0.0.1:8080"))
	}
	if cfg.Instance == "" {
		cfg.Instance = bus.NewInstanceID(cfg.Service)
	}
	if err := bus.ValidateName("instance", cfg.Instance); err != nil {
		return invalid("Instance", err)
	}
	if cfg.Prefix != "" {
		if err := bus.ValidatePrefix(cfg.Prefix); err != nil {
			return invalid("Prefix", err)
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if err := cfg.Egress.validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Serve.Timeout == 0 {
		cfg.Serve.Timeout = cfg.Transport.Timeout
	}
	if cfg.Serve.Configs == nil {
		cfg.Serve.Configs = cfg.Transport.Configs
	}
	return nil
}

// Sidecar is a running sidecar: the inbound side serving the app to the mesh
// and the outbound listener taking the app's calls.
type Sidecar struct {
	cfg      Config
	log      *slog.Logger
	upstream *proxy.Upstream
	inbound  *proxy.Server
	tr       *proxy.Transport
	egress   *Egress
	ln       net.Listener
	http     *http.Server
	served   chan error
	announce *registry.Announcer
	discover *registry.Discovery
	peers    *registry.View     // the instance's own service, for the outlier
	follower *registry.Follower // of peers
	health   *healthChecker
	outlier  *outlier
	metrics  *metrics.Set
	stats    *metrics.Publisher
	peerStop chan struct{} // with an outlier: ends watchPeers
	peerDone chan struct{}
	draining atomic.Bool
	failing  atomic.Bool
	ejected  atomic.Bool
	rotMu    sync.Mutex // orders changes of rotation
	once     sync.Once
	err      error
}

// Start starts a sidecar on a caller-owned connection: it serves the app to
// the mesh (heartbeats, health checks, outlier ejection, NATS discovery,
// stats) and takes the app's outbound calls on cfg.Listen.
func Start(nc *nats.Conn, cfg Config) (_ *Sidecar, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, served: make(chan error, 1)}
	// Teardown by stack: what started is undone, in reverse, if a later
	// part fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if s.upstream, err = proxy.NewUpstream(cfg.Upstream, 0); err != nil {
		return nil, invalid("Upstream", err)
	}
	undo = append(undo, s.upstream.Close)
	if cfg.Egress.Mode != EgressDeny || len(cfg.Egress.Allow) > 0 {
		if s.egress, err = NewEgress(cfg.Instance, cfg.Egress, cfg.Logger); err != nil {
			return nil, err
		}
		s.egress.policy.mesh = meshAddrs(nc, cfg.Upstream)
		undo = append(undo, s.egress.Close)
	}
	if cfg.StatsInterval >= 0 {
		s.metrics = metrics.NewSet(metrics.Identity{Service: cfg.Service, Subset: cfg.Subset, Instance: cfg.Instance, Kind: "sidecar"}, metrics.Options{})
		s.metrics.SetState(metrics.StateServing)
	}
	if s.tr, err = proxy.NewTransport(nc, s.transportConfig()); err != nil {
		return nil, err
	}
	undo = append(undo, func() { s.tr.Close() })
	var outcome func(bool) time.Duration
	if cfg.Outlier.Consecutive >= 0 {
		if err := s.followPeers(nc); err != nil {
			return nil, err
		}
		undo = append(undo, s.follower.Stop)
		s.cfg.Outlier.defaults()
		s.outlier = &outlier{cfg: s.cfg.Outlier, log: cfg.Logger, othersPassing: s.othersPassing, setEjected: s.setEjected}
		outcome = s.outlier.observe
	}
	if s.ln = cfg.Listener; s.ln == nil {
		if s.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("sidecar: cannot listen on %s for outbound calls (Config.Listen): %w", cfg.Listen, err)
		}
		undo = append(undo, func() { s.ln.Close() })
	}
	if err := s.join(nc, outcome, &undo); err != nil {
		return nil, err
	}
	if cfg.HealthCheck.Path != "" {
		s.health = startHealthChecker(strings.TrimSuffix(cfg.Upstream, "/"), cfg.HealthCheck, s.onHealth)
	}
	s.ln = httpguard.Limit(s.ln, cfg.Clients.MaxConns)
	s.http = &http.Server{
		Handler:           httpguard.Guard(&outbound{t: s.tr, egress: s.egress}, cfg.Clients),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	go func() { s.served <- s.http.Serve(s.ln) }()
	if s.outlier != nil {
		s.peerStop, s.peerDone = make(chan struct{}), make(chan struct{})
		go s.watchPeers()
	}
	return s, nil
}

// meshAddrs lists the mesh's own ports, which egress refuses unless they
// are listed: the NATS servers nc knows of and the one it is connected to,
// and the sidecar's app.
func meshAddrs(nc *nats.Conn, upstream string) func() []string {
	appPort := "80"
	if strings.HasPrefix(upstream, "https:") {
		appPort = "443"
	}
	app := hostPort(upstream, appPort)
	return func() []string {
		addrs := append(make([]string, 0, 4), app, nc.ConnectedAddr())
		for _, u := range nc.Servers() {
			addrs = append(addrs, hostPort(u, "4222"))
		}
		return addrs
	}
}

// hostPort is the host:port of URL s, with port def when it has none; ""
// when s does not parse.
func hostPort(s, def string) string {
	u, err := url.Parse(s)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), def)
	}
	return u.Host
}

// transportConfig is the outbound Transport's config: the user's, with what
// the sidecar decides.
func (s *Sidecar) transportConfig() proxy.TransportConfig {
	tc := s.cfg.Transport
	tc.Caller, tc.Zone, tc.Prefix, tc.Logger = s.cfg.Service, s.cfg.Zone, s.cfg.Prefix, s.cfg.Logger
	tc.TracerProvider, tc.Follow, tc.Metrics = s.cfg.TracerProvider, true, s.metrics
	return tc
}

// followPeers keeps a registry view of the instance's own service, to see
// whether another instance passes before it ejects itself.
func (s *Sidecar) followPeers(nc *nats.Conn) error {
	s.peers = registry.NewView(registry.ViewConfig{})
	f, err := registry.NewFollower(nc, s.peers, s.cfg.Prefix)
	if err != nil {
		return err
	}
	if err := f.Add(s.cfg.Service); err != nil {
		f.Stop()
		return err
	}
	s.follower = f
	return nil
}

// join serves the app to the mesh: its queue groups, its heartbeats, NATS
// discovery and its stats.
func (s *Sidecar) join(nc *nats.Conn, outcome func(bool) time.Duration, undo *[]func()) (err error) {
	cfg := s.cfg
	sc := cfg.Serve
	sc.Service, sc.Subset, sc.Instance, sc.Prefix = cfg.Service, cfg.Subset, cfg.Instance, cfg.Prefix
	sc.Logger, sc.Outcome, sc.TracerProvider, sc.Metrics = cfg.Logger, outcome, cfg.TracerProvider, s.metrics
	if s.inbound, err = proxy.Serve(nc, s.upstream, sc); err != nil {
		return err
	}
	*undo = append(*undo, s.inbound.Stop)
	if s.announce, err = registry.NewAnnouncer(nc, registry.AnnouncerConfig{
		Service: cfg.Service, Subset: cfg.Subset, Zone: cfg.Zone, Instance: s.inbound.Instance(), Prefix: cfg.Prefix,
		Interval: cfg.Heartbeat, Logger: cfg.Logger, Status: s.status,
	}); err != nil {
		return err
	}
	*undo = append(*undo, s.announce.Stop)
	if s.discover, err = registry.StartDiscovery(nc, registry.DiscoveryConfig{
		Service: cfg.Service, Instance: s.inbound.Instance(), Prefix: cfg.Prefix, Counts: s.counts,
	}); err != nil {
		return err
	}
	*undo = append(*undo, s.discover.Stop)
	if s.metrics != nil {
		if s.stats, err = metrics.StartPublisher(nc, cfg.Prefix, s.metrics, cfg.StatsInterval, cfg.Logger); err != nil {
			return err
		}
	}
	return nil
}

// status is what the instance's heartbeats report.
func (s *Sidecar) status() (registry.Health, int) {
	h := registry.Passing
	switch {
	case s.draining.Load():
		h = registry.Draining
	case s.failing.Load():
		h = registry.Failing
	case s.ejected.Load():
		h = registry.Ejected
	}
	return h, s.inbound.Inflight()
}

// counts are the inbound counters, for NATS service discovery.
func (s *Sidecar) counts() registry.EndpointCounts {
	st := s.inbound.Stats()
	return registry.EndpointCounts{
		Requests: int(st.Served + st.Rejected), Errors: int(st.Failed), LastError: st.LastError,
		ProcessingTime: st.ProcessingTime,
	}
}

// onHealth takes the instance out of its queue group while its app fails
// health checks, and puts it back when the app recovers.
func (s *Sidecar) onHealth(healthy bool, reason string) {
	if s.draining.Load() {
		return
	}
	s.failing.Store(!healthy)
	if healthy {
		s.log.Info("app passes health checks again", "check", reason)
	} else {
		s.log.Warn("app fails health checks; no longer taking traffic", "check", reason)
	}
	s.rotate()
}

// setEjected records an outlier ejection or its end.
func (s *Sidecar) setEjected(ejected bool) {
	s.ejected.Store(ejected)
	s.rotate()
}

// rotate puts the instance in its queue group or takes it out, as its
// health, ejection and drain say, and tells the mesh at once.
func (s *Sidecar) rotate() {
	s.rotMu.Lock()
	defer s.rotMu.Unlock()
	if s.draining.Load() {
		return
	}
	if s.failing.Load() || s.ejected.Load() {
		s.inbound.Pause()
	} else if err := s.inbound.Resume(); err != nil {
		s.log.Error("cannot rejoin the queue group; the instance stays out of rotation until its app fails and recovers, or it is restarted", "error", err)
	}
	if s.metrics != nil {
		switch {
		case !s.inbound.Paused():
			s.metrics.SetState(metrics.StateServing)
		case s.failing.Load():
			s.metrics.SetState(metrics.StateFailing)
		default:
			s.metrics.SetState(metrics.StateEjected)
		}
	}
	s.announce.Beat()
}

// othersPassing counts the other instances that the registry shows passing
// and that could take this one's calls: of its subset, when it has one (a
// route may send there only), else of its service.
func (s *Sidecar) othersPassing() int {
	n := 0
	for _, in := range s.peers.Snapshot(s.cfg.Service).Services[s.cfg.Service] {
		if in.Instance != s.inbound.Instance() && in.Health == registry.Passing && (s.cfg.Subset == "" || in.Subset == s.cfg.Subset) {
			n++
		}
	}
	return n
}

// watchPeers tells the outlier of every registry event of the instance's
// own service, so an ejected instance rejoins as soon as no other passes.
func (s *Sidecar) watchPeers() {
	defer close(s.peerDone)
	for {
		_, w := s.peers.Watch(s.cfg.Service, 0)
		s.outlier.recheck() // an event may have been missed before this watch
		for open := true; open; {
			select {
			case <-s.peerStop:
				w.Stop()
				return
			case _, open = <-w.Events():
				if open {
					s.outlier.recheck()
				}
			}
		}
		// Cut off for falling behind: watch again.
	}
}

// Instance is the instance id.
func (s *Sidecar) Instance() string { return s.inbound.Instance() }

// OutboundAddr is the address apps send their calls to.
func (s *Sidecar) OutboundAddr() net.Addr { return s.ln.Addr() }

// Metrics is the instance's metrics, nil when StatsInterval is negative.
func (s *Sidecar) Metrics() *metrics.Set { return s.metrics }

// Inbound is the inbound server, for its counters.
func (s *Sidecar) Inbound() *proxy.Server { return s.inbound }

// Shutdown drains the sidecar: the instance leaves its queue group and
// finishes the requests it holds, with the outbound proxy still serving the
// app's calls; then the outbound listener stops accepting and finishes the
// calls in flight. It returns when both are done or ctx ends. Safe to call
// twice.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.once.Do(func() {
		// Inbound first: the requests the instance holds may need the
		// outbound proxy to finish (an app that calls other services while
		// serving), so it keeps serving until they are done.
		s.rotMu.Lock()
		s.draining.Store(true)
		if s.metrics != nil {
			s.metrics.SetState(metrics.StateDraining)
		}
		s.rotMu.Unlock()
		s.announce.Beat() // tell the mesh at once
		if s.health != nil {
			s.health.stop()
		}
		if s.outlier != nil {
			close(s.peerStop)
			<-s.peerDone
			s.outlier.stop()
		}
		inErr := s.inbound.Drain(ctx)
		outErr := s.http.Shutdown(ctx)
		s.inbound.Stop()
		if s.stats != nil {
			s.stats.Stop() // the last counts
		}
		s.announce.Stop() // goodbye
		s.discover.Stop()
		if s.egress != nil {
			s.egress.Close()
		}
		s.tr.Close()
		if s.follower != nil {
			s.follower.Stop()
		}
		s.upstream.Close()
		if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			outErr = errors.Join(outErr, err)
		}
		s.err = errors.Join(inErr, outErr)
	})
	return s.err
}
