package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

func TestStartServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "natsmesh") // created by StartServer
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	defer s.Shutdown()

	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("data directory %s not created: %v", dir, err)
	}
	addr, ok := s.Addr().(*net.TCPAddr)
	if !ok || addr.Port <= 0 || !addr.IP.IsLoopback() {
		t.Errorf("Addr = %v, want a loopback address with a random port", s.Addr())
	}
	if !strings.HasPrefix(s.ClientURL(), "nats://127.0.0.1:") {
		t.Errorf("ClientURL = %q", s.ClientURL())
	}
	if s.NATS() == nil || s.NATS().Name() != "natsmesh" {
		t.Errorf("server name = %q, want natsmesh", s.NATS().Name())
	}

	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL(), Name: "server-test"})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer nc.Close()
	if nc.MaxPayload() <= 0 {
		t.Errorf("MaxPayload = %d, want > 0", nc.MaxPayload())
	}
	if !nc.HeadersSupported() {
		t.Error("server does not support headers")
	}

	// JetStream is on: the config bucket can be created and used.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "mesh_config"})
	if err != nil {
		t.Fatalf("create KV bucket (is JetStream enabled?): %v", err)
	}
	if _, err := kv.Put(ctx, "routes.reviews", []byte(`{"subset":"v2"}`)); err != nil {
		t.Fatalf("KV put: %v", err)
	}
	e, err := kv.Get(ctx, "routes.reviews")
	if err != nil {
		t.Fatalf("KV get: %v", err)
	}
	if string(e.Value()) != `{"subset":"v2"}` {
		t.Errorf("KV value = %q", e.Value())
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) == 0 {
		t.Errorf("JetStream stored nothing under %s (%v)", dir, err)
	}

	nc.Close()
	s.Shutdown()
	s.Shutdown() // safe to call twice
	if s.NATS().Running() {
		t.Error("server still running after Shutdown")
	}
}

// TestStartServerKeepsConfigAcrossRestart checks that --data makes the config
// bucket survive a restart of the server.
func TestStartServerKeepsConfigAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	s := startServer(t, dir)
	nc := meshtest.Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "mesh_config", Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	s.Shutdown()

	s = startServer(t, dir)
	nc = meshtest.Connect(t, s)
	js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err = js.KeyValue(ctx, "mesh_config")
	if err != nil {
		t.Fatalf("bucket lost across restart: %v", err)
	}
	e, err := kv.Get(ctx, "k")
	if err != nil || string(e.Value()) != "v1" {
		t.Fatalf("value after restart = %v, %v", e, err)
	}
}

func startServer(t *testing.T, dir string) *embedded.Server {
	t.Helper()
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func TestStartServerPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	s, err := embedded.Start(embedded.Config{Host: "127.0.0.1", Port: port, DataDir: t.TempDir()})
	if err == nil {
		s.Shutdown()
		t.Fatal("StartServer on a port in use succeeded")
	}
	// A library names its config fields; the command maps them to flags.
	msg := err.Error()
	if !errors.Is(err, embedded.ErrListen) || !strings.Contains(msg, "Config.Port") || !strings.Contains(msg, fmt.Sprint(port)) {
		t.Errorf("error %q should be an ErrListen naming the port and Config.Port", msg)
	}
}

func TestStartServerBadDataDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := embedded.Start(embedded.Config{Port: -1, DataDir: filepath.Join(file, "sub")})
	if err == nil {
		s.Shutdown()
		t.Fatal("StartServer with a data directory under a file succeeded")
	}
	if !errors.Is(err, embedded.ErrDataDir) || !strings.Contains(err.Error(), "Config.DataDir") {
		t.Errorf("error %q should be an ErrDataDir naming Config.DataDir", err)
	}
}

func TestParseListen(t *testing.T) {
	tests := []struct {
		addr     string
		wantHost string
		wantPort int
		wantErr  bool
	}{
		{"127.0.0.1:4222", "127.0.0.1", 4222, false},
		{"0.0.0.0:4222", "0.0.0.0", 4222, false},
		{"localhost:5222", "localhost", 5222, false},
		{":4222", "127.0.0.1", 4222, false},
		{"[::1]:4222", "::1", 4222, false},
		{"127.0.0.1:65535", "127.0.0.1", 65535, false},
		{"127.0.0.1:1", "127.0.0.1", 1, false},
		{"127.0.0.1:0", "127.0.0.1", -1, false},
		{":0", "127.0.0.1", -1, false},

		{"", "", 0, true},
		{"127.0.0.1", "", 0, true},
		{"4222", "", 0, true},
		{"127.0.0.1:", "", 0, true},
		{"127.0.0.1:abc", "", 0, true},
		{"127.0.0.1:nats", "", 0, true},
		{"127.0.0.1:-1", "", 0, true},
		{"127.0.0.1:65536", "", 0, true},
		{"127.0.0.1:99999999999999999999", "", 0, true},
		{"::1:4222", "", 0, true},
		{"nats://127.0.0.1:4222", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			host, port, err := embedded.ParseListen(tt.addr)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseListen(%q) = %q, %d, nil; want an error", tt.addr, host, port)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.addr)) {
					t.Errorf("error %q does not quote the address", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseListen(%q): %v", tt.addr, err)
			}
			if host != tt.wantHost || port != tt.wantPort {
				t.Errorf("ParseListen(%q) = %q, %d; want %q, %d", tt.addr, host, port, tt.wantHost, tt.wantPort)
			}
		})
	}
}

func TestDefaultDataDir(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/var/state-test")
	if got, want := embedded.DefaultDataDir(), filepath.Join("/var/state-test", "natsmesh"); got != want {
		t.Errorf("with XDG_STATE_HOME: %q, want %q", got, want)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/tester")
	if got, want := embedded.DefaultDataDir(), filepath.Join("/home/tester", ".local", "state", "natsmesh"); got != want {
		t.Errorf("without XDG_STATE_HOME: %q, want %q", got, want)
	}
}

func TestURLFromEnv(t *testing.T) {
	t.Setenv("NATSMESH_URL", "")
	if got := bus.URLFromEnv(); got != bus.DefaultURL {
		t.Errorf("unset: %q, want %q", got, bus.DefaultURL)
	}
	t.Setenv("NATSMESH_URL", "nats://a:4222,nats://b:4222")
	if got := bus.URLFromEnv(); got != "nats://a:4222,nats://b:4222" {
		t.Errorf("set: %q", got)
	}
}

func TestConnectNoServer(t *testing.T) {
	url := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	start := time.Now()
	nc, err := bus.Connect(bus.ConnectConfig{URL: url})
	if err == nil {
		nc.Close()
		t.Fatal("Connect to a port where nothing listens succeeded")
	}
	if !strings.Contains(err.Error(), "`natsmesh server`") || !strings.Contains(err.Error(), url) {
		t.Errorf("error %q should name the URL and suggest `natsmesh server`", err)
	}
	if !errors.Is(err, nats.ErrNoServers) {
		t.Errorf("error %q does not wrap nats.ErrNoServers", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("failing to connect took %s", d)
	}
}

func TestConnectConfigOptions(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		cfg     bus.ConnectConfig
		wantErr string // substring; "" means success
	}{
		{"defaults", bus.ConnectConfig{}, ""},
		{"user and password", bus.ConnectConfig{User: "u", Password: "p"}, ""},
		{"token", bus.ConnectConfig{Token: "t"}, ""},
		{"wait for server", bus.ConnectConfig{WaitForServer: true}, ""},
		{"cert and key", bus.ConnectConfig{TLSCert: "c.pem", TLSKey: "k.pem"}, ""},
		{"cert without key", bus.ConnectConfig{TLSCert: "c.pem"}, "--tls-cert and --tls-key"},
		{"key without cert", bus.ConnectConfig{TLSKey: "k.pem"}, "--tls-cert and --tls-key"},
		{"missing creds file", bus.ConnectConfig{CredsFile: missing}, "credentials file"},
		{"missing nkey seed file", bus.ConnectConfig{NKeySeedFile: missing}, "nkey seed file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := tt.cfg.Options()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Options: %v", err)
				}
				if len(opts) == 0 {
					t.Error("no options")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Options = %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestConnectRejectsBadConfigBeforeDialing(t *testing.T) {
	_, err := bus.Connect(bus.ConnectConfig{URL: "nats://127.0.0.1:1", TLSCert: "c.pem"})
	if err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Fatalf("Connect = %v, want the --tls-cert/--tls-key error", err)
	}
}

// TestConnectPolicy checks the reconnect policy a proxy relies on: retry for
// ever, quickly, and never buffer while disconnected.
func TestConnectPolicy(t *testing.T) {
	s := meshtest.RunServer(t)
	nc := meshtest.Connect(t, s)
	o := nc.Opts
	if o.MaxReconnect != -1 {
		t.Errorf("MaxReconnect = %d, want -1 (never give up)", o.MaxReconnect)
	}
	if o.ReconnectWait+o.ReconnectJitter > 250*time.Millisecond {
		t.Errorf("reconnect wait %s + jitter %s, want at most 250ms", o.ReconnectWait, o.ReconnectJitter)
	}
	if o.ReconnectBufSize != -1 {
		t.Errorf("ReconnectBufSize = %d, want -1 (no buffering)", o.ReconnectBufSize)
	}
	if o.Name != t.Name() {
		t.Errorf("Name = %q, want %q", o.Name, t.Name())
	}
}

// TestConnectWaitForServer starts a client before its server: Connect
// returns at once, and the connection comes up when a server appears on the
// port, with subscriptions made in the meantime in place.
func TestConnectWaitForServer(t *testing.T) {
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)

	connected := make(chan struct{}, 1)
	nc, err := bus.Connect(bus.ConnectConfig{URL: url, Name: "early", WaitForServer: true},
		nats.ConnectHandler(func(*nats.Conn) { connected <- struct{}{} }))
	if err != nil {
		t.Fatalf("Connect with WaitForServer: %v", err)
	}
	defer nc.Close()
	if nc.IsConnected() {
		t.Fatal("connected before any server exists")
	}
	got := make(chan *nats.Msg, 1)
	if _, err := nc.ChanSubscribe("early.hello", got); err != nil {
		t.Fatalf("subscribe while waiting for the server: %v", err)
	}

	s, err := embedded.Start(embedded.Config{Port: port, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("StartServer on %d: %v", port, err)
	}
	defer s.Shutdown()

	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("status %v, want CONNECTED", st)
		}
		return nil
	})
	select {
	case <-connected:
	case <-time.After(5 * time.Second):
		t.Error("ConnectHandler not called")
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("Flush after connecting: %v", err)
	}

	other := meshtest.Connect(t, s)
	if err := other.Publish("early.hello", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Data) != "hi" {
			t.Errorf("got %q", m.Data)
		}
	case <-time.After(5 * time.Second):
		t.Error("subscription made before the server existed received nothing")
	}
}

// TestConnectReconnects checks that a connection survives its server going
// away and coming back on the same port.
func TestConnectReconnects(t *testing.T) {
	port := freePort(t)
	dir := t.TempDir()
	s, err := embedded.Start(embedded.Config{Port: port, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(bus.ConnectConfig{URL: s.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s.Shutdown()
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return errors.New("still connected after the server stopped")
		}
		return nil
	})
	// Nothing is buffered while disconnected: publishing fails at once.
	if err := nc.Publish("x", []byte("y")); err == nil {
		t.Error("Publish while disconnected succeeded; want an error (no reconnect buffer)")
	}

	s, err = embedded.Start(embedded.Config{Port: port, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("status %v, want CONNECTED", st)
		}
		return nil
	})
}
