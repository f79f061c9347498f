package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/metrics/prom"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/telemetry"
)

// routeFlags collect the repeated --route flag.
type routeFlags []gateway.Route

func (r *routeFlags) String() string {
	s := make([]string, len(*r))
	for i, rt := range *r {
		s[i] = rt.String()
	}
	return strings.Join(s, " ")
}

func (r *routeFlags) Set(v string) error {
	rt, err := gateway.ParseRoute(v)
	if err != nil {
		return err
	}
	*r = append(*r, rt)
	return nil
}

func runGateway(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gateway", "gateway --route PREFIX=SERVICE [--route HOST/PREFIX=SERVICE ...] [flags]", `
Takes HTTP traffic from outside the mesh (browsers, curl) on --listen and
calls the service each request is routed to. A route, given with --route as
PREFIX=SERVICE or HOST/PREFIX=SERVICE, sends the requests whose path starts
with PREFIX (a plain string prefix: /api matches /api/x and /apiary) and,
with HOST, whose Host is HOST (any port) to SERVICE; the longest prefix wins,
host routes before host-less ones. A request no route matches is answered
404 with Mesh-Error: no-route and the list of routes.

The service gets the request's method, path, query, headers and body
unchanged, with the client's Host, X-Forwarded-For (the client's address
appended), X-Forwarded-Host and X-Forwarded-Proto, and Mesh-Caller set to
--name; Mesh-* headers from the client are dropped. Failures of the mesh are
answered with a Mesh-Error header, as a sidecar answers its app.

Calls are made as a sidecar makes its app's: with the timeout, retries and
circuit breakers below, and the config of each service (natsmesh apply:
routes, load balancing, faults, timeout, retries, breaker), which applies
live and overrides the flags for calls to that service. Tracing follows the
OTEL_* environment variables (OTEL_TRACES_EXPORTER=otlp or console; off by
default): each call has a client span, in a trace of its own when the client
sent no traceparent. SIGINT or SIGTERM stops taking connections, finishes
the requests in flight (at most --drain-timeout), then exits 0.

Example:
  natsmesh gateway --listen 127.0.0.1:9080 --route /=productpage --route /api=details`, stderr)
	var nf natsFlags
	nf.register(fs)
	var lf logFlags
	lf.register(fs)
	var routes routeFlags
	fs.Var(&routes, "route", "PREFIX=SERVICE or HOST/PREFIX=SERVICE, for example /=productpage or shop.example.com/api=details (required; repeat for more routes)")
	listen := fs.String("listen", gateway.DefaultListen, "address the gateway takes traffic on")
	name := fs.String("name", gateway.DefaultCaller, "name the gateway calls services as (their Mesh-Caller), and its service.name in traces")
	prefix := prefixFlag(fs)
	zone := fs.String("zone", "", "zone the gateway runs in: its calls prefer instances in the same zone under an instance-aware loadBalancer policy (default: none)")
	timeout := fs.Duration("timeout", proxy.DefaultTimeout, "deadline of each request's call, retries included, unless the service's config sets another")
	maxBody := fs.Int64("max-body", proxy.DefaultMaxBody, "largest request body, in bytes, a client may send; larger ones are answered 413 too-large (bodies over one NATS message stream in chunks)")
	var calls callFlags
	calls.register(fs)
	drain := fs.Duration("drain-timeout", 30*time.Second, "longest wait for in-flight requests on shutdown")
	var mf metricsFlags
	mf.register(fs)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if len(routes) == 0 {
		return usagef("--route is required, for example --route /=productpage (see natsmesh gateway --help)")
	}
	if err := calls.check(); err != nil {
		return err
	}
	if err := mf.check(); err != nil {
		return err
	}
	if err := cf.check(); err != nil {
		return err
	}
	if err := checkMaxBody(*maxBody); err != nil {
		return err
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: use a positive duration", *timeout)
	}
	if err := bus.ValidateName("name", *name); err != nil {
		return usagef("--name: %v", err)
	}
	if *zone != "" {
		if err := bus.ValidateName("zone", *zone); err != nil {
			return usagef("--zone: %v", err)
		}
	}
	if err := checkIdentity(nf.config().CredsFile, *name, "--name"); err != nil {
		return err
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}

	// The port first: a taken one is the likeliest mistake, and needs no NATS.
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("cannot listen on %s, which another program may be using (%v); choose another address with --listen", *listen, err)
	}
	defer ln.Close()

	nf.cfg.Name = "natsmesh-gateway-" + *name
	nf.cfg.InboxPrefix = bus.Subjects{Prefix: *prefix}.Inbox(*name)
	nf.cfg.WaitForServer = true
	nf.cfg.Logger = log
	closed := make(chan struct{})
	nc, err := nf.connect(nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		return err
	}
	defer nc.Close()
	if !nc.IsConnected() {
		log.Warn("NATS is not reachable yet; requests get mesh-unavailable until it is", "nats", nf.cfg.URL)
	}
	tracing, err := telemetry.Setup(ctx, telemetry.Config{Service: *name})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tracing.Shutdown(sctx); err != nil {
			log.Warn("traces not flushed", "error", err)
		}
	}()
	cfg := gateway.Config{
		Name: *name, Listener: ln, Clients: cf.l, Routes: routes, Prefix: *prefix, Logger: log, StatsInterval: mf.statsInterval(),
		Transport: proxy.TransportConfig{Zone: *zone, Timeout: *timeout, MaxBody: *maxBody},
	}
	calls.transport(&cfg.Transport)
	if tracing.Enabled() {
		cfg.TracerProvider = tracing.TracerProvider()
		log.Info("tracing on", "exporter", tracing.Exporter())
	}
	if cfg.Transport.Configs, err = config.NewWatcher(nc, *prefix, log); err != nil {
		return err
	}
	gw, err := gateway.Start(nc, cfg)
	if errors.Is(err, gateway.ErrInvalidConfig) {
		return usageError{err}
	} else if err != nil {
		return err
	}
	if m := gw.Metrics(); m != nil {
		stop, err := mf.serve(log, prom.NewCollector(m))
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = gw.Shutdown(sctx)
			return err
		}
		defer stop()
	}
	log.Info("gateway ready", "listen", ln.Addr().String(), "routes", routes.String(), "nats", nf.cfg.URL)
	fmt.Fprintf(stdout, "gateway on http://%s\n", gw.Addr())

	select {
	case <-ctx.Done():
	case err := <-gw.Failed():
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = gw.Shutdown(sctx) // the transport and the last stats
		return fmt.Errorf("the gateway stopped serving: %w", err)
	}
	log.Info("draining")
	dctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	err = gw.Shutdown(dctx)
	drainNATS(dctx, nc, closed)
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
