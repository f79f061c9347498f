package sidecar

import (
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of OutlierConfig.
const (
	DefaultOutlierConsecutive = 5
	DefaultBaseEjection       = 10 * time.Second
	DefaultMaxEjection        = 2 * time.Minute
)

// OutlierConfig configures outlier ejection at the callee: an instance whose
// app fails Consecutive requests in a row (5xx, refused or reset connections,
// no answer in time) leaves its queue groups for a while, so the service's
// other instances take its traffic, and then rejoins by itself. The n-th
// ejection in a row lasts n × BaseEjection, at most MaxEjection; an instance
// that stays in rotation for MaxEjection starts again from the base. An
// instance never ejects itself when the registry shows no other passing
// instance of its service, and rejoins early when, while it is out, none is
// left.
type OutlierConfig struct {
	// Consecutive failures eject the instance (default 5; negative: never).
	Consecutive int
	// BaseEjection and MaxEjection bound ejection times (defaults 10 s and
	// 2 min).
	BaseEjection, MaxEjection time.Duration
}

func (c *OutlierConfig) defaults() {
	if c.Consecutive == 0 {
		c.Consecutive = DefaultOutlierConsecutive
	}
	if c.BaseEjection <= 0 {
		c.BaseEjection = DefaultBaseEjection
	}
	if c.MaxEjection <= 0 {
		c.MaxEjection = DefaultMaxEjection
	}
	c.MaxEjection = max(c.MaxEjection, c.BaseEjection)
}

// outlierCheck is how often an ejected instance checks that another instance
// of its service still passes.
const outlierCheck = 250 * time.Millisecond

// outlier counts an instance's consecutive app failures and ejects it.
type outlier struct {
	cfg OutlierConfig
	log *slog.Logger
	// othersPassing counts the service's other passing instances.
	othersPassing func() int
	// setEjected takes the instance out of rotation or puts it back.
	setEjected func(bool)
	// pause holds the response that tips a decision (time.Sleep if nil).
	pause func(time.Duration)

	failures atomic.Int64

	mu         sync.Mutex
	ejected    bool
	stopped    bool
	ejections  int
	until      time.Time
	lastRejoin time.Time
	lastRefuse time.Time
	timer      *time.Timer
}

// observe counts one request's outcome; it returns the ejection this failure
// started, or 0.
func (o *outlier) observe(failed bool) time.Duration {
	if !failed {
		if o.failures.Load() != 0 {
			o.failures.Store(0)
		}
		return 0
	}
	if o.failures.Add(1) < int64(o.cfg.Consecutive) {
		return 0
	}
	if o.stillLastPassing() {
		return 0 // refused a moment ago, and nothing changed: no pause again
	}
	// Instances of a service whose apps all fail at once reach the limit at
	// about the same time; a short random pause lets the first one's
	// heartbeat reach the others before they decide. It holds only the
	// response that tips the decision, which says the decision (Mesh-Ejected).
	pause := o.pause
	if pause == nil {
		pause = time.Sleep
	}
	pause(rand.N(50 * time.Millisecond))
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ejected || o.stopped || o.failures.Load() < int64(o.cfg.Consecutive) {
		return 0
	}
	now := time.Now()
	if o.othersPassing() == 0 {
		if now.Sub(o.lastRefuse) >= o.cfg.BaseEjection {
			o.lastRefuse = now
			o.log.Warn("the app keeps failing requests, but this is the last passing instance of its service, so it stays in rotation",
				"consecutive_failures", o.failures.Load())
		}
		return 0
	}
	o.failures.Store(0)
	if !o.lastRejoin.IsZero() && now.Sub(o.lastRejoin) >= o.cfg.MaxEjection {
		o.ejections = 0 // a long quiet spell forgives earlier ejections
	}
	o.ejections++
	d := min(time.Duration(o.ejections)*o.cfg.BaseEjection, o.cfg.MaxEjection)
	o.ejected, o.until = true, now.Add(d)
	o.log.Warn("the app failed requests in a row; ejecting this instance from its queue groups",
		"consecutive_failures", o.cfg.Consecutive, "for", d, "ejection", o.ejections)
	o.setEjected(true)
	o.timer = time.AfterFunc(outlierCheck, o.check)
	return d
}

// stillLastPassing reports whether the instance was refused ejection as the
// last passing instance within the last BaseEjection and still is: further
// failures then neither pause nor decide again.
func (o *outlier) stillLastPassing() bool {
	o.mu.Lock()
	refused := !o.lastRefuse.IsZero() && time.Since(o.lastRefuse) < o.cfg.BaseEjection
	o.mu.Unlock()
	return refused && o.othersPassing() == 0
}

// check runs while the instance is ejected: it rejoins when its time is up,
// or early when no other instance of its service passes.
func (o *outlier) check() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ejected || o.stopped {
		return
	}
	now := time.Now()
	switch {
	case !now.Before(o.until):
		o.log.Info("ejection over; rejoining the queue groups")
	case o.othersPassing() == 0:
		o.log.Warn("no other instance of the service passes; rejoining the queue groups before the ejection is over")
	default:
		o.timer = time.AfterFunc(min(outlierCheck, o.until.Sub(now)), o.check)
		return
	}
	o.ejected = false
	o.lastRejoin = now
	o.failures.Store(0)
	o.setEjected(false)
}

// recheck rejoins at once when the instance is ejected and the registry no
// longer shows another instance passing: instances whose apps all failed at
// once may have ejected themselves together before each saw the others'
// heartbeats, and the service must not be left without one for the rest of
// a check interval. It is called on every registry event of the service.
func (o *outlier) recheck() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.ejected || o.stopped || o.othersPassing() != 0 {
		return
	}
	o.log.Warn("no other instance of the service passes; rejoining the queue groups before the ejection is over")
	if o.timer != nil {
		o.timer.Stop()
	}
	o.ejected = false
	o.lastRejoin = time.Now()
	o.failures.Store(0)
	o.setEjected(false)
}

func (o *outlier) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopped = true
	if o.timer != nil {
		o.timer.Stop()
	}
}
