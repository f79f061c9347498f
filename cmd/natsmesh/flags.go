package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/proxy/httpguard"
)

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitError ends the command with a status, its message already printed.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// newFlagSet makes a FlagSet for a command. parse prints its help (synopsis,
// description and flags, written as --name) to stdout on --help, and the
// error with the help to stderr on a mistake.
func newFlagSet(name, synopsis, description string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: natsmesh %s\n\n%s\n\nFlags:\n", synopsis, strings.TrimSpace(description))
		fs.VisitAll(func(f *flag.Flag) {
			typ, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(w, "  --%s", f.Name)
			if typ != "" {
				fmt.Fprintf(w, " %s", typ)
			}
			fmt.Fprintf(w, "\n      %s", usage)
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
				fmt.Fprintf(w, " (default %q)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
	return fs
}

// parse parses flags that may come before, between or after positional
// arguments, and returns the positional ones.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	var pos []string
	for {
		out := fs.Output()
		fs.SetOutput(io.Discard) // errors are reported once, by run
		err := fs.Parse(args)
		fs.SetOutput(out)
		if err == flag.ErrHelp {
			fs.SetOutput(stdout)
			fs.Usage()
			fs.SetOutput(out)
			return nil, err
		}
		if err != nil {
			// The flag package names flags with one dash; natsmesh's
			// documentation uses two.
			msg := strings.Replace(err.Error(), " -", " --", 1)
			return nil, usagef("%s (see natsmesh %s --help)", msg, fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// optionalService is the service NAME of a command that takes at most one
// positional argument, "" when there is none.
func optionalService(pos []string) (string, error) {
	switch {
	case len(pos) > 1:
		return "", usagef("want at most one service NAME, got %d arguments", len(pos))
	case len(pos) == 0:
		return "", nil
	}
	if err := bus.ValidateName("service", pos[0]); err != nil {
		return "", usageError{err}
	}
	return pos[0], nil
}

// natsFlags are the connection flags every command takes.
type natsFlags struct {
	cfg bus.ConnectConfig
}

func (n *natsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&n.cfg.URL, "nats", bus.URLFromEnv(), "NATS server URL, or a comma-separated list for a cluster (env NATSMESH_URL)")
	fs.StringVar(&n.cfg.User, "user", "", "NATS user name")
	fs.StringVar(&n.cfg.Password, "password", "", "NATS password")
	fs.StringVar(&n.cfg.Token, "token", "", "NATS authentication token")
	fs.StringVar(&n.cfg.CredsFile, "creds", "", "NATS credentials file (JWT and nkey); without it (and without --user, --token or --nkey), $"+credsEnv+", else the admin credentials natsmesh server keeps in its default data directory, "+filepath.Join(embedded.DefaultDataDir(), adminCredsName))
	fs.StringVar(&n.cfg.NKeySeedFile, "nkey", "", "NATS nkey seed file")
	fs.StringVar(&n.cfg.TLSCA, "tls-ca", "", "CA certificate file to verify the NATS server")
	fs.StringVar(&n.cfg.TLSCert, "tls-cert", "", "client certificate file for NATS (with --tls-key)")
	fs.StringVar(&n.cfg.TLSKey, "tls-key", "", "client key file for NATS (with --tls-cert)")
	n.cfg.PingInterval, n.cfg.MaxPingsOut = bus.DefaultPingInterval, bus.DefaultMaxPingsOut
	fs.Var(positiveDuration{&n.cfg.PingInterval}, "ping-interval", "`duration` between the PINGs that check the NATS server still answers; one that leaves more than --max-pings-out unanswered is taken for hung (a stopped process, a frozen machine, a partition) and the client reconnects to another server of --nats")
	fs.Var(positiveInt{&n.cfg.MaxPingsOut}, "max-pings-out", "PINGs that may go unanswered (a positive `int`) before the NATS server is taken for hung: a hung server is left within --ping-interval × (--max-pings-out + 1)")
}

// positiveDuration is a duration flag that refuses zero and negatives.
type positiveDuration struct{ d *time.Duration }

func (p positiveDuration) String() string {
	if p.d == nil {
		return ""
	}
	return p.d.String()
}

func (p positiveDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return errors.New("use a positive duration, such as 2s")
	}
	*p.d = d
	return nil
}

// positiveInt is an int flag that refuses zero and negatives.
type positiveInt struct{ n *int }

func (p positiveInt) String() string {
	if p.n == nil {
		return ""
	}
	return strconv.Itoa(*p.n)
}

func (p positiveInt) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return errors.New("use a positive whole number")
	}
	*p.n = n
	return nil
}

// config is the connection config the flags ask for: without credentials
// of any kind, the default credentials file (defaultCreds).
func (n *natsFlags) config() bus.ConnectConfig {
	c := n.cfg
	if c.CredsFile == "" && c.User == "" && c.Token == "" && c.NKeySeedFile == "" {
		c.CredsFile = defaultCreds()
	}
	return c
}

// connect connects as the flags say, with an error that says what to do
// when the server refuses the credentials.
func (n *natsFlags) connect(extra ...nats.Option) (*nats.Conn, error) {
	c := n.config()
	nc, err := bus.Connect(c, extra...)
	switch {
	case err == nil:
		return nc, nil
	case errors.Is(err, nats.ErrAuthorization) && c.CredsFile == "":
		return nil, fmt.Errorf("the NATS server at %s refuses clients without credentials: pass --creds FILE or set %s (natsmesh server writes its admin credentials to %s in its data directory; natsmesh identity issue makes a service's)", c.URL, credsEnv, adminCredsName)
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAuthExpired):
		return nil, fmt.Errorf("the NATS server at %s refuses the credentials in %s (%v): they are revoked, expired or another mesh's; ask for new ones (natsmesh identity issue), or use the admin credentials in the server's data directory", c.URL, c.CredsFile, errors.Unwrap(err))
	}
	return nil, err
}

// prefixFlag is the subject prefix flag of the commands that address services.
func prefixFlag(fs *flag.FlagSet) *string {
	return fs.String("prefix", bus.DefaultPrefix, "subject prefix of the mesh: tokens of lowercase letters, digits, '-' or '_' joined by '.'")
}

// checkPrefix validates --prefix before anything connects.
func checkPrefix(p string) error {
	if err := bus.ValidatePrefix(p); err != nil {
		return usagef("--prefix: %v", err)
	}
	return nil
}

// logFlags choose the log level.
type logFlags struct{ level string }

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", l.level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

// clientFlags bound the clients of a proxy's HTTP listener.
type clientFlags struct{ l httpguard.Limits }

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&c.l.BodyIdle, "body-idle", httpguard.DefaultBodyIdle, "longest wait for the next byte of a request body before the request is dropped with 408 slow-request")
	fs.Int64Var(&c.l.BodyMinRate, "body-min-rate", httpguard.DefaultBodyMinRate, "bytes a second a request body must average after --body-grace, else 408 slow-request (-1: no minimum)")
	fs.DurationVar(&c.l.BodyGrace, "body-grace", httpguard.DefaultBodyGrace, "how long a request body may take before --body-min-rate applies")
	fs.Int64Var(&c.l.BodyBudget, "body-budget", httpguard.DefaultBodyBudget, "request body bytes the listener holds at once, counting each body's first MiB; a body past it is answered 503 overloaded")
	fs.IntVar(&c.l.MaxConns, "max-conns", httpguard.DefaultMaxConns, "client connections the listener holds at most; more are answered 503 overloaded and closed")
}

func (c *clientFlags) check() error {
	switch {
	case c.l.BodyIdle <= 0:
		return usagef("--body-idle %s: use a positive duration", c.l.BodyIdle)
	case c.l.BodyGrace <= 0:
		return usagef("--body-grace %s: use a positive duration", c.l.BodyGrace)
	case c.l.BodyMinRate == 0 || c.l.BodyMinRate < -1:
		return usagef("--body-min-rate %d: use a positive number of bytes a second, or -1 for no minimum", c.l.BodyMinRate)
	case c.l.BodyBudget < httpguard.MaxBuffered:
		return usagef("--body-budget %d: use at least %d (one body's MiB)", c.l.BodyBudget, httpguard.MaxBuffered)
	case c.l.MaxConns < 1:
		return usagef("--max-conns %d: use at least 1", c.l.MaxConns)
	}
	return nil
}
