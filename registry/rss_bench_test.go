package registry

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
)

// memSample is the process's memory at one moment.
type memSample struct {
	heapInuse uint64 // runtime.MemStats.HeapInuse, bytes
	// From /proc/self/status, bytes (zero where the file does not exist):
	rss, rssAnon, rssFile uint64
}

// sampleMem collects garbage, returns freed memory to the OS and samples.
// Without returning it, RSS would count heap the runtime no longer uses.
func sampleMem(b *testing.B) memSample {
	b.Helper()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{heapInuse: ms.HeapInuse}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return s
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *uint64
		switch key {
		case "VmRSS":
			dst = &s.rss
		case "RssAnon":
			dst = &s.rssAnon
		case "RssFile":
			dst = &s.rssFile
		default:
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			b.Fatalf("/proc/self/status %s: %v", key, err)
		}
		*dst = kb << 10
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return s
}

func mib(delta float64) float64 { return delta / (1 << 20) }

// BenchmarkMemory100k is what an open registry of 100k devices costs: each
// iteration opens the fixture of writeFixture (BenchmarkOpen100k's cold
// start, timed) and measures, untimed, the memory held once it is open:
// the Go heap in use (HeapInuse), and the process's resident set (VmRSS),
// split into anonymous memory (the heap) and file pages (bbolt's mmap of
// the file, touched while loading). Deltas against the moment before
// Open, averaged over the iterations.
func BenchmarkMemory100k(b *testing.B) {
	const n = 100_000
	path := writeFixture(b, n)
	var heap, rss, anon, file float64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		before := sampleMem(b)
		b.StartTimer()
		s, err := Open(path)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		after := sampleMem(b)
		if s.Len() != n {
			b.Fatalf("loaded %d devices", s.Len())
		}
		heap += float64(after.heapInuse) - float64(before.heapInuse)
		rss += float64(after.rss) - float64(before.rss)
		anon += float64(after.rssAnon) - float64(before.rssAnon)
		file += float64(after.rssFile) - float64(before.rssFile)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	runs := float64(b.N)
	b.ReportMetric(mib(heap/runs), "heap-MiB")
	b.ReportMetric(heap/runs/n, "heap-B/device")
	b.ReportMetric(mib(rss/runs), "rss-MiB")
	b.ReportMetric(mib(anon/runs), "rss-anon-MiB")
	b.ReportMetric(mib(file/runs), "rss-file-MiB")
}

// BenchmarkGetBySPIFFEIDMiss is the lookup of an identity that is not
// enrolled (the CONNECT of a stranger with a valid SVID) in a registry of
// 100k devices; BenchmarkGetBySPIFFEID is the hit.
func BenchmarkGetBySPIFFEIDMiss(b *testing.B) {
	const n = 100_000
	s, err := Open(writeFixture(b, n))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s/device/ghost-%06d", td, i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.GetBySPIFFEID(ids[i%len(ids)]); !errors.Is(err, ErrNotFound) {
			b.Fatalf("lookup of %s: %v, want ErrNotFound", ids[i%len(ids)], err)
		}
		i++
	}
}
