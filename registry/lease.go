package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/bus"
)

// DefaultLeaseTTL is how long the registry's publishing lease lasts without
// renewal: when the server holding it dies, another takes over within it.
const DefaultLeaseTTL = 5 * time.Second

// lease decides, through a key in a JetStream KV bucket whose entries expire,
// which of several registry services publishes events and answers queries:
// the one that created the key, for as long as it renews it.
//
// A renewal that fails (a timeout, a JetStream leader election, a
// reconnect) is retried at the next tick for as long as a retry can still
// land before the entry expires; only then, or when another server's entry
// is there, is the lease given up. The holder renews every tick (a quarter
// of the TTL, at most a second), so it rides out several failed renewals,
// and a server that dies is replaced within the TTL and a tick.
type lease struct {
	kv     jetstream.KeyValue
	key    string // the mesh's prefix
	id     string
	ttl    time.Duration
	tick   time.Duration // between renewals, and the bound of each
	change func(held bool)
	log    *slog.Logger

	// Owned by the lease's goroutine after start.
	held    bool
	rev     uint64    // revision of our entry while held
	renewed time.Time // when the write of that revision was sent
	failed  int       // renewals failed in a row

	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// errLeaseTaken: the lease key holds another server's entry, or none.
var errLeaseTaken = errors.New("registry: the lease is another server's now")

// leaseConfig is what a registry's lease is made of.
type leaseConfig struct {
	prefix   string
	id       string
	ttl      time.Duration
	replicas int // of the bucket, when this server makes it; 0 automatic
	log      *slog.Logger
}

// LeaseBucket is the KV bucket of the registry leases; each mesh's lease is
// the key named by its subject prefix (LeaseKey), which no two meshes share.
const LeaseBucket = "natsmesh_registry"

// LeaseKey is the key of the lease of the mesh with prefix ("mesh",
// "prod.mesh").
func LeaseKey(prefix string) string {
	if prefix == "" {
		return "mesh"
	}
	return prefix
}

// startLease competes for the lease in the background; change is called (on
// the lease's goroutine) each time it is won or lost.
func startLease(nc *nats.Conn, cfg leaseConfig, change func(bool)) (*lease, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := leaseBucket(ctx, nc, js, cfg)
	if err != nil {
		return nil, err
	}
	if st, serr := kv.Status(ctx); serr == nil && st.TTL() != cfg.ttl {
		cfg.log.Warn("the registry lease bucket has another TTL than this server's; using the bucket's", "bucket", LeaseBucket, "bucket_ttl", st.TTL(), "ttl", cfg.ttl)
		cfg.ttl = st.TTL()
	}
	l := newLease(kv, cfg, change)
	l.start()
	return l, nil
}

// leaseBucket opens the lease bucket, or makes it with cfg.replicas. It uses
// the bucket as it is when it exists: rewriting its config would change the
// TTL under the other servers' feet; one with fewer replicas than wanted is
// logged with the command that raises them.
func leaseBucket(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg leaseConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, LeaseBucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		if err == nil {
			warnLeaseReplicas(ctx, nc, kv, cfg)
		}
		return kv, err
	}
	kv, fellBack, err := bus.CreateKeyValue(ctx, nc, js, jetstream.KeyValueConfig{
		Bucket:      LeaseBucket,
		Description: "natsmesh: which registry service of each mesh publishes events",
		TTL:         cfg.ttl,
		History:     1,
		Storage:     jetstream.MemoryStorage,
	}, cfg.replicas)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.KeyValue(ctx, LeaseBucket) // another server made it meanwhile
	}
	if fellBack {
		cfg.log.Warn(fmt.Sprintf("made the registry lease bucket with 1 replica: JetStream has too few servers for %d; when it has them, run `%s`", bus.AutoReplicas, bus.ReplicasCommand("KV_"+LeaseBucket, bus.AutoReplicas)), "bucket", LeaseBucket)
	}
	return kv, err
}

// warnLeaseReplicas logs when the lease bucket has fewer replicas than
// wanted here: losing its server would stop every registry's lease.
func warnLeaseReplicas(ctx context.Context, nc *nats.Conn, kv jetstream.KeyValue, cfg leaseConfig) {
	st, err := kv.Status(ctx)
	if err != nil {
		return
	}
	kst, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	have := max(kst.StreamInfo().Config.Replicas, 1)
	if want := bus.WantReplicas(nc, cfg.replicas); have < want {
		cfg.log.Warn(fmt.Sprintf("the registry lease bucket has %d replica(s), %d wanted on this cluster of %d servers: losing its server stops the registry's hand-over; run `%s`", have, want, bus.ClusterSize(nc), bus.ReplicasCommand("KV_"+LeaseBucket, want)), "bucket", LeaseBucket, "replicas", have)
	}
}

// newLease is a lease on kv, not yet competing.
func newLease(kv jetstream.KeyValue, cfg leaseConfig, change func(bool)) *lease {
	return &lease{
		kv: kv, key: LeaseKey(cfg.prefix), id: cfg.id, ttl: cfg.ttl,
		// Renew (or try to win) often enough to hold it through a lost
		// update or two, and to notice a hand-over within a second.
		tick:   min(cfg.ttl/4, time.Second),
		change: change, log: cfg.log, done: make(chan struct{}),
	}
}

// start makes a first attempt, then competes in the background.
func (l *lease) start() {
	l.attempt() // a lone server leads from its first moment
	if !l.held {
		l.change(false) // one that led without a lease stops, for the holder
	}
	l.wg.Go(l.run)
}

// attempt renews the lease if held, else tries to win it.
func (l *lease) attempt() {
	if l.held {
		l.renew()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.tick)
	defer cancel()
	sent := time.Now()
	rev, err := l.kv.Create(ctx, l.key, []byte(l.id))
	switch {
	case err == nil:
		l.held, l.rev, l.renewed, l.failed = true, rev, sent, 0
		l.log.Info("registry lease won; this server publishes events")
		l.change(true)
	case !errors.Is(err, jetstream.ErrKeyExists):
		l.log.Debug("registry lease not available", "error", err)
	}
}

// renew writes the held lease's entry again. When that fails it keeps the
// lease if a retry at the next tick can still end before the entry expires,
// and gives it up otherwise, or at once when the entry is not ours.
func (l *lease) renew() {
	ctx, cancel := context.WithTimeout(context.Background(), l.tick)
	defer cancel()
	sent := time.Now()
	rev, err := l.kv.Update(ctx, l.key, []byte(l.id), l.rev)
	if revisionMismatch(err) {
		rev, err = l.reclaim(ctx)
	}
	if err == nil {
		if l.failed > 0 {
			l.log.Info("registry lease renewed after failed renewals", "failed", l.failed)
		}
		l.rev, l.renewed, l.failed = rev, sent, 0
		return
	}
	l.failed++
	if !errors.Is(err, errLeaseTaken) && time.Since(l.renewed)+2*l.tick <= l.ttl {
		l.log.Warn("registry lease renewal failed; retrying before it expires", "error", err, "failed", l.failed, "expires_in", (l.ttl - time.Since(l.renewed)).Round(time.Millisecond))
		return
	}
	l.held = false
	l.log.Warn("registry lease lost; another server publishes events now", "error", err, "failed", l.failed)
	l.change(false)
}

// reclaim handles a renewal refused for its revision: when the entry there
// is still ours (an earlier renewal landed but its reply was lost), it
// renews on that revision; otherwise the lease is taken.
func (l *lease) reclaim(ctx context.Context) (uint64, error) {
	e, err := l.kv.Get(ctx, l.key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return 0, errLeaseTaken
	case err != nil:
		return 0, err
	case string(e.Value()) != l.id:
		return 0, errLeaseTaken
	}
	rev, err := l.kv.Update(ctx, l.key, []byte(l.id), e.Revision())
	if revisionMismatch(err) {
		return 0, errLeaseTaken
	}
	return rev, err
}

// revisionMismatch tells whether err is KV's refusal of a write on a
// revision that is no longer the key's last.
func revisionMismatch(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (l *lease) run() {
	t := time.NewTicker(l.tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.attempt()
		case <-l.done:
			if l.held {
				// Stop leading first, then hand over at once instead of
				// letting the lease expire.
				l.held = false
				l.change(false)
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
				cancel()
			}
			return
		}
	}
}

func (l *lease) stop() {
	l.once.Do(func() {
		close(l.done)
		l.wg.Wait()
	})
}
