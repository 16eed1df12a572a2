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
