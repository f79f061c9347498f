package config

import (
	"context"
	"time"
)

// A bucket deleted and made again (by natsmesh server, or natsmesh apply)
// starts its revisions from 1. A KV watch does not notice: its ordered
// consumer, recreated after missed heartbeats, resumes on the new stream
// after the last revision it saw on the old one, and skips everything
// before it. So while a Watcher has watches it looks every checkEvery at
// when its bucket's stream was made, and when that changes it has every
// watch start again, as after a reconnect.

// bucketMonitor is the Watcher's one look-out goroutine.
type bucketMonitor struct {
	stop context.CancelFunc
	done chan struct{}
}

// register counts a watch in, starting the monitor with the first.
func (w *Watcher) register(ww *watch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watches == nil {
		w.watches = make(map[*watch]struct{})
	}
	w.watches[ww] = struct{}{}
	if w.monitor == nil {
		ctx, stop := context.WithCancel(context.Background())
		w.monitor = &bucketMonitor{stop: stop, done: make(chan struct{})}
		go w.watchBucket(ctx, w.monitor.done)
	}
}

// unregister counts a watch out, stopping the monitor with the last.
func (w *Watcher) unregister(ww *watch) {
	w.mu.Lock()
	delete(w.watches, ww)
	m := w.monitor
	if len(w.watches) > 0 {
		m = nil
	} else {
		w.monitor = nil
	}
	w.mu.Unlock()
	if m != nil {
		m.stop()
		<-m.done
	}
}

func (w *Watcher) watchBucket(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(w.checkEvery)
	defer t.Stop()
	var made time.Time // when the bucket seen last was made
	for {
		if created, ok := w.bucketCreated(ctx); ok {
			if !made.IsZero() && !created.Equal(made) {
				w.log.Warn("the config bucket was deleted and made again; watching the new one", "bucket", w.bucket)
				w.remade()
			}
			made = created
			w.mu.Lock()
			w.bucketMade = created
			w.mu.Unlock()
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// bucketCreated is when the bucket's stream was made; false when it cannot
// be told now (no bucket, or no answer).
func (w *Watcher) bucketCreated(ctx context.Context) (time.Time, bool) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	st, err := w.js.Stream(ctx, "KV_"+w.bucket)
	if err != nil {
		return time.Time{}, false
	}
	return st.CachedInfo().Created, true
}

// remade tells every watch that the bucket is a new one.
func (w *Watcher) remade() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ww := range w.watches {
		select {
		case ww.remade <- struct{}{}:
		default:
		}
	}
}
