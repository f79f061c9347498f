package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A watch that starts while the current revision of the service's document
// is invalid (written by a raw KV put, not natsmesh apply) puts in force
// the state the history says came before it, says which revision it uses
// and why, and follows the revisions written after it.
func TestWatchStartsOnNewestValidRevision(t *testing.T) {
	t.Parallel()
	const (
		badTimeout = `{"service":"reviews","timeout":"soon"}`
		otherSvc   = `{"service":"ratings","timeout":"2s"}`
	)
	valid, err := Marshal(doc("reviews", time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		// writes are the key's revisions, oldest first: a document, or
		// "" for a delete.
		writes []string
		// want is the timeout of what the watch starts on ("nil" for no
		// document) and the index in writes of the revision it reports.
		want    string
		wantRev int // -1: revision 0
		log     string
	}{
		{"a valid revision before two invalid ones", []string{string(valid), badTimeout, otherSvc}, "1s", 0,
			"using the newest valid revision before it in the bucket's history"},
		{"invalid ones before the valid one are no fallback", []string{badTimeout, string(valid), otherSvc, badTimeout}, "1s", 1,
			"using the newest valid revision before it in the bucket's history"},
		{"a delete after the valid revision", []string{string(valid), "", badTimeout}, "nil", 1,
			"the revision before it deleted the document, so calls use the defaults"},
		{"no valid revision at all", []string{badTimeout, otherSvc}, "nil", -1,
			"the bucket's history has no valid revision before it, so calls use the defaults"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _, st := newTestStore(t)
			ctx := storeTestCtx(t)
			revs := make([]uint64, len(tc.writes))
			for i, w := range tc.writes {
				var err error
				if w == "" {
					revs[i], err = st.Delete(ctx, "reviews")
				} else {
					revs[i], err = st.kv.Put(ctx, "reviews", []byte(w))
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			current := revs[len(revs)-1]
			var wantRev uint64
			if tc.wantRev >= 0 {
				wantRev = revs[tc.wantRev]
			}
			logs := &meshtest.LogBuffer{}
			w, err := NewWatcher(meshtest.Connect(t, srv), "", logs.Logger())
			if err != nil {
				t.Fatal(err)
			}
			a := newApplied(t)
			stop, err := w.Watch(ctx, "reviews", a.apply)
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			// In force before Watch returns, as a valid current revision is.
			if d, rev, n := a.last(); n != 1 || timeoutOf(d) != tc.want || rev != wantRev {
				t.Fatalf("after Watch: %d applies, last %s at %d; want %s at %d", n, timeoutOf(d), rev, tc.want, wantRev)
			}
			line := logLine(logs.String(), tc.log)
			if line == "" {
				t.Fatalf("no log line saying %q:\n%s", tc.log, logs.String())
			}
			for _, want := range []string{fmt.Sprintf("revision=%d", current), "error="} {
				if !strings.Contains(line, want) {
					t.Errorf("log line %q does not say %s", line, want)
				}
			}
			if tc.wantRev >= 0 && !strings.Contains(line, fmt.Sprintf("using=%d", wantRev)) {
				t.Errorf("log line %q does not say using=%d", line, wantRev)
			}
			if strings.Contains(logs.String(), "keeping the previous config") {
				t.Errorf("the watch claims to keep a previous config it never had:\n%s", logs.String())
			}

			// Later revisions are followed: a valid one is applied, an
			// invalid one after it keeps it, and the log says so.
			good, err := st.Put(ctx, doc("reviews", 3*time.Second), current)
			if err != nil {
				t.Fatal(err)
			}
			a.waitRev(good, 5*time.Second)
			bad, err := st.kv.Put(ctx, "reviews", []byte(badTimeout))
			if err != nil {
				t.Fatal(err)
			}
			meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				line := logLine(logs.String(), fmt.Sprintf("revision=%d", bad))
				if !strings.Contains(line, "keeping the previous config") || !strings.Contains(line, fmt.Sprintf("using=%d", good)) {
					return fmt.Errorf("no line saying revision %d is skipped for revision %d:\n%s", bad, good, logs.String())
				}
				return nil
			})
			if d, rev, _ := a.last(); rev != good || timeoutOf(d) != "3s" {
				t.Errorf("after an invalid revision: last %s at %d; want 3s at %d", timeoutOf(d), rev, good)
			}
		})
	}
}

// A running watch of a service that has no document, given an invalid
// revision, keeps the defaults and says so, not that it keeps a previous
// config.
func TestWatchInvalidFirstRevisionKeepsDefaults(t *testing.T) {
	t.Parallel()
	srv, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	logs := &meshtest.LogBuffer{}
	w, err := NewWatcher(meshtest.Connect(t, srv), "", logs.Logger())
	if err != nil {
		t.Fatal(err)
	}
	a := newApplied(t)
	stop, err := w.Watch(ctx, "reviews", a.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	bad, err := st.kv.Put(ctx, "reviews", []byte(`{"service":"reviews","timeout":"soon"}`))
	if err != nil {
		t.Fatal(err)
	}
	const want = "the service had no config before it, so calls keep the defaults"
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if line := logLine(logs.String(), want); !strings.Contains(line, fmt.Sprintf("revision=%d", bad)) {
			return fmt.Errorf("no line saying %q for revision %d:\n%s", want, bad, logs.String())
		}
		return nil
	})
	if strings.Contains(logs.String(), "keeping the previous config") {
		t.Errorf("the watch claims to keep a previous config it never had:\n%s", logs.String())
	}
	if d, rev, n := a.last(); n != 1 || d != nil || rev != 0 {
		t.Errorf("%d applies, last %s at %d; want only nil at 0", n, timeoutOf(d), rev)
	}
}

// logLine is the first line of logs that contains s, or "".
func logLine(logs, s string) string {
	for line := range strings.Lines(logs) {
		if strings.Contains(line, s) {
			return line
		}
	}
	return ""
}
