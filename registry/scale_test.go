package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

const bigService = 50_000

// beat is a valid first heartbeat of instance id of service, with an
// interval long enough that nothing expires during a test.
func beat(service, id string) registry.Heartbeat {
	return registry.Heartbeat{
		Service: service, Instance: id, Host: "sim", PID: 1,
		Started: time.Now().Add(-time.Minute), Seq: 1, IntervalMS: int64(time.Hour / time.Millisecond),
		Health: registry.Passing, Meta: map[string]string{"zone": "zone-a", "version": "v1.2.3"},
	}
}

func bigID(i int) string { return fmt.Sprintf("big-%05d", i) }

// startBig starts a registry whose view holds bigService instances of
// "big" and one of "small", and returns once every event of them is
// published, so that a mirror started afterwards sees only later ones.
func startBig(t *testing.T) (*embedded.Server, *registry.Registry, *registry.Client) {
	t.Helper()
	s := meshtest.RunServer(t)
	svc, c := startRegistry(t, s)
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := c.List(context.Background())
		return err
	})
	v := svc.View()
	begun := time.Now()
	for i := range bigService {
		v.Observe(beat("big", bigID(i)))
	}
	t.Logf("%d instances observed in %s", bigService, time.Since(begun))
	events := make(chan *nats.Msg, 1)
	meshtest.Subscribe(t, s, "mesh.events.sentinel", events)
	v.Observe(beat("small", "small-1"))
	v.Observe(beat("sentinel", "sentinel-1")) // published after every other
	select {
	case <-events:
	case <-time.After(3 * time.Minute):
		t.Fatal("the registry did not publish the events of the instances within 3 minutes")
	}
	t.Logf("and their events published in %s", time.Since(begun))
	return s, svc, c
}

// checkAll fails unless list is the big service's instances, once each,
// in order.
func checkAll(t *testing.T, what string, list []registry.Instance) {
	t.Helper()
	if len(list) != bigService {
		t.Fatalf("%s: %d instances, want %d", what, len(list), bigService)
	}
	for i, in := range list {
		if in.Instance != bigID(i) {
			t.Fatalf("%s: instance %d is %q, want %q (a duplicate or a gap)", what, i, in.Instance, bigID(i))
		}
	}
}

// A registry holding 50,000 instances of one service answers Get with all
// of them, page by page within NATS's max payload; mirrors of the service
// and of the whole mesh get all of them, then the events.
//
// Not parallel: its large heap makes the garbage collector, and so every
// test beside it, slow under the race detector.
func TestRegistryAtScale(t *testing.T) {
	s, svc, c := startBig(t)
	// Each read of the 50,000 takes a fraction of a second, but ten times
	// as long under the race detector, and more on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	start := time.Now()
	snap, err := c.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Get of %d instances: %s", bigService, time.Since(start))
	checkAll(t, "get", snap.Services["big"])
	if snap.Instances != bigService || snap.Next != "" || snap.Truncated || len(snap.Services) != 1 {
		t.Fatalf("get: instances %d next %q truncated %v services %d; want %d, none, false, 1", snap.Instances, snap.Next, snap.Truncated, len(snap.Services), bigService)
	}

	// The first page alone is a part, within max payload, that says so.
	nc := meshtest.Connect(t, s)
	m, err := nc.Request("mesh.registry.get.big", nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var first registry.Snapshot
	if err := json.Unmarshal(m.Data, &first); err != nil {
		t.Fatal(err)
	}
	if int64(len(m.Data)) > nc.MaxPayload() || first.Next == "" || !first.Truncated || first.Instances != bigService || first.Rev != snap.Rev {
		t.Fatalf("first page: %d bytes (max payload %d), next %q, truncated %v, instances %d, rev %d; want a truncated page with a next cursor at rev %d",
			len(m.Data), nc.MaxPayload(), first.Next, first.Truncated, first.Instances, first.Rev, snap.Rev)
	}
	t.Logf("first page: %d of %d instances, %d bytes", len(first.Services["big"]), bigService, len(m.Data))

	// A small service is one page, as before paging.
	if m, err := nc.Request("mesh.registry.get.small", nil, 5*time.Second); err != nil || strings.Contains(string(m.Data), "next") {
		t.Fatalf("small service: %v %s; want one page with no next", err, m.Data)
	}

	var one, all recorder
	start = time.Now()
	mirror, err := c.Mirror(ctx, "big", one.add)
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Stop()
	t.Logf("Mirror of %d instances: %s", bigService, time.Since(start))
	whole, err := c.Mirror(ctx, "", all.add)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Stop()

	v := svc.View()
	v.Observe(beat("big", "big-new"))
	v.Bye("big", bigID(7))
	for _, r := range []*recorder{&one, &all} {
		meshtest.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
			if n := len(r.all()); n < 3 {
				return fmt.Errorf("mirror has %d updates, want a snapshot and 2 events", n)
			}
			return nil
		})
	}
	for name, r := range map[string]*recorder{"mirror of big": &one, "mirror of the mesh": &all} {
		u := r.all()
		if u[0].Snapshot == nil || len(u) != 3 {
			t.Fatalf("%s: %d updates, first %+v; want a snapshot then 2 events", name, len(u), u[0])
		}
		checkAll(t, name, u[0].Snapshot.Services["big"])
		if up, down := u[1].Event, u[2].Event; up == nil || down == nil || up.Type != registry.Up || up.Instance != "big-new" || down.Type != registry.Down || down.Instance != bigID(7) {
			t.Fatalf("%s: events %+v, %+v; want big-new up, then %s down", name, u[1], u[2], bigID(7))
		}
	}
	if n := len(all.all()[0].Snapshot.Services); n != 3 {
		t.Errorf("mirror of the mesh: %d services, want big, small and sentinel", n)
	}
	if mirror.Resyncs() != 0 || whole.Resyncs() != 0 {
		t.Errorf("resyncs %d and %d, want none", mirror.Resyncs(), whole.Resyncs())
	}
}

// page asks for one page with a raw request body, as any NATS client may.
func page(t *testing.T, nc *nats.Conn, subject, body string) (registry.Snapshot, *nats.Msg) {
	t.Helper()
	m, err := nc.Request(subject, []byte(body), 5*time.Second)
	if err != nil {
		t.Fatalf("request %s %s: %v", subject, body, err)
	}
	var s registry.Snapshot
	if m.Header.Get(bus.HeaderError) == "" {
		if err := json.Unmarshal(m.Data, &s); err != nil {
			t.Fatalf("answer to %s: %v: %s", body, err, m.Data)
		}
	}
	return s, m
}

// Page sizes are capped, bad requests are answered with a code and a
// sentence, and a cursor stays good while its snapshot is kept.
func TestRegistryPageRequests(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	svc, c := startRegistry(t, s)
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := c.List(context.Background())
		return err
	})
	v := svc.View()
	for i := range 100 {
		v.Observe(beat("web", fmt.Sprintf("web-%03d", i)))
	}
	nc := meshtest.Connect(t, s)
	const get = "mesh.registry.get.web"

	// A huge page is capped at max payload, and holds everything here.
	p, _ := page(t, nc, get, `{"limit":1000000000,"max_bytes":1000000000000}`)
	if len(p.Services["web"]) != 100 || p.Next != "" {
		t.Fatalf("huge page: %d instances, next %q; want all 100 and no next", len(p.Services["web"]), p.Next)
	}
	// A tiny page is raised to MinPageBytes; limit counts instances.
	p, m := page(t, nc, get, `{"max_bytes":1}`)
	if n := len(p.Services["web"]); n == 0 || n == 100 || len(m.Data) > registry.MinPageBytes {
		t.Fatalf("max_bytes 1: %d instances in %d bytes; want some, within %d", n, len(m.Data), registry.MinPageBytes)
	}
	p, _ = page(t, nc, get, `{"limit":30}`)
	if len(p.Services["web"]) != 30 || p.Next == "" {
		t.Fatalf("limit 30: %d instances, next %q", len(p.Services["web"]), p.Next)
	}

	// One change later the cursor still pages through its snapshot; two
	// changes later that snapshot is gone, and the answer says to start over.
	v.Observe(beat("web", "web-new-1"))
	q, _ := page(t, nc, get, `{"limit":30,"cursor":"`+p.Next+`"}`)
	if q.Rev != p.Rev || q.Offset != 30 || q.Services["web"][0].Instance != "web-030" {
		t.Fatalf("second page after one change: rev %d offset %d; want rev %d offset 30 from web-030", q.Rev, q.Offset, p.Rev)
	}
	if _, err := c.Get(context.Background(), "web"); err != nil { // encodes the new version
		t.Fatal(err)
	}
	v.Observe(beat("web", "web-new-2"))
	if _, err := c.Get(context.Background(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, m := page(t, nc, get, `{"cursor":"`+q.Next+`"}`); m.Header.Get(bus.HeaderError) != "stale-cursor" || !strings.Contains(string(m.Data), "start over") {
		t.Fatalf("cursor of a dropped snapshot: %v %q; want stale-cursor and a sentence", m.Header, m.Data)
	}

	for _, body := range []string{
		`not json`, `{"cursor":"x"}`, `{"cursor":"a.b.c"}`, `{"cursor":"` + strings.Repeat("a", 200) + `"}`,
		`{"limit":-1}`, `{"max_bytes":-5}`, `{"cursor":"` + v.Origin() + `.1.-3"}`, strings.Repeat(" ", 2000) + "{}",
	} {
		_, m := page(t, nc, get, body)
		if m.Header.Get(bus.HeaderError) != "bad-request" || len(m.Data) == 0 || len(m.Data) > 500 {
			t.Errorf("request %.60q: %v %q; want bad-request and one sentence", body, m.Header, m.Data)
		}
	}
	if _, m := page(t, nc, get, `{"cursor":"0123456789abcdef.1.0"}`); m.Header.Get(bus.HeaderError) != "stale-cursor" {
		t.Errorf("cursor of another registry: %v %q; want stale-cursor", m.Header, m.Data)
	}
	if snap, err := c.Get(context.Background(), "web"); err != nil || len(snap.Services["web"]) != 102 {
		t.Fatalf("after bad requests: %v, %d instances; want 102", err, len(snap.Services["web"]))
	}
}
