package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/proxy/httpguard"
)

// ErrInvalidConfig is wrapped by the errors of a Config that Start refuses.
var ErrInvalidConfig = errors.New("gateway: invalid config")

// Config configures a gateway process. Zero values are the documented
// defaults.
type Config struct {
	// Name is what the gateway calls services as (their Mesh-Caller) and
	// the service its stats are published under; default DefaultCaller.
	Name string
	// Listener, if set, is where the gateway takes traffic; else it
	// listens on Listen (default DefaultListen).
	Listener net.Listener
	Listen   string
	// Clients bounds the clients' connections: how slowly a request body
	// may come, how many connections the gateway holds.
	Clients httpguard.Limits
	// Routes send requests to services; at least one is required.
	Routes []Route
	Prefix string
	// StatsInterval is how often the gateway publishes its stats snapshot
	// (default metrics.DefaultInterval); negative records no metrics.
	StatsInterval  time.Duration
	TracerProvider trace.TracerProvider
	Logger         *slog.Logger
	// Transport configures the gateway's calls (timeouts, retries,
	// breakers, config documents, body limit). The gateway sets its
	// Caller, Prefix, Logger, TracerProvider, Follow and Metrics.
	Transport proxy.TransportConfig
}

// Gateway is a running gateway: an HTTP server on its listener whose
// requests the routes send into the mesh.
type Gateway struct {
	log     *slog.Logger
	ln      net.Listener
	tr      *proxy.Transport
	metrics *metrics.Set
	stats   *metrics.Publisher
	srv     *http.Server
	served  chan error
	once    sync.Once
	err     error
}

// Start starts a gateway on a caller-owned connection.
func Start(nc *nats.Conn, cfg Config) (_ *Gateway, err error) {
	if cfg.Name == "" {
		cfg.Name = DefaultCaller
	}
	if err := bus.ValidateName("name", cfg.Name); err != nil {
		return nil, fmt.Errorf("%w: Config.Name: %w", ErrInvalidConfig, err)
	}
	if cfg.Prefix != "" {
		if err := bus.ValidatePrefix(cfg.Prefix); err != nil {
			return nil, fmt.Errorf("%w: Config.Prefix: %w", ErrInvalidConfig, err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &Gateway{log: cfg.Logger, ln: cfg.Listener, served: make(chan error, 1)}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if g.ln == nil {
		if cfg.Listen == "" {
			cfg.Listen = DefaultListen
		}
		if g.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("gateway: cannot listen on %s (Config.Listen): %w", cfg.Listen, err)
		}
		undo = append(undo, func() { g.ln.Close() })
	}
	if cfg.StatsInterval >= 0 {
		g.metrics = metrics.NewSet(metrics.Identity{Service: cfg.Name, Instance: bus.NewInstanceID(cfg.Name), Kind: "gateway"}, metrics.Options{})
		g.metrics.SetState(metrics.StateServing)
		if g.stats, err = metrics.StartPublisher(nc, cfg.Prefix, g.metrics, cfg.StatsInterval, cfg.Logger); err != nil {
			return nil, err
		}
		undo = append(undo, g.stats.Stop)
	}
	tc := cfg.Transport
	tc.Caller, tc.Prefix, tc.Logger, tc.TracerProvider = cfg.Name, cfg.Prefix, cfg.Logger, cfg.TracerProvider
	tc.Follow, tc.Metrics = true, g.metrics
	if g.tr, err = proxy.NewTransport(nc, tc); err != nil {
		return nil, err
	}
	undo = append(undo, func() { g.tr.Close() })
	h, err := NewHandler(g.tr, cfg.Routes, cfg.Logger)
	if err != nil {
		return nil, err
	}
	g.ln = httpguard.Limit(g.ln, cfg.Clients.MaxConns)
	g.srv = &http.Server{
		Handler:           httpguard.Guard(h, cfg.Clients),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	go func() { g.served <- g.srv.Serve(g.ln) }()
	return g, nil
}

// Addr is the address the gateway takes traffic on.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// Metrics is the gateway's metrics, nil when StatsInterval is negative.
func (g *Gateway) Metrics() *metrics.Set { return g.metrics }

// Failed delivers the error that stopped the gateway serving before
// Shutdown, if one does.
func (g *Gateway) Failed() <-chan error { return g.served }

// Shutdown drains the gateway: it reports draining, stops taking
// connections, finishes the requests in flight (until ctx ends), closes its
// transport and publishes its last stats. Safe to call twice.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.once.Do(func() { g.err = g.shutdown(ctx) })
	return g.err
}

func (g *Gateway) shutdown(ctx context.Context) error {
	if g.metrics != nil {
		g.metrics.SetState(metrics.StateDraining)
	}
	err := g.srv.Shutdown(ctx)
	select {
	case serr := <-g.served:
		if serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
	default:
	}
	g.tr.Close()
	if g.stats != nil {
		g.stats.Stop() // the last counts, before the connection drains
	}
	return err
}
