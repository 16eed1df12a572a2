package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// tuneGC trades memory for CPU: fqdngate's live heap is small (a few MiB
// without large policies), so the default GOGC=100 collects tens of times
// a second under load. GOGC=400 cut the proxy's CPU per forwarded request
// from 40 to 28 µs (BENCHMARKS.md). A soft memory limit keeps the larger
// heap target from running into the container's limit: 80% of the cgroup's
// memory.max when there is one, else 1 GiB. GOGC and GOMEMLIMIT in the
// environment override both.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit("/sys/fs/cgroup/memory.max"))
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
