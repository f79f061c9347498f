package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/registry"
)

// registryFlags are the flags of the commands that ask the registry.
type registryFlags struct {
	nats    natsFlags
	prefix  *string
	json    *bool
	timeout *time.Duration
}

func (r *registryFlags) register(fs *flag.FlagSet) {
	r.nats.register(fs)
	r.prefix = prefixFlag(fs)
	r.json = fs.Bool("json", false, "print JSON for scripts instead of a table")
	r.timeout = fs.Duration("timeout", 5*time.Second, "how long to wait for the registry")
}

func (r *registryFlags) client(name string) (*registry.Client, func(), error) {
	if err := checkPrefix(*r.prefix); err != nil {
		return nil, nil, err
	}
	r.nats.cfg.Name = name
	nc, err := r.nats.connect()
	if err != nil {
		return nil, nil, err
	}
	c, err := registry.NewClient(nc, *r.prefix)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return c, nc.Close, nil
}

func runServices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("services", "services [flags]", `
Lists the services on the mesh with their instances by health, as the
registry of natsmesh server sees them.`, stderr)
	var rf registryFlags
	rf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	c, done, err := rf.client("natsmesh-services")
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, *rf.timeout)
	defer cancel()
	l, err := c.List(ctx)
	if err != nil {
		return err
	}
	if *rf.json {
		return json.NewEncoder(stdout).Encode(l)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCES\tPASSING\tFAILING\tDRAINING\tEJECTED")
	for _, s := range l.Services {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", s.Name, s.Instances, s.Passing, s.Failing, s.Draining, s.Ejected)
	}
	return tw.Flush()
}

func runInstances(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("instances", "instances NAME [flags]", `
Lists the instances of service NAME: health, requests in flight, host and
process, and when each was last heard from. A service with no instance is
an error (exit status 1). A service of any size is listed whole: the
registry answers in pages, and every page is fetched.`, stderr)
	var rf registryFlags
	rf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one service NAME, got %d arguments (see natsmesh instances --help)", len(pos))
	}
	if err := bus.ValidateName("service", pos[0]); err != nil {
		return usageError{err}
	}
	c, done, err := rf.client("natsmesh-instances")
	if err != nil {
		return err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, *rf.timeout)
	defer cancel()
	snap, err := c.Get(ctx, pos[0])
	if err != nil {
		return err
	}
	if len(snap.Services[pos[0]]) == 0 {
		return fmt.Errorf("no instance of service %q is registered; natsmesh services lists the services", pos[0])
	}
	if *rf.json {
		return json.NewEncoder(stdout).Encode(snap)
	}
	insts := snap.Services[pos[0]]
	// The ZONE column shows only when an instance names a zone.
	zoned := slices.ContainsFunc(insts, func(in registry.Instance) bool { return in.Zone != "" })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if zoned {
		fmt.Fprintln(tw, "INSTANCE\tSUBSET\tHEALTH\tINFLIGHT\tHOST\tPID\tUP\tLAST SEEN\tZONE")
	} else {
		fmt.Fprintln(tw, "INSTANCE\tSUBSET\tHEALTH\tINFLIGHT\tHOST\tPID\tUP\tLAST SEEN")
	}
	now := time.Now()
	for _, in := range insts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s ago", in.Instance, orDash(in.Subset), in.Health, in.Inflight, in.Host, in.PID,
			now.Sub(in.Started).Round(time.Second), now.Sub(in.LastSeen).Round(time.Millisecond))
		if zoned {
			fmt.Fprintf(tw, "\t%s", orDash(in.Zone))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// orDash is s, or "-" for a column left empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("watch", "watch [NAME] [flags]", `
Prints registry events as they happen — instances coming up, going down and
changing health — for service NAME, or for every service. It starts from the
registry's current state and never misses or repeats an event: when it falls
behind it takes a fresh snapshot. A service with no instance yet is watched
all the same (stderr says so). With --json it prints one JSON document per
line: a {"type":"snapshot",...} line, then one line per event. Stop it with
Ctrl-C.`, stderr)
	var rf registryFlags
	rf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	service, err := optionalService(pos)
	if err != nil {
		return err
	}
	c, done, err := rf.client("natsmesh-watch")
	if err != nil {
		return err
	}
	defer done()
	enc := json.NewEncoder(stdout)
	first := true
	show := func(u registry.Update) {
		if first && service != "" && u.Snapshot != nil && u.Snapshot.Instances == 0 {
			fmt.Fprintf(stderr, "natsmesh watch: no instance of service %q is registered yet; watching for it to appear\n", service)
		}
		first = false
		switch {
		case u.Snapshot != nil && *rf.json:
			_ = enc.Encode(struct {
				Type string `json:"type"`
				*registry.Snapshot
			}{"snapshot", u.Snapshot})
		case u.Snapshot != nil:
			fmt.Fprintf(stdout, "snapshot rev %d: %d instances\n", u.Snapshot.Rev, u.Snapshot.Instances)
			if u.Snapshot.Truncated {
				fmt.Fprintln(stdout, "  (too many to list in one message: use natsmesh instances NAME)")
			}
			for svc, insts := range u.Snapshot.Services {
				for _, in := range insts {
					fmt.Fprintf(stdout, "  %s %s %s\n", svc, in.Instance, in.Health)
				}
			}
		case *rf.json:
			_ = enc.Encode(u.Event)
		default:
			e := u.Event
			fmt.Fprintf(stdout, "%s %-7s %s %s (%s, %s) rev %d\n", e.At.Local().Format("15:04:05.000"), e.Type, e.Service, e.Instance, e.Reason, e.Heartbeat.Health, e.Rev)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, *rf.timeout)
	m, err := c.Mirror(sctx, service, show)
	cancel()
	if err != nil {
		return err
	}
	defer m.Stop()
	<-ctx.Done()
	return nil
}
