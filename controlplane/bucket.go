package controlplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"

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
	st, err := config.CreateStore(ctx, nc, cfg.Prefix)
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
	log.Info("config bucket ready", "bucket", st.Bucket(), "history", kept)
	return true, nil
}
