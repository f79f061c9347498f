package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/sidecar"
)

// A request held by a draining instance finishes even when its app has to
// call another service through the same sidecar to answer it: the outbound
// proxy keeps serving until the inbound requests are done.
func TestDrainKeepsOutboundForRequestsInFlight(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	startCallee(t, s, "leaf", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "leaf answered")
	}), nil)

	arrived := make(chan struct{})
	release := make(chan struct{})
	var mid *sidecar.Sidecar
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		// The app calls leaf through its own sidecar, as HTTP_PROXY would.
		c := &http.Client{Transport: proxyTransport(mid.OutboundAddr().String())}
		resp, err := c.Get("http://leaf/")
		if err != nil {
			http.Error(w, "outbound call failed: "+err.Error(), http.StatusInternalServerError)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		io.WriteString(w, "mid got: "+string(b))
	}))
	nc := meshtest.Connect(t, s)
	mid, err := sidecar.Start(nc, sidecar.Config{Service: "mid", Upstream: app.URL, Listen: "127.0.0.1:0", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	caller := startCaller(t, s, "front", nil)
	c := sidecarClient(t, formProxy, caller, "front")

	type answer struct {
		status int
		body   string
		err    error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := c.hc.Get("http://mid/")
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- answer{status: resp.StatusCode, body: string(b)}
	}()
	<-arrived

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- mid.Shutdown(ctx)
	}()
	// The instance leaves its queue group before its app goes on.
	meshtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		resp, _ := c.get(t, "mid", "/")
		if resp.StatusCode != http.StatusServiceUnavailable {
			return errorf("a new call to mid got %d, want 503 while mid drains", resp.StatusCode)
		}
		return nil
	})
	close(release)

	a := <-got
	if a.err != nil || a.status != http.StatusOK || !strings.Contains(a.body, "mid got: leaf answered") {
		t.Fatalf("call held by the draining instance: status %d body %q err %v; want 200 with leaf's answer", a.status, a.body, a.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
