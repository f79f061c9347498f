package proxy

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/proxy/traffic"
)

// ConfigSource delivers the config documents of services as they change.
type ConfigSource interface {
	// Watch delivers service's document to apply, now and at every change:
	// nil when the service has none (never written, or deleted). It returns
	// once the current value has been delivered (or after a short bound,
	// about 1 s, if the store cannot answer, in which case apply is not called
	// until it can); stop ends the watch.
	Watch(ctx context.Context, service string, apply func(doc *config.Service, revision uint64)) (stop func(), err error)
}

// maxConfigWatches bounds how many services' documents a Transport watches;
// calls to services beyond them use the defaults.
const maxConfigWatches = 1024

// compile makes the policy of service from its document (nil: the
// defaults) over the transport's base, keeping prev's breakers and budgets
// when their settings are the same.
func (t *Transport) compile(service string, doc *config.Service, revision uint64, prev *traffic.Policy) *traffic.Policy {
	p := traffic.Compile(t.subj, service, doc, revision, &t.base, prev)
	if p.NewBreakers() && t.metrics != nil {
		// Any earlier breakers of the service are dropped for these,
		// which start closed.
		t.metrics.CloseBreakers(service)
	}
	return p
}

// serviceConfig is a watched service's current policy.
type serviceConfig struct {
	p       atomic.Pointer[traffic.Policy]
	ready   chan struct{} // closed once Watch has returned
	isReady atomic.Bool
	mu      sync.Mutex // orders applies
	// retryAt (unix ns) is set when Watch failed: the service runs on the
	// defaults, and the first call after retryAt watches it again.
	retryAt atomic.Int64
}

// rewatchAfter is how long a service whose watch failed (no JetStream, or
// JetStream not answering for a moment) runs on the defaults before a call
// tries to watch it again.
var rewatchAfter = 30 * time.Second

// policyFor returns the policy a call to service uses. The first call to a
// service starts watching its document and waits until the watch has
// delivered it (bounded by the ConfigSource); later calls read it with one
// atomic load.
func (t *Transport) policyFor(service string) *traffic.Policy {
	if t.configs == nil {
		return t.defaults
	}
	v, ok := t.cfgs.Load(service)
	if !ok {
		if v = t.watch(service); v == nil {
			return t.defaults
		}
	}
	sc := v.(*serviceConfig)
	if !sc.isReady.Load() {
		select {
		case <-sc.ready:
		case <-t.done:
		}
	}
	if r := sc.retryAt.Load(); r != 0 && time.Now().UnixNano() > r && t.cfgs.CompareAndDelete(service, sc) {
		t.cfgCount.Add(-1) // the next call watches again
	}
	return sc.p.Load()
}

// watch starts watching service's document, unless maxConfigWatches are
// watched already (nil then). A call that finds the watch started by another
// waits for it like the one that started it.
func (t *Transport) watch(service string) any {
	if t.cfgCount.Load() >= maxConfigWatches {
		t.logs.log(slog.LevelWarn, "too many services to watch the configs of; calls to this one use the defaults", "service", service, "limit", maxConfigWatches)
		return nil
	}
	sc := &serviceConfig{ready: make(chan struct{})}
	sc.p.Store(t.compile(service, nil, 0, nil))
	if v, loaded := t.cfgs.LoadOrStore(service, sc); loaded {
		return v
	}
	t.cfgCount.Add(1)
	defer func() {
		sc.isReady.Store(true)
		close(sc.ready)
	}()
	stop, err := t.configs.Watch(t.watchCtx, service, func(doc *config.Service, revision uint64) {
		t.applyConfig(sc, service, doc, revision)
	})
	if err != nil {
		t.watchErr.Do(func() {
			t.logs.always(slog.LevelWarn, "cannot watch service configs; calls use the defaults", "service", service, "error", err)
		})
		sc.retryAt.Store(time.Now().Add(rewatchAfter).UnixNano())
		return sc
	}
	t.watchMu.Lock()
	if t.isClosed() {
		t.watchMu.Unlock()
		stop()
		return sc
	}
	t.watchStops = append(t.watchStops, stop)
	t.watchMu.Unlock()
	return sc
}

// applyConfig swaps in the policy of a new revision of service's document.
func (t *Transport) applyConfig(sc *serviceConfig, service string, doc *config.Service, revision uint64) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	prev := sc.p.Load()
	if doc == nil {
		if !prev.FromDoc() {
			return
		}
		p := t.compile(service, nil, revision, prev)
		sc.p.Store(p)
		t.logs.always(slog.LevelInfo, "service config removed; calls use the defaults", "service", service, "revision", revision, "policy", p.String())
		return
	}
	if doc.Service != service {
		t.logs.always(slog.LevelWarn, "service config ignored: it names another service; keeping the last good one", "service", service, "revision", revision, "names", doc.Service)
		return
	}
	if problems := doc.Validate(); len(problems) > 0 {
		t.logs.always(slog.LevelWarn, "service config ignored: invalid; keeping the last good one", "service", service, "revision", revision, "problem", problems[0].String(), "problems", len(problems))
		return
	}
	p := t.compile(service, doc, revision, prev)
	sc.p.Store(p)
	t.logs.always(slog.LevelInfo, "service config applied", "service", service, "revision", revision, "routes", p.Routes(), "policy", p.String())
}

// stopWatches ends the config watches; Close calls it once.
func (t *Transport) stopWatches() {
	if t.watchCancel != nil {
		t.watchCancel()
	}
	t.watchMu.Lock()
	stops := t.watchStops
	t.watchStops = nil
	t.watchMu.Unlock()
	for _, stop := range stops {
		stop()
	}
}
