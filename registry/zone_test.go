package registry_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/registry"
)

// A heartbeat's zone survives both decoders and reaches the view's snapshot
// and its JSON, where callers and `natsmesh instances` read it.
func TestHeartbeatZone(t *testing.T) {
	hb := validHB()
	hb.Started = time.Now().UTC()
	hb.Meta = nil // the fast decoder's document
	data := encode(t, hb)
	got, err := registry.DecodeHeartbeat(hb.Service, hb.Instance, data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Zone != "eu-west-1a" {
		t.Fatalf("fast decode: zone %q, want eu-west-1a", got.Zone)
	}
	hb.Meta = map[string]string{"k": "v"} // encoding/json's
	if got, err = registry.DecodeHeartbeat(hb.Service, hb.Instance, encode(t, hb)); err != nil || got.Zone != "eu-west-1a" {
		t.Fatalf("slow decode: zone %q, %v", got.Zone, err)
	}

	v := registry.NewView(registry.ViewConfig{})
	v.Observe(got)
	other := got
	other.Instance, other.Zone = "reviews-2", ""
	v.Observe(other)
	insts := v.Snapshot("reviews").Services["reviews"]
	if len(insts) != 2 || insts[0].Zone != "eu-west-1a" || insts[1].Zone != "" {
		t.Fatalf("snapshot instances %+v, want zones eu-west-1a and none", insts)
	}
	js, err := json.Marshal(insts)
	if err != nil {
		t.Fatal(err)
	}
	var back []map[string]any
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if back[0]["zone"] != "eu-west-1a" {
		t.Errorf("JSON of the first instance has zone %v: %s", back[0]["zone"], js)
	}
	if _, ok := back[1]["zone"]; ok {
		t.Errorf("JSON of an instance without a zone names one: %s", js)
	}
}

func TestAnnouncerRefusesBadZone(t *testing.T) {
	_, err := registry.NewAnnouncer(nil, registry.AnnouncerConfig{Service: "reviews", Instance: "reviews-1", Zone: "Bad.Zone"})
	if err == nil {
		t.Fatal("an announcer with zone Bad.Zone started")
	}
}
