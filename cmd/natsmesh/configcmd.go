package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/config"
)

const configUsage = `Usage: natsmesh config <command> [flags]

Reads and changes the config documents natsmesh apply stores, one per service,
in the mesh's JetStream KV bucket (mesh_config). Every proxy calling a service
applies a change to its document at once.

Commands:
  get [NAME]              print the document of service NAME, or of every
                          service, as YAML that natsmesh apply -f accepts
  history NAME            list the revisions of NAME's document the bucket keeps
  rollback NAME REVISION  make an earlier revision's document the current one
  delete NAME             remove NAME's document: its callers go back to their
                          defaults

Run "natsmesh config <command> --help" for a command's flags.
`

var configCommands = map[string]command{
	"get":      runConfigGet,
	"history":  runConfigHistory,
	"rollback": runConfigRollback,
	"delete":   runConfigDelete,
}

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runGroup(ctx, commandGroup{name: "config", usage: configUsage, commands: configCommands, trim: "config: "}, args, stdout, stderr)
}

// commandGroup is a command made of subcommands (natsmesh config get, ...).
type commandGroup struct {
	name, usage string
	commands    map[string]command
	trim        string // the package prefix errors lose, which would repeat the command's name
}

// runGroup runs the subcommand args[0] of g, and prints its error with
// the command's name: usage errors exit 2, others 1.
func runGroup(ctx context.Context, g commandGroup, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, g.usage)
		return exitError(2)
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, g.usage)
		return nil
	}
	cmd, ok := g.commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "natsmesh %s: unknown command %q\n\n%s", g.name, args[0], g.usage)
		return exitError(2)
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	var exit exitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp), errors.As(err, &exit):
		return err
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "natsmesh %s %s: %v\n", g.name, args[0], err)
		return exitError(2)
	}
	fmt.Fprintf(stderr, "natsmesh %s %s: %s\n", g.name, args[0], strings.TrimPrefix(err.Error(), g.trim))
	return exitError(1)
}

// sentence is err's message without the package prefix of the config
// store's errors, which would only repeat the command's name.
func sentence(err error) string { return strings.TrimPrefix(err.Error(), "config: ") }

// storeFlags are the flags of the commands that use the config store.
type storeFlags struct {
	nats    natsFlags
	prefix  *string
	timeout *time.Duration
	// create makes the config bucket when it is missing (natsmesh apply,
	// which an admin runs, on a NATS where no natsmesh server made it).
	create bool
}

func (f *storeFlags) register(fs *flag.FlagSet) {
	f.nats.register(fs)
	f.prefix = prefixFlag(fs)
	f.timeout = fs.Duration("timeout", 10*time.Second, "how long to wait for NATS and JetStream")
}

// open connects and opens the config store; done closes the connection.
func (f *storeFlags) open(ctx context.Context, name string) (st *config.Store, nc *nats.Conn, done func(), err error) {
	if err := checkPrefix(*f.prefix); err != nil {
		return nil, nil, nil, err
	}
	f.nats.cfg.Name = name
	nc, err = f.nats.connect()
	if err != nil {
		return nil, nil, nil, err
	}
	if f.create {
		st, err = config.CreateStore(ctx, nc, *f.prefix)
	} else {
		st, err = config.OpenStore(ctx, nc, *f.prefix)
	}
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return st, nc, nc.Close, nil
}

// serviceArg validates a service NAME argument.
func serviceArg(s string) error {
	if err := bus.ValidateName("service", s); err != nil {
		return usageError{err}
	}
	return nil
}

func formatTime(t time.Time) string { return t.Local().Format(time.RFC3339) }

// jsonEntry is how --json prints one revision of a document.
type jsonEntry struct {
	Service   string          `json:"service"`
	Revision  uint64          `json:"revision"`
	Time      time.Time       `json:"time"`
	Operation config.Op       `json:"operation"`
	Config    json.RawMessage `json:"config,omitempty"`
	Invalid   string          `json:"invalid,omitempty"`
}

func toJSON(e *config.Entry) jsonEntry {
	j := jsonEntry{Service: e.Service, Revision: e.Revision, Time: e.Time, Operation: e.Op}
	if e.Op == config.OpPut && json.Valid(e.Raw) {
		j.Config = e.Raw
	}
	if e.Invalid != nil {
		j.Invalid = sentence(e.Invalid)
	}
	return j
}

// writeYAML prints a document as YAML, headed by a comment with its
// revision and time.
func writeYAML(w io.Writer, e *config.Entry) error {
	fmt.Fprintf(w, "# %s: revision %d, %s\n", e.Service, e.Revision, formatTime(e.Time))
	if e.Doc == nil {
		fmt.Fprintf(w, "# not a valid document: %s\n# stored: %s\n", sentence(e.Invalid), strings.ReplaceAll(string(e.Raw), "\n", " "))
		return nil
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(e.Doc); err != nil {
		return err
	}
	return enc.Close()
}

func runConfigGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config get", "config get [NAME] [flags]", `
Prints the current config document of service NAME, or of every service that
has one, as YAML: each document is headed by a comment line with its revision
and when it was written, and documents are separated by ---, so the output can
be edited and given back to natsmesh apply -f. With --json it prints the
stored JSON, with revision and time: one object for NAME, else a list.`, stderr)
	var sf storeFlags
	sf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts instead of YAML")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usagef("want at most one service NAME, got %d arguments", len(pos))
	}
	if len(pos) == 1 {
		if err := serviceArg(pos[0]); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *sf.timeout)
	defer cancel()
	st, _, done, err := sf.open(ctx, "natsmesh-config")
	if err != nil {
		return err
	}
	defer done()
	if len(pos) == 1 {
		e, err := st.Get(ctx, pos[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(toJSON(e))
		}
		return writeYAML(stdout, e)
	}
	list, err := st.List(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		all := make([]jsonEntry, len(list))
		for i, e := range list {
			all[i] = toJSON(e)
		}
		return json.NewEncoder(stdout).Encode(all)
	}
	if len(list) == 0 {
		fmt.Fprintln(stderr, "no service has config yet; natsmesh apply -f FILE stores some")
	}
	for i, e := range list {
		if i > 0 {
			fmt.Fprintln(stdout, "---")
		}
		if err := writeYAML(stdout, e); err != nil {
			return err
		}
	}
	return nil
}

func runConfigHistory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config history", "config history NAME [flags]", fmt.Sprintf(`
Lists the revisions of service NAME's config document that the bucket keeps
(the last %d, deletes included), oldest first: revision, when it was written,
and whether it put a document or deleted it. natsmesh config rollback NAME
REVISION makes one of them current again.`, config.History), stderr)
	var sf storeFlags
	sf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts, documents included, instead of a table")
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one service NAME, got %d arguments (see natsmesh config history --help)", len(pos))
	}
	if err := serviceArg(pos[0]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *sf.timeout)
	defer cancel()
	st, _, done, err := sf.open(ctx, "natsmesh-config")
	if err != nil {
		return err
	}
	defer done()
	h, err := st.History(ctx, pos[0])
	if err != nil {
		return err
	}
	if *asJSON {
		all := make([]jsonEntry, len(h))
		for i, e := range h {
			all[i] = toJSON(e)
		}
		return json.NewEncoder(stdout).Encode(all)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REVISION\tTIME\tOPERATION")
	for _, e := range h {
		op := string(e.Op)
		if e.Invalid != nil {
			op += " (not a valid document)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", e.Revision, formatTime(e.Time), op)
	}
	return tw.Flush()
}

func runConfigRollback(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config rollback", "config rollback NAME REVISION [flags]", `
Makes the document of revision REVISION of service NAME (see natsmesh config
history NAME) its current config again, by writing it as a new revision, with
compare-and-set so that a change made meanwhile by someone else is not
overwritten. Prints the new revision. Every proxy calling NAME applies it at
once.`, stderr)
	var sf storeFlags
	sf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("want a service NAME and a REVISION, got %d arguments (see natsmesh config rollback --help)", len(pos))
	}
	if err := serviceArg(pos[0]); err != nil {
		return err
	}
	rev, err := strconv.ParseUint(pos[1], 10, 64)
	if err != nil || rev == 0 {
		return usagef("REVISION %q is not a revision number; natsmesh config history %s lists them", pos[1], pos[0])
	}
	ctx, cancel := context.WithTimeout(ctx, *sf.timeout)
	defer cancel()
	st, _, done, err := sf.open(ctx, "natsmesh-config")
	if err != nil {
		return err
	}
	defer done()
	res, err := st.Rollback(ctx, pos[0], rev)
	if errors.Is(err, config.ErrConflict) {
		return fmt.Errorf("%s; run the rollback again after checking `natsmesh config get %s`", sentence(err), pos[0])
	}
	if err != nil {
		return err
	}
	if res.Unchanged {
		fmt.Fprintf(stdout, "%s: unchanged (revision %d already has the document of revision %d)\n", res.Service, res.Revision, rev)
		return nil
	}
	fmt.Fprintf(stdout, "%s: rolled back to revision %d as revision %d\n", res.Service, rev, res.Revision)
	return nil
}

func runConfigDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("config delete", "config delete NAME [flags]", `
Deletes the config document of service NAME: every proxy calling it goes back
to its own defaults (its sidecar flags). The history stays, so natsmesh config
rollback can bring the document back.`, stderr)
	var sf storeFlags
	sf.register(fs)
	pos, err := parse(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want one service NAME, got %d arguments (see natsmesh config delete --help)", len(pos))
	}
	if err := serviceArg(pos[0]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *sf.timeout)
	defer cancel()
	st, _, done, err := sf.open(ctx, "natsmesh-config")
	if err != nil {
		return err
	}
	defer done()
	cur, err := st.Get(ctx, pos[0])
	if err != nil {
		return err
	}
	rev, err := st.Delete(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: deleted (revision %d); `natsmesh config rollback %s %d` brings it back\n", pos[0], rev, pos[0], cur.Revision)
	return nil
}
