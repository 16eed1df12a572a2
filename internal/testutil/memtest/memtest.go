// Package memtest measures the Go heap for memory benchmarks: what a
// structure holds once garbage is gone, and how much of it the collector
// has to mark.
package memtest

import (
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"testing"
)

// SettledHeap returns the live heap in bytes after two collections (the
// first may leave objects that finalizers or sweeping free only in the
// second).
func SettledHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// ScannableHeap returns the heap the collector marks through, in bytes:
// the heap without the objects that hold no pointers. Call it after
// SettledHeap, so that it counts what is live.
func ScannableHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// WriteHeapProfile writes a heap profile to the file named by
// $FQDNGATE_HEAPPROFILE, if set: what a benchmark holds at the moment it
// calls it, for `go tool pprof -sample_index=inuse_space`.
func WriteHeapProfile(tb testing.TB) {
	path := os.Getenv("FQDNGATE_HEAPPROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		tb.Fatal(err)
	}
}
