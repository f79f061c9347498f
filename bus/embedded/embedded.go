// Package embedded runs nats-server inside the natsmesh process, with JetStream
// on, for `natsmesh server`, `natsmesh demo`, tests and benchmarks, and exposes
// its monitoring figures to Prometheus (NATSCollector). Libraries never import
// it: they take a *nats.Conn to whichever server the program chose.
package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/natsmesh/natsmesh/bus"
)

// DefaultListen is where natsmesh server listens for NATS clients.
const DefaultListen = "127.0.0.1:4222"

// Errors of Start a program maps to its own options.
var (
	ErrListen  = errors.New("embedded: cannot listen on")
	ErrDataDir = errors.New("embedded: cannot create data directory")
)

// ServerPingInterval is how often the embedded server pings its clients.
const ServerPingInterval = 2 * time.Second

// Trust is what a server in operator mode trusts: the operator's JWT, the
// system account's public key, and every account's JWT by public key (for
// its memory resolver). identity.Trust converts to it.
type Trust struct {
	Operator      string
	SystemAccount string
	Accounts      map[string]string
}

// Config configures the embedded nats-server. The zero value listens on
// DefaultListen and stores JetStream data under DefaultDataDir().
type Config struct {
	// Host and Port to listen on. Port -1 picks a free random port (tests);
	// Port 0 means 4222.
	Host string
	Port int
	// DataDir holds JetStream's storage.
	DataDir string
	// Name is the server name shown to clients; defaults to "natsmesh".
	Name string
	// Logger, when set, receives the server's log lines.
	Logger server.Logger
	// Debug and Trace turn on the server's verbose logs (with Logger).
	Debug, Trace bool
	// ReadyTimeout bounds the wait for the listener; defaults to 10 s.
	ReadyTimeout time.Duration
	// Trust, if set, runs the server in operator mode with a memory
	// resolver: it accepts only users signed by the trusted accounts
	// (identity.Authority issues them), and refuses anonymous clients.
	Trust *Trust
	// Cluster, if set, makes the server one of a cluster of servers joined
	// by routes, with JetStream clustered; Name must then be unique in it.
	Cluster *Cluster
	// TLS, if set, makes the client port TLS only (and, with
	// TLS.ClientCAFile, asks clients for certificates). Nil is plaintext.
	TLS *TLS
}

// Cluster is how a server joins its cluster: the cluster's name, the
// address it takes routes on, the route URLs of the others, and the route
// credentials every server of the cluster shares.
type Cluster struct {
	Name           string
	Host           string
	Port           int // -1: a free port
	Routes         []*url.URL
	User, Password string
}

// Server is a running embedded nats-server with JetStream enabled.
type Server struct {
	ns  *server.Server
	tls *TLS // nil: plaintext
}

// ParseListen splits "host:port" for Config; an empty host means 127.0.0.1.
func ParseListen(addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("embedded: listen address %q is not host:port (for example %s): %w", addr, DefaultListen, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("embedded: listen address %q has an invalid port; use 0-65535", addr)
	}
	if h == "" {
		h = "127.0.0.1"
	}
	if port == 0 {
		port = -1 // nats-server: 0 means the default port, -1 a random one
	}
	return h, port, nil
}

// DefaultDataDir is bus.StateDir(): $XDG_STATE_HOME/natsmesh, else
// ~/.local/state/natsmesh.
func DefaultDataDir() string { return bus.StateDir() }

// Start starts an embedded nats-server and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = server.DEFAULT_PORT
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir()
	}
	if cfg.Name == "" {
		cfg.Name = "natsmesh"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w %s (Config.DataDir): %w", ErrDataDir, cfg.DataDir, err)
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
		NoLog:      cfg.Logger == nil,
		Debug:      cfg.Debug,
		Trace:      cfg.Trace,
		// No HTTP monitoring port by default: natsmesh exposes what matters itself.
		HTTPPort: 0,
		// A client that stops answering (a hung process, a frozen VM) is
		// dropped within 4-6 s, and with it its queue subscriptions, so
		// calls stop going to a hung instance (nats-server's default: 2 min
		// × 2).
		PingInterval: ServerPingInterval,
		MaxPingsOut:  2,
	}
	if cfg.Trust != nil {
		if err := trust(opts, cfg.Trust); err != nil {
			return nil, err
		}
	}
	if cfg.TLS != nil {
		if err := tlsOptions(opts, cfg.TLS); err != nil {
			return nil, err
		}
	}
	if c := cfg.Cluster; c != nil {
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: c.Host, Port: c.Port, Username: c.User, Password: c.Password}
		for _, r := range c.Routes {
			u := *r
			u.User = url.UserPassword(c.User, c.Password)
			opts.Routes = append(opts.Routes, &u)
		}
	}
	if cfg.Port > 0 {
		// Fail with a clear message instead of nats-server's own log line.
		l, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)))
		if err != nil {
			return nil, fmt.Errorf("%w %s:%d (is another server running? Config.Host, Config.Port): %w", ErrListen, cfg.Host, cfg.Port, err)
		}
		l.Close()
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded: configure embedded NATS server: %w", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(cfg.Logger, cfg.Debug, cfg.Trace, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("embedded: embedded NATS server did not become ready; check that the data directory is writable and the port is free")
	}
	return &Server{ns: ns, tls: cfg.TLS}, nil
}

// trust puts the server in operator mode: it trusts t's operator, resolves
// t's accounts from memory, and the system account is t's.
func trust(opts *server.Options, t *Trust) error {
	oc, err := jwt.DecodeOperatorClaims(t.Operator)
	if err != nil {
		return fmt.Errorf("embedded: Config.Trust.Operator is no operator JWT: %w", err)
	}
	r := &server.MemAccResolver{}
	for pub, token := range t.Accounts {
		if err := r.Store(pub, token); err != nil {
			return fmt.Errorf("embedded: Config.Trust.Accounts[%s]: %w", pub, err)
		}
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{oc}
	opts.AccountResolver = r
	opts.SystemAccount = t.SystemAccount
	return nil
}

// RouteAddr is the address the server takes routes from its cluster on,
// nil without a cluster.
func (s *Server) RouteAddr() net.Addr {
	if a := s.ns.ClusterAddr(); a != nil {
		return a
	}
	return nil
}

// ClientURL is the URL clients use to reach the server: nats://, or tls://
// when it serves TLS.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the listening TCP address.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// NATS exposes the underlying nats-server, for monitoring.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server and waits until it is down. Safe to call twice.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// SlogLogger adapts a slog.Logger to the embedded server's logger.
func SlogLogger(l *slog.Logger) server.Logger { return slogLogger{l} }

type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Noticef(f string, a ...any) { s.l.Info(fmt.Sprintf(f, a...)) }
func (s slogLogger) Warnf(f string, a ...any)   { s.l.Warn(fmt.Sprintf(f, a...)) }
func (s slogLogger) Fatalf(f string, a ...any)  { s.l.Error(fmt.Sprintf(f, a...)) }
func (s slogLogger) Errorf(f string, a ...any)  { s.l.Error(fmt.Sprintf(f, a...)) }
func (s slogLogger) Debugf(f string, a ...any)  { s.l.Debug(fmt.Sprintf(f, a...)) }
func (s slogLogger) Tracef(f string, a ...any)  { s.l.Debug(fmt.Sprintf(f, a...)) }
