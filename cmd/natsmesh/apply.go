package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/registry"
)

func runApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("apply", "apply -f FILE [flags]", `
Stores the config documents of FILE (YAML, one document per service,
separated by ---; "-f -" reads stdin) in the mesh's JetStream KV bucket, where
every proxy calling those services picks them up at once, without a restart.

The whole file is checked first: if anything in it is wrong, every problem is
printed with its file, line and field, and nothing is applied. A route that
sends traffic to a subset no running instance serves, and a callers entry
naming a service with no running instance (a typo?), get a warning (the
registry of natsmesh server is asked), not an error.

Each document is written as a new revision of its service's key, with
compare-and-set on the revision read just before, so two applies at once
cannot overwrite each other unnoticed; a document equal to the current one is
left as it is. It prints one line per service ("reviews: applied revision 7",
"reviews: unchanged (revision 6)"). If someone else changed a service
meanwhile, apply stops there, prints which services were applied and which
were not, and exits 1. See natsmesh config --help to read, roll back and
delete documents; docs/config.md describes the fields.`, stderr)
	var sf storeFlags
	sf.register(fs)
	var file string
	fs.StringVar(&file, "f", "", `config file to apply; "-" reads stdin`)
	fs.StringVar(&file, "file", "", "same as -f")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q (the file is given with -f FILE)", pos[0])
	}
	if file == "" {
		return usagef("-f FILE is missing: name the config file to apply, or - for stdin")
	}
	name, data, err := readConfigFile(file)
	if err != nil {
		return err
	}
	docs, err := config.Parse(name, data)
	var cerr *config.Error
	if errors.As(err, &cerr) {
		fmt.Fprintln(stderr, cerr.Error())
		n := len(cerr.Problems)
		plural := "s"
		if n == 1 {
			plural = ""
		}
		fmt.Fprintf(stderr, "natsmesh apply: %d problem%s in %s; nothing was applied\n", n, plural, name)
		return exitError(1)
	}
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, *sf.timeout)
	defer cancel()
	sf.create = true
	st, nc, done, err := sf.open(ctx, "natsmesh-apply")
	if err != nil {
		return errors.New(sentence(err))
	}
	defer done()
	warnUnservedSubsets(ctx, nc, *sf.prefix, docs, stderr)
	warnUnknownCallers(ctx, nc, *sf.prefix, docs, stderr)

	results, err := st.Apply(ctx, docs)
	for _, r := range results {
		if r.Unchanged {
			fmt.Fprintf(stdout, "%s: unchanged (revision %d)\n", r.Service, r.Revision)
		} else {
			fmt.Fprintf(stdout, "%s: applied revision %d\n", r.Service, r.Revision)
		}
	}
	var ae *config.ApplyError
	if errors.As(err, &ae) {
		conflict := errors.Is(err, config.ErrConflict)
		for _, s := range ae.NotApplied {
			if s == ae.Service && !conflict {
				// The write failed without an answer saying why: it may
				// have been stored all the same.
				fmt.Fprintf(stdout, "%s: may or may not have been applied\n", s)
				continue
			}
			fmt.Fprintf(stdout, "%s: not applied\n", s)
		}
		if conflict {
			fmt.Fprintf(stderr, "natsmesh apply: someone else changed %s meanwhile, so it and the services after it were not applied; re-run apply after checking `natsmesh config get %s`\n", ae.Service, ae.Service)
		} else {
			fmt.Fprintf(stderr, "natsmesh apply: writing %s failed (%s), so the services after it were not applied; check `natsmesh config get %s` and re-run apply\n", ae.Service, sentence(ae.Err), ae.Service)
		}
		return exitError(1)
	}
	if err != nil {
		return errors.New(sentence(err))
	}
	return nil
}

// readConfigFile reads the file to apply, or stdin for "-", and returns the
// name to give it in messages.
func readConfigFile(file string) (string, []byte, error) {
	name := file
	var r io.Reader
	if file == "-" {
		name, r = "stdin", os.Stdin
	} else {
		f, err := os.Open(file)
		if err != nil {
			return "", nil, fmt.Errorf("cannot read the config file: %w", err)
		}
		defer f.Close()
		r = f
	}
	// One byte over the limit lets Parse say the file is too large.
	data, err := io.ReadAll(io.LimitReader(r, config.MaxFileSize+1))
	if err != nil {
		return "", nil, fmt.Errorf("cannot read %s: %w", name, err)
	}
	return name, data, nil
}

// warnUnservedSubsets prints a warning for each subset that a route sends
// traffic to and that no instance known to the registry serves.
func warnUnservedSubsets(ctx context.Context, nc *nats.Conn, prefix string, docs []*config.Service, stderr io.Writer) {
	type use struct{ route, subset string }
	uses := map[string][]use{} // service → the subsets its routes send to
	var services []string
	for _, d := range docs {
		for i, r := range d.Routes {
			route := fmt.Sprintf("routes[%d]", i)
			if r.Name != "" {
				route = fmt.Sprintf("route %s", r.Name)
			}
			subsets := make([]string, 0, len(r.Split))
			for s, w := range r.Split {
				if w > 0 {
					subsets = append(subsets, s)
				}
			}
			sort.Strings(subsets)
			for _, s := range subsets {
				uses[d.Service] = append(uses[d.Service], use{route, s})
			}
		}
		if len(uses[d.Service]) > 0 {
			services = append(services, d.Service)
		}
	}
	if len(services) == 0 {
		return
	}
	c, err := registry.NewClient(nc, prefix)
	if err != nil {
		fmt.Fprintf(stderr, "warning: subsets not checked against running instances: %v\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, svc := range services {
		snap, err := c.Get(ctx, svc)
		if err != nil {
			fmt.Fprintf(stderr, "warning: the registry did not answer (%v), so the check that route subsets have running instances was skipped\n", err)
			return
		}
		served := map[string]bool{}
		for _, in := range snap.Services[svc] {
			served[in.Subset] = true
		}
		for _, u := range uses[svc] {
			if !served[u.subset] {
				fmt.Fprintf(stderr, "warning: %s: %s sends traffic to subset %s, which no running instance serves (start one with natsmesh sidecar --service %s --subset %s)\n", svc, u.route, u.subset, svc, u.subset)
			}
		}
	}
}

// warnUnknownCallers prints a warning for each callers entry that names a
// service of which the registry knows no instance: most likely a typo, which
// would leave the service it meant refused.
func warnUnknownCallers(ctx context.Context, nc *nats.Conn, prefix string, docs []*config.Service, stderr io.Writer) {
	if !slices.ContainsFunc(docs, func(d *config.Service) bool { return len(d.Callers) > 0 }) {
		return
	}
	c, err := registry.NewClient(nc, prefix)
	if err != nil {
		fmt.Fprintf(stderr, "warning: callers not checked against running services: %v\n", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	list, err := c.List(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "warning: the registry did not answer (%v), so the check that callers name running services was skipped\n", err)
		return
	}
	known := make(map[string]bool, len(list.Services))
	for _, s := range list.Services {
		known[s.Name] = s.Instances > 0
	}
	for _, d := range docs {
		for i, caller := range d.Callers {
			if !known[caller] {
				fmt.Fprintf(stderr, "warning: %s: callers[%d] names %s, which no running instance serves, so no call comes from it yet; check the name (a gateway, which never registers, calls as its --name)\n", d.Service, i, caller)
			}
		}
	}
}
