package bench

import (
	"math/bits"
	"time"
)

// histSubBits sets the precision of a histogram: values below
// 1<<histSubBits nanoseconds are counted exactly, larger ones in buckets
// no wider than 1/2^(histSubBits-1) of their value (under 1.6%).
const histSubBits = 7

// histBuckets covers every non-negative int64: 1<<histSubBits exact
// buckets, then half as many per further power of two.
const histBuckets = 1<<histSubBits + (64-histSubBits)<<(histSubBits-1)

// histogram counts latencies in log-linear buckets, in the manner of
// HdrHistogram: fixed memory, no allocation per value, mergeable, and
// quantiles within the bucket precision whatever the number of values. A
// bench records every delivery, so keeping the values themselves would
// cost memory in proportion to the run.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < 1<<histSubBits {
		return int(u)
	}
	shift := bits.Len64(u) - histSubBits // >= 1
	top := u >> shift                    // in [1<<(histSubBits-1), 1<<histSubBits)
	return 1<<histSubBits + (shift-1)<<(histSubBits-1) + int(top-1<<(histSubBits-1))
}

// bucketRange is the smallest and largest value counted in bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < 1<<histSubBits {
		return int64(i), int64(i)
	}
	j := i - 1<<histSubBits
	shift := j>>(histSubBits-1) + 1
	top := uint64(j&(1<<(histSubBits-1)-1)) + 1<<(histSubBits-1)
	lo64 := top << shift
	hi64 := (top+1)<<shift - 1
	if hi64 > 1<<63-1 || hi64 < lo64 {
		hi64 = 1<<63 - 1
	}
	return int64(lo64), int64(hi64)
}

func (h *histogram) record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		// Send and receive stamps come from one monotonic clock; this
		// cannot happen, but a bad stamp must not index out of range.
		v = 0
	}
	h.counts[bucketOf(v)]++
	h.n++
	if v > h.max {
		h.max = v
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile is the value below which a fraction q of the values lie: the
// middle of the bucket holding it, never above the largest value seen.
// Zero when empty; the maximum for q >= 1.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(q * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			lo, hi := bucketRange(i)
			mid := lo + (hi-lo)/2
			if mid > h.max {
				mid = h.max
			}
			return time.Duration(mid)
		}
	}
	return time.Duration(h.max)
}
