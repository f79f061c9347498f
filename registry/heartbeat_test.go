package registry_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/registry"
)

var started = time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)

// validHB is a heartbeat that passes every check.
func validHB() registry.Heartbeat {
	return registry.Heartbeat{
		Service: "reviews", Subset: "v2", Zone: "eu-west-1a", Instance: "reviews-1",
		Host: "node-7", PID: 4242, Started: started, Seq: 1,
		IntervalMS: 1000, Health: registry.Passing, Inflight: 3,
		Meta: map[string]string{"version": "1.2.3", "zone": "eu-1"},
	}
}

func encode(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// withJSON decodes the valid heartbeat into a generic map, lets edit change
// it and returns the edited JSON, for documents the Go type cannot express.
func withJSON(t testing.TB, edit func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(encode(t, validHB()), &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	return encode(t, m)
}

func manyMeta(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func TestDecodeHeartbeat(t *testing.T) {
	mod := func(edit func(h *registry.Heartbeat)) func(testing.TB) []byte {
		return func(t testing.TB) []byte {
			h := validHB()
			edit(&h)
			return encode(t, h)
		}
	}
	raw := func(s string) func(testing.TB) []byte { return func(testing.TB) []byte { return []byte(s) } }
	long := strings.Repeat("a", 64)

	tests := []struct {
		name string
		svc  string // subject's service; "" means "reviews"
		inst string // subject's instance; "" means "reviews-1"
		data func(testing.TB) []byte
		ok   bool
	}{
		{"valid", "", "", mod(func(*registry.Heartbeat) {}), true},
		{"valid without subset and meta", "", "", mod(func(h *registry.Heartbeat) { h.Subset, h.Meta = "", nil }), true},
		{"valid failing", "", "", mod(func(h *registry.Heartbeat) { h.Health = registry.Failing }), true},
		{"valid draining", "", "", mod(func(h *registry.Heartbeat) { h.Health = registry.Draining }), true},
		{"valid min interval", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 100 }), true},
		{"valid max interval", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 3_600_000 }), true},
		{"valid 63-char names", long[:63], long[:63], mod(func(h *registry.Heartbeat) { h.Service, h.Instance = long[:63], long[:63] }), true},
		{"valid meta at limits", "", "", mod(func(h *registry.Heartbeat) {
			h.Meta = manyMeta(registry.MaxMetaEntries)
			h.Meta[strings.Repeat("k", registry.MaxMetaKey)] = strings.Repeat("v", registry.MaxMetaValue)
			delete(h.Meta, "k0")
		}), true},
		{"valid unknown field ignored", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { m["future"] = true })
		}, true},

		{"empty body", "", "", raw(""), false},
		{"malformed JSON", "", "", raw(`{"service":"reviews",`), false},
		{"not an object", "", "", raw(`[1,2,3]`), false},
		{"null", "", "", raw(`null`), false},
		{"string seq", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { m["seq"] = "1" })
		}, false},
		{"negative seq", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { m["seq"] = -1 })
		}, false},
		{"bad started", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { m["started"] = "yesterday" })
		}, false},
		{"meta not strings", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { m["meta"] = map[string]any{"a": 1} })
		}, false},

		{"subject names another service", "ratings", "", mod(func(*registry.Heartbeat) {}), false},
		{"subject names another instance", "", "reviews-2", mod(func(*registry.Heartbeat) {}), false},
		{"body without service", "", "", mod(func(h *registry.Heartbeat) { h.Service = "" }), false},

		{"uppercase service", "Reviews", "", mod(func(h *registry.Heartbeat) { h.Service = "Reviews" }), false},
		{"uppercase instance", "", "Reviews-1", mod(func(h *registry.Heartbeat) { h.Instance = "Reviews-1" }), false},
		{"dot in service", "a.b", "", mod(func(h *registry.Heartbeat) { h.Service = "a.b" }), false},
		{"star instance", "", "*", mod(func(h *registry.Heartbeat) { h.Instance = "*" }), false},
		{"gt instance", "", ">", mod(func(h *registry.Heartbeat) { h.Instance = ">" }), false},
		{"empty instance", "", "-", mod(func(h *registry.Heartbeat) { h.Instance = "" }), false},
		{"64-char service", long, "", mod(func(h *registry.Heartbeat) { h.Service = long }), false},
		{"64-char instance", "", long, mod(func(h *registry.Heartbeat) { h.Instance = long }), false},
		{"uppercase subset", "", "", mod(func(h *registry.Heartbeat) { h.Subset = "V2" }), false},
		{"dot in subset", "", "", mod(func(h *registry.Heartbeat) { h.Subset = "v2.1" }), false},
		{"64-char subset", "", "", mod(func(h *registry.Heartbeat) { h.Subset = long }), false},
		{"valid without zone", "", "", mod(func(h *registry.Heartbeat) { h.Zone = "" }), true},
		{"uppercase zone", "", "", mod(func(h *registry.Heartbeat) { h.Zone = "EU" }), false},
		{"dot in zone", "", "", mod(func(h *registry.Heartbeat) { h.Zone = "eu.1" }), false},
		{"star zone", "", "", mod(func(h *registry.Heartbeat) { h.Zone = "*" }), false},
		{"64-char zone", "", "", mod(func(h *registry.Heartbeat) { h.Zone = long }), false},

		{"empty health", "", "", mod(func(h *registry.Heartbeat) { h.Health = "" }), false},
		{"unknown health", "", "", mod(func(h *registry.Heartbeat) { h.Health = "ok" }), false},
		{"uppercase health", "", "", mod(func(h *registry.Heartbeat) { h.Health = "PASSING" }), false},

		{"interval zero", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 0 }), false},
		{"interval negative", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = -1000 }), false},
		{"interval too short", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 99 }), false},
		{"interval too long", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 3_600_001 }), false},
		// 1000 + 2^58 ms is 1 s once multiplied into nanoseconds, modulo 2^64.
		{"interval that overflows to 1s", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 1000 + 1<<58 }), false},
		{"interval that overflows negative", "", "", mod(func(h *registry.Heartbeat) { h.IntervalMS = 1000 - 1<<58 }), false},

		{"seq zero", "", "", mod(func(h *registry.Heartbeat) { h.Seq = 0 }), false},
		{"seq missing", "", "", func(t testing.TB) []byte {
			return withJSON(t, func(m map[string]any) { delete(m, "seq") })
		}, false},
		{"negative inflight", "", "", mod(func(h *registry.Heartbeat) { h.Inflight = -1 }), false},
		{"negative pid", "", "", mod(func(h *registry.Heartbeat) { h.PID = -1 }), false},
		{"host too long", "", "", mod(func(h *registry.Heartbeat) { h.Host = strings.Repeat("h", 256) }), false},

		{"oversized document", "", "", func(t testing.TB) []byte {
			// Valid in every other way: only the size is wrong.
			b := encode(t, validHB())
			pad := bytes.Repeat([]byte(" "), registry.MaxHeartbeatSize+1-len(b))
			return append(pad, b...)
		}, false},
		{"too many meta entries", "", "", mod(func(h *registry.Heartbeat) { h.Meta = manyMeta(registry.MaxMetaEntries + 1) }), false},
		{"meta key too long", "", "", mod(func(h *registry.Heartbeat) {
			h.Meta = map[string]string{strings.Repeat("k", registry.MaxMetaKey+1): "v"}
		}), false},
		{"meta value too long", "", "", mod(func(h *registry.Heartbeat) {
			h.Meta = map[string]string{"k": strings.Repeat("v", registry.MaxMetaValue+1)}
		}), false},
		{"meta empty key", "", "", mod(func(h *registry.Heartbeat) { h.Meta = map[string]string{"": "v"} }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc, inst := tt.svc, tt.inst
			if svc == "" {
				svc = "reviews"
			}
			if inst == "" {
				inst = "reviews-1"
			}
			if inst == "-" {
				inst = ""
			}
			data := tt.data(t)
			h, err := registry.DecodeHeartbeat(svc, inst, data)
			if tt.ok {
				if err != nil {
					t.Fatalf("DecodeHeartbeat(%s) = %v, want it accepted", data, err)
				}
				if h.Service != svc || h.Instance != inst {
					t.Errorf("decoded %s/%s, want %s/%s", h.Service, h.Instance, svc, inst)
				}
				if err := h.Validate(); err != nil {
					t.Errorf("accepted heartbeat fails Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeHeartbeat accepted %.300s as %+v, want an error", data, h)
			}
			if !errors.Is(err, registry.ErrBadHeartbeat) {
				t.Errorf("error %q does not wrap ErrBadHeartbeat", err)
			}
			if !reflect.DeepEqual(h, registry.Heartbeat{}) {
				t.Errorf("rejected heartbeat came back non-zero: %+v", h)
			}
		})
	}
}

func TestDecodeHeartbeatKeepsEveryField(t *testing.T) {
	want := validHB()
	got, err := registry.DecodeHeartbeat("reviews", "reviews-1", encode(t, want))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Started.Equal(want.Started) {
		t.Errorf("Started = %v, want %v", got.Started, want.Started)
	}
	got.Started = want.Started
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
	if got.Interval() != time.Second {
		t.Errorf("Interval() = %v, want 1s", got.Interval())
	}
}

func TestValidateErrorsAreReadable(t *testing.T) {
	h := validHB()
	h.Health = "ok"
	err := h.Validate()
	if err == nil || !strings.Contains(err.Error(), `"ok"`) || !strings.Contains(err.Error(), "passing") {
		t.Errorf("Validate() = %v, want it to name the bad health and the valid ones", err)
	}
	h = validHB()
	h.Service = "Reviews"
	err = h.Validate()
	if err == nil || !strings.Contains(err.Error(), "Reviews") {
		t.Errorf("Validate() = %v, want it to name the bad service", err)
	}
}

// normalise makes two decodings of the same document comparable with
// reflect.DeepEqual: times compare with Equal, and an empty meta map is
// the same as none (omitempty drops it on encoding).
func normalise(h registry.Heartbeat) registry.Heartbeat {
	h.Started = h.Started.UTC()
	if len(h.Meta) == 0 {
		h.Meta = nil
	}
	return h
}

func FuzzDecodeHeartbeat(f *testing.F) {
	valid := encode(f, validHB())
	f.Add("reviews", "reviews-1", valid)
	f.Add("reviews", "reviews-2", valid)
	f.Add("reviews", "reviews-1", []byte(`{"service":"reviews","instance":"reviews-1","started":"2025-03-01T12:00:00+02:00","seq":1,"interval_ms":100,"health":"failing","meta":{}}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":18446744073709551615,"interval_ms":3600000,"health":"draining","inflight":9223372036854775807,"pid":1}`))
	f.Add("a", "b", []byte(`{"Service":"a","INSTANCE":"b","seq":1,"interval_ms":1000,"health":"passing","service":"a"}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":1,"interval_ms":288230376151712744,"health":"passing"}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":1,"interval_ms":1000,"health":"passing","meta":{"k":"\ud800\u00e9"}}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":0,"interval_ms":1000,"health":"passing"}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":1,"interval_ms":1000,"health":"passing","meta":{"":"x"}}`))
	f.Add("a", "b", []byte(`{"service":"a","instance":"b","seq":1,"interval_ms":1e3,"health":"passing"}`))
	f.Add("a", "b", []byte(`null`))
	f.Add("a", "b", []byte(`{`))
	f.Add("A", "*", []byte(`{"service":"A","instance":"*","seq":1,"interval_ms":1000,"health":"passing"}`))
	f.Add("", "", []byte(`{}`))

	f.Fuzz(func(t *testing.T, svc, inst string, data []byte) {
		if len(data) > 32<<10 {
			t.Skip()
		}
		h, err := registry.DecodeHeartbeat(svc, inst, data)
		if err != nil {
			if !errors.Is(err, registry.ErrBadHeartbeat) {
				t.Fatalf("error %q does not wrap ErrBadHeartbeat", err)
			}
			return
		}
		if len(data) > registry.MaxHeartbeatSize {
			t.Fatalf("accepted a %d-byte document", len(data))
		}
		if h.Service != svc || h.Instance != inst {
			t.Fatalf("accepted %s/%s on the subject of %s/%s", h.Service, h.Instance, svc, inst)
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("accepted heartbeat fails Validate: %v", err)
		}
		if iv := h.Interval(); iv < registry.MinInterval || iv > registry.MaxInterval ||
			h.IntervalMS < registry.MinInterval.Milliseconds() || h.IntervalMS > registry.MaxInterval.Milliseconds() {
			t.Fatalf("accepted interval_ms %d (Interval() = %v)", h.IntervalMS, iv)
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("accepted heartbeat does not encode: %v", err)
		}
		h2, err := registry.DecodeHeartbeat(svc, inst, again)
		if err != nil {
			t.Fatalf("re-encoded heartbeat %s is rejected: %v", again, err)
		}
		if !h2.Started.Equal(h.Started) {
			t.Fatalf("started changed in a round trip: %v -> %v", h.Started, h2.Started)
		}
		if a, b := normalise(h), normalise(h2); !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip changed the heartbeat:\n%+v\n%+v", a, b)
		}
		third, err := json.Marshal(h2)
		if err != nil || !bytes.Equal(third, again) {
			t.Fatalf("encoding is not stable:\n%s\n%s (%v)", again, third, err)
		}
	})
}
