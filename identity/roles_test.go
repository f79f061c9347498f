package identity_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/identity"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/registry"
	"github.com/natsmesh/natsmesh/sidecar"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// violations collects a connection's asynchronous errors: the server's
// permission violations.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.errs...)
}

// wait waits for a violation that names subject.
func (v *violations) wait(subject string) error {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range v.all() {
			if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, `"`+subject+`"`) {
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no permissions violation for %q; errors: %q", subject, v.all())
}

// connectAs connects to s as a role's identity issued by a, with the inbox
// prefix the mesh's processes use.
func connectAs(t *testing.T, s *embedded.Server, a *identity.Authority, role identity.Role, name string) (*nats.Conn, *violations) {
	t.Helper()
	creds, err := a.IssueRole(role, name, "")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), name+".creds")
	if err := identity.WriteCreds(file, creds); err != nil {
		t.Fatal(err)
	}
	v := &violations{}
	cfg := bus.ConnectConfig{URL: s.ClientURL(), CredsFile: file, Name: name}
	switch role {
	case identity.Service:
		cfg.InboxPrefix = bus.Subjects{}.Inbox(name)
	case identity.Registry:
		cfg.InboxPrefix = bus.Subjects{}.Inbox(identity.RegistryInbox)
	}
	nc, err := bus.Connect(cfg, nats.ErrorHandler(v.handler), nats.MaxReconnects(0))
	if err != nil {
		t.Fatalf("connect as %s %s: %v", role, name, err)
	}
	t.Cleanup(nc.Close)
	return nc, v
}

// meshOf starts a secure mesh: a trusted server, the config bucket made by
// the admin, a control plane running as a registry identity, and sidecars
// for services a and b running as their own identities.
type secureMesh struct {
	a        *identity.Authority
	s        *embedded.Server
	admin    *nats.Conn
	regViol  *violations
	sideViol map[string]*violations
	outbound map[string]string // service → its sidecar's outbound address
	callers  chan string       // the Mesh-Caller b's app saw
}

func startSecureMesh(t *testing.T) *secureMesh {
	t.Helper()
	a, err := identity.Open(filepath.Join(t.TempDir(), "trust"))
	if err != nil {
		t.Fatal(err)
	}
	m := &secureMesh{a: a, s: startTrusted(t, a), sideViol: map[string]*violations{}, outbound: map[string]string{}, callers: make(chan string, 100)}
	m.admin, _ = connectAs(t, m.s, a, identity.Admin, "admin")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := config.CreateStore(ctx, m.admin, ""); err != nil {
		t.Fatal(err)
	}
	reg, regViol := connectAs(t, m.s, a, identity.Registry, "registry")
	m.regViol = regViol
	cp, err := controlplane.Start(reg, controlplane.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Shutdown(context.Background()) })
	for _, svc := range []string{"a", "b"} {
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case m.callers <- r.Header.Get(bus.HeaderCaller):
			default:
			}
			_, _ = io.WriteString(w, svc)
		}))
		t.Cleanup(app.Close)
		nc, v := connectAs(t, m.s, a, identity.Service, svc)
		m.sideViol[svc] = v
		sc, err := sidecar.Start(nc, sidecar.Config{Service: svc, Upstream: app.URL, Listen: "127.0.0.1:0", Logger: quiet})
		if err != nil {
			t.Fatalf("sidecar %s: %v", svc, err)
		}
		t.Cleanup(func() { _ = sc.Shutdown(context.Background()) })
		m.outbound[svc] = sc.OutboundAddr().String()
	}
	return m
}

// call calls service through from's sidecar.
func (m *secureMesh) call(from, service string, hdr http.Header) (int, string, error) {
	pu, _ := url.Parse("http://" + m.outbound[from])
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 5 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "http://"+service+"/", nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// The mesh works with every process on its least-privilege identity: calls
// both ways, the registry's view and answers, config read by the sidecars,
// and no permission violation anywhere.
func TestSecureMeshWorks(t *testing.T) {
	t.Parallel()
	m := startSecureMesh(t)
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		code, body, err := m.call("a", "b", http.Header{bus.HeaderCaller: {"evil"}})
		if err != nil || code != http.StatusOK || body != "b" {
			return fmt.Errorf("a → b: %d %q %v", code, body, err)
		}
		return nil
	})
	if c := <-m.callers; c != "a" {
		t.Errorf("b's app saw Mesh-Caller %q, want a (the app's own header must not travel)", c)
	}
	if code, body, err := m.call("b", "a", nil); err != nil || code != http.StatusOK || body != "a" {
		t.Errorf("b → a: %d %q %v", code, body, err)
	}
	rc, err := registry.NewClient(m.admin, "")
	if err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		l, err := rc.List(context.Background())
		if err != nil {
			return err
		}
		if len(l.Services) != 2 {
			return fmt.Errorf("the registry lists %+v, want a and b", l.Services)
		}
		return nil
	})
	for name, v := range m.sideViol {
		if errs := v.all(); len(errs) > 0 {
			t.Errorf("sidecar %s had NATS errors: %q", name, errs)
		}
	}
	if errs := m.regViol.all(); len(errs) > 0 {
		t.Errorf("the registry had NATS errors: %q", errs)
	}
}

// With service a's credentials, a rogue client tries each attack on b, on
// the control plane and on other callers: the server refuses every one.
func TestServiceIdentityCannotAttack(t *testing.T) {
	t.Parallel()
	m := startSecureMesh(t)
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		code, _, err := m.call("a", "b", nil)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("a → b: %d %v", code, err)
		}
		return nil
	})
	rogue, v := connectAs(t, m.s, m.a, identity.Service, "a")
	subj := bus.Subjects{Caller: "c"}
	for _, sub := range []struct{ subject, queue string }{
		{">", ""},                       // read everything
		{"mesh.rpc.b.*", ""},            // race b's instances with a plain subscription
		{"mesh.rpc.b.*", "b"},           // join b's queue group
		{"mesh.rpc.b.*.*", "b.v1"},      // join a subset of b
		{"mesh.inst.b.*.*", ""},         // take b's instance calls
		{"mesh.inbox.b.>", ""},          // read b's replies
		{"_INBOX.>", ""},                // read the admin's replies
		{"mesh.stats.*.*", ""},          // read every instance's stats
		{"$JS.API.>", ""},               // answer JetStream's API
		{"$KV.mesh_config.>", ""},       // read puts as they go
		{"mesh.registry.list", ""},      // answer for the registry
		{"mesh.stats.summary", "stats"}, // answer for the stats summary
	} {
		var err error
		if sub.queue != "" {
			_, err = rogue.QueueSubscribe(sub.subject, sub.queue, func(*nats.Msg) {})
		} else {
			_, err = rogue.Subscribe(sub.subject, func(*nats.Msg) {})
		}
		if err != nil {
			t.Fatal(err)
		}
		_ = rogue.Flush()
		if err := v.wait(sub.subject); err != nil {
			t.Errorf("subscribe %s %s: %v", sub.subject, sub.queue, err)
		}
	}
	for _, pub := range []string{
		subj.Call("b"), subj.CallSubset("b", "v1"), subj.Inst("b", "b-1"), // call as c
		"mesh.hb.b.b-phantom", "mesh.bye.b.b-1", "mesh.stats.b.b-1", // forge b's registry and stats
		"$KV.mesh_config.b",                          // overwrite b's config
		"$JS.API.STREAM.PURGE.KV_mesh_config",        // purge the config history
		"$JS.API.STREAM.DELETE.KV_mesh_config",       // delete the bucket
		"$JS.API.STREAM.UPDATE.KV_mesh_config",       // shorten its history
		"$JS.API.STREAM.MSG.DELETE.KV_mesh_config",   // delete one revision
		"$KV." + registry.LeaseBucket + ".mesh",      // steal the registry lease
		"mesh.events.b",                              // forge registry events
		"$SYS.REQ.ACCOUNT." + "X" + ".CLAIMS.UPDATE", // change the account
		"mesh.rpc.b.a.x",                             // a's name inside, another's at the end
	} {
		if err := rogue.Publish(pub, []byte("{}")); err != nil {
			t.Fatal(err)
		}
		_ = rogue.Flush()
		if err := v.wait(pub); err != nil {
			t.Errorf("publish %s: %v", pub, err)
		}
	}
	// A registry identity keeps the registry, and no more: it cannot
	// write config, call services or speak for instances.
	reg, rv := connectAs(t, m.s, m.a, identity.Registry, "registry-rogue")
	for _, pub := range []string{
		"$KV.mesh_config.b", "$JS.API.STREAM.PURGE.KV_mesh_config", "$JS.API.STREAM.DELETE." + "KV_" + registry.LeaseBucket,
		"mesh.hb.b.b-phantom", "mesh.bye.b.b-1", bus.Subjects{Caller: "a"}.Call("b"),
	} {
		if err := reg.Publish(pub, []byte("{}")); err != nil {
			t.Fatal(err)
		}
		_ = reg.Flush()
		if err := rv.wait(pub); err != nil {
			t.Errorf("registry identity publish %s: %v", pub, err)
		}
	}

	// The mesh is as it was: b still serves a, its one instance listed,
	// its config untouched.
	if code, body, err := m.call("a", "b", nil); err != nil || code != http.StatusOK || body != "b" {
		t.Errorf("a → b after the attacks: %d %q %v", code, body, err)
	}
	rc, _ := registry.NewClient(m.admin, "")
	snap, err := rc.Get(context.Background(), "b")
	if err != nil || len(snap.Services["b"]) != 1 {
		t.Errorf("b's instances after the attacks: %+v, %v; want its one instance", snap.Services["b"], err)
	}
	st, err := config.OpenStore(context.Background(), m.admin, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(context.Background(), "b"); !errors.Is(err, config.ErrNotFound) {
		t.Errorf("b's config after the attacks: %v, want none", err)
	}
}

// Revoking an identity disconnects its connections at once and refuses it
// from then on, on the running server and on one started afterwards;
// another identity, and a new credential issued to the same name, still
// connect.
func TestRevoke(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "trust")
	a, err := identity.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := startTrusted(t, a)
	creds, err := a.IssueRole(identity.Service, "reviews", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := writeAndRead(t, creds)
	if err != nil || c.Name != "reviews" || c.Role != identity.Service {
		t.Fatalf("ReadCreds = %+v, %v; want reviews, a service", c, err)
	}
	closed := make(chan struct{})
	victim, err := connectWithOpts(t, s, creds, nats.MaxReconnects(0), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := a.IssueRole(identity.Service, "ratings", "")
	if _, err := connectWith(t, s, other, nil); err != nil {
		t.Fatal(err)
	}

	accountJWT, err := a.Revoke("reviews")
	if err != nil {
		t.Fatal(err)
	}
	sys, _ := a.SystemCreds()
	snc, err := connectWith(t, s, sys, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Push(snc, accountJWT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatalf("the revoked identity's connection is still open: %v", victim.Status())
	}
	if _, err := connectWith(t, s, creds, nil); err == nil {
		t.Fatal("a revoked credential connected")
	}
	if _, err := connectWith(t, s, other, nil); err != nil {
		t.Errorf("another identity after the revocation: %v", err)
	}
	again, _ := a.IssueRole(identity.Service, "reviews", "")
	if _, err := connectWith(t, s, again, nil); err != nil {
		t.Errorf("a credential issued to the name after its revocation: %v", err)
	}
	if _, err := a.Revoke("nosuch"); !errors.Is(err, identity.ErrUnknown) {
		t.Errorf("Revoke(nosuch) = %v, want ErrUnknown", err)
	}

	// A server started later trusts the revocation from the start.
	b, err := identity.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2 := startTrusted(t, b)
	if _, err := connectWith(t, s2, creds, nil); err == nil {
		t.Fatal("a revoked credential connected to a server started after the revocation")
	}
	if _, err := connectWith(t, s2, again, nil); err != nil {
		t.Errorf("the name's new credential on the restarted server: %v", err)
	}
}

func writeAndRead(t *testing.T, creds []byte) (identity.Credential, error) {
	file := filepath.Join(t.TempDir(), "x.creds")
	if err := identity.WriteCreds(file, creds); err != nil {
		t.Fatal(err)
	}
	return identity.ReadCreds(file)
}

func connectWithOpts(t *testing.T, s *embedded.Server, creds []byte, opts ...nats.Option) (*nats.Conn, error) {
	file := filepath.Join(t.TempDir(), "user.creds")
	if err := identity.WriteCreds(file, creds); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.ClientURL(), append([]nats.Option{nats.UserCredentials(file)}, opts...)...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

// docs/security.md lists every subject each role may use.
func TestSecurityDocListsThePermissions(t *testing.T) {
	doc, err := os.ReadFile("../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []identity.Role{identity.Service, identity.Registry} {
		p, err := identity.PermissionsFor(role, "", "reviews")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range append(p.Publish, p.Subscribe...) {
			if !strings.Contains(string(doc), "`"+s+"`") {
				t.Errorf("docs/security.md does not list %s's %q", role, s)
			}
		}
	}
}

// A Go program without a sidecar runs on its service's identity as
// docs/security.md shows: its calls carry its name, NATS-enforced, and
// it serves its own calls, with no permission violation.
func TestLibraryOnIdentity(t *testing.T) {
	t.Parallel()
	a, err := identity.Open(filepath.Join(t.TempDir(), "trust"))
	if err != nil {
		t.Fatal(err)
	}
	s := startTrusted(t, a)
	srvConn, srvViol := connectAs(t, s, a, identity.Service, "lib-b")
	srv, err := proxy.Serve(srvConn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.Header.Get(bus.HeaderCaller))
	}), proxy.ServeConfig{Service: "lib-b", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Drain(context.Background()) })
	cliConn, cliViol := connectAs(t, s, a, identity.Service, "lib-a")
	tr, err := proxy.NewTransport(cliConn, proxy.TransportConfig{Caller: "lib-a", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://lib-b/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "hello lib-a" {
		t.Errorf("lib-a → lib-b: %s %q, want 200 hello lib-a", resp.Status, body)
	}
	// Calling as another name is what its identity cannot do.
	liar, err := proxy.NewTransport(cliConn, proxy.TransportConfig{Caller: "lib-c", Logger: quiet, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = liar.Close() })
	if resp, err := (&http.Client{Transport: liar, Timeout: 5 * time.Second}).Get("http://lib-b/"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("a call as lib-c on lib-a's identity was answered: %q", body)
		}
	}
	if err := cliViol.wait("mesh.rpc.lib-b.lib-c"); err != nil {
		t.Error(err)
	}
	for _, e := range append(srvViol.all(), cliViol.all()...) {
		if !strings.Contains(e, "lib-c") {
			t.Errorf("unexpected NATS error: %s", e)
		}
	}
}
