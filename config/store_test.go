package config

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// storeTestCtx is a context for one test's store calls.
func storeTestCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newTestStore starts a NATS server and creates the mesh's config bucket.
func newTestStore(t *testing.T) (*embedded.Server, *nats.Conn, *Store) {
	t.Helper()
	srv := meshtest.RunServer(t)
	nc := meshtest.Connect(t, srv)
	st, err := CreateStore(storeTestCtx(t), nc, "")
	if err != nil {
		t.Fatal(err)
	}
	return srv, nc, st
}

// runServerNoJetStream starts a NATS server without JetStream.
func runServerNoJetStream(t *testing.T) *nats.Conn {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server without JetStream did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// doc is a valid document of service with the given timeout.
func doc(service string, timeout time.Duration) *Service {
	return &Service{Service: service, Timeout: Duration(timeout)}
}

func TestBucket(t *testing.T) {
	for _, tc := range []struct {
		prefix, want, err string
	}{
		{"", "mesh_config", ""},
		{"mesh", "mesh_config", ""},
		{"prod.mesh", "prod_mesh_config", ""},
		{"a-b.c_d.e", "a-b_c_d_e_config", ""},
		{"Prod", "", "subject prefix"},
		{"mesh.*", "", "subject prefix"},
		{"mesh.", "", "subject prefix"},
	} {
		t.Run(tc.prefix, func(t *testing.T) {
			got, err := Bucket(tc.prefix)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("Bucket(%q) = %q, %v; want an error about the %s", tc.prefix, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("Bucket(%q) = %q, %v; want %q", tc.prefix, got, err, tc.want)
			}
		})
	}
}

func TestStoreOpenErrors(t *testing.T) {
	t.Parallel()
	t.Run("no JetStream", func(t *testing.T) {
		nc := runServerNoJetStream(t)
		create := func(ctx context.Context, nc *nats.Conn, prefix string) (*Store, error) {
			return CreateStore(ctx, nc, prefix)
		}
		for _, open := range []func(context.Context, *nats.Conn, string) (*Store, error){OpenStore, create} {
			_, err := open(storeTestCtx(t), nc, "")
			if !errors.Is(err, ErrNoJetStream) || !strings.Contains(err.Error(), "has no JetStream") || !strings.Contains(err.Error(), nc.ConnectedUrl()) {
				t.Errorf("open: %v; want ErrNoJetStream naming the server", err)
			}
		}
	})
	t.Run("no bucket", func(t *testing.T) {
		srv := meshtest.RunServer(t)
		nc := meshtest.Connect(t, srv)
		_, err := OpenStore(storeTestCtx(t), nc, "prod.mesh")
		if !errors.Is(err, ErrNoBucket) || !strings.Contains(err.Error(), "prod_mesh_config") || !strings.Contains(err.Error(), "natsmesh server") {
			t.Errorf("OpenStore: %v; want ErrNoBucket naming the bucket and natsmesh server", err)
		}
		st, err := CreateStore(storeTestCtx(t), nc, "prod.mesh")
		if err != nil {
			t.Fatal(err)
		}
		if n, err := st.HistoryKept(storeTestCtx(t)); err != nil || n != History {
			t.Errorf("HistoryKept = %d, %v; want %d", n, err, History)
		}
		if _, err := OpenStore(storeTestCtx(t), nc, "prod.mesh"); err != nil {
			t.Errorf("OpenStore after CreateStore: %v", err)
		}
		if _, err := CreateStore(storeTestCtx(t), nc, "prod.mesh"); err != nil {
			t.Errorf("CreateStore of an existing bucket: %v", err)
		}
	})
}

func TestStoreApplyGetList(t *testing.T) {
	t.Parallel()
	_, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second), doc("ratings", 2*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Service != "reviews" || res[1].Service != "ratings" || res[0].Unchanged || res[1].Unchanged || res[1].Revision <= res[0].Revision {
		t.Fatalf("Apply = %+v; want two new revisions, in file order", res)
	}
	e, err := st.Get(ctx, "reviews")
	if err != nil || e.Revision != res[0].Revision || e.Doc == nil || e.Doc.Timeout.D() != time.Second || e.Op != OpPut || e.Time.IsZero() {
		t.Fatalf("Get(reviews) = %+v, %v", e, err)
	}
	list, err := st.List(ctx)
	if err != nil || len(list) != 2 || list[0].Service != "ratings" || list[1].Service != "reviews" {
		t.Fatalf("List = %v, %v; want ratings and reviews", list, err)
	}

	// Applying the same documents again writes nothing; a changed one is
	// written.
	res2, err := st.Apply(ctx, []*Service{doc("reviews", time.Second), doc("ratings", 3*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if !res2[0].Unchanged || res2[0].Revision != res[0].Revision || res2[1].Unchanged || res2[1].Revision <= res[1].Revision {
		t.Errorf("second Apply = %+v; want reviews unchanged at %d and ratings at a new revision", res2, res[0].Revision)
	}
	if h, err := st.History(ctx, "reviews"); err != nil || len(h) != 1 {
		t.Errorf("History(reviews) = %d entries, %v; want 1: an unchanged document is not written again", len(h), err)
	}

	if _, err := st.Get(ctx, "details"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no config for service details") {
		t.Errorf("Get(details) = %v; want ErrNotFound", err)
	}
	if _, err := st.Get(ctx, "Bad.Name"); !errors.Is(err, bus.ErrInvalidName) {
		t.Errorf("Get(Bad.Name) = %v; want an invalid name", err)
	}
	if _, err := st.Apply(ctx, []*Service{{Service: "x", Timeout: -1}}); err == nil {
		t.Error("Apply of an invalid document succeeded")
	}
}

func TestStorePutCompareAndSet(t *testing.T) {
	t.Parallel()
	_, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	r1, err := st.Put(ctx, doc("reviews", time.Second), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, doc("reviews", 2*time.Second), 0); !errors.Is(err, ErrConflict) {
		t.Errorf("Put over an existing key with revision 0: %v; want ErrConflict", err)
	}
	r2, err := st.Put(ctx, doc("reviews", 2*time.Second), r1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, doc("reviews", 3*time.Second), r1); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "someone else changed reviews") {
		t.Errorf("Put with a stale revision: %v; want ErrConflict", err)
	}
	if e, _ := st.Get(ctx, "reviews"); e == nil || e.Revision != r2 {
		t.Errorf("after the conflicts the document is %+v; want revision %d", e, r2)
	}
}

// Apply stops at a service someone else changed between its read and its
// write, and says what it applied and what it did not.
func TestStoreApplyConflictReport(t *testing.T) {
	t.Parallel()
	_, nc, st := newTestStore(t)
	ctx := storeTestCtx(t)
	if _, err := st.Apply(ctx, []*Service{doc("a", time.Second), doc("b", time.Second), doc("c", time.Second)}); err != nil {
		t.Fatal(err)
	}
	other, err := OpenStore(ctx, nc, "")
	if err != nil {
		t.Fatal(err)
	}
	var otherRev uint64
	st.afterRead = func() {
		e, err := other.Get(ctx, "b")
		if err != nil {
			t.Error(err)
			return
		}
		if otherRev, err = other.Put(ctx, doc("b", 9*time.Second), e.Revision); err != nil {
			t.Error(err)
		}
	}
	res, err := st.Apply(ctx, []*Service{doc("a", 2*time.Second), doc("b", 2*time.Second), doc("c", 2*time.Second)})
	var ae *ApplyError
	if !errors.As(err, &ae) || !errors.Is(err, ErrConflict) {
		t.Fatalf("Apply = %+v, %v; want an *ApplyError for a conflict", res, err)
	}
	if ae.Service != "b" || len(ae.Applied) != 1 || ae.Applied[0].Service != "a" || !slices.Equal(ae.NotApplied, []string{"b", "c"}) || len(res) != 1 {
		t.Errorf("ApplyError = %+v (results %+v); want a applied, b and c not", ae, res)
	}
	if msg := err.Error(); !strings.Contains(msg, "someone else changed b meanwhile") || !strings.Contains(msg, "applied: a") || !strings.Contains(msg, "not applied: b, c") {
		t.Errorf("error %q does not say what happened", msg)
	}
	for svc, want := range map[string]time.Duration{"a": 2 * time.Second, "b": 9 * time.Second, "c": time.Second} {
		e, err := st.Get(ctx, svc)
		if err != nil || e.Doc.Timeout.D() != want {
			t.Errorf("%s: %+v, %v; want timeout %s", svc, e, err, want)
		}
	}
	if e, _ := st.Get(ctx, "b"); e == nil || e.Revision != otherRev {
		t.Errorf("b is at %+v; want the other writer's revision %d", e, otherRev)
	}
}

// Two applies that read the same revisions and then write at the same time,
// from two connections: each service is written by exactly one of them, and
// the loser's report matches what it wrote.
func TestStoreConcurrentApply(t *testing.T) {
	t.Parallel()
	srv, _, st0 := newTestStore(t)
	ctx := storeTestCtx(t)
	services := []string{"a", "b", "c", "d", "e", "f"}
	var initial []*Service
	for _, s := range services {
		initial = append(initial, doc(s, time.Second))
	}
	if _, err := st0.Apply(ctx, initial); err != nil {
		t.Fatal(err)
	}
	for round := range 10 {
		var (
			barrier sync.WaitGroup
			done    sync.WaitGroup
			results [2][]Result
			errs    [2]error
		)
		barrier.Add(2)
		for w := range 2 {
			st, err := OpenStore(ctx, meshtest.Connect(t, srv), "")
			if err != nil {
				t.Fatal(err)
			}
			// Both read before either writes.
			st.afterRead = func() { barrier.Done(); barrier.Wait() }
			order := slices.Clone(services)
			if w == 1 && round%2 == 1 {
				slices.Reverse(order) // sometimes meet in the middle
			}
			var docs []*Service
			for _, s := range order {
				docs = append(docs, doc(s, time.Duration(100*round+10*w+2)*time.Millisecond))
			}
			done.Add(1)
			go func() {
				defer done.Done()
				results[w], errs[w] = st.Apply(ctx, docs)
			}()
		}
		done.Wait()
		winners := map[string]int{}
		for w := range 2 {
			for _, r := range results[w] {
				if r.Unchanged {
					t.Errorf("round %d: writer %d: %s unchanged", round, w, r.Service)
				}
				winners[r.Service]++
				e, err := st0.Get(ctx, r.Service)
				want := time.Duration(100*round+10*w+2) * time.Millisecond
				if err != nil || e.Doc.Timeout.D() != want || e.Revision != r.Revision {
					t.Errorf("round %d: writer %d says it wrote %s at revision %d, but the store has %+v, %v", round, w, r.Service, r.Revision, e, err)
				}
			}
			var ae *ApplyError
			if errs[w] != nil {
				if !errors.As(errs[w], &ae) || !errors.Is(errs[w], ErrConflict) {
					t.Fatalf("round %d: writer %d: %v; want a conflict", round, w, errs[w])
				}
				if len(ae.Applied) != len(results[w]) || len(ae.Applied)+len(ae.NotApplied) != len(services) {
					t.Errorf("round %d: writer %d: report %+v does not match its results %+v", round, w, ae, results[w])
				}
			}
		}
		if errs[0] == nil && errs[1] == nil {
			t.Errorf("round %d: both applies succeeded after reading the same revisions", round)
		}
		for _, s := range services {
			if winners[s] != 1 {
				t.Errorf("round %d: %s written by %d writers; want exactly 1", round, s, winners[s])
			}
		}
	}
}

func TestStoreHistoryRollbackDelete(t *testing.T) {
	t.Parallel()
	_, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	var revs []uint64
	for i := range History + 4 {
		r, err := st.Apply(ctx, []*Service{doc("reviews", time.Duration(i+1)*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r[0].Revision)
	}
	other, err := st.Apply(ctx, []*Service{doc("ratings", time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	h, err := st.History(ctx, "reviews")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != History || h[0].Revision != revs[4] || h[len(h)-1].Revision != revs[len(revs)-1] {
		t.Fatalf("History = %d entries from %d to %d; want the last %d, %d to %d", len(h), h[0].Revision, h[len(h)-1].Revision, History, revs[4], revs[len(revs)-1])
	}

	// Roll back to the 10th revision: its document comes back as a new one.
	rb, err := st.Rollback(ctx, "reviews", revs[9])
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Get(ctx, "reviews")
	if err != nil || rb.Unchanged || rb.Revision <= revs[len(revs)-1] || e.Revision != rb.Revision || e.Doc.Timeout.D() != 10*time.Second {
		t.Fatalf("Rollback = %+v; Get = %+v, %v; want a new revision with timeout 10s", rb, e, err)
	}
	if again, err := st.Rollback(ctx, "reviews", revs[9]); err != nil || !again.Unchanged || again.Revision != rb.Revision {
		t.Errorf("second Rollback = %+v, %v; want unchanged at %d", again, err, rb.Revision)
	}
	for _, tc := range []struct {
		rev  uint64
		want string
	}{
		{revs[0], "not kept"},
		{other[0].Revision, "belongs to service ratings, not reviews"},
		{1 << 40, "not kept"},
	} {
		if _, err := st.Rollback(ctx, "reviews", tc.rev); !errors.Is(err, ErrNoRevision) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Rollback to %d: %v; want ErrNoRevision, %q", tc.rev, err, tc.want)
		}
	}

	// Delete, then apply again: the delete is a revision, and a document
	// can be written over it.
	del, err := st.Delete(ctx, "reviews")
	if err != nil || del <= rb.Revision {
		t.Fatalf("Delete = %d, %v", del, err)
	}
	if _, err := st.Get(ctx, "reviews"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v; want ErrNotFound", err)
	}
	if _, err := st.Delete(ctx, "reviews"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v; want ErrNotFound", err)
	}
	if list, err := st.List(ctx); err != nil || len(list) != 1 || list[0].Service != "ratings" {
		t.Errorf("List after Delete = %v, %v; want ratings only", list, err)
	}
	if _, err := st.Rollback(ctx, "reviews", del); !errors.Is(err, ErrNoRevision) || !strings.Contains(err.Error(), "is a delete") {
		t.Errorf("Rollback to the delete: %v; want ErrNoRevision, is a delete", err)
	}
	res, err := st.Apply(ctx, []*Service{doc("reviews", 7*time.Second)})
	if err != nil || res[0].Revision <= del || res[0].Unchanged {
		t.Fatalf("Apply after Delete = %+v, %v", res, err)
	}
	h, err = st.History(ctx, "reviews")
	if err != nil {
		t.Fatal(err)
	}
	last := h[len(h)-3:]
	if last[0].Op != OpPut || last[1].Op != OpDelete || last[1].Revision != del || last[2].Op != OpPut || last[2].Revision != res[0].Revision {
		t.Errorf("History ends with %s; want put, delete at %d, put at %d", describeEntries(last), del, res[0].Revision)
	}
	// Rolling back over a delete works too.
	if _, err := st.Delete(ctx, "reviews"); err != nil {
		t.Fatal(err)
	}
	if rb, err := st.Rollback(ctx, "reviews", res[0].Revision); err != nil || rb.Unchanged {
		t.Errorf("Rollback over a delete = %+v, %v", rb, err)
	}
	if _, err := st.History(ctx, "details"); !errors.Is(err, ErrNotFound) {
		t.Errorf("History(details) = %v; want ErrNotFound", err)
	}
}

func describeEntries(es []*Entry) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("%s@%d", e.Op, e.Revision))
	}
	return strings.Join(parts, ", ")
}

// A document written by something other than natsmesh that is not valid is
// reported, not hidden.
func TestStoreInvalidStoredDocument(t *testing.T) {
	t.Parallel()
	_, _, st := newTestStore(t)
	ctx := storeTestCtx(t)
	rev, err := st.kv.Put(ctx, "reviews", []byte(`{"service":"reviews","timeout":"soon"}`))
	if err != nil {
		t.Fatal(err)
	}
	e, err := st.Get(ctx, "reviews")
	if err != nil || e.Doc != nil || e.Invalid == nil || string(e.Raw) == "" {
		t.Fatalf("Get = %+v, %v; want the entry with Invalid set", e, err)
	}
	if _, err := st.Rollback(ctx, "reviews", rev); err == nil || !strings.Contains(err.Error(), "not a valid document") {
		t.Errorf("Rollback to an invalid document: %v", err)
	}
	// Apply replaces it (compare-and-set on its revision).
	if res, err := st.Apply(ctx, []*Service{doc("reviews", time.Second)}); err != nil || res[0].Unchanged {
		t.Errorf("Apply over an invalid document = %+v, %v", res, err)
	}
}
