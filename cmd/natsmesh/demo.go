package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/examples/bookinfo"
	"github.com/natsmesh/natsmesh/gateway"
	"github.com/natsmesh/natsmesh/identity"
	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "demo [flags]", `
Runs the whole mesh in one process, to show what it does: an embedded NATS
server with the registry and the config bucket, the four services of the
bookinfo sample (productpage, details, reviews in versions v1, v2 and v3,
ratings), each a real HTTP server behind its own sidecar, and a gateway that
takes traffic from outside. Open the page it prints, then try the commands it
suggests in another terminal. Ctrl-C stops everything.

So that natsmesh top has traffic to show, the demo requests the page
through the gateway --traffic times a second (every fourth time as user
jason, as ?u=jason does); --traffic 0 sends none.

NATS listens on 127.0.0.1:4222, or on a free port if that one is taken (the
demo then prints the export NATSMESH_URL=... line the other commands need).
Data lives in a temporary directory removed at exit, so each demo starts
afresh.`, stderr)
	natsListen := fs.String("listen", "", "address for NATS clients (default 127.0.0.1:4222, or a free port if it is taken)")
	gatewayListen := fs.String("gateway", "127.0.0.1:9080", "address of the gateway, the page to open")
	traffic := fs.Float64("traffic", 2, "requests per second the demo sends to the page itself (0: none)")
	statsInterval := fs.Duration("stats-interval", metrics.DefaultInterval, "how often each sidecar and the gateway publish the stats natsmesh top shows")
	var lf logFlags
	lf.register(fs)
	fs.Lookup("log-level").DefValue = "warn"
	lf.level = "warn"
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *traffic < 0 || *traffic > 100 {
		return usagef("--traffic %g: use 0 to 100 requests per second", *traffic)
	}
	if *statsInterval < 100*time.Millisecond || *statsInterval > time.Minute {
		return usagef("--stats-interval %s: use 100ms to 1m", *statsInterval)
	}
	log, err := lf.logger(stderr)
	if err != nil {
		return err
	}
	// The gateway's port first: it is the one the user opens.
	gln, err := net.Listen("tcp", *gatewayListen)
	if err != nil {
		return fmt.Errorf("the gateway cannot listen on %s, which another program may be using (%v); choose another address with --gateway", *gatewayListen, err)
	}
	defer gln.Close()

	data, err := os.MkdirTemp("", "natsmesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(data)
	// The demo's mesh has the trust roots and admin of natsmesh server's
	// default data directory, so that the commands on this machine work
	// with both as they are.
	auth, adminCreds, err := openTrust(embedded.DefaultDataDir(), "")
	if err != nil {
		return err
	}
	srv, err := startDemoServer(*natsListen, data, auth, log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	url := srv.ClientURL()

	d := &demo{url: url, log: log, statsInterval: *statsInterval, auth: auth, data: data, adminCreds: adminCreds}
	log.Info("every bookinfo service connects with its own identity; commands on this machine use the admin's", "admin_credentials", adminCreds)
	defer d.stop()
	if err := d.start(); err != nil {
		return err
	}
	gw, err := d.gateway(gln)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = gw.Shutdown(sctx)
	}()
	page := "http://" + gln.Addr().String() + "/productpage"
	if err := waitPage(ctx, page); err != nil {
		return err
	}
	if *traffic > 0 {
		lctx, stopLoad := context.WithCancel(ctx)
		loaded := make(chan struct{})
		go func() {
			defer close(loaded)
			demoLoad(lctx, page, *traffic)
		}()
		defer func() { stopLoad(); <-loaded }()
	}

	// One write, so that a reader of the first line has the rest too.
	var msg strings.Builder
	fmt.Fprintf(&msg, "natsmesh demo: bookinfo is running on the mesh, NATS on %s\n\n", url)
	fmt.Fprintf(&msg, "  open %s\n", page)
	fmt.Fprintf(&msg, "  (reload it: reviews v1, v2 and v3 take turns; add ?u=jason to act as user jason)\n\n")
	fmt.Fprintf(&msg, "Then, in another terminal, from this repository:\n\n")
	if url != "nats://127.0.0.1:4222" {
		fmt.Fprintf(&msg, "  export NATSMESH_URL=%s\n", url)
	}
	fmt.Fprintf(&msg, "  go run ./cmd/natsmesh services                                         # the services and their instances\n")
	fmt.Fprintf(&msg, "  go run ./cmd/natsmesh top                                              # each service's and each call's rate, success and latency, live\n")
	fmt.Fprintf(&msg, "  go run ./cmd/natsmesh watch                                            # instances coming and going, live\n")
	fmt.Fprintf(&msg, "  go run ./cmd/natsmesh apply -f examples/bookinfo/reviews-v3-canary.yaml   # half of reviews to v3, half to v1\n\n")
	fmt.Fprintf(&msg, "Ctrl-C stops the demo.\n")
	_, _ = io.WriteString(stdout, msg.String())

	<-ctx.Done()
	fmt.Fprintf(stdout, "stopping the demo\n")
	return nil
}

// startDemoServer starts the embedded NATS server on listen, or on
// 127.0.0.1:4222 and, when that is taken, on a free port.
func startDemoServer(listen, data string, auth *identity.Authority, log *slog.Logger) (*embedded.Server, error) {
	explicit := listen != ""
	if !explicit {
		listen = embedded.DefaultListen
	}
	host, port, err := embedded.ParseListen(listen)
	if err != nil {
		return nil, usageError{err}
	}
	trust := embedded.Trust(auth.Trust())
	cfg := embedded.Config{Host: host, Port: port, DataDir: data, Trust: &trust, Logger: embedded.SlogLogger(log.With("component", "nats-server"))}
	if !explicit {
		if l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port))); err != nil {
			cfg.Port = -1 // taken: any free port
		} else {
			l.Close()
		}
	}
	srv, err := embedded.Start(cfg)
	if err != nil && explicit {
		return nil, fmt.Errorf("NATS cannot listen on %s; choose another address with --listen: %w", listen, err)
	}
	return srv, err
}

// demo is the demo's parts, stopped in reverse order.
type demo struct {
	url           string
	log           *slog.Logger
	statsInterval time.Duration
	auth          *identity.Authority
	data          string
	adminCreds    string
	stops         []func(context.Context)
}

// connect connects as the identity of role named name, issued for it.
func (d *demo) connect(role identity.Role, name, inbox string) (*nats.Conn, error) {
	creds, err := d.auth.IssueRole(role, name, "")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(d.data, name+".creds")
	if err := identity.WriteCreds(file, creds); err != nil {
		return nil, err
	}
	return bus.Connect(bus.ConnectConfig{
		URL: d.url, Name: "natsmesh-demo-" + name, Logger: d.log,
		CredsFile: file, InboxPrefix: bus.Subjects{}.Inbox(inbox),
	})
}

func (d *demo) onStop(f func(context.Context)) { d.stops = append(d.stops, f) }

func (d *demo) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i](ctx)
	}
	d.stops = nil
}

// start runs the registry, the config bucket and every bookinfo app with its
// sidecar.
func (d *demo) start() error {
	// The control plane is the admin, as natsmesh server's is: it makes
	// the config bucket.
	nc, err := bus.Connect(bus.ConnectConfig{
		URL: d.url, Name: "natsmesh-demo-registry", Logger: d.log,
		CredsFile: d.adminCreds, InboxPrefix: bus.Subjects{}.Inbox(identity.RegistryInbox),
	})
	if err != nil {
		return err
	}
	d.onStop(func(context.Context) { nc.Close() })
	cp, err := controlplane.Start(nc, controlplane.Config{Logger: d.log, RequireConfigBucket: true})
	if err != nil {
		return err
	}
	d.onStop(func(ctx context.Context) {
		if err := cp.Shutdown(ctx); err != nil {
			d.log.Warn("control plane shutdown", "error", err)
		}
	})
	for _, svc := range bookinfo.Services {
		versions := []string{"v1"}
		if svc == "reviews" {
			versions = []string{"v1", "v2", "v3"}
		}
		for _, v := range versions {
			if err := d.app(svc, v); err != nil {
				return fmt.Errorf("start %s %s: %w", svc, v, err)
			}
		}
	}
	return nil
}

// app starts one bookinfo app on a port of its own and its sidecar, whose
// outbound proxy the app calls the other services through.
func (d *demo) app(service, version string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	nc, err := d.connect(identity.Service, service, service)
	if err != nil {
		ln.Close()
		return err
	}
	d.onStop(func(context.Context) { nc.Close() })
	watcher, err := config.NewWatcher(nc, "", d.log)
	if err != nil {
		ln.Close()
		return err
	}
	cfg := sidecar.Config{
		Service: service, Upstream: "http://" + ln.Addr().String(), Listen: "127.0.0.1:0",
		Logger: d.log.With("service", service), StatsInterval: d.statsInterval,
		Transport: proxy.TransportConfig{Configs: watcher},
	}
	if service == "reviews" {
		cfg.Subset = version
	}
	sc, err := sidecar.Start(nc, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	h, err := bookinfo.Handler(bookinfo.Config{Service: service, Version: version, Proxy: sc.OutboundAddr().String()})
	if err != nil {
		ln.Close()
		return err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	// Stopped in reverse: the sidecar drains (the app still answers what
	// it holds), then the app stops.
	d.onStop(func(ctx context.Context) { _ = hs.Shutdown(ctx) })
	d.onStop(func(ctx context.Context) {
		if err := sc.Shutdown(ctx); err != nil {
			d.log.Warn("sidecar shutdown", "service", service, "error", err)
		}
	})
	return nil
}

// gateway serves the gateway on ln: every path to productpage.
func (d *demo) gateway(ln net.Listener) (*gateway.Gateway, error) {
	nc, err := d.connect(identity.Service, gateway.DefaultCaller, gateway.DefaultCaller)
	if err != nil {
		return nil, err
	}
	d.onStop(func(context.Context) { nc.Close() })
	watcher, err := config.NewWatcher(nc, "", d.log)
	if err != nil {
		return nil, err
	}
	return gateway.Start(nc, gateway.Config{
		Listener: ln, Routes: []gateway.Route{{Prefix: "/", Service: "productpage"}},
		StatsInterval: d.statsInterval, Logger: d.log,
		Transport: proxy.TransportConfig{Configs: watcher},
	})
}

// demoLoad requests page rate times a second, every fourth time as user jason,
// until ctx ends.
func demoLoad(ctx context.Context, page string, rate float64) {
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		u := page
		if i%4 == 3 {
			u += "?u=jason"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return
		}
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// waitPage waits until the page renders through the mesh: every sidecar has
// subscribed and the registry knows them.
func waitPage(ctx context.Context, page string) error {
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(page)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), "Details served by") && strings.Contains(string(body), "Reviews served by") {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the demo's page %s did not render within 30 s: %v", page, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
