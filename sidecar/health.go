package sidecar

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"
)

// HealthCheckConfig configures active health checks of the local app.
type HealthCheckConfig struct {
	// Path is requested with GET on the app; a 2xx or 3xx answer passes.
	// Empty: no health checks.
	Path string
	// Interval between checks; defaults to 1 s.
	Interval time.Duration
	// Timeout of one check; defaults to the interval, at most 5 s.
	Timeout time.Duration
	// Fails is how many checks in a row must fail before the app counts as
	// failing (default 2); Passes how many must pass before it counts as
	// passing again (default 2).
	Fails, Passes int
}

func (c *HealthCheckConfig) defaults() {
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = min(c.Interval, 5*time.Second)
	}
	if c.Fails <= 0 {
		c.Fails = 2
	}
	if c.Passes <= 0 {
		c.Passes = 2
	}
}

// healthChecker probes the app and reports each change of its health.
type healthChecker struct {
	cfg      HealthCheckConfig
	url      string
	client   *http.Client
	onChange func(healthy bool, reason string)

	ctx    context.Context // cancelled by stop, so a hung check ends at once
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

func startHealthChecker(upstream string, cfg HealthCheckConfig, onChange func(bool, string)) *healthChecker {
	cfg.defaults()
	h := &healthChecker{
		cfg: cfg,
		url: upstream + cfg.Path,
		client: &http.Client{
			Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, DisableCompression: true},
			// A redirect is an answer of its own: never follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		onChange: onChange,
		done:     make(chan struct{}),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.wg.Go(h.run)
	return h
}

func (h *healthChecker) run() {
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	healthy := true
	fails, passes := 0, 0
	for {
		ok, reason := h.check()
		switch {
		case ok:
			fails = 0
			passes++
			if !healthy && passes >= h.cfg.Passes {
				healthy = true
				h.onChange(true, reason)
			}
		default:
			passes = 0
			fails++
			if healthy && fails >= h.cfg.Fails {
				healthy = false
				h.onChange(false, reason)
			}
		}
		select {
		case <-t.C:
		case <-h.done:
			return
		}
	}
}

func (h *healthChecker) check() (bool, string) {
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("User-Agent", "natsmesh-health-check")
	resp, err := h.client.Do(req)
	if err != nil {
		return false, err.Error()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return true, resp.Status
	}
	return false, "answered " + resp.Status
}

func (h *healthChecker) stop() {
	h.once.Do(func() {
		close(h.done)
		h.cancel()
		h.wg.Wait()
		h.client.CloseIdleConnections()
	})
}
