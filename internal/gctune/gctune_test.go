package gctune

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
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
// otherwise does not collect at all; resume puts GOGC back and collects
// once.
func TestPostpone(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(20))
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
	if again := resume(); again != 0 {
		t.Errorf("a second resume collected again (%v)", again)
	}
}

func TestPostponedPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tt := range []struct {
		percent     int64
		live, inUse uint64
		want        int
	}{
		{55, 57 * mib, 75 * mib, 131},  // a 100,000-rule policy in force: +75 MiB
		{400, 2 * mib, 8 * mib, 1600},  // small: +32 MiB
		{400, 40 * mib, 60 * mib, 400}, // 400 allows more already
		{-1, 57 * mib, 75 * mib, -1},   // off stays off
		{55, 0, 75 * mib, 55},          // no figures: unchanged
		{55, 57 * mib, 0, 55},
	} {
		if got := postponedPercent(tt.percent, tt.live, tt.inUse); got != tt.want {
			t.Errorf("GOGC %d, live %d MiB, in use %d MiB: %d, want %d", tt.percent, tt.live/mib, tt.inUse/mib, got, tt.want)
		}
	}
}

// TestPostponeOverlapping: GOGC stays raised until the last of
// overlapping postponements resumes; adapt leaves it alone meanwhile.
func TestPostponeOverlapping(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func(d time.Duration) { adaptEvery = d }(adaptEvery)
	adaptEvery = time.Millisecond
	live := make([]byte, 48<<20) // so that adapt wants a GOGC under 400
	runtime.GC()
	wants := gcPercentFor(liveHeap())
	if wants == 400 {
		t.Fatalf("live heap %d MiB: adapt would keep 400; the test proves nothing", liveHeap()>>20)
	}
	a := Postpone()
	b := Postpone()
	mu.Lock()
	raised := debug.SetGCPercent(-1)
	debug.SetGCPercent(raised)
	mu.Unlock()
	go adapt(ctx) // every millisecond
	time.Sleep(50 * time.Millisecond)
	a()
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	got := debug.SetGCPercent(raised)
	mu.Unlock()
	if got != raised {
		t.Errorf("GOGC with one postponement left: %d, want %d (raised; adapt wants %d)", got, raised, wants)
	}
	b()
	cancel()
	runtime.KeepAlive(live)
}
