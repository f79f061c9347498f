package controlplane_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natsmesh/natsmesh/config"
	"github.com/natsmesh/natsmesh/controlplane"
	"github.com/natsmesh/natsmesh/internal/meshtest"
)

// A config bucket deleted under a running control plane is made again
// within a few seconds, said once in the log, and natsmesh apply and
// config get (the Store) work on it.
func TestDeletedConfigBucketIsMadeAgain(t *testing.T) {
	s := meshtest.RunServer(t)
	var logs meshtest.LogBuffer
	start(t, meshtest.Connect(t, s), controlplane.Config{Logger: logs.Logger(), RequireConfigBucket: true})
	admin := meshtest.Connect(t, s)
	ctx := testCtx(t)
	st, err := config.OpenStore(ctx, admin, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, []*config.Service{{Service: "reviews", Timeout: config.Duration(time.Second)}}); err != nil {
		t.Fatal(err)
	}

	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, "KV_"+st.Bucket()); err != nil {
		t.Fatal(err)
	}
	if _, err := config.OpenStore(ctx, admin, ""); !errors.Is(err, config.ErrNoBucket) {
		t.Fatalf("OpenStore right after the delete: %v; want ErrNoBucket", err)
	}
	deleted := time.Now()
	const said = "the config bucket was gone (deleted?); made it again"
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if _, err := config.OpenStore(ctx, admin, ""); err != nil {
			return err
		}
		if !strings.Contains(logs.String(), said) {
			return fmt.Errorf("no log line saying %q", said)
		}
		return nil
	})
	t.Logf("the bucket was made again %s after the delete", time.Since(deleted).Round(time.Millisecond))

	st, err = config.OpenStore(ctx, admin, "")
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := st.HistoryKept(ctx); err != nil || kept != config.History {
		t.Errorf("the new bucket keeps %d revisions (%v); want %d", kept, err, config.History)
	}
	if _, err := st.Get(ctx, "reviews"); !errors.Is(err, config.ErrNotFound) {
		t.Errorf("Get of the deleted bucket's document: %v; want ErrNotFound (the new bucket is empty)", err)
	}
	res, err := st.Apply(ctx, []*config.Service{{Service: "reviews", Timeout: config.Duration(2 * time.Second)}})
	if err != nil {
		t.Fatalf("Apply on the new bucket: %v", err)
	}
	e, err := st.Get(ctx, "reviews")
	if err != nil || e.Revision != res[0].Revision || e.Doc == nil || e.Doc.Timeout != config.Duration(2*time.Second) {
		t.Fatalf("Get after Apply on the new bucket = %+v, %v", e, err)
	}

	// Said once: later checks find the bucket there.
	if n := strings.Count(logs.String(), said); n != 1 {
		t.Errorf("%d log lines saying %q; want 1:\n%s", n, said, logs.String())
	}

	// It is checked again: a second delete is noticed as well.
	if err := js.DeleteStream(ctx, "KV_"+st.Bucket()); err != nil {
		t.Fatal(err)
	}
	meshtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if n := strings.Count(logs.String(), said); n != 2 {
			return fmt.Errorf("%d log lines saying %q; want 2", n, said)
		}
		_, err := config.OpenStore(ctx, admin, "")
		return err
	})
}
