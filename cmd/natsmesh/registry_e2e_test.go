//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// watchLines reads the JSON lines `natsmesh watch --json` prints.
type watchLines struct {
	t      *testing.T
	p      *proc
	mu     sync.Mutex
	parsed int // lines read so far
	events []registry.Event
	seen   []time.Time // when each event was first read
	snaps  int
}

// update parses the lines printed since the last call.
func (w *watchLines) update() {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := strings.Split(w.p.stdout.String(), "\n")
	for ; w.parsed < len(lines)-1; w.parsed++ { // the last piece is incomplete
		line := []byte(lines[w.parsed])
		var head struct{ Type string }
		if err := json.Unmarshal(line, &head); err != nil {
			w.t.Errorf("watch printed a line that is not JSON: %q", line)
			continue
		}
		if head.Type == "snapshot" {
			w.snaps++
			continue
		}
		var ev registry.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			w.t.Errorf("watch printed a bad event: %q: %v", line, err)
		}
		w.events = append(w.events, ev)
		w.seen = append(w.seen, time.Now())
	}
}

// waitSnapshots waits until watch has printed n snapshot lines.
func (w *watchLines) waitSnapshots(n int, within time.Duration) {
	w.t.Helper()
	meshtest.CheckFor(w.t, within, 20*time.Millisecond, func() error {
		w.update()
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.snaps < n {
			return fmt.Errorf("watch printed %d snapshot lines, want %d", w.snaps, n)
		}
		return nil
	})
}

// find returns the first event matching, and when it was read.
func (w *watchLines) find(typ registry.EventType, reason registry.Reason, instance string) (registry.Event, time.Time, bool) {
	w.update()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, ev := range w.events {
		if ev.Type == typ && ev.Reason == reason && ev.Instance == instance {
			return ev, w.seen[i], true
		}
	}
	return registry.Event{}, time.Time{}, false
}

// Three instances of a service appear in `natsmesh instances` and in
// `natsmesh watch --json`; one killed with SIGKILL expires within 3.5 s at a
// 1 s heartbeat; one whose app fails health checks reports failing and gets
// no traffic while it fails.
func TestEndToEndRegistry(t *testing.T) {
	t.Parallel()
	_, natsURL := startServer(t)

	watch := start(t, "watch", nil, natsmeshBin(t), "watch", "reg", "--json", "--nats", natsURL)
	lines := &watchLines{t: t, p: watch}
	lines.waitSnapshots(1, startTimeout)

	type instance struct {
		id, app string
		sidecar *proc
	}
	var insts []instance
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("reg-%d", i)
		_, appURL := startApp(t, id)
		sc, _ := startSidecar(t, natsURL, "reg", id, appURL, "--health-path", "/healthz", "--health-interval", "100ms")
		insts = append(insts, instance{id: id, app: appURL, sidecar: sc})
	}
	_, callerApp := startApp(t, "caller")
	_, outbound := startSidecar(t, natsURL, "client", "client-1", callerApp)

	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		out, errOut, code := natsmesh(t, "instances", "reg", "--json", "--nats", natsURL)
		if code != 0 {
			return fmt.Errorf("instances exited %d: %s", code, errOut)
		}
		var snap registry.Snapshot
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			return fmt.Errorf("instances --json: %v: %q", err, out)
		}
		if got := snap.Services["reg"]; len(got) != 3 || got[0].Instance != "reg-1" || got[2].Instance != "reg-3" {
			return fmt.Errorf("instances lists %+v, want reg-1..reg-3", got)
		}
		return nil
	})
	out, _, code := natsmesh(t, "services", "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "SERVICE") || !containsFields(out, "reg", "3", "3", "0", "0", "0") {
		t.Fatalf("services printed (exit %d):\n%s\nwant a row: reg 3 3 0 0 0", code, out)
	}
	for _, in := range insts {
		meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			if _, _, ok := lines.find(registry.Up, registry.Registered, in.id); !ok {
				return fmt.Errorf("watch has not printed %s's up event", in.id)
			}
			return nil
		})
	}

	// kill -9: no goodbye; the registry expires it after 3 missed beats.
	killed := time.Now()
	insts[0].sidecar.signal(t, syscall.SIGKILL)
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if _, _, ok := lines.find(registry.Down, registry.Expired, "reg-1"); !ok {
			return fmt.Errorf("no down/expired event for reg-1 yet")
		}
		return nil
	})
	if _, at, _ := lines.find(registry.Down, registry.Expired, "reg-1"); at.Sub(killed) > 3500*time.Millisecond {
		t.Errorf("down/expired arrived %s after kill -9, want within 3.5s", at.Sub(killed))
	}

	// reg-2's app fails its health checks.
	resp, err := http.Post(insts[1].app+"/admin/sick?on=1", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		ev, _, ok := lines.find(registry.Changed, registry.HealthChange, "reg-2")
		if !ok || ev.Heartbeat.Health != registry.Failing {
			return fmt.Errorf("no changed/health event with health failing for reg-2 yet")
		}
		return nil
	})
	c := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < 50; i++ {
		status, inst, body, err := meshGet(c, outbound, "reg", "/work")
		if err != nil || status != http.StatusOK {
			t.Fatalf("call %d while reg-2 fails: %d %v %q", i, status, err, body)
		}
		if inst != "reg-3" {
			t.Fatalf("call %d served by %s, want only reg-3 while reg-2 fails its health checks", i, inst)
		}
	}
}

// containsFields reports whether some line of out has exactly these fields.
func containsFields(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(fields, " ") {
			return true
		}
	}
	return false
}

// Two `natsmesh server`s serve the registry on one shared NATS: each event is
// published once; when the publishing one is killed, the other takes over and
// watchers carry on.
func TestEndToEndRegistryFailover(t *testing.T) {
	t.Parallel()
	shared := meshtest.RunServer(t) // the NATS both servers share
	natsURL := shared.ClientURL()
	registryReady := regexp.MustCompile(`(serving the registry) on`)
	a := start(t, "registry a", nil, natsmeshBin(t), "server", "--nats", natsURL)
	a.waitOutput(t, registryReady, startTimeout)
	b := start(t, "registry b", nil, natsmeshBin(t), "server", "--nats", natsURL)
	b.waitOutput(t, registryReady, startTimeout)

	watch := start(t, "watch", nil, natsmeshBin(t), "watch", "fo", "--json", "--nats", natsURL)
	lines := &watchLines{t: t, p: watch}
	lines.waitSnapshots(1, startTimeout)
	_, app := startApp(t, "fo")
	startSidecar(t, natsURL, "fo", "fo-1", app)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, _, ok := lines.find(registry.Up, registry.Registered, "fo-1"); !ok {
			return fmt.Errorf("no up event for fo-1")
		}
		return nil
	})

	// a started first, so it holds the lease; kill it without a word.
	a.signal(t, syscall.SIGKILL)
	startSidecar(t, natsURL, "fo", "fo-2", app)
	// b takes over when a's lease expires (5 s) and announces it; the watch
	// takes a new snapshot from b, which has fo-2.
	lines.waitSnapshots(2, 15*time.Second)
	snap := lastSnapshot(t, watch)
	if len(snap.Services["fo"]) != 2 {
		t.Fatalf("snapshot after the takeover lists %+v, want fo-1 and fo-2", snap.Services["fo"])
	}
	// Events go on, from b, once each.
	startSidecar(t, natsURL, "fo", "fo-3", app)
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if _, _, ok := lines.find(registry.Up, registry.Registered, "fo-3"); !ok {
			return fmt.Errorf("no up event for fo-3 after the takeover")
		}
		return nil
	})
	lines.mu.Lock()
	defer lines.mu.Unlock()
	count := map[string]int{}
	for _, ev := range lines.events {
		count[string(ev.Type)+" "+ev.Instance]++
	}
	for k, n := range count {
		if n != 1 {
			t.Errorf("watch printed %q %d times, want once", k, n)
		}
	}
}

// lastSnapshot is the last snapshot line `natsmesh watch --json` printed.
func lastSnapshot(t *testing.T, p *proc) registry.Snapshot {
	t.Helper()
	var snap registry.Snapshot
	for _, l := range strings.Split(p.stdout.String(), "\n") {
		if strings.HasPrefix(l, `{"type":"snapshot"`) {
			if err := json.Unmarshal([]byte(l), &snap); err != nil {
				t.Fatal(err)
			}
		}
	}
	return snap
}
