// Command natsmesh runs the mesh: the embedded NATS server, sidecars, and the
// tools to call and inspect services. main only wires packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `natsmesh is an HTTP service mesh on NATS.

Usage:
  natsmesh <command> [flags]

Commands:
  demo      run bookinfo on the mesh in one process, to see what it does
  server    run the embedded NATS server (JetStream on) the mesh uses
  sidecar   put an HTTP app on the mesh and give it an outbound proxy
  gateway   take HTTP traffic from outside the mesh to services by host and path
  call      call a mesh service once and print the response body
  services  list the services on the mesh
  instances list the instances of a service
  watch     print registry events as they happen
  top       show each service's and edge's request rate, success and latency, live
  apply     store config for services (routes, retries, ...) from a YAML file
  config    read, roll back or delete the config of services
  identity  issue and revoke the credentials services connect with

Run "natsmesh <command> --help" for a command's flags.
`

// command is one subcommand: it parses args and runs until done or ctx ends.
type command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

var commands = map[string]command{
	"server":    runServer,
	"sidecar":   runSidecar,
	"gateway":   runGateway,
	"demo":      runDemo,
	"call":      runCall,
	"services":  runServices,
	"instances": runInstances,
	"watch":     runWatch,
	"top":       runTop,
	"apply":     runApply,
	"config":    runConfig,
	"identity":  runIdentity,
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "natsmesh: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	ctx, stop := notifyContext(args[0], stderr)
	defer stop()
	err := cmd(ctx, args[1:], stdout, stderr)
	var exit exitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "natsmesh %s: %v\n", args[0], err)
		return 2
	case errors.As(err, &exit):
		return int(exit)
	}
	fmt.Fprintf(stderr, "natsmesh %s: %v\n", args[0], err)
	return 1
}

// notifyContext returns a context that the first SIGINT or SIGTERM cancels,
// for a clean shutdown of the command. A further signal more than a second
// after the first ends the process at once, with status 1 and a line on
// stderr; one within that second is ignored, because Ctrl-C on
// "go run ./cmd/natsmesh <command>" signals both go run and natsmesh, and
// go run passes its signal on: one Ctrl-C arrives twice at once. stop ends
// the watch and cancels the context.
func notifyContext(command string, stderr io.Writer) (ctx context.Context, stop func()) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		watchSignals(sigs, quit, cancel, func() {
			fmt.Fprintf(stderr, "natsmesh %s: stopping at once\n", command)
			os.Exit(1)
		})
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(quit)
		<-done
		cancel()
	}
}

// watchSignals is notifyContext's policy: the first signal from sigs calls
// cancel, and every one more than a second after the first calls atOnce.
// It returns when quit is closed.
func watchSignals(sigs <-chan os.Signal, quit <-chan struct{}, cancel, atOnce func()) {
	var first time.Time
	for {
		select {
		case <-quit:
			return
		case <-sigs:
		}
		switch {
		case first.IsZero():
			first = time.Now()
			cancel()
		case time.Since(first) > time.Second:
			atOnce()
		}
	}
}
