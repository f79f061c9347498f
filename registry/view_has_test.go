package registry_test

import (
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/registry"
)

func TestViewHas(t *testing.T) {
	f := newViewFixture(t, registry.ViewConfig{})
	if f.view.Has("reviews", "reviews-1") {
		t.Fatal("an empty view has reviews-1")
	}
	f.view.Observe(hb("reviews", "reviews-1", 1))
	f.view.Observe(withHealth(hb("reviews", "reviews-2", 1), registry.Failing))
	for _, tc := range []struct {
		service, instance string
		want              bool
	}{
		{"reviews", "reviews-1", true},
		{"reviews", "reviews-2", true}, // failing is still listed
		{"ratings", "reviews-1", false},
		{"reviews", "reviews-3", false},
	} {
		if got := f.view.Has(tc.service, tc.instance); got != tc.want {
			t.Errorf("Has(%q, %q) = %v, want %v", tc.service, tc.instance, got, tc.want)
		}
	}
	f.view.Bye("reviews", "reviews-1")
	if f.view.Has("reviews", "reviews-1") {
		t.Error("Has after bye = true")
	}
	f.clock.Advance(4 * time.Second)
	f.view.Sweep()
	if f.view.Has("reviews", "reviews-2") {
		t.Error("Has after expiry = true")
	}
}
