package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/metrics/prom"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
	"github.com/natsmesh/natsmesh/telemetry"
)

func runSidecar(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sidecar", "sidecar --service NAME --upstream http://127.0.0.1:PORT [flags]", `
Puts one instance of an HTTP app on the mesh. Inbound, the instance joins the
service's NATS queue group and forwards each request to --upstream. Outbound,
it listens on --listen for the app's own calls: set HTTP_PROXY=http://<listen>
in the app and call http://<service>/..., or send requests to <listen> with
"Host: <service>". Other hosts are forwarded to the outside world: by
default to public addresses only (--egress), never to this machine's
loopback, link-local addresses (cloud metadata) or the mesh's own ports
unless listed with --egress-allow, and CONNECT to port 443 only. SIGINT or SIGTERM drains: no new requests, in-flight ones
finish, then exit 0.

Outbound calls are retried when that is safe, guarded by a circuit breaker per
destination service; the instance ejects itself from its queue groups while
its app keeps failing. Tracing follows the OTEL_* environment variables
(OTEL_TRACES_EXPORTER=otlp or console; off by default).

The config of each service the app calls (natsmesh apply) applies live: its
routes, load-balancing policy, faults, and its timeout, retries and breaker,
which override the flags below for calls to that service. --subset puts the
instance in a subset (a version, say) that routes can send a share of the
calls to: it then takes both the service's calls and those routed to its
subset. --zone says where the instance runs: its heartbeats name the zone, and
the app's calls to a service whose loadBalancer policy picks instances
(round-robin, least-request, ring-hash) go to instances in the same zone while
it has passing ones; queue, the default, lets NATS pick and ignores zones.`, stderr)
	var nf natsFlags
	nf.register(fs)
	var lf logFlags
	lf.register(fs)
	var cfg sidecar.Config
	fs.StringVar(&cfg.Service, "service", "", "service name (required): lowercase letters, digits, '-' or '_'")
	fs.StringVar(&cfg.Subset, "subset", "", "subset of the service this instance is in, for example v2: routes of the service's config that pick v2 reach it (default: none; it takes only the service's unrouted calls)")
	fs.StringVar(&cfg.Zone, "zone", "", "zone this instance runs in, for example eu-west-1a: its heartbeats name it, and the app's calls prefer instances in the same zone under an instance-aware loadBalancer policy (default: none)")
	fs.StringVar(&cfg.Instance, "instance", "", "instance id (default <service>-<random>)")
	fs.StringVar(&cfg.Upstream, "upstream", "", "URL of the app, for example http://127.0.0.1:8080 (required)")
	fs.StringVar(&cfg.Listen, "listen", sidecar.DefaultListen, "address of the outbound proxy the app calls through; loopback unless --listen-public")
	prefix := prefixFlag(fs)
	fs.IntVar(&cfg.Serve.MaxInflight, "max-inflight", proxy.DefaultMaxInflight, "inbound requests handled at once; more are answered 503 overloaded (a caller holding a quarter of them is refused once fewer than a quarter are free)")
	fs.DurationVar(&cfg.Serve.BodyStart, "stream-start", proxy.DefaultBodyStart, "longest wait for the first chunk of an inbound streamed request body")
	fs.DurationVar(&cfg.Serve.BodyIdle, "stream-idle", proxy.DefaultBodyIdle, "longest wait for each next chunk of an inbound streamed request body")
	fs.DurationVar(&cfg.Transport.Timeout, "timeout", proxy.DefaultTimeout, "default deadline of calls: the app's outbound calls, and inbound requests that carry none")
	fs.Int64Var(&cfg.Transport.MaxBody, "max-body", proxy.DefaultMaxBody, "largest request body, in bytes, the app may send through the mesh; larger ones are answered 413 too-large (bodies over one NATS message stream in chunks)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", registry.DefaultInterval, "interval of the instance's heartbeats; it expires from the registry after 3 missed ones")
	fs.StringVar(&cfg.HealthCheck.Path, "health-path", "", "path of the app's health check, for example /healthz; while it fails the instance takes no traffic (default: no checks)")
	fs.DurationVar(&cfg.HealthCheck.Interval, "health-interval", time.Second, "interval between health checks")
	fs.IntVar(&cfg.HealthCheck.Fails, "health-fails", 2, "failed checks in a row before the instance stops taking traffic")
	fs.IntVar(&cfg.HealthCheck.Passes, "health-passes", 2, "passed checks in a row before it takes traffic again")
	var calls callFlags
	calls.register(fs)
	outlier := fs.Int("outlier-failures", sidecar.DefaultOutlierConsecutive, "app failures in a row (5xx, refused, timed out) that eject this instance from its queue groups (0: never)")
	fs.DurationVar(&cfg.Outlier.BaseEjection, "outlier-ejection", sidecar.DefaultBaseEjection, "first ejection time; each repeat adds as much")
	fs.DurationVar(&cfg.Outlier.MaxEjection, "outlier-max-ejection", sidecar.DefaultMaxEjection, "longest ejection time")
	var ef egressFlags
	ef.register(fs)
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
	if err := calls.check(); err != nil {
		return err
	}
	if err := mf.check(); err != nil {
		return err
	}
	if err := cf.check(); err != nil {
		return err
	}
	cfg.StatsInterval = mf.statsInterval()
	calls.transport(&cfg.Transport)
	if err := checkMaxBody(cfg.Transport.MaxBody); err != nil {
		return err
	}
	switch {
	case *outlier < 0:
		return usagef("--outlier-failures %d: use 0 or more", *outlier)
	case *outlier == 0:
		cfg.Outlier.Consecutive = -1
	default:
		cfg.Outlier.Consecutive = *outlier
	}
	if err := ef.apply(&cfg, cfg.Listen); err != nil {
		return err
	}
	if cfg.Service == "" || cfg.Upstream == "" {
		return usagef("--service and --upstream are required (see natsmesh sidecar --help)")
	}
	if err := bus.ValidateName("service", cfg.Service); err != nil {
		return usagef("--service: %v", err)
	}
	if cfg.Subset != "" {
		if err := bus.ValidateName("subset", cfg.Subset); err != nil {
			return usagef("--subset: %v", err)
		}
	}
	if cfg.Zone != "" {
		if err := bus.ValidateName("zone", cfg.Zone); err != nil {
			return usagef("--zone: %v", err)
		}
	}
	if cfg.Instance != "" {
		if err := bus.ValidateName("instance", cfg.Instance); err != nil {
			return usagef("--instance: %v", err)
		}
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	cfg.Prefix = *prefix
	cfg.Clients = cf.l
	if p := cfg.HealthCheck.Path; p != "" && !strings.HasPrefix(p, "/") {
		return usagef("--health-path %q must start with /", p)
	}
	if cfg.HealthCheck.Interval < 10*time.Millisecond || cfg.HealthCheck.Fails < 1 || cfg.HealthCheck.Passes < 1 {
		return usagef("--health-interval must be at least 10ms, --health-fails and --health-passes at least 1")
	}
	if cfg.Heartbeat < registry.MinInterval || cfg.Heartbeat > registry.MaxInterval {
		return usagef("--heartbeat %s: use %s to %s", cfg.Heartbeat, registry.MinInterval, registry.MaxInterval)
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log

	if err := checkIdentity(nf.config().CredsFile, cfg.Service, "--service"); err != nil {
		return err
	}
	if cfg.Instance == "" {
		cfg.Instance = bus.NewInstanceID(cfg.Service)
	}
	// The port first: a taken one is the likeliest mistake, and needs no NATS.
	if cfg.Listener, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fmt.Errorf("cannot listen on %s for the app's outbound calls, which another program may be using (%v); choose another address with --listen", cfg.Listen, err)
	}
	defer cfg.Listener.Close()
	nf.cfg.Name = "natsmesh-sidecar-" + cfg.Instance
	nf.cfg.InboxPrefix = bus.Subjects{Prefix: cfg.Prefix}.Inbox(cfg.Service)
	nf.cfg.WaitForServer = true
	nf.cfg.Logger = log
	closed := make(chan struct{})
	nc, err := nf.connect(nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		return err
	}
	defer nc.Close()
	if !nc.IsConnected() {
		log.Warn("NATS is not reachable yet; calls get mesh-unavailable until it is", "nats", nf.cfg.URL)
	}
	tracing, err := telemetry.Setup(ctx, telemetry.Config{Service: cfg.Service, Instance: cfg.Instance})
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
	if tracing.Enabled() {
		cfg.TracerProvider = tracing.TracerProvider()
		log.Info("tracing on", "exporter", tracing.Exporter())
	}
	if cfg.Transport.Configs, err = config.NewWatcher(nc, cfg.Prefix, log); err != nil {
		return err
	}
	sc, err := sidecar.Start(nc, cfg)
	if err != nil {
		return err
	}
	var stopMetrics func()
	if m := sc.Metrics(); m != nil {
		stopMetrics, err = mf.serve(log, prom.NewCollector(m))
	} else {
		stopMetrics, err = mf.serve(log)
	}
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = sc.Shutdown(sctx)
		return err
	}
	defer stopMetrics()
	log.Info("sidecar ready", "service", cfg.Service, "subset", cfg.Subset, "zone", cfg.Zone, "instance", sc.Instance(),
		"upstream", cfg.Upstream, "outbound", sc.OutboundAddr().String(), "nats", nf.cfg.URL)
	fmt.Fprintf(stdout, "sidecar %s: serving %s, outbound proxy on http://%s\n", sc.Instance(), cfg.Upstream, sc.OutboundAddr())
	<-ctx.Done()
	log.Info("draining")
	dctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	err = sc.Shutdown(dctx)
	drainNATS(dctx, nc, closed)
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// drainNATS drains nc, so the messages it has published reach the server,
// and waits for it to close (closed is its ClosedHandler's) or ctx to end.
func drainNATS(ctx context.Context, nc *nats.Conn, closed <-chan struct{}) {
	if err := nc.Drain(); err == nil {
		select {
		case <-closed:
		case <-ctx.Done():
		}
	}
}
