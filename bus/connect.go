package bus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// StateDir is where natsmesh keeps its state on this machine:
// $XDG_STATE_HOME/natsmesh, else ~/.local/state/natsmesh. natsmesh server
// keeps its data there unless told otherwise, and its admin's credentials
// in AdminCredsFile.
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "natsmesh")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "natsmesh")
	}
	return filepath.Join(os.TempDir(), "natsmesh")
}

// AdminCredsFile is the name of the admin's credentials file in the data
// directory of natsmesh server.
const AdminCredsFile = "admin.creds"

// CredsFromEnv is the credentials file a program connects with when it is
// told none: $NATSMESH_CREDS, else the admin credentials of a natsmesh
// server on this machine with the default data directory, if there are
// any; "" otherwise.
func CredsFromEnv() string {
	if f := os.Getenv("NATSMESH_CREDS"); f != "" {
		return f
	}
	f := filepath.Join(StateDir(), AdminCredsFile)
	if _, err := os.Stat(f); err == nil {
		return f
	}
	return ""
}

// DefaultURL is used when neither --nats nor $NATSMESH_URL is set.
const DefaultURL = "nats://127.0.0.1:4222"

// URLFromEnv returns $NATSMESH_URL, else DefaultURL.
func URLFromEnv() string {
	if u := os.Getenv("NATSMESH_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// ConnectConfig says how to reach NATS. Zero values are the defaults.
type ConnectConfig struct {
	// URL is one server URL or a comma-separated list; defaults to DefaultURL.
	URL string
	// Name is the client name shown in the server's monitoring.
	Name string
	// InboxPrefix is where replies to the connection's requests arrive:
	// Subjects.Inbox of the service it acts for, so that an identity may
	// read its own replies and no one else's. "" is NATS's _INBOX.
	InboxPrefix string

	User, Password string // user/password authentication
	Token          string // token authentication
	CredsFile      string // JWT + nkey credentials file
	NKeySeedFile   string // nkey seed file
	TLSCA          string // CA certificate(s) to verify the server
	TLSCert        string // client certificate (with TLSKey)
	TLSKey         string
	// TLSConfig, when set, is the TLS config to start from (TLSCA, TLSCert
	// and TLSKey add to a copy): for a client that pins its server's
	// certificate, as natsmesh server's own connection does.
	TLSConfig *tls.Config

	// PingInterval is how often the client PINGs its server; 0 is
	// DefaultPingInterval. With MaxPingsOut it bounds how long a hung
	// server (no TCP reset: a stopped process, a frozen machine, a
	// partition) goes unnoticed: between MaxPingsOut and MaxPingsOut+1
	// intervals, after which the client reconnects to another server of
	// its URL list.
	PingInterval time.Duration
	// MaxPingsOut is how many PINGs may go unanswered before the
	// connection counts as stale; 0 is DefaultMaxPingsOut.
	MaxPingsOut int

	// WaitForServer keeps trying when no server is reachable at start instead
	// of failing, so a sidecar can start before its NATS server.
	WaitForServer bool

	// Logger, when set, is told when the connection drops, comes back, and
	// of errors NATS reports asynchronously (a slow consumer, a permission
	// violation).
	Logger *slog.Logger
}

// Reconnection policy: never give up, and come back quickly. A proxy answers
// mesh-unavailable while disconnected rather than queueing requests, so the
// client-side reconnect buffer is disabled.
//
// A hung server is found by PINGs: with the defaults, 4–6 s after it stops
// answering (nats.go's own default, 2 min × 2, is minutes). A PING and its
// PONG are 6 bytes each way, one per connection every 2 s: 100,000
// connections to a server cost it 50,000 tiny messages a second, well within
// what a nats-server handles, and a mesh of a few hundred processes cost
// nothing measurable. On a stale connection nats.go tries the next URL of
// its list first (the failed one goes to the back of the pool), and each
// attempt is bounded by connectTimeout, which covers the dial and the
// server's INFO: a server that accepts TCP but never speaks (a stopped
// process whose kernel still completes the handshake) costs 2 s, not a
// kernel dial timeout.
const (
	// DefaultPingInterval is ConnectConfig.PingInterval's default.
	DefaultPingInterval = 2 * time.Second
	// DefaultMaxPingsOut is ConnectConfig.MaxPingsOut's default.
	DefaultMaxPingsOut = 2

	reconnectWait   = 150 * time.Millisecond
	reconnectJitter = 100 * time.Millisecond // so the wait is at most 250 ms
	connectTimeout  = 2 * time.Second
)

// pings are the PING options the config asks for.
func (c ConnectConfig) pings() ([]nats.Option, error) {
	interval, max := c.PingInterval, c.MaxPingsOut
	if interval < 0 {
		return nil, fmt.Errorf("bus: PingInterval %s: want a positive duration, or 0 for %s", interval, DefaultPingInterval)
	}
	if max < 0 {
		return nil, fmt.Errorf("bus: MaxPingsOut %d: want a positive number, or 0 for %d", max, DefaultMaxPingsOut)
	}
	if interval == 0 {
		interval = DefaultPingInterval
	}
	if max == 0 {
		max = DefaultMaxPingsOut
	}
	return []nats.Option{nats.PingInterval(interval), nats.MaxPingsOutstanding(max)}, nil
}

// Options turns the config into nats.go options.
func (c ConnectConfig) Options() ([]nats.Option, error) {
	opts, err := c.pings()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		nats.Name(c.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(reconnectWait),
		nats.ReconnectJitter(reconnectJitter, reconnectJitter),
		nats.ReconnectBufSize(-1),
		nats.Timeout(connectTimeout),
	)
	if c.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	if c.WaitForServer {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if c.Logger != nil {
		opts = append(opts, logHandlers(c.Logger)...)
	}
	if c.User != "" || c.Password != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	if c.Token != "" {
		opts = append(opts, nats.Token(c.Token))
	}
	if c.CredsFile != "" {
		if _, err := os.Stat(c.CredsFile); err != nil {
			return nil, fmt.Errorf("bus: credentials file: %w", err)
		}
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	}
	if c.NKeySeedFile != "" {
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("bus: nkey seed file %s: %w", c.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if c.TLSConfig != nil {
		opts = append(opts, nats.Secure(c.TLSConfig.Clone()))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("bus: --tls-cert and --tls-key must be given together")
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// authError reports whether err is NATS refusing a connection's credentials.
func authError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAuthExpired)
}

// logHandlers tell l when the connection drops and comes back, and of the
// errors NATS reports asynchronously. A failed attempt is a debug line,
// except one TLS refuses: that is a warning with what to do, as retrying
// will not cure it (nats.go reports the first failed attempt of a client
// that waits for its server, not the ones after it).
func logHandlers(l *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.ConnectHandler(func(nc *nats.Conn) {
			l.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				l.Warn("disconnected from NATS; reconnecting", "error", err)
			} else if !nc.IsClosed() {
				l.Warn("disconnected from NATS; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			l.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			if hint := tlsHint(err); hint != "" {
				l.Warn("cannot connect to NATS: "+hint, "error", err)
				return
			}
			if authError(err) {
				l.Error("NATS refuses this process's credentials (revoked, expired or another mesh's); it keeps trying, but needs new ones", "error", err)
				return
			}
			l.Debug("reconnect attempt failed", "error", err)
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				l.Error("NATS error", "subject", sub.Subject, "error", err)
				return
			}
			l.Error("NATS error", "error", err)
		}),
	}
}

// Connect dials NATS with the mesh's connection policy. Extra options are
// applied after the config's, so they win.
func Connect(c ConnectConfig, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := c.Options()
	if err != nil {
		return nil, err
	}
	url := c.URL
	if url == "" {
		url = DefaultURL
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		if hint := tlsHint(err); hint != "" {
			return nil, fmt.Errorf("bus: cannot connect to NATS at %s: %s: %w", url, hint, err)
		}
		return nil, fmt.Errorf("bus: cannot connect to NATS at %s (start one with `natsmesh server`, or point --nats / NATSMESH_URL at yours): %w", url, err)
	}
	return nc, nil
}

// tlsHint says, in a sentence, what to do about a failed TLS handshake, ""
// for any other failure.
func tlsHint(err error) string {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknown):
		return "the server speaks TLS with a certificate this client cannot verify; pass --tls-ca with the server's CA certificate (the ca.pem `natsmesh server --tls-auto` printed)"
	case errors.As(err, &host):
		return "the server's TLS certificate is not for this address; connect with a host name or IP address the certificate names"
	case errors.As(err, &invalid):
		return "the server's TLS certificate is invalid (expired, or not for a server)"
	case errors.As(err, &verify):
		return "the server's TLS certificate could not be verified; pass --tls-ca with the server's CA certificate"
	case errors.Is(err, nats.ErrSecureConnWanted):
		return "the server does not speak TLS; drop --tls-ca, --tls-cert and --tls-key, or use a tls:// URL of a server that does"
	case strings.Contains(err.Error(), "tls: certificate required"):
		return "the server requires a client certificate; pass --tls-cert and --tls-key with one signed by the server's client CA"
	}
	return ""
}
