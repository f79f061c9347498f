package controlplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

// ensureConfigBucket makes the mesh's config bucket if it is missing. With
// cfg.RequireConfigBucket it must succeed; without, on a NATS that has no
// JetStream the mesh runs without stored config, and the log says so. ready
// says whether the bucket is there.
func ensureConfigBucket(nc *nats.Conn, cfg Config) (ready bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.BucketTimeout)
	defer cancel()
	log := cfg.Logger
	st, err := config.CreateStore(ctx, nc, cfg.Prefix, config.WithReplicas(cfg.Replicas))
	switch {
	case err == nil:
	case !cfg.RequireConfigBucket && errors.Is(err, config.ErrNoJetStream):
		log.Warn("no JetStream on this NATS: natsmesh apply cannot store config, and proxies run on their defaults", "error", err)
		return false, nil
	case !cfg.RequireConfigBucket:
		log.Warn("config bucket not available; natsmesh apply will fail until it is", "error", err)
		return false, nil
	default:
		return false, fmt.Errorf("controlplane: the config bucket is required (RequireConfigBucket) and not available: %w", err)
	}
	kept, err := st.HistoryKept(ctx)
	if err == nil && kept < config.MinHistory {
		log.Warn("the config bucket keeps fewer revisions than natsmesh config rollback expects", "bucket", st.Bucket(), "history", kept, "want", config.History)
	}
	replicas := checkReplicas(ctx, nc, cfg, st)
	log.Info("config bucket ready", "bucket", st.Bucket(), "history", kept, "replicas", replicas)
	return true, nil
}

// checkReplicas returns how many replicas the config bucket has, and logs
// a warning with the command that fixes it when that is fewer than
// cfg.Replicas asks, or than bus.AutoReplicas on a cluster of as many
// servers.
func checkReplicas(ctx context.Context, nc *nats.Conn, cfg Config, st *config.Store) int {
	have, err := st.Replicas(ctx)
	if err != nil {
		return 0
	}
	want := bus.WantReplicas(nc, cfg.Replicas)
	switch {
	case st.FellBack():
		cfg.Logger.Warn(fmt.Sprintf("made the config bucket with 1 replica: JetStream has too few servers for %d; when it has them, run `%s`", bus.AutoReplicas, bus.ReplicasCommand(st.Stream(), bus.AutoReplicas)), "bucket", st.Bucket())
	case have < want:
		cfg.Logger.Warn(fmt.Sprintf("the config bucket has %d replica(s), %d wanted on this cluster of %d servers: losing its server loses the mesh's config; run `%s`", have, want, bus.ClusterSize(nc), bus.ReplicasCommand(st.Stream(), want)), "bucket", st.Bucket(), "replicas", have)
	}
	return have
}
