package metrics_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/natsmesh/natsmesh/metrics"
	"github.com/natsmesh/natsmesh/metrics/prom"
)

// BenchmarkEdgeRecord is the cost the request path pays: the edge's lookup
// and one call's counts.
func BenchmarkEdgeRecord(b *testing.B) {
	s := newSet(0)
	s.Edge(metrics.Outbound, "ratings", "v1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := s.Edge(metrics.Outbound, "ratings", "v1")
			e.Start()
			e.Done(200, "", 1, 1500*time.Microsecond)
		}
	})
}

// BenchmarkThousandEdges reports the memory 1,000 edges take once every one
// has seen calls of every common outcome, and the cost of a scrape and of a
// stats snapshot of them.
func BenchmarkThousandEdges(b *testing.B) {
	fill := func() *metrics.Set {
		s := newSet(0)
		for i := 0; i < 1000; i++ {
			e := s.Edge(metrics.Outbound, fmt.Sprintf("service-%d", i), "")
			for _, st := range []int{200, 404, 500} {
				e.Record(st, "", 1, time.Millisecond)
			}
		}
		return s
	}
	b.Run("memory", func(b *testing.B) {
		var kept uint64
		for b.Loop() {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			s := fill()
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(s)
			kept += after.HeapAlloc - before.HeapAlloc
		}
		b.ReportMetric(float64(kept)/float64(b.N)/1000, "B/edge")
	})
	s := fill()
	reg, err := prom.NewRegistry(prom.NewCollector(s))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("scrape", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := reg.Gather(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("snapshot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.Snapshot(time.Now(), time.Second)
		}
	})
}
