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
(--nats, default nats://127.0.0.1:4222). Stop it with Ctrl-C or SIGTERM.`, stderr)
	listen := fs.String("listen", bus.DefaultListen, "address to listen on for NATS clients (port 0 picks a free one)")
	data := fs.String("data", bus.DefaultDataDir(), "directory for JetStream data")
	prefix := prefixFlag(fs)
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
	srv, err := bus.StartServer(bus.ServerConfig{
		Host: host, Port: port, DataDir: *data,
		Logger: bus.SlogLogger(log.With("component", "nats-server")),
		Debug:  lf.level == "debug",
	})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	nc, err := bus.Connect(bus.ConnectConfig{URL: srv.ClientURL(), Name: "natsmesh-registry", Logger: log})
	if err != nil {
		return err
	}
	defer nc.Close()
	reg, err := registry.StartService(nc, registry.ServiceConfig{Prefix: *prefix, Logger: log})
	if err != nil {
		return err
	}
	defer reg.Stop()
	log.Info("natsmesh server ready", "url", srv.ClientURL(), "data", *data)
	fmt.Fprintf(stdout, "natsmesh server listening on %s\n", srv.ClientURL())
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}
