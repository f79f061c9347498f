package main

import (
	"context"
	"fmt"
	"io"

	"github.com/natsmesh/natsmesh/bus"
)

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("server", "server [flags]", `
Runs the NATS server the mesh travels on, embedded, with JetStream on. Every
other command connects to it (--nats, default nats://127.0.0.1:4222). Stop it
with Ctrl-C or SIGTERM.`, stderr)
	listen := fs.String("listen", bus.DefaultListen, "address to listen on for NATS clients (port 0 picks a free one)")
	data := fs.String("data", bus.DefaultDataDir(), "directory for JetStream data")
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
	srv, err := bus.StartServer(bus.ServerConfig{
		Host: host, Port: port, DataDir: *data,
		Logger: bus.SlogLogger(log.With("component", "nats-server")),
		Debug:  lf.level == "debug",
	})
	if err != nil {
		return err
	}
	log.Info("natsmesh server ready", "url", srv.ClientURL(), "data", *data)
	fmt.Fprintf(stdout, "natsmesh server listening on %s\n", srv.ClientURL())
	<-ctx.Done()
	log.Info("shutting down")
	srv.Shutdown()
	return nil
}
