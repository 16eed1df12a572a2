package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, 100 on every Linux architecture Go supports
// (the kernel reports /proc times in it whatever CONFIG_HZ is).
const clockTick = 10 * time.Millisecond

// procTree returns root and all its descendants, from /proc.
func procTree(root int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return []int{root}
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := readStat(pid)
		if err != nil {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// readStat returns the fields of /proc/pid/stat after the command name:
// [0] is state, [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
func readStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return nil, errors.New("short stat")
	}
	return f, nil
}

// procCPU is the CPU time (user+system) used by root and its descendants,
// including descendants that have exited and been waited for.
func procCPU(root int) (time.Duration, error) {
	var ticks int64
	for i, pid := range procTree(root) {
		f, err := readStat(pid)
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue
		}
		fields := []int{11, 12}
		if i == 0 {
			fields = append(fields, 13, 14)
		}
		for _, k := range fields {
			v, _ := strconv.ParseInt(f[k], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * clockTick, nil
}

// procRSS is the resident set of root and its descendants, in bytes.
func procRSS(root int) (int64, error) {
	var total int64
	for i, pid := range procTree(root) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			if i == 0 {
				return 0, err
			}
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb << 10
			}
		}
	}
	return total, nil
}

// cpuMeter measures a process tree's CPU time over a window. The zero
// value (no pid) measures nothing.
type cpuMeter struct {
	pid   int
	start time.Duration
}

func (m *cpuMeter) begin() error {
	if m.pid == 0 {
		return nil
	}
	t, err := procCPU(m.pid)
	m.start = t
	return err
}

// end returns the CPU seconds since begin, or -1 without a pid.
func (m *cpuMeter) end() (float64, error) {
	if m.pid == 0 {
		return -1, nil
	}
	t, err := procCPU(m.pid)
	return (t - m.start).Seconds(), err
}

func cpu(args []string) error {
	fs := flag.NewFlagSet("cpu", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "process whose tree to measure")
	if err := fs.Parse(args); err != nil {
		return err
	}
	t, err := procCPU(*pid)
	if err != nil {
		return err
	}
	fmt.Printf("%.2f\n", t.Seconds())
	return nil
}
