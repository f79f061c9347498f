package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/breaker"
	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/registry"
)

// SidecarConfig configures one service instance's sidecar. Zero values are
// the documented defaults.
type SidecarConfig struct {
	Service string // required
	// Subset, if set, puts the instance in a subset of its service (a
	// version, say), which config routes can send a share of the calls to:
	// it joins <prefix>.rpc.<service>.<subset> in queue group
	// <service>.<subset> besides the service's own, and its heartbeats name
	// the subset.
	Subset   string
	Instance string // default "<service>-<random>"
	Upstream string // the app, http://127.0.0.1:PORT; required
	// Listen is the outbound listener; default DefaultOutboundListen.
	Listen string
	Prefix string
	// MaxInflight limits inbound requests handled at once (default 1024).
	MaxInflight int
	// Timeout is the default deadline of calls (default 15 s): of the app's
	// outbound calls, and of inbound requests that carry no Mesh-Timeout.
	Timeout time.Duration
	// MaxBody limits the request bodies of the app's outbound calls
	// (default DefaultMaxBody); see TransportConfig.MaxBody.
	MaxBody int64
	// DenyEgress refuses outbound calls to hosts outside the mesh.
	DenyEgress bool
	// Heartbeat is the interval of the instance's heartbeats (default 1 s).
	Heartbeat time.Duration
	// HealthCheck, when its Path is set, probes the app: while it fails, the
	// instance leaves its queue group and reports failing.
	HealthCheck HealthCheckConfig
	// Outlier configures outlier ejection of this instance.
	Outlier OutlierConfig
	// Retry, Breaker, DisableBreaker, AckWait and ProbeInterval configure
	// the app's outbound calls, as in TransportConfig.
	Retry          RetryPolicy
	Breaker        breaker.Settings
	DisableBreaker bool
	AckWait        time.Duration
	ProbeInterval  time.Duration
	// TracerProvider, if set, records a client span per outbound call and a
	// server span per inbound request.
	TracerProvider trace.TracerProvider
	// Configs, if set, delivers the config documents of the services the
	// app calls, which override Timeout, Retry and Breaker service by
	// service and add routes, load balancing and faults (see
	// TransportConfig.Configs).
	Configs ConfigSource
	// StatsInterval is how often the instance publishes its stats snapshot
	// on <prefix>.stats.<service>.<instance> (default
	// metrics.DefaultInterval). Negative records no metrics at all.
	StatsInterval time.Duration
	Logger        *slog.Logger
}

// Sidecar is a running sidecar: the inbound side serving the app to the mesh
// and the outbound listener taking the app's calls.
type Sidecar struct {
	cfg      SidecarConfig
	log      *slog.Logger
	upstream *Upstream
	inbound  *Server
	tr       *Transport
	egress   *Egress
	ln       net.Listener
	http     *http.Server
	served   chan error
	announce *registry.Announcer
	discover *registry.Discovery
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

// StartSidecar starts a sidecar on a caller-owned connection.
func StartSidecar(nc *nats.Conn, cfg SidecarConfig) (*Sidecar, error) {
	if err := bus.ValidateName("service", cfg.Service); err != nil {
		return nil, fmt.Errorf("proxy: --service: %w", err)
	}
	if cfg.Subset != "" {
		if err := bus.ValidateName("subset", cfg.Subset); err != nil {
			return nil, fmt.Errorf("proxy: --subset: %w", err)
		}
	}
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: --upstream is required: the URL of the app this sidecar serves, for example http://127.0.0.1:8080")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultOutboundListen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, served: make(chan error, 1)}
	var err error
	if s.upstream, err = NewUpstream(cfg.Upstream, 0); err != nil {
		return nil, err
	}
	if cfg.Instance == "" {
		cfg.Instance = NewInstanceID(cfg.Service)
	}
	if err := bus.ValidateName("instance", cfg.Instance); err != nil {
		return nil, fmt.Errorf("proxy: --instance: %w", err)
	}
	if !cfg.DenyEgress {
		s.egress = NewEgress(cfg.Instance, cfg.Logger)
	}
	if cfg.StatsInterval >= 0 {
		s.metrics = metrics.NewSet(metrics.Identity{Service: cfg.Service, Subset: cfg.Subset, Instance: cfg.Instance, Kind: "sidecar"}, metrics.Options{})
		s.metrics.SetState(metrics.StateServing)
	}
	if s.tr, err = NewTransport(nc, TransportConfig{
		Caller: cfg.Service, Prefix: cfg.Prefix, Timeout: cfg.Timeout, MaxBody: cfg.MaxBody,
		Retry: cfg.Retry, Breaker: cfg.Breaker, DisableBreaker: cfg.DisableBreaker,
		AckWait: cfg.AckWait, ProbeInterval: cfg.ProbeInterval, Logger: cfg.Logger,
		TracerProvider: cfg.TracerProvider, Configs: cfg.Configs, Follow: true, Metrics: s.metrics,
	}); err != nil {
		return nil, err
	}
	var outcome func(bool) time.Duration
	if cfg.Outlier.Consecutive >= 0 {
		cfg.Outlier.defaults()
		// The instance follows its own service, to see whether another
		// instance passes before it ejects itself.
		s.tr.callees.note(cfg.Service)
		s.outlier = &outlier{cfg: cfg.Outlier, log: cfg.Logger, othersPassing: s.othersPassing, setEjected: s.setEjected}
		outcome = s.outlier.observe
	}
	if s.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		s.tr.Close()
		return nil, fmt.Errorf("proxy: cannot listen on %s for outbound calls (choose another address with --listen): %w", cfg.Listen, err)
	}
	if s.inbound, err = Serve(nc, s.upstream, ServeConfig{
		Service: cfg.Service, Subset: cfg.Subset, Instance: cfg.Instance, Prefix: cfg.Prefix,
		MaxInflight: cfg.MaxInflight, Timeout: cfg.Timeout, Logger: cfg.Logger,
		Outcome: outcome, TracerProvider: cfg.TracerProvider, Metrics: s.metrics,
	}); err != nil {
		s.ln.Close()
		s.tr.Close()
		return nil, err
	}
	if s.announce, err = registry.NewAnnouncer(nc, registry.AnnouncerConfig{
		Service: cfg.Service, Subset: cfg.Subset, Instance: s.inbound.Instance(), Prefix: cfg.Prefix,
		Interval: cfg.Heartbeat, Logger: cfg.Logger, Status: s.status,
	}); err != nil {
		s.inbound.Stop()
		s.ln.Close()
		s.tr.Close()
		return nil, err
	}
	if s.discover, err = registry.StartDiscovery(nc, registry.DiscoveryConfig{
		Service: cfg.Service, Instance: s.inbound.Instance(), Prefix: cfg.Prefix, Counts: s.counts,
	}); err != nil {
		s.announce.Stop()
		s.inbound.Stop()
		s.ln.Close()
		s.tr.Close()
		return nil, err
	}
	if s.metrics != nil {
		if s.stats, err = metrics.StartPublisher(nc, cfg.Prefix, s.metrics, cfg.StatsInterval, cfg.Logger); err != nil {
			s.discover.Stop()
			s.announce.Stop()
			s.inbound.Stop()
			s.ln.Close()
			s.tr.Close()
			return nil, err
		}
	}
	if cfg.HealthCheck.Path != "" {
		s.health = startHealthChecker(strings.TrimSuffix(cfg.Upstream, "/"), cfg.HealthCheck, s.onHealth)
	}
	s.http = &http.Server{
		Handler:           NewOutbound(s.tr, s.egress, cfg.Logger),
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
	for _, in := range s.tr.callees.view.Snapshot(s.cfg.Service).Services[s.cfg.Service] {
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
		_, w := s.tr.callees.view.Watch(s.cfg.Service, 0)
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
func (s *Sidecar) Inbound() *Server { return s.inbound }

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
		s.upstream.Close()
		if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
			outErr = errors.Join(outErr, err)
		}
		s.err = errors.Join(inErr, outErr)
	})
	return s.err
}
