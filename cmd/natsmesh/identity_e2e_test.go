package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/identity"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// startSecureServer starts natsmesh server with its default security and
// returns its URL and data directory.
func startSecureServer(t *testing.T) (string, string) {
	t.Helper()
	data := t.TempDir()
	p := start(t, "server", nil, natsmeshBin(t), "server", "--listen", "127.0.0.1:0", "--data", data)
	return p.waitOutput(t, serverReady, startTimeout), data
}

// issue runs natsmesh identity issue and returns the credentials file.
func issue(t *testing.T, data, name string, extra ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".creds")
	args := append([]string{"identity", "issue", name, "--data", data, "--out", out}, extra...)
	stdout, stderr, code := natsmesh(t, args...)
	if code != 0 || !strings.Contains(stdout, out) {
		t.Fatalf("identity issue %s: exit %d\n%s%s", name, code, stdout, stderr)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, mode %v; want 0600", out, err, fi.Mode().Perm())
	}
	return out
}

// natsmeshIn runs a natsmesh command with only the environment given (and
// a home of its own, so no credentials of the machine's are found).
func natsmeshIn(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natsmeshBin(t), args...)
	cmd.Env = append(childEnv(), append([]string{"XDG_STATE_HOME=" + t.TempDir(), "HOME=" + t.TempDir()}, env...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// natsmesh server is secure by default: no client connects without
// credentials it issued, a command says what to do when it has none, and
// commands on the machine find the admin's credentials by themselves.
func TestSecureByDefault(t *testing.T) {
	t.Parallel()
	natsURL, data := startSecureServer(t)
	if nc, err := nats.Connect(natsURL, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client connected")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous client: %v, want an authorization violation", err)
	}
	// Credentials of another mesh, well formed, are refused.
	other, err := identity.Open(filepath.Join(t.TempDir(), "trust"))
	if err != nil {
		t.Fatal(err)
	}
	foreign, _ := other.IssueRole(identity.Admin, "admin", "")
	ff := filepath.Join(t.TempDir(), "foreign.creds")
	if err := identity.WriteCreds(ff, foreign); err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(natsURL, nats.UserCredentials(ff), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("another mesh's credentials connected")
	}
	out, code := natsmeshIn(t, nil, "services", "--nats", natsURL)
	if code != 1 || !strings.Contains(out, "refuses clients without credentials") || !strings.Contains(out, "--creds") {
		t.Errorf("services without credentials: exit %d\n%s", code, out)
	}
	out, code = natsmeshIn(t, nil, "services", "--nats", natsURL, "--creds", ff)
	if code != 1 || !strings.Contains(out, "refuses the credentials in "+ff) {
		t.Errorf("services with another mesh's credentials: exit %d\n%s", code, out)
	}
	// NATSMESH_CREDS, and the default path under the state directory.
	if out, code := natsmeshIn(t, []string{"NATSMESH_CREDS=" + filepath.Join(data, "admin.creds")}, "services", "--nats", natsURL); code != 0 {
		t.Errorf("services with NATSMESH_CREDS: exit %d\n%s", code, out)
	}
	state := t.TempDir()
	if err := os.MkdirAll(filepath.Join(state, "natsmesh"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(data, "admin.creds"))
	if err := identity.WriteCreds(filepath.Join(state, "natsmesh", "admin.creds"), b); err != nil {
		t.Fatal(err)
	}
	if out, code := natsmeshIn(t, []string{"XDG_STATE_HOME=" + state}, "services", "--nats", natsURL); code != 0 {
		t.Errorf("services with the admin credentials at the default path: exit %d\n%s", code, out)
	}
}

// Services run on identities of their own: the callee's app sees the
// caller its identity proves, whatever the calling app claims; a sidecar
// refuses another service's identity; a rogue client with one service's
// credentials cannot take another's calls or forge its registry entries;
// revoking an identity disconnects it.
func TestServiceIdentities(t *testing.T) {
	t.Parallel()
	natsURL, data := startSecureServer(t)
	aCreds := issue(t, data, "front")
	bCreds := issue(t, data, "back")

	_, stderr, code := natsmesh(t, "sidecar", "--service", "back", "--creds", aCreds, "--upstream", "http://127.0.0.1:1", "--nats", natsURL)
	if code != 2 || !strings.Contains(stderr, "service front's identity") || !strings.Contains(stderr, "natsmesh identity issue back") {
		t.Errorf("a sidecar for back with front's identity: exit %d, want 2 and a sentence; it says:\n%s", code, stderr)
	}

	_, frontApp := startApp(t, "front")
	_, backApp := startApp(t, "back")
	frontSC, frontOut := startSidecar(t, natsURL, "front", "front-1", frontApp, "--creds", aCreds)
	startSidecar(t, natsURL, "back", "back-1", backApp, "--creds", bCreds)

	pu, _ := url.Parse("http://" + frontOut)
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 5 * time.Second}
	meshtest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://back/work", nil)
		req.Header.Set("Mesh-Caller", "admin")
		code, _, body, err := doGet(hc, req)
		if err != nil || code != http.StatusOK {
			return errors.New("front → back: " + body)
		}
		if want := appBody("back", "front", "/work"); body != want {
			t.Fatalf("back's app got %q, want %q: the caller is the identity's, not the app's header", body, want)
		}
		return nil
	})

	// A rogue client with front's credentials.
	errs := make(chan error, 64)
	rogue, err := nats.Connect(natsURL, nats.UserCredentials(aCreds), nats.CustomInboxPrefix("mesh.inbox.front"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Close()
	stolen := make(chan *nats.Msg, 16)
	if _, err := rogue.ChanQueueSubscribe("mesh.rpc.back.*", "back", stolen); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"mesh.hb.back.back-phantom", "mesh.bye.back.back-1", "$KV.mesh_config.back", "mesh.rpc.back.admin"} {
		_ = rogue.Publish(subj, []byte(`{}`))
	}
	_ = rogue.Flush()
	violations := 0
	for deadline := time.After(5 * time.Second); violations < 5; {
		select {
		case err := <-errs:
			if strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				violations++
			}
		case <-deadline:
			t.Fatalf("%d permission violations for 5 attacks", violations)
		}
	}
	for range 20 {
		req, _ := http.NewRequest(http.MethodGet, "http://back/work", nil)
		if code, _, body, err := doGet(hc, req); err != nil || code != http.StatusOK {
			t.Fatalf("front → back during the attack: %d %s %v", code, body, err)
		}
	}
	if len(stolen) > 0 {
		t.Errorf("the rogue queue subscription took %d of back's calls", len(stolen))
	}
	stdout, _, _ := natsmesh(t, "instances", "back", "--nats", natsURL)
	if !strings.Contains(stdout, "back-1") || strings.Contains(stdout, "phantom") {
		t.Errorf("back's instances after the attack:\n%s", stdout)
	}

	// Revoking front disconnects its sidecar and the rogue.
	stdout, stderr, code = natsmesh(t, "identity", "revoke", "front", "--data", data, "--nats", natsURL)
	if code != 0 || !strings.Contains(stdout, "disconnected") {
		t.Fatalf("identity revoke: exit %d\n%s%s", code, stdout, stderr)
	}
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if rogue.IsConnected() {
			return errors.New("the revoked rogue is still connected")
		}
		return nil
	})
	if nc, err := nats.Connect(natsURL, nats.UserCredentials(aCreds), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a revoked identity connected")
	}
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(frontSC.stderr.String(), "revoked") {
			return errors.New("the sidecar did not log the revocation")
		}
		return nil
	})
}

func doGet(hc *http.Client, req *http.Request) (int, http.Header, string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err.Error(), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), err
}

// The identity commands' mistakes get one sentence each.
func TestIdentityCommandErrors(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"identity", "issue", "web", "--data", empty, "--out", filepath.Join(empty, "w.creds")}, 1, "there are no trust roots in " + filepath.Join(empty, "trust") + "; run natsmesh server --data"},
		{[]string{"identity", "issue", "Web", "--data", empty}, 2, `identity name "Web" has 'W'`},
		{[]string{"identity", "issue", "web", "--role", "root", "--data", empty}, 2, `--role "root": use service, registry or admin`},
		{[]string{"identity", "issue", "--data", empty}, 2, "want one NAME, got 0 arguments"},
		{[]string{"identity", "revoke", "web", "--data", empty}, 1, "there are no trust roots"},
		{[]string{"identity", "frob"}, 2, `unknown command "frob"`},
	} {
		_, stderr, code := natsmesh(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("natsmesh %s: exit %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), code, stderr, tc.code, tc.want)
		}
	}
	_, data := startSecureServer(t)
	out := issue(t, data, "web")
	if _, stderr, code := natsmesh(t, "identity", "issue", "web", "--data", data, "--out", out); code != 2 || !strings.Contains(stderr, "exists; choose another file, or add --force") {
		t.Errorf("issue over an existing file: exit %d, stderr %q", code, stderr)
	}
	if _, stderr, code := natsmesh(t, "identity", "revoke", "nosuch", "--data", data); code != 1 || !strings.Contains(stderr, `no identity of that name was issued: "nosuch"`) {
		t.Errorf("revoke of an unknown name: exit %d, stderr %q", code, stderr)
	}
	stdout, _, _ := natsmesh(t, "identity", "list", "--data", data)
	if !regexp.MustCompile(`(?m)^admin$`).MatchString(stdout) || !regexp.MustCompile(`(?m)^web$`).MatchString(stdout) {
		t.Errorf("identity list:\n%s", stdout)
	}
}
