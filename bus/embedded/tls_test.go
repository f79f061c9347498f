package embedded_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// startTLS starts a server on a random loopback port with tls.
func startTLS(t *testing.T, tls *embedded.TLS) *embedded.Server {
	t.Helper()
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: t.TempDir(), TLS: tls})
	if err != nil {
		t.Fatalf("Start with TLS: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// autoFiles makes a CA and a server certificate for loopback in a new
// directory.
func autoFiles(t *testing.T) embedded.AutoTLSFiles {
	t.Helper()
	f, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: filepath.Join(t.TempDir(), "tls")})
	if err != nil {
		t.Fatalf("AutoTLS: %v", err)
	}
	return f
}

// testCA is a CA a test issues client certificates from.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // its certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	ca := &testCA{file: filepath.Join(t.TempDir(), name+".pem")}
	var der []byte
	ca.key, der = signCert(t, tmpl, nil, nil)
	ca.cert, _ = x509.ParseCertificate(der)
	writePEMFile(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes a certificate of ca with the extended key usages and names,
// and its key, and returns the two files.
func (ca *testCA) issue(t *testing.T, name string, usages []x509.ExtKeyUsage, ips ...net.IP) (certFile, keyFile string) {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, ExtKeyUsage: usages, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	key, der := signCert(t, tmpl, ca.cert, ca.key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEMFile(t, certFile, "CERTIFICATE", der)
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEMFile(t, keyFile, "PRIVATE KEY", kb)
	return certFile, keyFile
}

func signCert(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func writePEMFile(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A client that does not speak TLS gets no further than the server's INFO,
// which says TLS is required.
func TestTLSRefusesPlaintext(t *testing.T) {
	s := startTLS(t, autoFiles(t).TLS())
	if !strings.HasPrefix(s.ClientURL(), "tls://127.0.0.1:") {
		t.Errorf("ClientURL = %q, want tls://127.0.0.1:...", s.ClientURL())
	}
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("INFO = %q, %v; want tls_required", info, err)
	}
	if _, err := c.Write([]byte("CONNECT {\"verbose\":false}\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err == nil && strings.HasPrefix(line, "PONG") {
		t.Fatalf("plaintext client got %q from a TLS server", line)
	}
}

// A client of the mesh that does not know the server's CA is told, in the
// error, to pass --tls-ca.
func TestTLSClientWithoutCA(t *testing.T) {
	s := startTLS(t, autoFiles(t).TLS())
	for _, url := range []string{s.ClientURL(), strings.Replace(s.ClientURL(), "tls://", "nats://", 1)} {
		nc, err := bus.Connect(bus.ConnectConfig{URL: url})
		if err == nil {
			nc.Close()
			t.Fatalf("Connect to %s without the CA succeeded", url)
		}
		if !strings.Contains(err.Error(), "pass --tls-ca") || strings.Contains(err.Error(), "start one with") {
			t.Errorf("Connect to %s: %q; want the --tls-ca advice only", url, err)
		}
	}
}

// With the CA, tls:// and nats:// URLs both connect over TLS.
func TestTLSClientWithCA(t *testing.T) {
	f := autoFiles(t)
	s := startTLS(t, f.TLS())
	for _, url := range []string{s.ClientURL(), strings.Replace(s.ClientURL(), "tls://", "nats://", 1)} {
		nc, err := bus.Connect(bus.ConnectConfig{URL: url, TLSCA: f.CAFile})
		if err != nil {
			t.Fatalf("Connect to %s with the CA: %v", url, err)
		}
		if _, err := nc.TLSConnectionState(); err != nil {
			t.Errorf("%s: not a TLS connection: %v", url, err)
		}
		if err := nc.Flush(); err != nil {
			t.Errorf("%s: Flush: %v", url, err)
		}
		nc.Close()
	}
	// Another CA's clients do not trust this server.
	other := autoFiles(t)
	if nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSCA: other.CAFile}); err == nil {
		nc.Close()
		t.Error("a client trusting another CA connected")
	}
}

// A TLS client of a plaintext server is told the server does not speak TLS.
func TestTLSClientOfPlaintextServer(t *testing.T) {
	s := startServer(t, t.TempDir())
	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSCA: autoFiles(t).CAFile})
	if err == nil {
		nc.Close()
		t.Fatal("TLS client connected to a plaintext server")
	}
	if !errors.Is(err, nats.ErrSecureConnWanted) || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Errorf("error %q", err)
	}
}

// With a client CA the server asks every client for a certificate signed by
// it: none, or another CA's, is refused.
func TestMutualTLS(t *testing.T) {
	f := autoFiles(t)
	clients := newTestCA(t, "clients")
	tls := f.TLS()
	tls.ClientCAFile = clients.file
	s := startTLS(t, tls)
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}

	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSCA: f.CAFile})
	if err == nil {
		err = nc.Flush() // TLS 1.3: the server's refusal may follow the handshake
		nc.Close()
	}
	if err == nil {
		t.Fatal("a client without a certificate connected")
	}

	stranger := newTestCA(t, "stranger")
	cert, key := stranger.issue(t, "stranger", client)
	nc, err = bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSCA: f.CAFile, TLSCert: cert, TLSKey: key})
	if err == nil {
		err = nc.Flush()
		nc.Close()
	}
	if err == nil {
		t.Fatal("a client with another CA's certificate connected")
	}

	cert, key = clients.issue(t, "alice", client)
	nc, err = bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSCA: f.CAFile, TLSCert: cert, TLSKey: key})
	if err != nil {
		t.Fatalf("a client with a certificate of the client CA: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

// ClientTLS connects a client of the same process whatever CA signed the
// server's certificate; with mutual TLS it presents the server's
// certificate, which must then be a client certificate of the client CA.
func TestClientTLS(t *testing.T) {
	plain := startServer(t, t.TempDir())
	if c, err := plain.ClientTLS(); c != nil || err != nil {
		t.Errorf("ClientTLS of a plaintext server = %v, %v; want nil, nil", c, err)
	}

	f := autoFiles(t)
	s := startTLS(t, f.TLS())
	connectSelf(t, s)

	ca := newTestCA(t, "mesh")
	loopback := net.ParseIP("127.0.0.1")
	cert, key := ca.issue(t, "both", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, loopback)
	s = startTLS(t, &embedded.TLS{CertFile: cert, KeyFile: key, ClientCAFile: ca.file})
	connectSelf(t, s)

	cert, key = ca.issue(t, "server-only", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, loopback)
	s = startTLS(t, &embedded.TLS{CertFile: cert, KeyFile: key, ClientCAFile: ca.file})
	if _, err := s.ClientTLS(); !errors.Is(err, embedded.ErrTLS) || !strings.Contains(err.Error(), "client authentication") {
		t.Errorf("ClientTLS with a server-only certificate: %v; want an ErrTLS about client authentication", err)
	}
}

func connectSelf(t *testing.T, s *embedded.Server) {
	t.Helper()
	c, err := s.ClientTLS()
	if err != nil || c == nil {
		t.Fatalf("ClientTLS = %v, %v", c, err)
	}
	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), TLSConfig: c})
	if err != nil {
		t.Fatalf("Connect with ClientTLS: %v", err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func TestTLSBadFiles(t *testing.T) {
	f := autoFiles(t)
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, tt := range []struct {
		name  string
		tls   embedded.TLS
		field string
	}{
		{"missing certificate", embedded.TLS{CertFile: missing, KeyFile: f.KeyFile}, "Config.TLS.CertFile"},
		{"key of another certificate", embedded.TLS{CertFile: f.CertFile, KeyFile: f.CertFile}, "Config.TLS.KeyFile"},
		{"missing client CA", embedded.TLS{CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: missing}, "Config.TLS.ClientCAFile"},
		{"client CA not PEM", embedded.TLS{CertFile: f.CertFile, KeyFile: f.KeyFile, ClientCAFile: f.KeyFile}, "Config.TLS.ClientCAFile"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := embedded.Start(embedded.Config{Port: -1, DataDir: t.TempDir(), TLS: &tt.tls})
			if err == nil {
				s.Shutdown()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, embedded.ErrTLS) || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q; want an ErrTLS naming %s", err, tt.field)
			}
		})
	}
}

// A client that waits for its server and is refused by TLS warns, with
// what to do, and stays disconnected.
func TestTLSWaitingClientWarns(t *testing.T) {
	s := startTLS(t, autoFiles(t).TLS())
	var logs meshtest.LogBuffer
	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), WaitForServer: true, Logger: logs.Logger()})
	if err != nil {
		t.Fatalf("Connect with WaitForServer: %v", err)
	}
	defer nc.Close()
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "level=WARN msg=\"cannot connect to NATS: the server speaks TLS") || !strings.Contains(logs.String(), "pass --tls-ca") {
			return fmt.Errorf("no warning advising --tls-ca in:\n%s", logs.String())
		}
		return nil
	})
	if nc.IsConnected() {
		t.Error("connected without the CA")
	}
}
