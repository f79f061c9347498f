package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/bus"
	"github.com/natsmesh/natsmesh/bus/embedded"
	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/proxy"
	"github.com/natsmesh/natsmesh/sidecar"
)

// configStore is the mesh's config bucket on s, written as natsmesh apply
// writes it.
type configStore struct {
	s  *embedded.Server
	st *config.Store
}

func newConfigStore(t testing.TB, s *embedded.Server) *configStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := config.CreateStore(ctx, meshtest.Connect(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	return &configStore{s: s, st: st}
}

// apply stores YAML documents and returns the revision of the first.
func (c *configStore) apply(t testing.TB, yamlDocs string) uint64 {
	t.Helper()
	docs, err := config.Parse("test.yaml", []byte(yamlDocs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.st.Apply(ctx, docs)
	if err != nil {
		t.Fatal(err)
	}
	return res[0].Revision
}

// watching makes a sidecar take its config documents from the bucket, on a
// connection of the watcher's own, as natsmesh sidecar does.
func (c *configStore) watching(t testing.TB, mods ...func(*sidecar.Config)) func(*sidecar.Config) {
	w, err := config.NewWatcher(meshtest.Connect(t, c.s), "", testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return func(cfg *sidecar.Config) {
		cfg.Transport.Configs = w
		for _, m := range mods {
			m(cfg)
		}
	}
}

// callerCounter is an app that answers with the caller it saw and counts
// the calls of each caller.
type callerCounter struct {
	mu   sync.Mutex
	hits map[string]int
}

func newCallerCounter() *callerCounter { return &callerCounter{hits: map[string]int{}} }

func (a *callerCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := r.Header.Get(bus.HeaderCaller)
	a.mu.Lock()
	a.hits[c]++
	a.mu.Unlock()
	io.WriteString(w, "reviews saw "+c+"\n")
}

func (a *callerCounter) count(caller string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hits[caller]
}

// refusal is the sentence a call from caller gets from service's instances
// when revision of its config lists callers list.
func refusal(service, caller string, revision uint64, list string) string {
	return fmt.Sprintf("service %q does not accept calls from %q: its config (revision %d) lists callers %s; add %q to callers in its config document and natsmesh apply it\n",
		service, caller, revision, list, caller)
}

// A caller on the list gets the app's answer; any other gets 403 forbidden
// with the sentence, from the callee's sidecar: the app never sees the call,
// the caller does not retry it, and neither the caller's breaker nor the
// callee's outlier ejection counts it.
func TestCallersAllowAndDeny(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	store := newConfigStore(t, s)
	rev := store.apply(t, "service: reviews\ncallers: [productpage, gateway]\n")
	app := newCallerCounter()
	// Two instances, so that outlier ejection could take one out if it
	// counted refusals.
	var callees []*sidecar.Sidecar
	for range 2 {
		_, sc := startCallee(t, s, "reviews", app, store.watching(t))
		callees = append(callees, sc)
	}
	// The callers keep the defaults: retries on, breaker on.
	pp := sidecarClient(t, formProxy, startCaller(t, s, "productpage", nil), "productpage")
	ratingsSC := startCaller(t, s, "ratings", nil)
	ratings := sidecarClient(t, formHost, ratingsSC, "ratings")

	resp, body := pp.get(t, "reviews", "/reviews/1")
	if resp.StatusCode != http.StatusOK || string(body) != "reviews saw productpage\n" {
		t.Fatalf("allowed caller: %d %q", resp.StatusCode, body)
	}

	const denied = 40
	for i := range denied {
		method := http.MethodGet
		if i%2 == 1 {
			method = http.MethodPost // not idempotent, and no more retried
		}
		resp, body := ratings.do(t, ratings.newRequest(t, method, "reviews", "/reviews/1", nil))
		wantMeshError(t, resp, body, http.StatusForbidden, bus.Forbidden)
		if want := refusal("reviews", "ratings", rev, "[productpage, gateway]"); string(body) != want {
			t.Fatalf("refusal:\n%q\nwant\n%q", body, want)
		}
		if a := resp.Header.Get("Mesh-Attempts"); a != "1" {
			t.Fatalf("Mesh-Attempts %q on a refused call, want 1: refusals are not retried", a)
		}
		if b := resp.Header.Get("Mesh-Breaker"); b != "" {
			t.Fatalf("call %d: Mesh-Breaker %q: refusals must not open the breaker", i, b)
		}
	}
	if n := app.count("ratings"); n != 0 {
		t.Errorf("the app saw %d calls from ratings, want none", n)
	}
	if n := app.count("productpage"); n != 1 {
		t.Errorf("the app saw %d calls from productpage, want 1", n)
	}
	var forbidden uint64
	var inboundForbidden uint64
	for _, sc := range callees {
		forbidden += sc.Inbound().Stats().Forbidden
		if sc.Inbound().Paused() {
			t.Errorf("callee %s left its queue group: outlier ejection counted refusals", sc.Instance())
		}
		for _, e := range sc.Metrics().Snapshot(time.Now(), time.Second).Edges {
			if e.Direction == "inbound" && e.Peer == "ratings" {
				inboundForbidden += e.Responses["4xx:forbidden"]
			}
		}
	}
	if forbidden != denied || inboundForbidden != denied {
		t.Errorf("callees counted %d refusals in Stats and %d in metrics, want %d", forbidden, inboundForbidden, denied)
	}
	out := edgeOf(t, ratingsSC, "outbound", "reviews")
	if out.Responses["4xx:forbidden"] != denied || out.Retries != 0 {
		t.Errorf("the caller's edge to reviews: %v, %d retries; want %d forbidden, no retries", out.Responses, out.Retries, denied)
	}
	if st := ratingsSC.Metrics().Snapshot(time.Now(), time.Second).Breakers["reviews"]; st != "" && st != "closed" {
		t.Errorf("the caller's breaker for reviews is %s after refusals, want closed", st)
	}

	t.Run("unnamed caller", func(t *testing.T) {
		anon := libraryClient(t, s, proxy.TransportConfig{})
		resp, body := anon.get(t, "reviews", "/reviews/1")
		wantMeshError(t, resp, body, http.StatusForbidden, bus.Forbidden)
		want := fmt.Sprintf("service \"reviews\" does not accept calls from unnamed callers: its config (revision %d) lists callers [productpage, gateway]; call it from one of them, through its sidecar or a Transport whose Caller names it\n", rev)
		if string(body) != want {
			t.Errorf("refusal:\n%q\nwant\n%q", body, want)
		}
	})

	t.Run("empty list", func(t *testing.T) {
		rev := store.apply(t, "service: reviews\ncallers: []\n")
		want := refusal("reviews", "productpage", rev, "[]")
		meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
			resp, body := pp.get(t, "reviews", "/reviews/1")
			if resp.StatusCode != http.StatusForbidden || string(body) != want {
				return fmt.Errorf("productpage got %d %q, want 403 %q", resp.StatusCode, body, want)
			}
			return nil
		})
	})
	if n := app.count("ratings") + app.count(""); n != 0 {
		t.Errorf("the app saw %d calls from refused callers", n)
	}
}

// callerLoad calls a service through a caller's sidecar without pause,
// noting when each outcome was last and first seen.
type callerLoad struct {
	ok, refused, other atomic.Int64
	mu                 sync.Mutex
	lastOK, firstRef   time.Time
	lastOther          string
}

func (l *callerLoad) run(ctx context.Context, t *testing.T, c meshClient, wg *sync.WaitGroup) {
	defer wg.Done()
	for ctx.Err() == nil {
		req := c.newRequest(t, http.MethodGet, "reviews", "/reviews/1", nil)
		resp, err := c.hc.Do(req.WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				l.noteOther(err.Error())
			}
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		now := time.Now()
		switch {
		case resp.StatusCode == http.StatusOK:
			l.ok.Add(1)
			l.mu.Lock()
			l.lastOK = now
			l.mu.Unlock()
		case resp.Header.Get(bus.HeaderError) == string(bus.Forbidden):
			l.mu.Lock()
			if l.refused.Add(1) == 1 {
				l.firstRef = now
			}
			l.mu.Unlock()
		default:
			l.noteOther(strconv.Itoa(resp.StatusCode) + " " + string(body))
		}
	}
}

func (l *callerLoad) noteOther(s string) {
	l.other.Add(1)
	l.mu.Lock()
	l.lastOther = s
	l.mu.Unlock()
}

// reset starts counting afresh.
func (l *callerLoad) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ok.Store(0)
	l.refused.Store(0)
	l.lastOK, l.firstRef = time.Time{}, time.Time{}
}

func (l *callerLoad) times() (lastOK, firstRef time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastOK, l.firstRef
}

// A callers list applied while calls flow takes effect within a second on
// every instance, without a restart: the caller that stays on the list sees
// no failure at all, the other starts being refused; removing the list lets
// it in again.
func TestCallersLiveChange(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	store := newConfigStore(t, s)
	app := newCallerCounter()
	for range 2 {
		startCallee(t, s, "reviews", app, store.watching(t))
	}
	var pp, ratings callerLoad
	ppClient := sidecarClient(t, formProxy, startCaller(t, s, "productpage", nil), "productpage")
	ratingsClient := sidecarClient(t, formProxy, startCaller(t, s, "ratings", nil), "ratings")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(2)
	go pp.run(ctx, t, ppClient, &wg)
	go ratings.run(ctx, t, ratingsClient, &wg)
	meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if pp.ok.Load() < 20 || ratings.ok.Load() < 20 {
			return fmt.Errorf("%d and %d calls answered so far", pp.ok.Load(), ratings.ok.Load())
		}
		return nil
	})

	// Refuse ratings.
	ratings.reset()
	store.apply(t, "service: reviews\ncallers: [productpage]\n")
	applied := time.Now()
	meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := ratings.refused.Load(); n < 50 {
			return fmt.Errorf("%d calls of ratings refused so far", n)
		}
		return nil
	})
	lastOK, firstRef := ratings.times()
	if d := firstRef.Sub(applied); d > time.Second {
		t.Errorf("ratings was first refused %s after the apply, want within 1s", d)
	}
	if d := lastOK.Sub(applied); d > time.Second {
		t.Errorf("ratings was last let in %s after the apply, want within 1s", d)
	}

	// Remove the list: ratings is let in again.
	ratings.reset()
	store.apply(t, "service: reviews\n")
	removed := time.Now()
	meshtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := ratings.ok.Load(); n < 50 {
			return fmt.Errorf("%d calls of ratings answered since the list was removed", n)
		}
		return nil
	})
	_, firstRef = ratings.times()
	if d := firstRef.Sub(removed); !firstRef.IsZero() && d > time.Second {
		t.Errorf("ratings was still refused %s after the list was removed, want within 1s", d)
	}
	cancel()
	wg.Wait()

	if n := pp.other.Load() + pp.refused.Load(); n != 0 {
		t.Errorf("productpage, always on the list, had %d failures (the last: %s)", n, pp.lastOther)
	}
	if n := ratings.other.Load(); n != 0 {
		t.Errorf("ratings had %d failures other than refusals (the last: %s)", n, ratings.lastOther)
	}
	if pp.ok.Load() == 0 {
		t.Error("productpage made no calls across the changes")
	}
}
