package embedded_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus/embedded"
)

func readTestCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, file string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// The first call makes a CA and a server certificate with the right
// algorithm, lifetimes, names and file modes.
func TestAutoTLSGenerates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	f, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: dir, Hosts: []string{"10.1.2.3", "Mesh.Example.COM", "0.0.0.0", ""}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if !f.NewCA || !f.NewCert {
		t.Errorf("first call: NewCA %v, NewCert %v; want both", f.NewCA, f.NewCert)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Errorf("directory mode %o, want 700", m)
	}
	for file, want := range map[string]os.FileMode{
		filepath.Join(dir, "ca-key.pem"): 0o600, f.KeyFile: 0o600, f.CAFile: 0o644, f.CertFile: 0o644,
	} {
		if m := mode(t, file); m != want {
			t.Errorf("%s: mode %o, want %o", filepath.Base(file), m, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("%d files in the directory, want 4 (no temporary files left)", len(entries))
	}

	ca := readTestCert(t, f.CAFile)
	if !ca.IsCA || ca.NotAfter.Sub(now) < 10*365*24*time.Hour-time.Minute {
		t.Errorf("CA: IsCA %v, valid until %s; want a CA for 10 years", ca.IsCA, ca.NotAfter)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", ca.PublicKey)
	}
	leaf := readTestCert(t, f.CertFile)
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		t.Errorf("server certificate not signed by the CA: %v", err)
	}
	if d := leaf.NotAfter.Sub(now); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server certificate valid for %s, want a year", d)
	}
	host, _ := os.Hostname()
	for _, h := range []string{"127.0.0.1", "::1", "localhost", host, "10.1.2.3", "mesh.example.com"} {
		if err := leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not name %q: %v", h, err)
		}
	}
	for _, ip := range leaf.IPAddresses {
		if ip.IsUnspecified() {
			t.Errorf("server certificate names %s", ip)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost", CurrentTime: now}); err != nil {
		t.Errorf("server certificate does not verify as a server's: %v", err)
	}
}

// Later calls reuse both; a new host, an expiring certificate or a lost
// key make a new server certificate of the same CA.
func TestAutoTLSReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	now := time.Now()
	clock := func() time.Time { return now }
	first, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: dir, Hosts: []string{"10.1.2.3"}, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(first.CAFile)
	cert, _ := os.ReadFile(first.CertFile)

	again := func(name string, hosts []string, wantNewCert bool) {
		t.Helper()
		f, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: dir, Hosts: hosts, Now: clock})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.NewCA {
			t.Errorf("%s: a new CA", name)
		}
		if b, _ := os.ReadFile(f.CAFile); !bytes.Equal(b, ca) {
			t.Errorf("%s: ca.pem changed", name)
		}
		b, _ := os.ReadFile(f.CertFile)
		if changed := !bytes.Equal(b, cert); f.NewCert != wantNewCert || changed != wantNewCert {
			t.Errorf("%s: NewCert %v, file changed %v; want %v", name, f.NewCert, changed, wantNewCert)
		}
		cert = b
	}
	again("same hosts", []string{"10.1.2.3"}, false)
	again("no extra host", nil, false) // the certificate still names every host asked for
	again("new host", []string{"mesh.example.com"}, true)
	if err := leafNames(t, first.CertFile, "mesh.example.com"); err != nil {
		t.Error(err)
	}
	now = now.Add(embedded.AutoCertLifetime)
	again("expiring", []string{"mesh.example.com"}, true)
	if err := os.Remove(first.KeyFile); err != nil {
		t.Fatal(err)
	}
	again("lost key", []string{"mesh.example.com"}, true)
}

func leafNames(t *testing.T, file, host string) error {
	t.Helper()
	return readTestCert(t, file).VerifyHostname(host)
}

// A CA that is there but unusable is an error, never replaced.
func TestAutoTLSBadCA(t *testing.T) {
	for _, tt := range []struct {
		name   string
		damage func(dir string) error
		clock  time.Duration
	}{
		{"corrupt certificate", func(dir string) error { return os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("junk"), 0o644) }, 0},
		{"key lost", func(dir string) error { return os.Remove(filepath.Join(dir, "ca-key.pem")) }, 0},
		{"key of another CA", func(dir string) error {
			other, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: filepath.Join(dir, "other")})
			if err != nil {
				return err
			}
			b, err := os.ReadFile(filepath.Join(filepath.Dir(other.CAFile), "ca-key.pem"))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "ca-key.pem"), b, 0o600)
		}, 0},
		{"expired", func(string) error { return nil }, embedded.AutoCALifetime + time.Hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tls")
			if _, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: dir}); err != nil {
				t.Fatal(err)
			}
			if err := tt.damage(dir); err != nil {
				t.Fatal(err)
			}
			ca, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
			later := time.Now().Add(tt.clock)
			_, err := embedded.AutoTLS(embedded.AutoTLSConfig{Dir: dir, Now: func() time.Time { return later }})
			if !errors.Is(err, embedded.ErrAutoTLS) {
				t.Fatalf("AutoTLS = %v, want an ErrAutoTLS", err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "ca.pem")); !bytes.Equal(b, ca) {
				t.Error("ca.pem was replaced")
			}
		})
	}
}
