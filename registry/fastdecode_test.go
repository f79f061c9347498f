package registry

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeFast checks the fast decoder against encoding/json: whatever it
// accepts, encoding/json decodes to the same heartbeat.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range []string{
		string(benchBeat),
		`{"service":"a","instance":"b","seq":1,"interval_ms":1000,"health":"passing","started":"2026-11-22T06:00:00Z"}`,
		` { "seq" : 7 , "pid":-3 } `,
		`{}`,
		`{"seq":01}`,
		`{"seq":1.5}`,
		`{"seq":1e3}`,
		`{"service":"a\"b"}`,
		`{"service":"ü"}`,
		`{"meta":{"k":"v"}}`,
		`{"seq":1}x`,
		`{"seq":1,"seq":2}`,
		`{"Service":"a"}`,
		`{"started":"not a time"}`,
		`{"seq":123456789012345678}`,
		`{"seq":-1}`,
		`{"health":null}`,
		`{"service":"a","zone":"eu-1","instance":"b"}`,
		`{"zone":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeFast(data)
		if !ok {
			return
		}
		var slow Heartbeat
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("fast decoder accepted %q, which encoding/json rejects: %v", data, err)
		}
		if !fast.Started.Equal(slow.Started) {
			t.Fatalf("%q: started %v, encoding/json %v", data, fast.Started, slow.Started)
		}
		fast.Started = slow.Started
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", data, fast, slow)
		}
	})
}

func TestDecodeFastTakesAnnouncerDocuments(t *testing.T) {
	hb := Heartbeat{Service: "svc", Subset: "v2", Zone: "z-a", Instance: "svc-1", Host: "h", PID: 9, Seq: 3, IntervalMS: 1000, Health: Failing, Inflight: 4}
	data, err := json.Marshal(hb)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := decodeFast(data)
	if !ok {
		t.Fatalf("the fast decoder refused an announcer's document %s", data)
	}
	if !got.Started.Equal(hb.Started) || got.Service != hb.Service || got.Subset != hb.Subset || got.Zone != hb.Zone || got.Seq != hb.Seq || got.Health != hb.Health || got.Inflight != hb.Inflight || got.PID != hb.PID {
		t.Fatalf("decoded %+v from %s", got, data)
	}
}
