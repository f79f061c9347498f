package identity_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/identity"
)

// startTrusted starts an embedded server that trusts a's accounts only.
func startTrusted(t *testing.T, a *identity.Authority) *embedded.Server {
	t.Helper()
	tr := embedded.Trust(a.Trust())
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: t.TempDir(), Trust: &tr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// connectWith connects with creds; errs receives the asynchronous errors
// (permission violations) of the connection.
func connectWith(t *testing.T, s *embedded.Server, creds []byte, errs chan<- error) (*nats.Conn, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "user.creds")
	if err := identity.WriteCreds(file, creds); err != nil {
		t.Fatal(err)
	}
	opts := []nats.Option{nats.UserCredentials(file), nats.MaxReconnects(0)}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

// Open creates the trust roots once, readable by their owner only, and
// loads the same ones afterwards.
func TestOpenKeepsItsKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "trust")
	a, err := identity.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("trust directory: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Fatalf("%d files in the trust directory, want 3 (operator, system account, mesh account)", len(entries))
	}
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	b, err := identity.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.Trust().SystemAccount != b.Trust().SystemAccount || len(b.Trust().Accounts) != 2 {
		t.Errorf("a second Open has other keys: system %s vs %s", a.Trust().SystemAccount, b.Trust().SystemAccount)
	}
	for pub := range a.Trust().Accounts {
		if _, ok := b.Trust().Accounts[pub]; !ok {
			t.Errorf("account %s is gone after a second Open", pub)
		}
	}

	// A key file others can read is refused, not used.
	if err := os.Chmod(filepath.Join(dir, entries[0].Name()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Open(dir); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("Open with a key readable by others: %v; want an error asking for 0600", err)
	}
}

// A server that trusts the Authority refuses anonymous clients and users
// another Authority signed, accepts its own, and enforces their
// permissions; JetStream works for the mesh account.
func TestTrustedServer(t *testing.T) {
	a, err := identity.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := startTrusted(t, a)

	if nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client connected to a trusted server")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("anonymous connect: %v, want an authorization violation", err)
	}

	other, err := identity.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Issue("ratings", identity.All)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connectWith(t, s, foreign, nil); err == nil {
		t.Fatal("a user another authority signed connected")
	}

	admin, err := a.Issue("admin", identity.All)
	if err != nil {
		t.Fatal(err)
	}
	anc, err := connectWith(t, s, admin, nil)
	if err != nil {
		t.Fatalf("the admin cannot connect: %v", err)
	}
	js, err := anc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(&nats.KeyValueConfig{Bucket: "trust_test"}); err != nil {
		t.Fatalf("JetStream for the mesh account: %v", err)
	}

	// A service's user may publish its own heartbeats and not another's.
	creds, err := a.Issue("ratings", identity.Permissions{Publish: []string{"mesh.hb.ratings.>"}, Subscribe: []string{"_INBOX.ratings.>"}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	rnc, err := connectWith(t, s, creds, errs)
	if err != nil {
		t.Fatalf("ratings cannot connect: %v", err)
	}
	seen, err := anc.SubscribeSync("mesh.hb.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := anc.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = rnc.Publish("mesh.hb.reviews.forged", []byte("{}"))
	_ = rnc.Publish("mesh.hb.ratings.r1", []byte("{}"))
	_ = rnc.Flush()
	m, err := seen.NextMsg(5 * time.Second)
	if err != nil || m.Subject != "mesh.hb.ratings.r1" {
		t.Fatalf("first heartbeat seen: %v %v; want ratings' own only", m, err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("ratings' forged heartbeat: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the server did not refuse ratings' heartbeat for reviews")
	}
	if _, err := rnc.SubscribeSync(">"); err == nil {
		_ = rnc.Flush()
		select {
		case err := <-errs:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("ratings subscribing to everything: %v, want a permissions violation", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("the server let ratings subscribe to every subject")
		}
	}
}

// Issue refuses a user that would be allowed nothing, or has no name.
func TestIssueRejects(t *testing.T) {
	a, err := identity.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		perms identity.Permissions
	}{
		{"", identity.All},
		{"a b", identity.All},
		{"nothing", identity.Permissions{}},
	} {
		if _, err := a.Issue(tc.name, tc.perms); !errors.Is(err, identity.ErrInvalid) {
			t.Errorf("Issue(%q, %+v): %v, want %v", tc.name, tc.perms, err, identity.ErrInvalid)
		}
	}
}
