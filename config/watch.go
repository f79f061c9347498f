package config

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/bus"
)

// Bounds of a watch.
const (
	// watchReady bounds how long Watch waits for the current value when the
	// store does not answer.
	watchReady = time.Second
	// openTimeout bounds each attempt to look the bucket up.
	openTimeout = 2 * time.Second
	// retryMin and retryMax bound the wait between attempts to (re)start a
	// watch while the store is unavailable.
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
	// bucketCheck is how often a Watcher with watches running looks at
	// when the bucket was made, to notice one deleted and made again.
	bucketCheck = 10 * time.Second
)

// Watcher delivers the config documents of services to proxies as they
// change: each Watch follows one service's key in the mesh's config bucket.
// It uses a caller-owned connection, and survives disconnects and restarts
// of the NATS server: after a reconnect each watch starts again from the
// key's current revision, and applies it only if it is not the one it last
// saw. While it has watches it also looks every 10 s at when the bucket was
// made, and when it was deleted and made again every watch starts afresh on
// the new one.
type Watcher struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	bucket string
	log    *slog.Logger

	mu         sync.Mutex
	kv         jetstream.KeyValue // nil until the bucket has been found
	watches    map[*watch]struct{}
	monitor    *bucketMonitor // running while there are watches
	bucketMade time.Time      // when the bucket the monitor saw last was made

	checkEvery time.Duration // bucketCheck; tests shorten it
}

// NewWatcher makes a watcher of the config bucket of the mesh with prefix
// ("" is bus.DefaultPrefix) on nc. log may be nil.
func NewWatcher(nc *nats.Conn, prefix string, log *slog.Logger) (*Watcher, error) {
	bucket, err := Bucket(prefix)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Watcher{nc: nc, js: js, prefix: prefix, bucket: bucket, log: log, checkEvery: bucketCheck}, nil
}

// Bucket is the name of the KV bucket the watcher follows.
func (w *Watcher) Bucket() string { return w.bucket }

// keyValue returns the bucket, looking it up the first time.
func (w *Watcher) keyValue(ctx context.Context) (jetstream.KeyValue, error) {
	w.mu.Lock()
	kv := w.kv
	w.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	kv, err := w.js.KeyValue(ctx, w.bucket)
	if err != nil {
		return nil, storeError(w.nc, w.prefix, w.bucket, err)
	}
	w.mu.Lock()
	w.kv = kv
	w.mu.Unlock()
	return kv, nil
}

// Watch calls apply with service's document now and at every change: nil
// when the service has none (never written, deleted, or no bucket yet),
// with the revision (0 when there never was one). It returns once the
// current value has been delivered, or after about a second if the store
// cannot answer (apply is then first called when it can). apply is called
// from one goroutine, in revision order, never twice at once. A stored
// document that is not valid is logged once and skipped: the service keeps
// its previous document. When the invalid revision is the first a watch
// sees (it starts on it, or comes back from an outage to it), the
// revisions before it were not delivered, so the watch reads the key's
// history and applies what came last before it and after the last
// revision it saw: the newest valid document (with its own revision), or
// nil for a delete. With nothing there, the previous document stays, or
// nil with revision 0 is applied when there is none. The log says which
// revision is in force and why. While NATS or JetStream is unavailable,
// apply is not called, so the last good document stays in force.
//
// Against a NATS server without JetStream, Watch returns an error matching
// ErrNoJetStream at once. The watch ends with ctx, or when stop is called;
// stop waits until apply has returned (so it must not be called from apply),
// and is safe to call twice.
func (w *Watcher) Watch(ctx context.Context, service string, apply func(doc *Service, revision uint64)) (stop func(), err error) {
	if err := bus.ValidateName("service", service); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	ww := &watch{w: w, service: service, apply: apply, log: w.log.With("service", service, "bucket", w.bucket),
		ready: make(chan struct{}), noJS: make(chan error, 1), done: make(chan struct{}), remade: make(chan struct{}, 1)}
	// Told of reconnects without taking the connection's callbacks.
	ww.status = w.nc.StatusChanged(nats.CONNECTED)
	w.register(ww)
	go ww.run(ctx)
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-ww.done
			w.nc.RemoveStatusListener(ww.status)
			w.unregister(ww)
		})
	}
	t := time.NewTimer(watchReady)
	defer t.Stop()
	select {
	case <-ww.ready:
	case err := <-ww.noJS:
		stop()
		return nil, err
	case <-t.C:
		ww.log.Warn("the config store does not answer yet; running without this service's config until it does")
	case <-ctx.Done():
	}
	return stop, nil
}

// watch is one Watch: one goroutine, which owns every field below.
type watch struct {
	w       *Watcher
	service string
	apply   func(*Service, uint64)
	log     *slog.Logger
	status  chan nats.Status

	ready     chan struct{} // closed once the current value was delivered
	readyDone bool
	noJS      chan error // the store has no JetStream, for Watch
	done      chan struct{}
	remade    chan struct{} // the bucket was deleted and made again

	started bool   // apply has been called at least once
	seen    uint64 // the last revision delivered or skipped (0: none)
	applied bool   // the last apply had a document
	rev     uint64 // the revision of the last apply
	badRev  uint64 // the last invalid revision logged
	down    bool   // the store is unavailable (logged once per outage)
}

func (ww *watch) run(ctx context.Context) {
	defer close(ww.done)
	backoff := retryMin
	for ctx.Err() == nil {
		err := ww.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReconnected) || errors.Is(err, errRemade) {
			backoff = retryMin
			continue
		}
		if !ww.readyDone && errors.Is(err, ErrNoJetStream) {
			// Watch, if it still waits, stops this watch and returns the
			// error; if it has returned, the watch keeps trying.
			select {
			case ww.noJS <- err:
			default:
			}
		}
		if errors.Is(err, ErrNoBucket) {
			// Without a bucket no service has config: say so, and look
			// again now and then.
			ww.deliver(nil, 0)
			ww.markReady()
		}
		if !ww.down {
			ww.down = true
			ww.log.Warn("config store unavailable; keeping the current config", "error", err)
		} else {
			ww.log.Debug("config store still unavailable", "error", err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ww.status:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, retryMax)
	}
}

var (
	errReconnected = errors.New("config: reconnected to NATS")
	errRemade      = errors.New("config: the config bucket was made again")
)

// follow runs one KV watch of the service's key until it fails, the
// connection comes back from a disconnect, or ctx ends.
func (ww *watch) follow(ctx context.Context) error {
	kv, err := ww.w.keyValue(ctx)
	if err != nil {
		return err
	}
	// The KV watch lives as long as wctx: it ends when this attempt does.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Empty the status channel: a reconnect before the watch starts needs
	// no new one.
	for len(ww.status) > 0 {
		<-ww.status
	}
	select {
	case <-ww.remade: // since the last watch: none of the new revisions is seen
		ww.seen, ww.badRev = 0, 0
	default:
	}
	kw, err := kv.Watch(wctx, ww.service)
	if err != nil {
		return fmt.Errorf("config: watch %s: %w", ww.service, err)
	}
	defer stopWatch(kw)
	if ww.down {
		ww.down = false
		ww.log.Info("config store available again")
	}
	// A new watch first delivers the key's last revision, if it has one,
	// then nil to mark the end of the current values.
	initial, gotEntry := true, false
	for {
		select {
		case e, ok := <-kw.Updates():
			if !ok {
				return fmt.Errorf("config: the watch of %s ended", ww.service)
			}
			switch {
			case e == nil:
				if initial && !gotEntry {
					// Never written, or its history is gone (purged, or a
					// new bucket): the service has no document now.
					ww.seen = 0
					ww.deliver(nil, 0)
				}
				initial = false
				ww.markReady()
			case initial && e.Revision() == ww.seen:
				gotEntry = true // this watch's predecessor delivered it
			default:
				gotEntry = gotEntry || initial
				ww.entry(ctx, kv, e, initial)
			}
		case <-ww.status:
			return errReconnected
		case <-ww.remade:
			// The new bucket's revisions start again from 1: none of them
			// has been seen, whatever its number.
			ww.seen, ww.badRev = 0, 0
			return errRemade
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// stopWatch ends a KV watch and lets its subscription's goroutine finish,
// which may be blocked handing over an update.
func stopWatch(kw jetstream.KeyWatcher) {
	_ = kw.Stop()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case _, ok := <-kw.Updates():
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

// entry takes one revision of the key. initial says it is the first a new
// KV watch delivered: the revisions between the last one seen and it may
// have been missed (the watch started, or came back after an outage).
func (ww *watch) entry(ctx context.Context, kv jetstream.KeyValue, e jetstream.KeyValueEntry, initial bool) {
	rev, since := e.Revision(), ww.seen
	ww.seen = rev
	if e.Operation() != jetstream.KeyValuePut {
		ww.deliver(nil, rev)
		return
	}
	doc, err := ww.decode(e.Value())
	if err == nil {
		ww.deliver(doc, rev)
		return
	}
	if ww.badRev == rev {
		return
	}
	ww.badRev = rev
	if initial && ww.fallback(ctx, kv, rev, since, err) {
		return
	}
	ww.keep(rev, err)
}

// decode reads a stored document of the watched service.
func (ww *watch) decode(data []byte) (*Service, error) {
	doc, err := Unmarshal(data)
	if err == nil && doc.Service != ww.service {
		err = fmt.Errorf("config: the document stored under %q is for service %q", ww.service, doc.Service)
	}
	return doc, err
}

// fallback puts in force, in place of the invalid revision rev, the state
// the service would be in had the watch seen every revision before it:
// the newest valid document, or a delete, of the key's history that came
// after since (the last revision seen, 0 for none) and before rev. It
// reports whether it found one; bad is why rev is invalid.
func (ww *watch) fallback(ctx context.Context, kv jetstream.KeyValue, rev, since uint64, bad error) bool {
	hctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	history, err := kv.History(hctx, ww.service)
	if err != nil {
		ww.log.Warn("cannot read the config history to find a valid revision", "revision", rev, "error", err)
		return false
	}
	for i := len(history) - 1; i >= 0; i-- {
		e := history[i]
		if e.Revision() >= rev {
			continue
		}
		if e.Revision() <= since {
			break
		}
		if e.Operation() != jetstream.KeyValuePut {
			ww.log.Error("skipping an invalid config revision; the revision before it deleted the document, so calls use the defaults", "revision", rev, "error", bad, "using", e.Revision())
			ww.deliver(nil, e.Revision())
			return true
		}
		if doc, err := ww.decode(e.Value()); err == nil {
			ww.log.Error("skipping an invalid config revision; using the newest valid revision before it in the bucket's history", "revision", rev, "error", bad, "using", e.Revision())
			ww.deliver(doc, e.Revision())
			return true
		}
	}
	return false
}

// keep skips the invalid revision rev, saying truthfully what stays in
// force.
func (ww *watch) keep(rev uint64, bad error) {
	switch {
	case ww.applied:
		ww.log.Error("skipping an invalid config revision; keeping the previous config", "revision", rev, "error", bad, "using", ww.rev)
	case ww.started:
		ww.log.Error("skipping an invalid config revision; the service had no config before it, so calls keep the defaults", "revision", rev, "error", bad)
	default:
		ww.log.Error("skipping an invalid config revision; the bucket's history has no valid revision before it, so calls use the defaults", "revision", rev, "error", bad)
		ww.deliver(nil, 0)
	}
}

// deliver calls apply, except to repeat "no document".
func (ww *watch) deliver(doc *Service, rev uint64) {
	if doc == nil && ww.started && !ww.applied {
		return
	}
	ww.started = true
	ww.applied = doc != nil
	ww.rev = rev
	ww.apply(doc, rev)
}

func (ww *watch) markReady() {
	if !ww.readyDone {
		ww.readyDone = true
		close(ww.ready)
	}
}
