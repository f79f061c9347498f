package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/metrics/prom"
)

// metricsFlags are --metrics and --stats-interval, of the commands whose
// traffic is measured (sidecar, gateway).
type metricsFlags struct {
	addr     string
	interval time.Duration
}

func (m *metricsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.addr, "metrics", "", "address to serve Prometheus metrics on at /metrics, for example 127.0.0.1:15090 (default: off)")
	fs.DurationVar(&m.interval, "stats-interval", metrics.DefaultInterval, "how often to publish the stats snapshot that natsmesh top shows (0: record no metrics and publish none)")
}

func (m *metricsFlags) check() error {
	if m.interval < 0 || (m.interval > 0 && m.interval < 100*time.Millisecond) || m.interval > time.Minute {
		return usagef("--stats-interval %s: use 0 (off) or 100ms to 1m", m.interval)
	}
	if m.interval == 0 && m.addr != "" {
		return usagef("--metrics needs metrics recorded: drop --stats-interval 0")
	}
	return checkMetricsAddr(m.addr)
}

// checkMetricsAddr checks a --metrics address ("": off) before anything
// starts, so that listening on it later fails only when it is taken.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		return usagef("--metrics %s: use host:port, for example 127.0.0.1:15090", addr)
	}
	return nil
}

// statsInterval is the interval as sidecar.Config and gateway.Config take
// it: negative for off.
func (m *metricsFlags) statsInterval() time.Duration {
	if m.interval == 0 {
		return -1
	}
	return m.interval
}

// serve starts the /metrics endpoint of cs when --metrics is set; the
// returned stop is never nil.
func (m *metricsFlags) serve(log *slog.Logger, cs ...prometheus.Collector) (stop func(), err error) {
	if m.addr == "" {
		return func() {}, nil
	}
	return serveMetrics(m.addr, log, cs...)
}

func serveMetrics(addr string, log *slog.Logger, cs ...prometheus.Collector) (stop func(), err error) {
	reg, err := prom.NewRegistry(cs...)
	if err != nil {
		return nil, err
	}
	ep, err := prom.Listen(addr, reg, log)
	if err != nil {
		return nil, fmt.Errorf("cannot serve metrics on %s, which another program may be using; choose another address with --metrics: %w", addr, err)
	}
	log.Info("metrics on", "url", "http://"+ep.Addr().String()+"/metrics")
	return func() { _ = ep.Close() }, nil
}
