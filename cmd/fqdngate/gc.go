package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// tuneGC trades memory for CPU: fqdngate's live heap is small (a few MiB
// without large policies), so the default GOGC=100 collects tens of times
// a second under load. GOGC=400 cut the proxy's CPU per forwarded request
// from 40 to 28 µs (BENCHMARKS.md). But 400 is a factor: a gateway holding
// a million learned addresses (168 MB live) grew to 550 MB of RSS, and
// with its DNS cache to the soft limit. So the headroom is bounded in
// bytes as the live heap grows (gcPercentFor), adjusted every second
// while ctx lasts. A soft memory limit keeps the heap target from running
// into the container's limit: 80% of the cgroup's memory.max when there is
// one, else 1 GiB. GOGC and GOMEMLIMIT in the environment override both.
func tuneGC(ctx context.Context) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
		go adaptGC(ctx)
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

// adaptGC sets GOGC from the live heap every second.
func adaptGC(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	current := 400
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return // not this runtime's metric: keep 400
		}
		if p := gcPercentFor(sample[0].Value.Uint64()); p != current {
			debug.SetGCPercent(p)
			current = p
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
