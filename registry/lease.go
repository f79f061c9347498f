package registry

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultLeaseTTL is how long the registry's publishing lease lasts without
// renewal: when the server holding it dies, another takes over within it.
const DefaultLeaseTTL = 5 * time.Second

// lease decides, through a key in a JetStream KV bucket whose entries expire,
// which of several registry services publishes events and answers queries:
// the one that created the key, for as long as it renews it.
type lease struct {
	kv     jetstream.KeyValue
	key    string // the mesh's prefix
	id     string
	ttl    time.Duration
	change func(held bool)
	log    *slog.Logger

	held bool   // owned by the lease's goroutine after start
	rev  uint64 // revision of our entry while held

	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
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
func startLease(nc *nats.Conn, prefix, id string, ttl time.Duration, log *slog.Logger, change func(bool)) (*lease, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Use the bucket as it is when it exists: rewriting its config would
	// change the TTL under the other servers' feet.
	kv, err := js.KeyValue(ctx, LeaseBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      LeaseBucket,
			Description: "natsmesh: which registry service of each mesh publishes events",
			TTL:         ttl,
			History:     1,
			Storage:     jetstream.MemoryStorage,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, LeaseBucket) // another server made it meanwhile
		}
	}
	if err != nil {
		return nil, err
	}
	if st, serr := kv.Status(ctx); serr == nil && st.TTL() != ttl {
		log.Warn("the registry lease bucket has another TTL than this server's; using the bucket's", "bucket", LeaseBucket, "bucket_ttl", st.TTL(), "ttl", ttl)
		ttl = st.TTL()
	}
	l := &lease{kv: kv, key: LeaseKey(prefix), id: id, ttl: ttl, change: change, log: log, done: make(chan struct{})}
	l.attempt() // a lone server leads from its first moment
	if !l.held {
		l.change(false) // one that led without a lease stops, for the holder
	}
	l.wg.Go(l.run)
	return l, nil
}

// attempt renews the lease if held, else tries to win it.
func (l *lease) attempt() {
	ctx, cancel := context.WithTimeout(context.Background(), l.ttl/2)
	defer cancel()
	var err error
	if l.held {
		l.rev, err = l.kv.Update(ctx, l.key, []byte(l.id), l.rev)
		if err != nil {
			l.held = false
			l.log.Warn("registry lease lost; another server publishes events now", "error", err)
			l.change(false)
		}
		return
	}
	l.rev, err = l.kv.Create(ctx, l.key, []byte(l.id))
	switch {
	case err == nil:
		l.held = true
		l.log.Info("registry lease won; this server publishes events")
		l.change(true)
	case !errors.Is(err, jetstream.ErrKeyExists):
		l.log.Debug("registry lease not available", "error", err)
	}
}

func (l *lease) run() {
	// Renew (or try to win) often enough to hold it through a lost update
	// or two, and to notice a hand-over within a second.
	t := time.NewTicker(min(l.ttl/4, time.Second))
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
