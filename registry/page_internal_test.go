package registry

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

func testBeat(service, id string, started time.Time) Heartbeat {
	return Heartbeat{Service: service, Instance: id, Host: "sim", PID: 1, Started: started, Seq: 1,
		IntervalMS: int64(time.Hour / time.Millisecond), Health: Passing}
}

// fill observes n instances of each service.
func fill(v *View, n int, services ...string) {
	started := v.clock.Now().Add(-time.Minute)
	for _, svc := range services {
		for i := range n {
			v.Observe(testBeat(svc, fmt.Sprintf("%s-%04d", svc, i), started))
		}
	}
}

// The pages of a snapshot of several services are valid JSON within their
// size, hold every instance once in order, and each says where it starts.
func TestPagesCoverTheSnapshot(t *testing.T) {
	v := NewView(ViewConfig{Clock: meshtest.NewClock()})
	fill(v, 300, "a", "bb", "c")
	snap, ver := v.snapshotVersion("")
	e := encode("", ver, snap)
	for _, tt := range []struct {
		name            string
		limit, maxBytes int
	}{
		{"small pages", 0, MinPageBytes},
		{"limit 7", 7, 1 << 20},
		{"one page", 0, 1 << 20},
		{"one instance a page", 1, MinPageBytes},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for offset, pages := 0, 0; ; pages++ {
				data := e.page(offset, tt.limit, tt.maxBytes)
				if len(data) > tt.maxBytes {
					t.Fatalf("page at %d: %d bytes, over %d", offset, len(data), tt.maxBytes)
				}
				var p Snapshot
				if err := json.Unmarshal(data, &p); err != nil {
					t.Fatalf("page at %d: %v: %s", offset, err, data)
				}
				if p.Offset != offset || p.Instances != 900 || p.Rev != snap.Rev || p.Truncated != (p.Next != "") {
					t.Fatalf("page at %d: offset %d instances %d rev %d truncated %v next %q", offset, p.Offset, p.Instances, p.Rev, p.Truncated, p.Next)
				}
				for _, svc := range []string{"a", "bb", "c"} {
					for _, in := range p.Services[svc] {
						got = append(got, in.Instance)
					}
				}
				if p.Next == "" {
					break
				}
				c, err := parseCursor(p.Next)
				if err != nil || c.version != ver || c.origin != v.Origin() || c.offset <= offset {
					t.Fatalf("next %q: %+v, %v", p.Next, c, err)
				}
				offset = c.offset
			}
			if len(got) != 900 || got[0] != "a-0000" || got[300] != "bb-0000" || got[899] != "c-0299" {
				t.Fatalf("pages hold %d instances (%v ... %v), want 900 in order", len(got), got[:min(3, len(got))], got[max(0, len(got)-1):])
			}
			for i := 1; i < len(got); i++ {
				if got[i] == got[i-1] {
					t.Fatalf("%s twice", got[i])
				}
			}
		})
	}
}

// The cache encodes a version once, keeps two versions of a scope, and
// stays within its bounds.
func TestPageCache(t *testing.T) {
	clock := meshtest.NewClock()
	v := NewView(ViewConfig{Clock: clock})
	fill(v, 10, "web")
	var c pageCache
	e1 := c.current(v, "web")
	if c.current(v, "web") != e1 || c.builds != 1 {
		t.Fatalf("the same version was encoded %d times", c.builds)
	}
	v.Observe(testBeat("other", "other-1", clock.Now()))
	if c.current(v, "web") != e1 || c.builds != 1 {
		t.Fatal("a change to another service made a new snapshot of web")
	}
	v.Observe(testBeat("web", "web-new", clock.Now()))
	e2 := c.current(v, "web")
	if e2 == e1 || e2.count() != 11 {
		t.Fatalf("after a change: %d instances, new %v", e2.count(), e2 != e1)
	}
	if e, err := c.at(v, "web", cursor{origin: v.Origin(), version: e1.version}); err != nil || e != e1 {
		t.Fatalf("cursor into the previous version: %v", err)
	}
	v.Observe(testBeat("web", "web-new-2", clock.Now()))
	c.current(v, "web")
	if _, err := c.at(v, "web", cursor{origin: v.Origin(), version: e1.version}); err != ErrStaleCursor {
		t.Fatalf("cursor two versions back: %v, want ErrStaleCursor", err)
	}
	if _, err := c.at(v, "web", cursor{origin: "elsewhere", version: e2.version}); err != ErrStaleCursor {
		t.Fatalf("cursor of another view: %v, want ErrStaleCursor", err)
	}
	for i := range pageCacheEntries + 10 {
		v.Observe(testBeat(fmt.Sprintf("s%d", i), "x", clock.Now()))
		c.current(v, fmt.Sprintf("s%d", i))
	}
	if len(c.entries) > pageCacheEntries || c.bytes > pageCacheBytes {
		t.Fatalf("cache holds %d entries, %d bytes; bounds %d, %d", len(c.entries), c.bytes, pageCacheEntries, pageCacheBytes)
	}
	clock.Advance(2 * pageCacheIdle)
	v.Observe(testBeat("web", "web-new-3", clock.Now()))
	c.current(v, "web")
	if len(c.entries) != 1 {
		t.Fatalf("after %s idle the cache holds %d entries, want only the new one", 2*pageCacheIdle, len(c.entries))
	}
}

func FuzzPageRequest(f *testing.F) {
	for _, s := range []string{"", `{}`, `{"cursor":"ab.1.2","limit":3,"max_bytes":9}`, `{"cursor":"a..1"}`, `{"limit":-1}`, `[]`, `{"cursor":"a.18446744073709551616.0"}`} {
		f.Add([]byte(s))
	}
	v := NewView(ViewConfig{Clock: meshtest.NewClock()})
	fill(v, 20, "web")
	var c pageCache
	f.Fuzz(func(t *testing.T, data []byte) {
		req, cur, err := parsePageRequest(data)
		if err != nil {
			return
		}
		e := c.current(v, "web")
		offset := 0
		if cur != nil {
			if cur.origin != v.Origin() || cur.version != e.version || cur.offset > e.count() {
				return
			}
			offset = cur.offset
		}
		if !json.Valid(e.page(offset, req.Limit, pageBytes(req.MaxBytes, 1<<20))) {
			t.Fatalf("invalid page for %q", data)
		}
	})
}

// A snapshot is encoded again after pageFresh, for the heartbeats' news,
// in place of the one of the same version, whose cursors stay good.
func TestPageCacheFreshness(t *testing.T) {
	clock := meshtest.NewClock()
	v := NewView(ViewConfig{Clock: clock})
	fill(v, 10, "web")
	var c pageCache
	e1 := c.current(v, "web")
	clock.Advance(pageFresh)
	e2 := c.current(v, "web")
	if e2 == e1 || c.builds != 2 || len(c.entries) != 1 {
		t.Fatalf("after %s: new %v, %d builds, %d entries; want a new encoding in place of the old", pageFresh, e2 != e1, c.builds, len(c.entries))
	}
	if e, err := c.at(v, "web", cursor{origin: v.Origin(), version: e1.version, offset: 3}); err != nil || e != e2 {
		t.Fatalf("cursor of the old encoding: %v", err)
	}
}
