package controlplane

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/config"
)

// DefaultBucketCheck is how often a control plane looks for the config
// bucket when Config.BucketCheck is 0.
const DefaultBucketCheck = 2 * time.Second

// maxBucketRetry bounds the wait between attempts to recreate a bucket that
// cannot be made (an identity without the permission, a full JetStream).
const maxBucketRetry = time.Minute

// bucketKeeper looks for the config bucket every Config.BucketCheck and
// makes it again when it is gone (deleted by hand, or by a JetStream reset),
// so that natsmesh apply and config get keep working against a running
// server. One goroutine, started by Start and stopped by Shutdown.
type bucketKeeper struct {
	nc     *nats.Conn
	cfg    Config
	ctx    context.Context // ends with stop
	stop   context.CancelFunc
	done   chan struct{}
	failed bool // the last attempt to make the bucket failed (logged once)
}

// startBucketKeeper starts the check; ready says whether Start found or
// made the bucket (if not, its warning was already logged).
func startBucketKeeper(nc *nats.Conn, cfg Config, ready bool) *bucketKeeper {
	ctx, stop := context.WithCancel(context.Background())
	k := &bucketKeeper{nc: nc, cfg: cfg, ctx: ctx, stop: stop, done: make(chan struct{}), failed: !ready}
	go k.run()
	return k
}

func (k *bucketKeeper) run() {
	defer close(k.done)
	wait := k.cfg.BucketCheck
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-k.ctx.Done():
			return
		}
		wait = k.check(wait)
		t.Reset(wait)
	}
}

// check looks for the bucket once and makes it when it is missing; it
// returns the wait before the next check, longer while making it fails.
func (k *bucketKeeper) check(wait time.Duration) time.Duration {
	ctx, cancel := context.WithTimeout(k.ctx, k.cfg.BucketTimeout)
	defer cancel()
	log := k.cfg.Logger
	_, err := config.OpenStore(ctx, k.nc, k.cfg.Prefix)
	if !errors.Is(err, config.ErrNoBucket) {
		// There, or nothing to learn now (no JetStream, disconnected).
		return k.cfg.BucketCheck
	}
	st, err := config.CreateStore(ctx, k.nc, k.cfg.Prefix, config.WithReplicas(k.cfg.Replicas))
	if k.ctx.Err() != nil {
		return k.cfg.BucketCheck
	}
	if err != nil {
		if !k.failed {
			k.failed = true
			log.Warn("the config bucket is gone and this control plane cannot make it again; natsmesh apply (as the admin) makes it", "error", err)
		}
		return min(2*wait, maxBucketRetry)
	}
	if k.failed {
		k.failed = false
		log.Info("config bucket ready", "bucket", st.Bucket(), "history", config.History)
	} else {
		log.Warn("the config bucket was gone (deleted?); made it again, empty: natsmesh apply the mesh's config again", "bucket", st.Bucket(), "history", config.History)
	}
	return k.cfg.BucketCheck
}

// close stops the check and waits for it; safe to call twice.
func (k *bucketKeeper) close() {
	k.stop()
	<-k.done
}
