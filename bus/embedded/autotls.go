package embedded

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Lifetimes of the certificates AutoTLS makes.
const (
	AutoCALifetime   = 10 * 365 * 24 * time.Hour
	AutoCertLifetime = 365 * 24 * time.Hour
)

// ErrAutoTLS is an AutoTLS failure: a file it cannot read, parse or write.
var ErrAutoTLS = errors.New("embedded: automatic TLS")

// AutoTLSConfig says where AutoTLS keeps its files and which names the
// server's certificate must cover.
type AutoTLSConfig struct {
	// Dir holds the files (created 0700 when missing): ca.pem, ca-key.pem,
	// server.pem, server-key.pem; the keys are 0600.
	Dir string
	// Hosts the server certificate names besides 127.0.0.1, ::1, localhost
	// and the machine's host name: IP addresses or DNS names. Empty strings
	// and unspecified addresses (0.0.0.0, ::) are skipped.
	Hosts []string
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// AutoTLSFiles are the files AutoTLS keeps, and what it made this time.
type AutoTLSFiles struct {
	CAFile, CertFile, KeyFile string
	// NewCA and NewCert report that the CA and the server certificate
	// were made by this call rather than reused.
	NewCA, NewCert bool
}

// TLS is the server side of the files: the server's certificate and key.
func (f AutoTLSFiles) TLS() *TLS { return &TLS{CertFile: f.CertFile, KeyFile: f.KeyFile} }

// AutoTLS keeps a private CA (ECDSA P-256, valid 10 years) and a server
// certificate it signs (valid 1 year) in cfg.Dir. The first call makes
// both; later calls reuse them, and make a new server certificate when the
// one there has expired, will expire within a day, lacks one of the hosts
// or is not the CA's. A CA that is there but cannot be read, or has
// expired, is an error: clients trust it, so it is never replaced silently.
func AutoTLS(cfg AutoTLSConfig) (AutoTLSFiles, error) {
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	f := AutoTLSFiles{
		CAFile:   filepath.Join(cfg.Dir, "ca.pem"),
		CertFile: filepath.Join(cfg.Dir, "server.pem"),
		KeyFile:  filepath.Join(cfg.Dir, "server-key.pem"),
	}
	caKeyFile := filepath.Join(cfg.Dir, "ca-key.pem")
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return f, fmt.Errorf("%w: AutoTLSConfig.Dir: %w", ErrAutoTLS, err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return f, fmt.Errorf("%w: AutoTLSConfig.Dir: %w", ErrAutoTLS, err)
	}
	ca, caKey, err := loadCA(f.CAFile, caKeyFile, now())
	if err == errNoCA {
		ca, caKey, err = newCA(f.CAFile, caKeyFile, now())
		f.NewCA = true
	}
	if err != nil {
		return f, err
	}
	hosts := autoHosts(cfg.Hosts)
	if !f.NewCA && certCovers(f.CertFile, f.KeyFile, ca, hosts, now()) {
		return f, nil
	}
	f.NewCert = true
	return f, newServerCert(f.CertFile, f.KeyFile, ca, caKey, hosts, now())
}

// autoHosts are the names of every automatic server certificate and
// extra, normalized, sorted and without duplicates.
func autoHosts(extra []string) []string {
	names := []string{"127.0.0.1", "::1", "localhost"}
	if h, err := os.Hostname(); err == nil {
		names = append(names, h)
	}
	var hosts []string
	for _, h := range append(names, extra...) {
		h = strings.TrimSuffix(strings.ToLower(h), ".")
		if ip := net.ParseIP(h); h == "" || ip != nil && ip.IsUnspecified() {
			continue
		}
		hosts = append(hosts, h)
	}
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// errNoCA is loadCA's answer when neither file of the CA is there.
var errNoCA = errors.New("embedded: no CA yet")

// loadCA reads the CA certificate and key; errNoCA when neither file is
// there.
func loadCA(certFile, keyFile string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	if errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist) {
		return nil, nil, errNoCA
	}
	fail := func(err error) (*x509.Certificate, *ecdsa.PrivateKey, error) {
		return nil, nil, fmt.Errorf("%w: the CA in %s is unusable (remove the directory to make a new one, and give clients the new ca.pem): %w", ErrAutoTLS, filepath.Dir(certFile), err)
	}
	ca, err := readCert(certFile)
	if err != nil {
		return fail(err)
	}
	key, err := readKey(keyFile)
	if err != nil {
		return fail(err)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return fail(errors.New("ca-key.pem is not the key of ca.pem"))
	}
	if !ca.IsCA || now.After(ca.NotAfter) {
		return fail(fmt.Errorf("ca.pem is no CA or expired on %s", ca.NotAfter.Format(time.DateOnly)))
	}
	return ca, key, nil
}

// certCovers reports whether the certificate in certFile has its key in
// keyFile, is ca's, is valid for a day more at least, and names every host.
func certCovers(certFile, keyFile string, ca *x509.Certificate, hosts []string, now time.Time) bool {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return false
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || c.CheckSignatureFrom(ca) != nil || now.Add(24*time.Hour).After(c.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func newCA(certFile, keyFile string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"natsmesh"}, CommonName: "natsmesh CA " + host},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(AutoCALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	key, der, err := issue(tmpl, nil, nil, certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func newServerCert(certFile, keyFile string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string, now time.Time) error {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"natsmesh"}, CommonName: "natsmesh server"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(AutoCertLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	_, _, err := issue(tmpl, ca, caKey, certFile, keyFile)
	return err
}

// issue makes a P-256 key and a certificate of tmpl for it, signed by
// parent's key (self-signed when parent is nil), and writes both.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, certFile, keyFile string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: generate key: %w", ErrAutoTLS, err)
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		return nil, nil, fmt.Errorf("%w: serial number: %w", ErrAutoTLS, err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: create certificate: %w", ErrAutoTLS, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: encode key: %w", ErrAutoTLS, err)
	}
	// The key first: a certificate on disk always has its key beside it.
	if err := writePEM(keyFile, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	return key, der, nil
}

// writePEM replaces file with one PEM block, atomically.
func writePEM(file, typ string, der []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".tmp-*")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrAutoTLS, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	err = pem.Encode(tmp, &pem.Block{Type: typ, Bytes: der})
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), file)
	}
	if err != nil {
		return fmt.Errorf("%w: write %s: %w", ErrAutoTLS, file, err)
	}
	return nil
}

func readCert(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return x509.ParseCertificate(block.Bytes)
}

func readKey(file string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%s holds no PEM private key", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds no ECDSA key", file)
	}
	return ek, nil
}
