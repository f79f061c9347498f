package main

import (
	"context"
	"fmt"
	"io"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/registry"
)

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", "server [flags]", `
Runs the NATS server the mesh travels on, embedded, with JetStream on, and the
mesh's registry service, which follows every instance's heartbeats and answers
natsmesh services, instances and watch. Every other command connects to it
(--nats, default nats://127.0.0.1:4222). Stop it with Ctrl-C or SIGTERM.

With --nats URL it runs no NATS server of its own: it serves the registry on
that NATS server or cluster instead. Run several for availability: one at a
time publishes events (a lease in JetStream decides which), and another takes
over within seconds when it dies.`, stderr)
	listen := fs.String("listen", bus.DefaultListen, "address to listen on for NATS clients (port 0 picks a free one)")
	data := fs.String("data", bus.DefaultDataDir(), "directory for JetStream data")
	prefix := prefixFlag(fs)
	var nf natsFlags
	nf.register(fs)
	// Unlike the other commands, the server embeds NATS unless told where it is.
	nf.cfg.URL = ""
	fs.Lookup("nats").DefValue = ""
	fs.Lookup("nats").Usage = "serve the registry on this NATS server or cluster instead of an embedded one"
	var lf logFlags
	lf.register(fs)
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
	host, port, err := bus.ParseListen(*listen)
	if err != nil {
		return usageError{err}
	}
	if err := checkPrefix(*prefix); err != nil {
		return err
	}
	url := nf.cfg.URL
	embedded := url == ""
	if embedded {
		srv, err := bus.StartServer(bus.ServerConfig{
			Host: host, Port: port, DataDir: *data,
			Logger: bus.SlogLogger(log.With("component", "nats-server")),
			Debug:  lf.level == "debug",
		})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
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
	reg, err := registry.StartService(nc, registry.ServiceConfig{Prefix: *prefix, Logger: log})
	if err != nil {
		return err
	}
	defer reg.Stop()
	if embedded {
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
