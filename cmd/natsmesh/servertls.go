package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"

	"github.com/natsmesh/natsmesh/bus/embedded"
)

// serverTLSHelp is the part of natsmesh server --help about TLS.
const serverTLSHelp = `

TLS: with --tls-cert and --tls-key the embedded server serves TLS only, with
that certificate; --tls-ca then also requires of every client a certificate
signed by that CA (mutual TLS), in addition to credentials where the server
asks for them: a certificate never stands in for credentials, as the JWT
operator mode of NATS that the mesh's identities use has no certificate-only
authentication. The server's own connection trusts exactly
the certificate it serves and, with --tls-ca, presents it as its client
certificate, so that certificate must then be signed by the --tls-ca CA and
allow client authentication. --tls-auto is the one-flag way: on first start
it makes a private CA and a server certificate for this host under
<--data>/tls (keys 0600), reuses them later (with a new server certificate
when it has expired or does not name the --listen host), and prints the
--tls-ca flag clients need. Listening on an address other than loopback
without TLS is refused unless --insecure-plaintext says the network is
trusted.`

// serverTLSFlags are natsmesh server's TLS flags. --tls-cert, --tls-key and
// --tls-ca are the connection flags: with --nats they say how to reach
// that server; without it, how the embedded server serves TLS.
type serverTLSFlags struct {
	nf        *natsFlags
	auto      bool
	plaintext bool
}

func (s *serverTLSFlags) register(fs *flag.FlagSet, nf *natsFlags) {
	s.nf = nf
	fs.BoolVar(&s.auto, "tls-auto", false, "serve TLS with a CA and server certificate made on first start under <--data>/tls and reused later; prints the --tls-ca flag clients need (embedded server only)")
	fs.BoolVar(&s.plaintext, "insecure-plaintext", false, "allow listening on an address other than loopback without TLS, on a network you trust (embedded server only)")
	fs.Lookup("tls-cert").Usage = "the embedded server's TLS certificate file (with --tls-key); with --nats, the client certificate for that server"
	fs.Lookup("tls-key").Usage = "the key file of --tls-cert"
	fs.Lookup("tls-ca").Usage = "the CA certificate file whose client certificates the embedded server requires (mutual TLS, with --tls-cert and --tls-key, in addition to credentials); with --nats, the CA to verify that server"
}

// tls checks the TLS flags and returns the embedded server's TLS, nil for
// plaintext (and always with --nats, when the server embeds none). With
// --tls-auto it makes or reuses the files under dataDir/tls and prints the
// flag clients need.
func (s *serverTLSFlags) tls(embedding bool, host, dataDir string, stdout io.Writer) (*embedded.TLS, error) {
	c := s.nf.cfg
	switch {
	case !embedding && (s.auto || s.plaintext):
		return nil, usagef("--tls-auto and --insecure-plaintext are for the embedded server; with --nats, that server's own config decides")
	case !embedding:
		return nil, nil
	case s.auto && (c.TLSCert != "" || c.TLSKey != ""):
		return nil, usagef("--tls-auto makes the server's certificate; drop --tls-cert and --tls-key, or --tls-auto")
	case s.auto && c.TLSCA != "":
		return nil, usagef("--tls-auto with --tls-ca: requiring client certificates needs a server certificate of your own; give --tls-cert, --tls-key and --tls-ca")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return nil, usagef("--tls-cert and --tls-key must be given together")
	case c.TLSCA != "" && c.TLSCert == "":
		return nil, usagef("--tls-ca: on the embedded server it is the CA of the clients' certificates and needs the server's own (--tls-cert, --tls-key); to verify a NATS server run elsewhere, add --nats URL")
	case s.plaintext && (s.auto || c.TLSCert != ""):
		return nil, usagef("--insecure-plaintext with TLS flags: choose one")
	}
	switch {
	case s.auto:
		return s.autoTLS(host, dataDir, stdout)
	case c.TLSCert != "":
		return &embedded.TLS{CertFile: c.TLSCert, KeyFile: c.TLSKey, ClientCAFile: c.TLSCA}, nil
	case !loopback(host) && !s.plaintext:
		return nil, usagef("listening on %s without TLS would carry the mesh's traffic and credentials in the clear: serve TLS with --tls-cert/--tls-key or --tls-auto, or pass --insecure-plaintext on a network you trust", host)
	}
	return nil, nil
}

func (s *serverTLSFlags) autoTLS(host, dataDir string, stdout io.Writer) (*embedded.TLS, error) {
	f, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: filepath.Join(dataDir, "tls"), Hosts: []string{host}})
	if err != nil {
		return nil, fmt.Errorf("--tls-auto: %w", err)
	}
	made := "made before"
	switch {
	case f.NewCA:
		made = "made now"
	case f.NewCert:
		made = "made before, with a new server certificate"
	}
	fmt.Fprintf(stdout, "natsmesh server TLS: CA %s (%s); clients connect with --tls-ca %s\n", f.CAFile, made, f.CAFile)
	return f.TLS(), nil
}

// loopback reports whether host is localhost or a loopback address
// (127.0.0.0/8, ::1), which no other machine reaches.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
