package registry

import (
	"testing"
	"time"
)

var benchBeat = []byte(`{"service":"svc-1","instance":"inst-1","host":"sim","pid":1,"started":"2026-11-22T06:00:00.123456789Z","seq":42,"interval_ms":1000,"health":"passing","inflight":3}`)

func BenchmarkDecodeHeartbeat(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeHeartbeat("svc-1", "inst-1", benchBeat); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkObserve is the view's work for a heartbeat of a known instance.
func BenchmarkObserve(b *testing.B) {
	v := NewView(ViewConfig{})
	hb, err := DecodeHeartbeat("svc-1", "inst-1", benchBeat)
	if err != nil {
		b.Fatal(err)
	}
	hb.IntervalMS = int64(time.Hour / time.Millisecond) // no flood rule in the way
	b.ReportAllocs()
	for b.Loop() {
		hb.Seq++
		v.Observe(hb)
	}
}
