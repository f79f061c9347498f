package config

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A bucket deleted and made again under a running watch starts its
// revisions from 1 again: the watch notices, delivers the new bucket's
// document even when its revision is one it saw in the old bucket, and
// follows the new bucket's later revisions.
func TestWatchFollowsBucketMadeAgain(t *testing.T) {
	t.Parallel()
	srv, nc, st := newTestStore(t)
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
	w.checkEvery = 100 * time.Millisecond
	a := newApplied(t)
	stop, err := w.Watch(ctx, "reviews", a.apply)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	a.waitRev(res[0].Revision, time.Second)

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// The monitor has seen the first bucket before it goes.
	meshtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.monitor == nil || w.bucketMade.IsZero() {
			return fmt.Errorf("the bucket monitor has not looked at the bucket yet")
		}
		return nil
	})
	if err := js.DeleteStream(ctx, "KV_"+st.Bucket()); err != nil {
		t.Fatal(err)
	}
	st2, err := CreateStore(ctx, nc, "")
	if err != nil {
		t.Fatal(err)
	}
	again, err := st2.Apply(ctx, []*Service{doc("reviews", 3*time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Revision != res[0].Revision {
		t.Fatalf("the new bucket's first revision is %d; the test wants it equal to the old one, %d", again[0].Revision, res[0].Revision)
	}
	meshtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if d, rev, n := a.last(); rev != again[0].Revision || timeoutOf(d) != "3s" {
			return fmt.Errorf("%d applies, last %s at %d; want 3s at %d", n, timeoutOf(d), rev, again[0].Revision)
		}
		return nil
	})
	if !strings.Contains(logs.String(), "the config bucket was deleted and made again") {
		t.Errorf("the watcher did not say the bucket was made again:\n%s", logs.String())
	}
	later, err := st2.Put(ctx, doc("reviews", 4*time.Second), again[0].Revision)
	if err != nil {
		t.Fatal(err)
	}
	a.waitRev(later, 5*time.Second)

	// With its last watch stopped, the Watcher keeps no monitor running.
	stop()
	w.mu.Lock()
	m := w.monitor
	w.mu.Unlock()
	if m != nil {
		t.Error("the bucket monitor still runs after the last watch stopped")
	}
}
