package registry

import (
	"fmt"
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

// bigView is a view of n instances of one service, as a large deployment's.
func bigView(b *testing.B, n int) *View {
	v := NewView(ViewConfig{})
	started := time.Now().Add(-time.Minute)
	for i := range n {
		v.Observe(Heartbeat{Service: "big", Instance: fmt.Sprintf("big-%05d", i), Host: "sim", PID: 1, Started: started, Seq: 1,
			IntervalMS: 1000, Health: Passing, Meta: map[string]string{"zone": "zone-a", "version": "v1.2.3"}})
	}
	return v
}

// BenchmarkEncodeSnapshot50k is the registry's work when a service of
// 50,000 instances changed and is asked for again: copy, sort and encode
// every instance, once per version of the service.
func BenchmarkEncodeSnapshot50k(b *testing.B) {
	v := bigView(b, 50_000)
	b.ReportAllocs()
	for b.Loop() {
		snap, ver := v.snapshotVersion("big")
		encode("big", ver, snap)
	}
}

// BenchmarkPage50k is the work of one page of 1 MiB (about 4,000
// instances) cut from the encoded snapshot of 50,000.
func BenchmarkPage50k(b *testing.B) {
	v := bigView(b, 50_000)
	snap, ver := v.snapshotVersion("big")
	e := encode("big", ver, snap)
	b.ReportAllocs()
	offset := 0
	for b.Loop() {
		data := e.page(offset, 0, 1<<20)
		b.SetBytes(int64(len(data)))
		if offset += e.pageEnd(offset, 0, 1<<20) - offset; offset >= e.count() {
			offset = 0
		}
	}
}
