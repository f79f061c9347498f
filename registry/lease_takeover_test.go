package registry_test

import (
	"errors"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/internal/meshtest"
	"github.com/natsmesh/natsmesh/registry"
)

// The lease holder dies without handing over: another registry takes over
// within twice the TTL.
func TestLeaseTakeoverWithinTwoTTL(t *testing.T) {
	t.Parallel()
	s := meshtest.RunServer(t)
	const ttl = 1500 * time.Millisecond
	ncA := meshtest.Connect(t, s)
	a, err := registry.Start(ncA, registry.Config{LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	b, err := registry.Start(meshtest.Connect(t, s), registry.Config{LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	if !a.Leader() || b.Leader() {
		t.Fatalf("leaders: a %v, b %v; want the first one only", a.Leader(), b.Leader())
	}
	ncA.Close()
	lost := time.Now()
	meshtest.CheckFor(t, 2*ttl, 10*time.Millisecond, func() error {
		if !b.Leader() {
			return errors.New("b has not taken over")
		}
		return nil
	})
	t.Logf("taken over %s after the holder's loss (TTL %s)", time.Since(lost).Round(time.Millisecond), ttl)
}
