package metrics

import (
	"math"
	"sync/atomic"
	"time"
)

// Bounds are the upper bounds, in seconds, of the latency buckets of every
// natsmesh process. They are fixed, so that the histograms of any number of
// instances merge by adding their buckets: a quantile of the whole service is
// computed from the merged buckets, never by averaging quantiles. A call
// through the mesh takes about a millisecond, so the buckets start at half of
// one; the last finite one is the longest timeout a call may have.
var Bounds = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 300}

// numBuckets counts the buckets, +Inf included.
const numBuckets = 17

var boundsNs = func() [numBuckets - 1]int64 {
	if len(Bounds) != numBuckets-1 {
		panic("metrics: numBuckets does not match Bounds")
	}
	var b [numBuckets - 1]int64
	for i, s := range Bounds {
		b[i] = int64(s * float64(time.Second))
	}
	return b
}()

// Histogram counts latencies in the Bounds buckets. Observe is lock-free
// and allocates nothing; a reader may see a count a moment before its sum.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	sumNs  atomic.Int64
}

// Observe adds one latency.
func (h *Histogram) Observe(d time.Duration) {
	ns := int64(d)
	if ns < 0 {
		ns = 0
	}
	i := 0
	for i < len(boundsNs) && ns > boundsNs[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(ns)
}

// Snapshot reads the histogram.
func (h *Histogram) Snapshot() HistogramSnapshot {
	var s HistogramSnapshot
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = float64(h.sumNs.Load()) / float64(time.Second)
	return s
}

// HistogramSnapshot is a histogram's value: the count of each bucket (not
// cumulative; the last is +Inf) and the sum of the latencies in seconds.
type HistogramSnapshot struct {
	Counts [numBuckets]uint64
	Sum    float64
}

// Count is the number of latencies observed.
func (s *HistogramSnapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Add merges o into s.
func (s *HistogramSnapshot) Add(o *HistogramSnapshot) {
	for i := range s.Counts {
		s.Counts[i] += o.Counts[i]
	}
	s.Sum += o.Sum
}

// Sub is the change from an earlier snapshot prev of the same histogram to
// s. A bucket that went down (the counters were reset) counts s's value.
func (s *HistogramSnapshot) Sub(prev *HistogramSnapshot) HistogramSnapshot {
	var d HistogramSnapshot
	reset := false
	for i := range s.Counts {
		if s.Counts[i] < prev.Counts[i] {
			reset = true
		}
	}
	if reset {
		return *s
	}
	for i := range s.Counts {
		d.Counts[i] = s.Counts[i] - prev.Counts[i]
	}
	d.Sum = math.Max(0, s.Sum-prev.Sum)
	return d
}

// Quantile estimates the q-quantile (0 ≤ q ≤ 1) in seconds, the way
// Prometheus's histogram_quantile does: linear interpolation within the
// bucket the rank falls in, the first bucket starting at 0. A rank in the
// +Inf bucket gives the highest finite bound. NaN when there is no count.
func (s *HistogramSnapshot) Quantile(q float64) float64 {
	total := s.Count()
	if total == 0 || math.IsNaN(q) {
		return math.NaN()
	}
	q = math.Min(1, math.Max(0, q))
	rank := q * float64(total)
	var cum uint64
	for i, c := range s.Counts {
		if c == 0 || float64(cum+c) < rank {
			cum += c
			continue
		}
		if i == len(Bounds) {
			return Bounds[len(Bounds)-1]
		}
		lower := 0.0
		if i > 0 {
			lower = Bounds[i-1]
		}
		return lower + (Bounds[i]-lower)*(rank-float64(cum))/float64(c)
	}
	return Bounds[len(Bounds)-1]
}
