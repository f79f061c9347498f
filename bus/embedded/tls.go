package embedded

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrTLS is a TLS config the server cannot use: a certificate, key or CA
// file it cannot read or parse.
var ErrTLS = errors.New("embedded: TLS")

// TLS makes the server's client port TLS only. Clients verify the server
// with the CA that signed CertFile; a client that does not speak TLS is
// refused.
type TLS struct {
	// CertFile is the server's certificate, PEM, the leaf first and then
	// any intermediates; KeyFile its private key.
	CertFile, KeyFile string
	// ClientCAFile, when set, makes the server require of every client a
	// certificate signed by one of the CAs in this PEM file (mutual TLS).
	// The certificate is asked in addition to the client's credentials:
	// it never stands in for them.
	ClientCAFile string
	// Timeout bounds a client's TLS handshake; defaults to 2 s.
	Timeout time.Duration
}

// tlsOptions turns t into nats-server's options, with nats-server's own
// GenTLSConfig (TLS 1.2 at least, its cipher preferences).
func tlsOptions(opts *server.Options, t *TLS) error {
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return fmt.Errorf("%w: Config.TLS.CertFile %s and Config.TLS.KeyFile %s: %w", ErrTLS, t.CertFile, t.KeyFile, err)
	}
	if _, err := x509.ParseCertificate(pair.Certificate[0]); err != nil {
		return fmt.Errorf("%w: Config.TLS.CertFile %s: %w", ErrTLS, t.CertFile, err)
	}
	if t.ClientCAFile != "" {
		if _, err := readPool(t.ClientCAFile); err != nil {
			return fmt.Errorf("%w: Config.TLS.ClientCAFile: %w", ErrTLS, err)
		}
	}
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = server.TLS_TIMEOUT
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: t.CertFile,
		KeyFile:  t.KeyFile,
		CaFile:   t.ClientCAFile,
		Verify:   t.ClientCAFile != "",
		Timeout:  timeout.Seconds(),
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTLS, err)
	}
	opts.TLS = true
	opts.TLSConfig = tc
	opts.TLSVerify = t.ClientCAFile != ""
	opts.TLSTimeout = timeout.Seconds()
	opts.TLSCert, opts.TLSKey, opts.TLSCaCert = t.CertFile, t.KeyFile, t.ClientCAFile
	return nil
}

// readPool reads the PEM certificates of file into a pool.
func readPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// ClientTLS is the TLS config for a client in this process, such as
// natsmesh server's own connection: it trusts exactly the certificate the
// server serves, whichever CA signed it, checking the name the certificate
// gives itself rather than the address dialled (a server on 0.0.0.0 whose
// certificate names only its public host is still reached on 127.0.0.1).
// When the server requires client certificates, the client presents the
// server's own, which must then be signed by a CA of ClientCAFile and
// allow client authentication. Nil, nil when the server serves no TLS.
func (s *Server) ClientTLS() (*tls.Config, error) {
	t := s.tls
	if t == nil {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: Config.TLS.CertFile: %w", ErrTLS, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("%w: Config.TLS.CertFile: %w", ErrTLS, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: x509.NewCertPool()}
	cfg.RootCAs.AddCert(leaf)
	switch {
	case len(leaf.DNSNames) > 0:
		cfg.ServerName = leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		cfg.ServerName = leaf.IPAddresses[0].String()
	default:
		return nil, fmt.Errorf("%w: Config.TLS.CertFile %s names no host or IP address (subject alternative names), so no client can verify it", ErrTLS, t.CertFile)
	}
	if t.ClientCAFile == "" {
		return cfg, nil
	}
	pool, err := readPool(t.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: Config.TLS.ClientCAFile: %w", ErrTLS, err)
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	verify := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := leaf.Verify(verify); err != nil {
		return nil, fmt.Errorf("%w: this process's own connection presents Config.TLS.CertFile as its client certificate, so it must be signed by a CA of Config.TLS.ClientCAFile and allow client authentication: %w", ErrTLS, err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg, nil
}
