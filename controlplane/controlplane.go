package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/registry"
)

// DefaultBucketTimeout bounds creating or opening the config bucket when
// Config.BucketTimeout is 0.
const DefaultBucketTimeout = 10 * time.Second

// Config configures a control plane. The zero value serves the mesh with
// prefix bus.DefaultPrefix, logs to slog.Default(), waits up to
// DefaultBucketTimeout for the config bucket, and runs on without it when
// it cannot be had.
type Config struct {
	// Prefix is the mesh's subject prefix; "" is bus.DefaultPrefix.
	Prefix string
	// Logger receives the control plane's logs; the stats aggregator's
	// carry component=stats. Default slog.Default().
	Logger *slog.Logger
	// RequireConfigBucket makes Start fail when the config bucket can be
	// neither opened nor created, as it must on a server that embeds NATS
	// with JetStream. Without it, Start logs a warning and goes on: the
	// mesh runs without stored config (no JetStream on this NATS), or
	// natsmesh apply fails until the bucket is there.
	RequireConfigBucket bool
	// BucketTimeout bounds creating or opening the config bucket; 0 means
	// DefaultBucketTimeout.
	BucketTimeout time.Duration
	// BucketCheck is how often the control plane looks for the config
	// bucket, and makes it again when it is gone (someone deleted it);
	// 0 means DefaultBucketCheck.
	BucketCheck time.Duration
	// Replicas is how many replicas the config bucket and the registry's
	// lease bucket get when the control plane makes them, 1 to
	// bus.MaxReplicas. 0, the default, is automatic: bus.AutoReplicas (3)
	// on a NATS cluster whose JetStream can place them, else 1. A bucket
	// that exists keeps its replicas; one with fewer than wanted is
	// logged with the command that raises them.
	Replicas int
	// MaxInstances bounds the instances the registry's view holds
	// (registry.DefaultMaxInstances when 0); more are counted as overflow.
	MaxInstances int
}

func (c *Config) validate() error {
	if c.Prefix != "" {
		if err := bus.ValidatePrefix(c.Prefix); err != nil {
			return fmt.Errorf("controlplane: Prefix: %w", err)
		}
	}
	if c.BucketTimeout < 0 {
		return fmt.Errorf("controlplane: BucketTimeout %s is negative; use 0 for the default %s", c.BucketTimeout, DefaultBucketTimeout)
	}
	if c.BucketCheck < 0 {
		return fmt.Errorf("controlplane: BucketCheck %s is negative; use 0 for the default %s", c.BucketCheck, DefaultBucketCheck)
	}
	if err := bus.ValidateReplicas(c.Replicas); err != nil {
		return fmt.Errorf("controlplane: Replicas: %w", err)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.BucketTimeout == 0 {
		c.BucketTimeout = DefaultBucketTimeout
	}
	if c.BucketCheck == 0 {
		c.BucketCheck = DefaultBucketCheck
	}
}

// ControlPlane is a running control plane: the registry service and the
// stats aggregator, on the mesh whose config bucket Start made sure of and
// a check keeps there.
type ControlPlane struct {
	registry *registry.Registry
	stats    *metrics.Aggregator
	bucket   *bucketKeeper

	once sync.Once
	done chan struct{} // closed when both have stopped
}

// Start makes sure of the config bucket, then starts the registry service
// and the stats aggregator on nc, which the caller owns and closes after
// Shutdown. While it runs, the control plane looks for the bucket every
// Config.BucketCheck and makes it again (empty) when it is gone, logging it.
func Start(nc *nats.Conn, cfg Config) (*ControlPlane, error) {
	if nc == nil {
		return nil, errors.New("controlplane: Start needs a NATS connection")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	ready, err := ensureConfigBucket(nc, cfg)
	if err != nil {
		return nil, err
	}
	reg, err := registry.Start(nc, registry.Config{Prefix: cfg.Prefix, Logger: cfg.Logger, Replicas: cfg.Replicas, View: registry.ViewConfig{MaxInstances: cfg.MaxInstances}})
	if err != nil {
		return nil, fmt.Errorf("controlplane: registry service: %w", err)
	}
	agg, err := metrics.StartAggregator(nc, metrics.AggregatorConfig{
		Prefix: cfg.Prefix, Logger: cfg.Logger.With("component", "stats"), Alive: reg.View().Has,
	})
	if err != nil {
		reg.Stop()
		return nil, fmt.Errorf("controlplane: stats aggregator: %w", err)
	}
	keeper := startBucketKeeper(nc, cfg, ready)
	return &ControlPlane{registry: reg, stats: agg, bucket: keeper, done: make(chan struct{})}, nil
}

// Shutdown stops the bucket check, the stats aggregator (a summary being
// computed is still sent), then the registry service (which hands its lease over), and
// returns once both have stopped, or with ctx's error when ctx ends first;
// the stopping then goes on in the background. It is safe to call twice and
// from several goroutines: every call waits for the same stop. The
// connection stays open.
func (c *ControlPlane) Shutdown(ctx context.Context) error {
	c.once.Do(func() {
		go func() {
			defer close(c.done)
			c.bucket.close()
			c.stats.Stop()
			c.registry.Stop()
		}()
	})
	select {
	case <-c.done:
		return nil
	default:
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("controlplane: shutdown: %w", context.Cause(ctx))
	}
}
