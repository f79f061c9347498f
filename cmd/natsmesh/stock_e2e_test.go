package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// stockServer holds a nats-server binary built from the module the mesh
// already depends on, once per test run.
var stockServer struct {
	once sync.Once
	path string
	err  error
}

func natsServerBin(t *testing.T) string {
	t.Helper()
	natsmeshBin(t) // makes build.dir
	stockServer.once.Do(func() {
		goCmd, err := goTool()
		if err != nil {
			stockServer.err = err
			return
		}
		stockServer.path = filepath.Join(build.dir, "nats-server")
		cmd := exec.Command(goCmd, "build", "-o", stockServer.path, "github.com/nats-io/nats-server/v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			stockServer.err = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
	})
	if stockServer.err != nil {
		t.Fatal(stockServer.err)
	}
	return stockServer.path
}

// The mesh's identities and permissions hold on a stock nats-server in
// operator mode, configured with natsmesh identity server-config: a
// registry identity serves the registry, services on their own identities
// call each other, anonymous clients are refused, and a revoked identity
// is disconnected.
func TestStockNATSServer(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	trust, stderr, code := natsmesh(t, "identity", "server-config", "--data", data)
	if code != 0 || !strings.Contains(trust, "resolver: MEMORY") {
		t.Fatalf("identity server-config: exit %d\n%s%s", code, trust, stderr)
	}
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(t.TempDir(), "nats-server.conf")
	cfg := fmt.Sprintf("host: %s\nport: %s\njetstream: {store_dir: %q}\n%s", host, port, filepath.Join(t.TempDir(), "js"), trust)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, "nats-server", nil, natsServerBin(t), "-c", conf)
	natsURL := "nats://" + addr
	meshtest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	credsByURL.Store(credsKey(natsURL), filepath.Join(data, "admin.creds"))

	if nc, err := nats.Connect(natsURL, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("an anonymous client connected to the stock server")
	}
	reg := issue(t, data, "registry", "--role", "registry")
	r := start(t, "registry", nil, natsmeshBin(t), "server", "--nats", natsURL, "--creds", reg)
	r.waitOutput(t, regexp.MustCompile(`serving the registry on (\S+)`), startTimeout)

	front, back := issue(t, data, "front"), issue(t, data, "back")
	_, frontApp := startApp(t, "front")
	_, backApp := startApp(t, "back")
	frontSC, frontOut := startSidecar(t, natsURL, "front", "front-1", frontApp, "--creds", front)
	startSidecar(t, natsURL, "back", "back-1", backApp, "--creds", back)

	pu, _ := url.Parse("http://" + frontOut)
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 5 * time.Second}
	meshtest.CheckFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://back/work", nil)
		code, _, body, err := doGet(hc, req)
		if err != nil || code != http.StatusOK || body != appBody("back", "front", "/work") {
			return fmt.Errorf("front → back: %d %q %v", code, body, err)
		}
		return nil
	})
	meshtest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		stdout, stderr, code := natsmesh(t, "services", "--nats", natsURL)
		if code != 0 || !regexp.MustCompile(`(?m)^back\s+1\s+1\b`).MatchString(stdout) || !regexp.MustCompile(`(?m)^front\s+1\s+1\b`).MatchString(stdout) {
			return fmt.Errorf("services: exit %d\n%s%s", code, stdout, stderr)
		}
		return nil
	})
	// The admin stores config (apply makes the bucket the registry
	// identity may not), and the sidecars read it.
	doc := filepath.Join(t.TempDir(), "back.yaml")
	if err := os.WriteFile(doc, []byte("service: back\ncallers: [web]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code := natsmesh(t, "apply", "-f", doc, "--nats", natsURL); code != 0 {
		t.Fatalf("apply: exit %d\n%s%s", code, stdout, stderr)
	}
	meshtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://back/work", nil)
		if code, _, body, _ := doGet(hc, req); code != http.StatusForbidden {
			return fmt.Errorf("front → back after callers [web]: %d %q, want 403", code, body)
		}
		return nil
	})

	if stdout, stderr, code := natsmesh(t, "identity", "revoke", "front", "--data", data, "--nats", natsURL); code != 0 || !strings.Contains(stdout, "disconnected") {
		t.Fatalf("identity revoke on the stock server: exit %d\n%s%s", code, stdout, stderr)
	}
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(frontSC.stderr.String(), "revoked") {
			return errors.New("the revoked sidecar did not log it")
		}
		return nil
	})
}
