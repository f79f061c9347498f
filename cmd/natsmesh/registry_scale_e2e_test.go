//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// scaleInstances is how many instances of one service the test announces
// to a real natsmesh server: their registry answer is some 17 MB, many
// times NATS's max payload of 1 MiB. A race-detector build of natsmesh
// takes some 15 s to list them all (against 1 s), so it gets 10,000 (3 MB,
// three pages); the registry package's own test pages through 50,000 with
// the race detector too.
func scaleInstances() int {
	if raceEnabled() {
		return 10_000
	}
	return 50_000
}

// natsmesh instances lists a service of 50,000 instances whole, and says
// in a sentence, with status 1, that a service has no instance; natsmesh
// watch of such a service says so and goes on watching until it appears.
func TestEndToEndRegistryAtScale(t *testing.T) {
	t.Parallel()
	scaleInstances := scaleInstances()
	_, natsURL := startServer(t)
	nc, err := bus.Connect(bus.ConnectConfig{URL: natsURL, Name: t.Name(), CredsFile: adminCreds(natsURL)})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// One heartbeat each, with an interval of an hour: nothing expires
	// during the test, and the simulator needs no ticking.
	started := time.Now().Add(-time.Minute)
	beat := func(service, id string) []byte {
		data, err := json.Marshal(registry.Heartbeat{Service: service, Instance: id, Host: "sim", PID: 1, Started: started,
			Seq: 1, IntervalMS: int64(time.Hour / time.Millisecond), Health: registry.Passing})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for i := range scaleInstances {
		id := fmt.Sprintf("big-%05d", i)
		if err := nc.Publish("mesh.hb.big."+id, beat("big", id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		out, errOut, code := natsmesh(t, "services", "--json", "--nats", natsURL)
		if code != 0 {
			return fmt.Errorf("services exited %d: %s", code, errOut)
		}
		var l registry.List
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			return err
		}
		if len(l.Services) != 1 || l.Services[0].Instances != scaleInstances {
			return fmt.Errorf("services lists %+v, want big with %d instances", l.Services, scaleInstances)
		}
		return nil
	})

	// --timeout bounds the whole read, every page of it: generous, for a
	// race-detector build on a busy machine (a second is usual).
	begun := time.Now()
	out, errOut, code := natsmesh(t, "instances", "big", "--nats", natsURL, "--timeout", "60s")
	if code != 0 {
		t.Fatalf("instances big exited %d: %s", code, errOut)
	}
	t.Logf("natsmesh instances of %d instances: %s, %d bytes of table", scaleInstances, time.Since(begun), len(out))
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != scaleInstances+1 || !strings.HasPrefix(lines[0], "INSTANCE") {
		t.Fatalf("instances big printed %d lines, want a header and %d instances", len(lines), scaleInstances)
	}
	for i, l := range lines[1:] {
		if want := fmt.Sprintf("big-%05d ", i); !strings.HasPrefix(l, want) {
			t.Fatalf("line %d is %q, want instance big-%05d (each once, in order)", i+1, l, i)
		}
	}

	out, errOut, code = natsmesh(t, "instances", "nosuch", "--nats", natsURL)
	if want := "natsmesh instances: no instance of service \"nosuch\" is registered; natsmesh services lists the services\n"; code != 1 || out != "" || errOut != want {
		t.Fatalf("instances nosuch: exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, want)
	}

	w := start(t, "watch nosuch", nil, natsmeshBin(t), "watch", "nosuch", "--nats", natsURL)
	w.waitStdout(t, "its snapshot", startTimeout, func(s string) bool { return strings.Contains(s, "snapshot rev") })
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(w.stderr.String(), `no instance of service "nosuch" is registered yet; watching for it to appear`) {
			return fmt.Errorf("watch's stderr is %q", w.stderr.String())
		}
		return nil
	})
	if err := nc.Publish("mesh.hb.nosuch.nosuch-1", beat("nosuch", "nosuch-1")); err != nil {
		t.Fatal(err)
	}
	w.waitOutput(t, regexp.MustCompile(`up\s+nosuch (nosuch-1) \(registered`), 10*time.Second)
	if w.exited() {
		t.Fatal("watch exited")
	}
}
