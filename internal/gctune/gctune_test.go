package gctune

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestMemoryLimit(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          int64
	}{
		{"no file", "", 1 << 30},
		{"unlimited", "max\n", 1 << 30},
		{"512 MiB", "536870912\n", 536870912 / 10 * 8},
		{"16 GiB", "17179869184\n", 1 << 30},
		{"garbage", "lots\n", 1 << 30},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.name)
		if tt.content != "" {
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if got := memoryLimit(p); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		live uint64
		want int
	}{
		{0, 400},
		{4 * mib, 400},
		{8 * mib, 400},  // 32 MiB of headroom either way
		{16 * mib, 200}, // 32 MiB
		{168 * mib, 15}, // a million learned addresses: 19%, in steps of 5
		{320 * mib, 10}, // 32 MiB is a tenth
		{588 * mib, 10}, // a tenth, never under 10
		{4096 * mib, 10},
	} {
		if got := gcPercentFor(tt.live); got != tt.want {
			t.Errorf("live %d MiB: GOGC %d, want %d", tt.live/mib, got, tt.want)
		}
	}
	// The headroom never shrinks as the live heap grows.
	prev := uint64(0)
	for live := uint64(mib); live < 8192*mib; live += 3 * mib {
		h := live * uint64(gcPercentFor(live)) / 100
		if h+5*live/100 < prev {
			t.Fatalf("live %d MiB: headroom %d MiB, below %d MiB at a smaller heap", live/mib, h/mib, prev/mib)
		}
		prev = max(prev, h)
	}
}

// garbage allocates n bytes in 64 KiB pieces nothing keeps.
func garbage(n int) {
	for i := 0; i < n; i += 64 << 10 {
		sink = make([]byte, 64<<10)
	}
}

var sink []byte

func numGC() uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.NumGC
}

// TestPostpone: while postponed, allocation that collects several times
// otherwise does not collect at all; resume puts GOGC and the memory limit
// back and collects once.
func TestPostpone(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	runtime.GC()

	// The same allocation without Postpone collects: the test can fail.
	n := numGC()
	garbage(16 << 20)
	if numGC() == n {
		t.Fatal("16 MiB of garbage at GOGC=20 did not collect; the test proves nothing")
	}

	runtime.GC()
	n = numGC()
	resume := Postpone()
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Errorf("GOGC while postponed: %d, want -1 (off)", got)
	}
	garbage(16 << 20)
	if got := numGC(); got != n {
		t.Errorf("%d collections while postponed, want none", got-n)
	}
	took := resume()
	if got := numGC(); got == n {
		t.Error("resume did not collect")
	}
	if took <= 0 {
		t.Errorf("resume reports %v for its collection", took)
	}
	if got := debug.SetGCPercent(20); got != 20 {
		t.Errorf("GOGC after resume: %d, want 20 back", got)
	}
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("memory limit after resume: %d, want %d back", got, int64(math.MaxInt64))
	}
	if again := resume(); again != 0 {
		t.Errorf("a second resume collected again (%v)", again)
	}
}

// TestPostponeLimit: while postponed, the heap may grow to twice the
// memory in use (at least by 32 MiB), never past a lower limit in force.
func TestPostponeLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	inUse := memoryInUse()
	if inUse <= 0 {
		t.Fatal("memoryInUse: this runtime has no /memory/classes metrics")
	}
	resume := Postpone()
	got := debug.SetMemoryLimit(-1)
	resume()
	if lo, hi := max(2*inUse, inUse+gcHeadroom), max(2*inUse, inUse+gcHeadroom)+8<<20; got < lo || got > hi {
		t.Errorf("memory limit while postponed: %d MiB, want about %d MiB (in use %d MiB)", got>>20, lo>>20, inUse>>20)
	}

	debug.SetMemoryLimit(1 << 20)
	resume = Postpone()
	got = debug.SetMemoryLimit(-1)
	resume()
	if got != 1<<20 {
		t.Errorf("memory limit while postponed under a 1 MiB limit: %d, want the limit kept", got)
	}
}

// TestPostponeOverlapping: collection stays off until the last of
// overlapping postponements resumes; adapt leaves it off meanwhile.
func TestPostponeOverlapping(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func(d time.Duration) { adaptEvery = d }(adaptEvery)
	adaptEvery = time.Millisecond
	live := make([]byte, 48<<20) // so that adapt wants a GOGC under 400
	runtime.GC()
	if p := gcPercentFor(liveHeap()); p == 400 {
		t.Fatalf("live heap %d MiB: adapt would keep 400; the test proves nothing", liveHeap()>>20)
	}
	a := Postpone()
	b := Postpone()
	go adapt(ctx) // every millisecond
	time.Sleep(50 * time.Millisecond)
	a()
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	got := debug.SetGCPercent(-1)
	mu.Unlock()
	if got != -1 {
		t.Errorf("GOGC with one postponement left: %d, want -1 (off)", got)
	}
	b()
	cancel()
	runtime.KeepAlive(live)
}

func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
