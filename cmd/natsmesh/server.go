package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/registry"
)

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", "server [flags]", `
Runs the NATS server the mesh travels on, embedded, with JetStream on, and the
mesh's registry service, which follows every instance's heartbeats and answers
natsmesh services, instances and watch. It also follows every instance's
stats snapshots and answers natsmesh top with each service's and each edge's
request rate, success and latency. It creates the JetStream KV bucket
natsmesh apply stores config in (mesh_config) if it is missing. Every other
command connects to it (--nats, default nats://127.0.0.1:4222). Stop it with
Ctrl-C or SIGTERM.

--metrics serves Prometheus metrics: the embedded NATS server's connections,
subscriptions, slow consumers, messages and bytes in and out, memory and
JetStream usage (natsmesh_nats_*), and the process's own.

With --nats URL it runs no NATS server of its own: it serves the registry and
the stats on that NATS server or cluster instead, and creates the config
bucket there; --metrics then has no NATS server figures (use that server's own
monitoring). Run several for availability: one at a time publishes events (a
lease in JetStream decides which), and another takes over within seconds when
it dies; any of them answers natsmesh top.`, stderr)
	listen := fs.String("listen", embedded.DefaultListen, "address to listen on for NATS clients (port 0 picks a free one)")
	data := fs.String("data", embedded.DefaultDataDir(), "directory for JetStream data")
	prefix := prefixFlag(fs)
	var nf natsFlags
	nf.register(fs)
	// Unlike the other commands, the server embeds NATS unless told where it is.
	nf.cfg.URL = ""
	fs.Lookup("nats").DefValue = ""
	fs.Lookup("nats").Usage = "serve the registry on this NATS server or cluster instead of an embedded one"
	var lf logFlags
	lf.register(fs)
	metricsAddr := fs.String("metrics", "", "address to serve Prometheus metrics on at /metrics, for example 127.0.0.1:15090: the embedded NATS server's figures (none with --nats) and the process's (default: off)")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	host, port, err := embedded.ParseListen(*listen)
	if err != nil {
		return usageError{err}
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	if err := checkMetricsAddr(*metricsAddr); err != nil {
		return err
	}
	url := nf.cfg.URL
	ownServer := url == ""
	var collectors []prometheus.Collector
	if ownServer {
		srv, err := embedded.Start(embedded.Config{
			Host: host, Port: port, DataDir: *data,
			Logger: embedded.SlogLogger(log.With("component", "nats-server")),
			Debug:  lf.level == "debug",
		})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		collectors = append(collectors, embedded.NewNATSCollector(srv.NATS()))
		url = srv.ClientURL()
		nf.cfg = bus.ConnectConfig{URL: url}
	}
	nf.cfg.Name = "natsmesh-registry"
	nf.cfg.Logger = log
	nc, err := bus.Connect(nf.cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := createConfigBucket(ctx, nc, *prefix, ownServer, log); err != nil {
		return err
	}
	reg, err := registry.StartService(nc, registry.ServiceConfig{Prefix: *prefix, Logger: log})
	if err != nil {
		return err
	}
	defer reg.Stop()
	// Every server follows the snapshots, leader or not, and any one of
	// them answers a summary request (a queue group).
	agg, err := metrics.StartAggregator(nc, metrics.AggregatorConfig{
		Prefix: *prefix, Logger: log.With("component", "stats"), Alive: reg.View().Has,
	})
	if err != nil {
		return err
	}
	defer agg.Stop()
	if *metricsAddr != "" {
		stopMetrics, err := serveMetrics(*metricsAddr, log, collectors...)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	if ownServer {
		log.Info("natsmesh server ready", "url", url, "data", *data)
		fmt.Fprintf(stdout, "natsmesh server listening on %s\n", url)
	} else {
		log.Info("natsmesh registry ready", "nats", url)
		fmt.Fprintf(stdout, "natsmesh server serving the registry on %s\n", url)
	}
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// createConfigBucket makes the mesh's config bucket if it is missing. On an
// embedded server it must succeed; on someone else's NATS without JetStream
// the mesh runs without stored config, and the server says so.
func createConfigBucket(ctx context.Context, nc *nats.Conn, prefix string, embedded bool, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := config.CreateStore(ctx, nc, prefix)
	switch {
	case err == nil:
	case !embedded && errors.Is(err, config.ErrNoJetStream):
		log.Warn("no JetStream on this NATS: natsmesh apply cannot store config, and proxies run on their defaults", "error", err)
		return nil
	case !embedded:
		log.Warn("config bucket not available; natsmesh apply will fail until it is", "error", err)
		return nil
	default:
		return err
	}
	kept, err := st.HistoryKept(ctx)
	if err == nil && kept < config.MinHistory {
		log.Warn("the config bucket keeps fewer revisions than natsmesh config rollback expects", "bucket", st.Bucket(), "history", kept, "want", config.History)
	}
	log.Info("config bucket ready", "bucket", st.Bucket(), "history", kept)
	return nil
}
