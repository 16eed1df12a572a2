package fastyaml

import (
	"bytes"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var benchData = sync.OnceValue(func() []byte { return benchPolicyYAML(100_000) })

// BenchmarkYAMLv3 is the reference: yaml.v3 building the whole tree of the
// 100,000-rule policy, as internal/policy's document() does.
func BenchmarkYAMLv3(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		var n yaml.Node
		if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&n); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkParse reads the same policy with rules lazy, visiting every
// item as the loader does.
func BenchmarkParse(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		d, err := Parse(data, "rules")
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for item := range d.Items() {
			n += len(item.Content)
		}
		if d.Err() != nil || n == 0 {
			b.Fatal(d.Err(), n)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkParseTree reads the same policy into one whole tree (no lazy
// key), yaml.v3's shape.
func BenchmarkParseTree(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if _, err := Parse(data, ""); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// reportCPU reports the process's CPU time (user and system, the garbage
// collector's included) per op since start: under load, wall time is not
// a measure.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64((cpuTime()-start).Microseconds())/1e3/float64(b.N), "cpu-ms/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
