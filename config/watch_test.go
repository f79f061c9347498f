package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// Watcher is what the proxy package asks of a config source (config does
// not import proxy, so the interface is repeated here).
var _ interface {
	Watch(ctx context.Context, service string, apply func(doc *Service, revision uint64)) (stop func(), err error)
} = (*Watcher)(nil)

// applied records what a watch applied, and checks apply is never called
// twice at once.
type applied struct {
	t       *testing.T
	mu      sync.Mutex
	busy    bool
	docs    []*Service
	revs    []uint64
	changed chan struct{}
}

func newApplied(t *testing.T) *applied { return &applied{t: t, changed: make(chan struct{}, 1)} }

func (a *applied) apply(doc *Service, rev uint64) {
	a.mu.Lock()
	if a.busy {
		a.t.Error("apply called while another apply runs")
	}
	a.busy = true
	a.docs = append(a.docs, doc)
	a.revs = append(a.revs, rev)
	a.mu.Unlock()
	time.Sleep(time.Millisecond) // long enough for an overlap to show
	a.mu.Lock()
	a.busy = false
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *applied) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.docs)
}

// last is the last document applied and its revision.
func (a *applied) last() (*Service, uint64, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.docs) == 0 {
		return nil, 0, 0
	}
	return a.docs[len(a.docs)-1], a.revs[len(a.revs)-1], len(a.docs)
}

// waitRev waits until the watch applied revision rev.
func (a *applied) waitRev(rev uint64, within time.Duration) {
	a.t.Helper()
	meshtest.CheckFor(a.t, within, 5*time.Millisecond, func() error {
		_, got, n := a.last()
		if got != rev {
			return fmt.Errorf("last applied revision is %d (of %d applies), want %d", got, n, rev)
		}
		return nil
	})
}

func timeoutOf(d *Service) string {
	if d == nil {
		return "nil"
	}
	return d.Timeout.String()
}

func TestWatchDeliversChanges(t *testing.T) {
	t.Parallel()
	srv, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(meshtest.Connect(t, srv), "", nil)
	if err != nil {
		t.Fatal(err)
	}

	// The current value is delivered before Watch returns, for a service
	// with a document and for one without.
	a := newApplied(t)
	stop, err := w.Watch(ctx, "reviews", a.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if d, rev, n := a.last(); n != 1 || rev != res[0].Revision || timeoutOf(d) != "1s" {
		t.Fatalf("after Watch: %d applies, last %s at %d; want 1s at %d", n, timeoutOf(d), rev, res[0].Revision)
	}
	none := newApplied(t)
	stopNone, err := w.Watch(ctx, "ratings", none.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stopNone()
	if d, rev, n := none.last(); n != 1 || d != nil || rev != 0 {
		t.Fatalf("after Watch of a service without config: %d applies, last %s at %d; want nil at 0", n, timeoutOf(d), rev)
	}

	// Updates come in revision order, a delete as nil, and a document
	// written after a delete comes back.
	var want []string
	var last uint64
	for i := 2; i <= 6; i++ {
		r, err := st.Apply(ctx, []*Service{doc("reviews", time.Duration(i)*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("%ds@%d", i, r[0].Revision))
		last = r[0].Revision
	}
	del, err := st.Delete(ctx, "reviews")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, fmt.Sprintf("nil@%d", del))
	r, err := st.Apply(ctx, []*Service{doc("reviews", 9*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, fmt.Sprintf("9s@%d", r[0].Revision))
	a.waitRev(r[0].Revision, 5*time.Second)
	a.mu.Lock()
	var got []string
	for i := 1; i < len(a.docs); i++ {
		got = append(got, fmt.Sprintf("%s@%d", timeoutOf(a.docs[i]), a.revs[i]))
	}
	a.mu.Unlock()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("applied %s\nwant    %s", strings.Join(got, " "), strings.Join(want, " "))
	}
	if last >= del {
		t.Errorf("revisions out of order: %d then delete %d", last, del)
	}
	if n := none.count(); n != 1 {
		t.Errorf("the watch of ratings applied %d times; want once: other keys are not its business", n)
	}

	// After stop, nothing more is applied.
	stop()
	stop()
	n := a.count()
	if _, err := st.Apply(ctx, []*Service{doc("reviews", 10*time.Second)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a late apply would show within this
	if a.count() != n {
		t.Error("apply called after stop")
	}
}

// A stored document that is not valid is skipped, once logged, and the
// previous one stays; the next valid one is applied.
func TestWatchSkipsInvalidDocument(t *testing.T) {
	t.Parallel()
	srv, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)})
	if err != nil {
		t.Fatal(err)
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
	a.waitRev(res[0].Revision, time.Second)
	bad1, err := st.kv.Put(ctx, "reviews", []byte(`{"service":"reviews","timeout":"soon"}`))
	if err != nil {
		t.Fatal(err)
	}
	bad2, err := st.kv.Put(ctx, "reviews", []byte(`{"service":"ratings","timeout":"2s"}`)) // another service's
	if err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := strings.Count(logs.String(), "skipping an invalid config revision"); n != 2 {
			return fmt.Errorf("%d log lines about invalid revisions; want 2 (%d and %d)", n, bad1, bad2)
		}
		return nil
	})
	if d, rev, n := a.last(); n != 1 || rev != res[0].Revision || timeoutOf(d) != "1s" {
		t.Errorf("after invalid revisions: %d applies, last %s at %d; want only the first", n, timeoutOf(d), rev)
	}
	good, err := st.Apply(ctx, []*Service{doc("reviews", 3*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	a.waitRev(good[0].Revision, 5*time.Second)
	if d, _, n := a.last(); n != 2 || timeoutOf(d) != "3s" {
		t.Errorf("after a valid revision: %d applies, last %s; want 2, 3s", n, timeoutOf(d))
	}
}

// The NATS server stops and comes back on the same port with the same data:
// the watch keeps the last document meanwhile, and delivers the revisions
// written after the restart.
func TestWatchSurvivesServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, err := embedded.Start(embedded.Config{Port: -1, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	port := srv.Addr().(*net.TCPAddr).Port
	ctx := storeTestCtx(t)
	writer := meshtest.Connect(t, srv)
	st, err := CreateStore(ctx, writer, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(meshtest.Connect(t, srv), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := newApplied(t)
	stop, err := w.Watch(ctx, "reviews", a.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	a.waitRev(res[0].Revision, time.Second)

	srv.Shutdown()
	time.Sleep(300 * time.Millisecond) // the outage: clients retry meanwhile
	srv2, err := embedded.Start(embedded.Config{Port: port, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv2.Shutdown)
	if n := a.count(); n != 1 {
		t.Errorf("%d applies across the outage; want the first only", n)
	}
	var rev uint64
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		r, err := st.Apply(ctx, []*Service{doc("reviews", 2*time.Second)})
		if err != nil {
			return err
		}
		rev = r[0].Revision
		return nil
	})
	start := time.Now()
	a.waitRev(rev, 5*time.Second)
	t.Logf("revision written after the restart applied %s later", time.Since(start).Round(time.Millisecond))
	if d, _, n := a.last(); n != 2 || timeoutOf(d) != "2s" {
		t.Errorf("%d applies, last %s; want 2, 2s", n, timeoutOf(d))
	}
	// And once more, on a watch that has settled on the new server.
	r, err := st.Apply(ctx, []*Service{doc("reviews", 3*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	a.waitRev(r[0].Revision, 5*time.Second)
}

func TestWatchNoJetStream(t *testing.T) {
	t.Parallel()
	nc := runServerNoJetStream(t)
	w, err := NewWatcher(nc, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := newApplied(t)
	start := time.Now()
	stop, err := w.Watch(context.Background(), "reviews", a.apply)
	took := time.Since(start)
	if !errors.Is(err, ErrNoJetStream) || stop != nil {
		t.Fatalf("Watch = %v; want ErrNoJetStream", err)
	}
	if took > 500*time.Millisecond {
		t.Errorf("Watch took %s to see there is no JetStream; want it at once", took)
	}
	if a.count() != 0 {
		t.Error("apply called without JetStream")
	}
}

// Without the bucket no service has config; once it is made, documents
// written to it are delivered.
func TestWatchBucketCreatedLater(t *testing.T) {
	t.Parallel()
	srv := meshtest.RunServer(t)
	ctx := storeTestCtx(t)
	w, err := NewWatcher(meshtest.Connect(t, srv), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := newApplied(t)
	stop, err := w.Watch(ctx, "reviews", a.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if d, rev, n := a.last(); n != 1 || d != nil || rev != 0 {
		t.Fatalf("without a bucket: %d applies, last %s at %d; want nil at 0", n, timeoutOf(d), rev)
	}
	st, err := CreateStore(ctx, meshtest.Connect(t, srv), "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	a.waitRev(res[0].Revision, 5*time.Second)
}

// Watches hold no goroutines after they stop, and Watch rejects names that
// are not service names.
func TestWatchStopReleases(t *testing.T) {
	_, nc, st := newTestStore(t)
	ctx := storeTestCtx(t)
	if _, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)}); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(nc, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Watch(ctx, "reviews.*", func(*Service, uint64) {}); !errors.Is(err, bus.ErrInvalidName) {
		t.Errorf("Watch(reviews.*) = %v; want an invalid name", err)
	}
	before := runtime.NumGoroutine()
	var stops []func()
	for i := range 20 {
		stop, err := w.Watch(ctx, fmt.Sprintf("svc-%d", i%4), func(*Service, uint64) {})
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
	}
	for _, stop := range stops {
		stop()
	}
	meshtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := runtime.NumGoroutine(); n > before+2 {
			return fmt.Errorf("%d goroutines after stopping 20 watches; %d before", n, before)
		}
		return nil
	})
}
