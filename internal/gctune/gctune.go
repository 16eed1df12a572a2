// Package gctune sets the Go collector for a long-running gateway: how
// much the heap may grow between collections, as the live heap grows, and
// how a reload's burst of allocation is paid for.
package gctune

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"
)

// mu guards the collector's settings and the postponement: adapt
// changes GOGC every second, and leaves it alone while Postpone has
// raised it.
var (
	mu sync.Mutex
	// postponed counts the Postpone calls not yet resumed; percent is
	// the GOGC the first of them found.
	postponed int
	percent   int64
)

// Start trades memory for CPU: fqdngate's live heap is small (a few MiB
// without large policies), so the default GOGC=100 collects tens of times
// a second under load. GOGC=400 cut the proxy's CPU per forwarded request
// from 40 to 28 µs (BENCHMARKS.md). But 400 is a factor: a gateway holding
// a million learned addresses (168 MB live) grew to 550 MB of RSS, and
// with its DNS cache to the soft limit. So the headroom is bounded in
// bytes as the live heap grows (gcPercentFor), adjusted every second
// while ctx lasts. A soft memory limit keeps the heap target from running
// into the container's limit: 80% of the cgroup's memory.max when there is
// one, else 1 GiB. GOGC and GOMEMLIMIT in the environment override both.
func Start(ctx context.Context) {
	if os.Getenv("GOGC") == "" {
		mu.Lock()
		debug.SetGCPercent(400)
		mu.Unlock()
		go adapt(ctx)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit("/sys/fs/cgroup/memory.max"))
	}
}

// gcHeadroom is the heap growth allowed past the live heap once GOGC=400
// would allow more: 32 MiB, or a tenth of the live heap if larger. A
// collection's cost is marking what holds pointers, and the large
// structures (the nftables backend's million learned addresses, the DNS
// cache's packed answers) hold none, so collecting more often costs
// little while every MiB of headroom is RSS (BENCHMARKS.md, issue 16).
const gcHeadroom = 32 << 20

// gcPercentFor is the GOGC for a live heap of live bytes: 400 up to 8 MiB
// (32 MiB of headroom), then whatever keeps the headroom at 32 MiB or a
// tenth of the live heap, never under 10. Steps of 5 keep it from moving
// with every collection.
func gcPercentFor(live uint64) int {
	if live <= gcHeadroom/4 {
		return 400
	}
	headroom := max(gcHeadroom, live/10)
	p := int(headroom * 100 / live)
	return max(10, min(400, p/5*5))
}

// adaptEvery is how often adapt reads the live heap.
var adaptEvery = time.Second

// adapt sets GOGC from the live heap every adaptEvery.
func adapt(ctx context.Context) {
	current := 400
	t := time.NewTicker(adaptEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		live := liveHeap()
		if live == 0 {
			return // not this runtime's metric: keep 400
		}
		if p := gcPercentFor(live); p != current {
			mu.Lock()
			if postponed == 0 {
				debug.SetGCPercent(p)
				current = p
			}
			mu.Unlock()
		}
	}
}

// memoryLimit is 80% of the cgroup v2 limit at path, or 1 GiB if there is
// none (or it is larger).
func memoryLimit(path string) int64 {
	const fallback = 1 << 30
	b, err := os.ReadFile(path)
	if err != nil {
		return fallback
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 { // "max": no limit
		return fallback
	}
	return min(n/10*8, fallback)
}

// Postpone holds collection back until resume is called. It is for a
// reload: parsing and compiling a large policy allocates tens of MB, most
// of which stays live as the new policy, and with the few MiB of headroom
// a large heap gets (gcPercentFor) the collector would mark the whole
// heap, the policy in force included, two or three times meanwhile: a
// quarter of the CPU a reload of 100,000 rules took, on the processors
// that serve the answers (BENCHMARKS.md, issue 16).
//
// Meanwhile the heap may grow by as much memory as the process has in use
// when Postpone is called (at least 32 MiB) before the collector runs:
// GOGC is raised to that, never lowered, and the memory limit stays.
// Raised rather than turned off, so that a reload that needs more (a
// policy yaml.v3 reads, with its whole tree) is collected as usual, not
// at every step against a fixed bound. resume (once; later calls do
// nothing) puts GOGC back, collects, and returns the memory freed to the
// operating system, so the reload's garbage and the policy it replaced
// do not stay in the process's RSS; it reports how long that took. Calls
// may overlap (several gateways in one test process): GOGC stays raised
// until the last one resumes.
func Postpone() (resume func() time.Duration) {
	mu.Lock()
	if postponed == 0 {
		percent = int64(debug.SetGCPercent(-1)) // read it; set below
		debug.SetGCPercent(postponedPercent(percent, liveHeap(), memoryInUse()))
	}
	postponed++
	mu.Unlock()
	var once sync.Once
	return func() (took time.Duration) {
		once.Do(func() {
			mu.Lock()
			if postponed--; postponed == 0 {
				debug.SetGCPercent(int(percent))
			}
			mu.Unlock()
			start := time.Now()
			debug.FreeOSMemory()
			took = time.Since(start)
		})
		return took
	}
}

// postponedPercent is the GOGC that lets a heap of live bytes grow by
// inUse bytes (at least gcHeadroom) before it is collected, or percent
// if that allows more (-1, off, included). Without the runtime's figures
// it is percent.
func postponedPercent(percent int64, live, inUse uint64) int {
	if percent < 0 || live == 0 || inUse == 0 {
		return int(percent)
	}
	p := int64(max(inUse, gcHeadroom) * 100 / live)
	return int(max(percent, p))
}

// liveHeap is the heap the last collection marked live, or 0.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// memoryInUse is the memory the runtime has mapped, less what it has
// returned to the operating system (what its memory limit counts), or 0.
func memoryInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0 // not this runtime's metrics
	}
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}
