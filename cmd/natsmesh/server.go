package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/identity"
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

It accepts only clients with credentials it issued. On first start it creates
the mesh's trust roots (an operator, a system and a mesh account, as nkeys) in
DIR/trust and the admin's credentials in DIR/admin.creds, DIR being --data
(files 0600); commands on the same machine find those by themselves, others
take --creds FILE or $NATSMESH_CREDS. natsmesh identity issue NAME makes the
credentials of one service, which may act only as that service.

--metrics serves Prometheus metrics: the embedded NATS server's connections,
subscriptions, slow consumers, messages and bytes in and out, memory and
JetStream usage (natsmesh_nats_*), and the process's own.

With --nats URL it runs no NATS server of its own: it serves the registry and
the stats on that NATS server or cluster instead, and creates the config
bucket there; --metrics then has no NATS server figures (use that server's own
monitoring). The connection flags (--user, --password, --token, --creds,
--nkey) apply only with --nats; --tls-cert, --tls-key and --tls-ca are the
client's with --nats, and the embedded server's TLS without it (see TLS). Run several for availability: one at
a time publishes events (a lease in JetStream decides which), and another
takes over within seconds when it dies; any of them answers natsmesh top.`+serverTLSHelp, stderr)
	listen := fs.String("listen", embedded.DefaultListen, "address to listen on for NATS clients (port 0 picks a free one)")
	data := fs.String("data", embedded.DefaultDataDir(), "directory for JetStream data")
	prefix := prefixFlag(fs)
	var nf natsFlags
	nf.register(fs)
	var tf serverTLSFlags
	tf.register(fs, &nf)
	// Unlike the other commands, the server embeds NATS unless told where it is.
	nf.cfg.URL = ""
	fs.Lookup("nats").DefValue = ""
	fs.Lookup("nats").Usage = "serve the registry on this NATS server or cluster instead of an embedded one"
	var lf logFlags
	lf.register(fs)
	maxInstances := fs.Int("max-instances", registry.DefaultMaxInstances, "instances the registry holds at most; more are counted as overflow and left out")
	var cf clusterFlags
	cf.register(fs)
	anonymous := fs.Bool("allow-anonymous", false, "let the embedded NATS server accept clients without credentials, as before identities: whoever reaches its port owns the mesh; only for a machine no one else can reach")
	metricsAddr := fs.String("metrics", "", "address to serve Prometheus metrics on at /metrics, for example 127.0.0.1:15090: the embedded NATS server's figures (none with --nats) and the process's (default: off)")
	replicas := fs.Int("replicas", 0, "replicas of the buckets it makes (config, registry lease), 1 to 5; 0 is 3 on a JetStream cluster of 3 or more servers, else 1")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	clustered, err := cf.check()
	if err != nil {
		return err
	}
	if clustered && nf.cfg.URL != "" {
		return usagef("--cluster joins embedded servers; with --nats this server embeds none (cluster the NATS servers you run instead)")
	}
	if *maxInstances < 1 {
		return usagef("--max-instances %d: use at least 1", *maxInstances)
	}
	if err := bus.ValidateReplicas(*replicas); err != nil {
		return usagef("--replicas: %v", err)
	}
	if nf.cfg.URL == "" {
		if err := noConnectFlags(fs); err != nil {
			return err
		}
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
	serverTLS, err := tf.tls(nf.cfg.URL == "", host, *data, stdout)
	if err != nil {
		return err
	}
	url := nf.cfg.URL
	ownServer := url == ""
	var collectors []prometheus.Collector
	adminCreds, srvRoutes := "", ""
	if ownServer {
		ecfg := embedded.Config{
			Host: host, Port: port, DataDir: *data,
			Logger: embedded.SlogLogger(log.With("component", "nats-server")),
			Debug:  lf.level == "debug",
			TLS:    serverTLS,
		}
		if !*anonymous {
			a, creds, err := openTrustAt(cf.trustDir(*data), *data, *prefix)
			if err != nil {
				return err
			}
			trust := embedded.Trust(a.Trust())
			ecfg.Trust, adminCreds = &trust, creds
			if clustered {
				ecfg.Cluster = cf.cluster(a)
			}
		} else if clustered {
			ecfg.Cluster = cf.cluster(nil)
		}
		if clustered {
			ecfg.Name = cf.name
		}
		srv, err := embedded.Start(ecfg)
		if err != nil {
			return embeddedError(err)
		}
		defer srv.Shutdown()
		collectors = append(collectors, embedded.NewNATSCollector(srv.NATS()))
		url = srv.ClientURL()
		if a := srv.RouteAddr(); a != nil {
			srvRoutes = "nats://" + a.String()
		}
		nf.cfg = bus.ConnectConfig{URL: url, CredsFile: adminCreds}
		if nf.cfg.TLSConfig, err = srv.ClientTLS(); err != nil {
			return embeddedError(err)
		}
		if *anonymous {
			log.Warn("the NATS server accepts clients without credentials (--allow-anonymous): whoever reaches its port can read and change everything on the mesh")
		}
	}
	nf.cfg.InboxPrefix = bus.Subjects{Prefix: *prefix}.Inbox(identity.RegistryInbox)
	nf.cfg.Name = "natsmesh-registry"
	nf.cfg.Logger = log
	nc, err := nf.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	// On the embedded server, which has JetStream, the config bucket must
	// be there; on someone else's NATS the mesh may run without it.
	// A server of a cluster makes the buckets once JetStream has a quorum,
	// which its peers may not give it yet: it does not wait for it.
	reps := *replicas
	if reps == 0 && clustered && len(cf.routeList()) >= 3 {
		// A cluster of three or more, by its routes: its buckets get three
		// replicas once JetStream has them, rather than one replica made
		// while the cluster is still forming.
		reps = 3
	}
	cp, err := controlplane.Start(nc, controlplane.Config{Prefix: *prefix, Logger: log, RequireConfigBucket: ownServer && !clustered, Replicas: reps, MaxInstances: *maxInstances})
	if err != nil {
		return err
	}
	defer shutdownControlPlane(cp, log)
	if *metricsAddr != "" {
		stopMetrics, err := serveMetrics(*metricsAddr, log, collectors...)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	if ownServer {
		log.Info("natsmesh server ready", "url", url, "data", *data, "admin_credentials", adminCreds)
		fmt.Fprintf(stdout, "natsmesh server listening on %s\n", url)
		if clustered {
			fmt.Fprintf(stdout, "natsmesh server %s of cluster %s takes routes on %s\n", cf.name, cf.clusterName, srvRoutes)
		}
		if adminCreds != "" {
			fmt.Fprintf(stdout, "clients need credentials: commands on this machine find the admin's in %s (elsewhere: --creds or %s); natsmesh identity issue NAME makes a service's\n", adminCreds, credsEnv)
		}
	} else {
		log.Info("natsmesh registry ready", "nats", url)
		fmt.Fprintf(stdout, "natsmesh server serving the registry on %s\n", url)
	}
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// shutdownControlPlane stops the control plane, waiting at most 10 s.
func shutdownControlPlane(cp *controlplane.ControlPlane, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cp.Shutdown(ctx); err != nil {
		log.Warn("control plane shutdown", "error", err)
	}
}

// embeddedError is an error of the embedded server's start, with the flag
// that chooses another address or directory.
func embeddedError(err error) error {
	switch {
	case errors.Is(err, embedded.ErrListen):
		return fmt.Errorf("%w; choose another address with --listen", err)
	case errors.Is(err, embedded.ErrDataDir):
		return fmt.Errorf("%w; choose another with --data", err)
	case errors.Is(err, embedded.ErrTLS):
		return fmt.Errorf("%w; check --tls-cert, --tls-key and --tls-ca", err)
	}
	return err
}

// connectFlags say how to connect to a NATS server the command does not run.
// (--tls-* are the embedded server's own TLS then: serverTLSFlags.)
var connectFlags = []string{"user", "password", "token", "creds", "nkey"}

// noConnectFlags refuses connection flags given to a server that runs its
// own NATS, which would otherwise be ignored.
func noConnectFlags(fs *flag.FlagSet) error {
	var set []string
	fs.Visit(func(f *flag.Flag) {
		if slices.Contains(connectFlags, f.Name) {
			set = append(set, "--"+f.Name)
		}
	})
	if len(set) == 0 {
		return nil
	}
	return usagef("%s: connection flags are for a NATS server run elsewhere (--nats URL), and the embedded server does not take credentials yet; drop them or add --nats", strings.Join(set, ", "))
}
