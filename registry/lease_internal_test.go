package registry

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// flakyKV fails renewals as told: fail makes the next Updates fail before
// they reach the server; lose makes them land but report a timeout, as a
// reply lost on the way back does.
type flakyKV struct {
	jetstream.KeyValue
	fail, lose atomic.Int32
	ok         atomic.Int32 // updates that succeeded
}

func (f *flakyKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	if f.fail.Add(-1) >= 0 {
		return 0, context.DeadlineExceeded
	}
	n, err := f.KeyValue.Update(ctx, key, value, rev)
	if err == nil && f.lose.Add(-1) >= 0 {
		return 0, context.DeadlineExceeded
	}
	if err == nil {
		f.ok.Add(1)
	}
	return n, err
}

// changes records a lease's wins and losses.
type changes struct {
	mu  sync.Mutex
	got []bool
}

func (c *changes) change(held bool) { c.mu.Lock(); c.got = append(c.got, held); c.mu.Unlock() }

func (c *changes) list() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bool(nil), c.got...)
}

// runLease starts a lease with ttl on a flaky view of a fresh bucket.
func runLease(t *testing.T, ttl time.Duration) (*lease, *flakyKV, *changes) {
	t.Helper()
	nc := meshtest.Connect(t, meshtest.RunServer(t))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: LeaseBucket, TTL: ttl, History: 1, Storage: jetstream.MemoryStorage})
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyKV{KeyValue: kv}
	c := &changes{}
	var logs meshtest.LogBuffer
	l := newLease(f, leaseConfig{id: "a", ttl: ttl, log: logs.Logger()}, c.change)
	l.start()
	t.Cleanup(func() {
		l.stop()
		if t.Failed() {
			t.Logf("lease logs:\n%s", logs.String())
		}
	})
	if got := c.list(); len(got) != 1 || !got[0] {
		t.Fatalf("changes after start: %v; want won", got)
	}
	return l, f, c
}

// renewedAfter waits until n more renewals have succeeded.
func renewedAfter(t *testing.T, f *flakyKV, n int32, within time.Duration) {
	t.Helper()
	want := f.ok.Load() + n
	meshtest.CheckFor(t, within, 10*time.Millisecond, func() error {
		if f.ok.Load() < want {
			return errors.New("not renewed yet")
		}
		return nil
	})
}

// One renewal fails: the lease is kept and renewed at the next tick.
func TestLeaseSurvivesFailedRenewal(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	_, f, c := runLease(t, ttl)
	f.fail.Store(1)
	renewedAfter(t, f, 2, 4*ttl)
	if f.fail.Load() >= 0 {
		t.Fatal("the failure was not injected")
	}
	if got := c.list(); len(got) != 1 {
		t.Fatalf("changes: %v; want the lease kept through one failed renewal", got)
	}
}

// A renewal lands but its reply is lost: the next renewal finds the entry
// still ours and keeps the lease.
func TestLeaseSurvivesLostReply(t *testing.T) {
	t.Parallel()
	const ttl = 2 * time.Second
	_, f, c := runLease(t, ttl)
	f.lose.Store(1)
	renewedAfter(t, f, 2, 4*ttl)
	if f.lose.Load() >= 0 {
		t.Fatal("the lost reply was not injected")
	}
	if got := c.list(); len(got) != 1 {
		t.Fatalf("changes: %v; want the lease kept through a lost reply", got)
	}
}

// Renewals that keep failing: the lease is given up before its entry
// expires, so that no two servers lead at once.
func TestLeaseGivenUpBeforeExpiry(t *testing.T) {
	t.Parallel()
	const ttl = time.Second
	l, f, c := runLease(t, ttl)
	f.fail.Store(1 << 30)
	start := time.Now()
	meshtest.CheckFor(t, 4*ttl, 5*time.Millisecond, func() error {
		if got := c.list(); len(got) < 2 {
			return errors.New("still held")
		}
		return nil
	})
	if got := c.list(); len(got) != 2 || got[1] {
		t.Fatalf("changes: %v; want won, lost", got)
	}
	// The last renewal that succeeded was at most a tick before the
	// failures began; the loss comes before that one's TTL ends.
	if lost := time.Since(start); lost > ttl+l.tick {
		t.Errorf("lost after %s; want before the entry expires (%s)", lost, ttl)
	}
}
