package main

import (
	"os"
	"path/filepath"
	"testing"
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
