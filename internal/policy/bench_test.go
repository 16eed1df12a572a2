package policy

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/policy/bigpolicy"
)

// benchRules is the rule count for the matcher and loader benchmarks.
const benchRules = 100_000

// benchPolicyYAML is the policy of n rules the loader's benchmarks load.
func benchPolicyYAML(n int) []byte { return bigpolicy.YAML(n) }

func benchTarget(i int) string { return bigpolicy.Target(i) }

var benchPolicy = sync.OnceValues(func() (*Policy, error) {
	return Parse("bench.yaml", benchPolicyYAML(benchRules))
})

// benchQueries returns 1024 queries of one kind, so a benchmark does not
// measure one cached path; every want is checked before timing starts.
func benchQueries(b *testing.B, kind string) []Query {
	p, err := benchPolicy()
	if err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddr("192.168.1.1") // in no group
	var qs []Query
	for i := 0; len(qs) < 1024; i++ {
		j := (i * 7919) % benchRules // spread over the whole file
		if j%4 == 0 {
			continue // rules with from would not match src
		}
		var name string
		want := Allow
		switch kind {
		case "exact-hit":
			if j%3 != 0 {
				continue
			}
			name = benchTarget(j)
		case "one-label-hit":
			if j%3 != 1 {
				continue
			}
			name = "api" + strings.TrimPrefix(benchTarget(j), "*")
		case "any-labels-hit":
			if j%3 != 2 {
				continue
			}
			name = "a.b.c" + strings.TrimPrefix(benchTarget(j), "**")
		case "miss":
			name = fmt.Sprintf("nothing%d.example%d.com", j, j%101)
			want = Deny
		case "deep-miss":
			// Shares a long suffix with an exact rule, so the walk goes deep.
			if j%3 != 0 {
				continue
			}
			name = "x.y." + benchTarget(j)
			want = Deny
		default:
			b.Fatalf("unknown kind %q", kind)
		}
		q := Query{Source: src, Name: name, Port: 443, Proto: TCP}
		if d := p.Decide(q); d.Action != want {
			b.Fatalf("%s: Decide(%s) = %v (%v), want %v", kind, name, d.Action, d.Reason, want)
		}
		qs = append(qs, q)
	}
	return qs
}

// BenchmarkDecide measures Decide against 100,000 rules. Run with:
//
//	go test -run '^$' -bench . -benchmem -count 5 ./internal/policy/
func BenchmarkDecide(b *testing.B) {
	for _, kind := range []string{"exact-hit", "one-label-hit", "any-labels-hit", "miss", "deep-miss"} {
		b.Run(kind, func(b *testing.B) {
			p, _ := benchPolicy()
			qs := benchQueries(b, kind)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.Decide(qs[i&1023])
				i++
			}
		})
	}
	b.Run("group-hit", func(b *testing.B) {
		p, _ := benchPolicy()
		// Rule 12 is exact (12%3 == 0), limited to g12 (12%4 == 0).
		q := Query{Source: netip.MustParseAddr("10.12.1.1"), Name: benchTarget(12), Port: 443, Proto: TCP}
		if d := p.Decide(q); d.Action != Allow {
			b.Fatalf("Decide(%s) = %v (%v), want allow", q.Name, d.Action, d.Reason)
		}
		b.ReportAllocs()
		for b.Loop() {
			p.Decide(q)
		}
	})
}

// BenchmarkParse measures a reload: parsing and compiling 100,000 rules.
func BenchmarkParse(b *testing.B) {
	data := benchPolicyYAML(benchRules)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("bench.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReload measures what a reload of 100,000 rules costs the
// process while the old policy is still serving: CPU time (user+system from
// getrusage, so it counts the garbage collector's workers and does not
// depend on how busy the machine is), the Go runtime's memory footprint
// (mapped heap, stacks and metadata, less what was returned to the OS)
// before the reload with one policy loaded and the rest returned to the OS
// ("steady-MB") and its highest
// value sampled every millisecond during the reload ("peak-MB"), and their ratio.
// Run with:
//
//	go test -run '^$' -bench 'BenchmarkReload$' -benchmem -count 5 ./internal/policy/
func BenchmarkReload(b *testing.B) {
	data := benchPolicyYAML(benchRules)
	old, err := Parse("bench.yaml", data)
	if err != nil {
		b.Fatal(err)
	}
	var peak, steady float64
	var cpu time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		debug.FreeOSMemory() // what the process holds with one policy
		st := footprint()
		stop, done := make(chan struct{}), make(chan uint64)
		go func() {
			m := st
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					done <- max(m, footprint())
					return
				case <-t.C:
					m = max(m, footprint())
				}
			}
		}()
		c0 := cpuTime()
		b.StartTimer()
		p, err := Parse("bench.yaml", data)
		b.StopTimer()
		cpu += cpuTime() - c0
		close(stop)
		pk := <-done
		if err != nil {
			b.Fatal(err)
		}
		// The old policy served until now, as in the daemon. (Without
		// this, old is dead from the loop's top, since the next use
		// overwrites it, and the collector may free it during the
		// reload: steady and peak were measured without it until
		// 2026-12-07.)
		runtime.KeepAlive(old)
		old = p // the new policy replaces the old, as in the daemon
		peak = max(peak, float64(pk))
		steady = max(steady, float64(st))
		b.StartTimer()
	}
	runtime.KeepAlive(old)
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(steady/1e6, "steady-MB")
	b.ReportMetric(peak/1e6, "peak-MB")
	b.ReportMetric(peak/steady, "peak/steady")
}

// footprint is the Go runtime's memory held from the OS: what an RSS
// reading would show of it, without the noise of other mappings.
func footprint() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReloadWait measures how long a goroutine that becomes ready
// during a reload of 100,000 rules waits for a processor, with one
// processor (GOMAXPROCS 1): a goroutine sleeps 100 µs again and again
// while the reload runs, and each sleep's overshoot is its wait. On a
// gateway the goroutines waiting are the DNS firewall's answers. It
// reports the waits' p50, p99 and maximum, and how many were measured.
// The wait this isolates is the Go scheduler's (how often the reload gives
// up the processor); on a busy machine the kernel adds its own to both.
// Run with:
//
//	go test -run '^$' -bench 'BenchmarkReloadWait$' -benchtime 3x -count 2 ./internal/policy/
func BenchmarkReloadWait(b *testing.B) {
	data := benchPolicyYAML(benchRules)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const nap = 100 * time.Microsecond
	var waits []time.Duration
	for b.Loop() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := Parse("bench.yaml", data); err != nil {
				b.Error(err)
			}
		}()
		for reloading := true; reloading; {
			t0 := time.Now()
			time.Sleep(nap)
			waits = append(waits, max(time.Since(t0)-nap, 0))
			select {
			case <-done:
				reloading = false
			default:
			}
		}
	}
	slices.Sort(waits)
	at := func(q float64) float64 { return float64(waits[int(q*float64(len(waits)-1))].Microseconds()) }
	b.ReportMetric(at(0.5), "p50-wait-µs")
	b.ReportMetric(at(0.99), "p99-wait-µs")
	b.ReportMetric(at(1), "max-wait-µs")
	b.ReportMetric(float64(len(waits))/float64(b.N), "waits/op")
}

// BenchmarkReloadInBatches is an experiment, not the loader: it measures
// what BenchmarkReload would show if the YAML parser handed over the rules
// a thousand at a time instead of as one tree (which yaml.v3 cannot do).
// It parses the file without its rules, then each batch of 1,000 rules
// with yaml.v3, decoding and compiling them with the loader's own
// functions, then builds the index. Batches are cut in the generated text
// at its "  - name:" lines, which is safe only because the benchmark
// wrote that text. Same metrics as BenchmarkReload. Run with:
//
//	go test -run '^$' -bench 'BenchmarkReload(InBatches)?$' -benchmem -benchtime 3x -count 2 ./internal/policy/
func BenchmarkReloadInBatches(b *testing.B) {
	full := benchPolicyYAML(benchRules)
	head := benchPolicyYAML(0) // everything but the rules
	var batches [][]byte
	for rest, sep := full[len(head):], []byte("\n  - name:"); len(rest) > 0; {
		cut := len(rest)
		for i, at := 0, 0; i < 1000; i++ {
			j := bytes.Index(rest[at+1:], sep)
			if j < 0 {
				break
			}
			at += 1 + j
			cut = at + 1
		}
		batches = append(batches, rest[:cut])
		rest = rest[cut:]
	}
	old, err := Parse("bench.yaml", full)
	if err != nil {
		b.Fatal(err)
	}
	var peak, steady float64
	var cpu time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		debug.FreeOSMemory()
		st := footprint()
		stop, done := make(chan struct{}), make(chan uint64)
		go func() {
			m := st
			t := time.NewTicker(time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					done <- max(m, footprint())
					return
				case <-t.C:
					m = max(m, footprint())
				}
			}
		}()
		c0 := cpuTime()
		b.StartTimer()
		p, err := Parse("bench.yaml", head)
		if err != nil {
			b.Fatal(err)
		}
		d := &decoder{file: "bench.yaml", files: []string{"bench.yaml"}}
		var w wireRule
		for _, batch := range batches {
			var root yaml.Node
			if err := yaml.Unmarshal(batch, &root); err != nil {
				b.Fatal(err)
			}
			for _, it := range root.Content[0].Content {
				if !d.rule(&w, it) {
					break
				}
				r := d.compileRule(&w, p)
				if r == nil {
					break
				}
				r.Index, r.usage = len(p.Rules), &Usage{}
				p.Rules = append(p.Rules, r)
			}
		}
		p.idx = buildIndex(p.Rules, nil)
		b.StopTimer()
		cpu += cpuTime() - c0
		close(stop)
		pk := <-done
		if len(p.Rules) != benchRules || d.errs != nil {
			b.Fatalf("compiled %d rules of %d: %v", len(p.Rules), benchRules, d.result())
		}
		runtime.KeepAlive(old) // as in BenchmarkReload
		old = p
		peak = max(peak, float64(pk))
		steady = max(steady, float64(st))
		b.StartTimer()
	}
	runtime.KeepAlive(old)
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(steady/1e6, "steady-MB")
	b.ReportMetric(peak/1e6, "peak-MB")
	b.ReportMetric(peak/steady, "peak/steady")
}
