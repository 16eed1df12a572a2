package simulate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/suggest"
)

// The adoption benchmark's history: 30 days of 1,000 sources in 10
// groups of 100, and 10,000 names, 1,000 per group: n0..n799 under
// svcG.example.com, which group G's rule allows (443), and d800..d999
// under vendorG.example.net, which nothing allows. Each source, each
// day, looks up benchDNS distinct names of its group's 1,000 (drawn at
// random, seeded) and connects through the proxy to benchProxy of them. Every
// decision is the base policy's Decide, written through the Recorder
// and the Store as the daemon writes them.
const (
	benchDays    = 30
	benchGroups  = 10
	benchPerGrp  = 100  // sources per group
	benchNames   = 1000 // names per group
	benchAllowed = 800  // of which allowed
	benchDNS     = 10   // DNS names per source and day
	benchProxy   = 4    // proxied names per source and day
)

var bench struct {
	once sync.Once
	dir  string
	path string
	rows int
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.dir != "" {
		os.RemoveAll(bench.dir)
	}
	os.Exit(code)
}

func benchName(g, i int) string {
	if i < benchAllowed {
		return fmt.Sprintf("n%d.svc%d.example.com", i, g)
	}
	return fmt.Sprintf("d%d.vendor%d.example.net", i, g)
}

func benchSource(g, s int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(g), 14: byte(s >> 8), 15: byte(s)})
}

// benchPolicy is the policy in force while the history is recorded;
// edit, if not nil, changes group g's rule's names.
func benchPolicy(tb testing.TB, edit func(g int, names []string) []string) *policy.Policy {
	var b strings.Builder
	b.WriteString("dns: {upstreams: [192.0.2.53]}\nfirewall: {backend: none}\nsources:\n")
	for g := range benchGroups {
		fmt.Fprintf(&b, "  g%d: [\"2001:db8:%d::/48\"]\n", g, g)
	}
	b.WriteString("rules:\n")
	for g := range benchGroups {
		var names []string
		for i := range benchAllowed {
			names = append(names, benchName(g, i))
		}
		if edit != nil {
			names = edit(g, names)
		}
		if len(names) == 0 {
			continue
		}
		fmt.Fprintf(&b, "  - name: g%d\n    from: [g%d]\n    ports: [443]\n    to:\n", g, g)
		for _, n := range names {
			fmt.Fprintf(&b, "      - %q\n", n)
		}
	}
	p, err := policy.Parse("bench.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchHistory builds the history once per process.
func benchHistory(b *testing.B) string {
	bench.once.Do(func() {
		start := time.Now()
		// FQDNGATE_BENCH_HISTORY keeps the file between runs (it is
		// built when missing): building it takes minutes.
		if bench.path = os.Getenv("FQDNGATE_BENCH_HISTORY"); bench.path != "" {
			if _, err := os.Stat(bench.path); err == nil {
				return
			}
		} else {
			bench.dir, bench.err = os.MkdirTemp("", "fqdngate-adopt-bench-")
			if bench.err != nil {
				return
			}
			bench.path = filepath.Join(bench.dir, "history.db")
		}
		bench.rows, bench.err = buildHistory(b, bench.path)
		b.Logf("built %d rows of history in %s", bench.rows, time.Since(start).Round(time.Second))
	})
	if bench.err != nil {
		b.Fatal(bench.err)
	}
	return bench.path
}

func buildHistory(b *testing.B, path string) (int, error) {
	p := benchPolicy(b, nil)
	st, _, err := history.Open(path, history.Options{})
	if err != nil {
		return 0, err
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	perDay := benchGroups * benchPerGrp * (benchDNS + benchProxy)
	rec, err := history.NewRecorder(history.RecorderConfig{Store: st, GroupsOf: p.GroupsOf, Registerer: reg, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Buffer: perDay + 1, MaxRows: perDay + 1, FlushRows: 20_000, FlushEvery: 20 * time.Millisecond})
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rng := rand.New(rand.NewPCG(14, 30))
	now := time.Now()
	written := 0
	for d := benchDays - 1; d >= 0; d-- {
		at := now.AddDate(0, 0, -d)
		for g := range benchGroups {
			for s := range benchPerGrp {
				src := benchSource(g, s)
				// Distinct names a day: one decision per row, so the
				// rows written say when the day is in.
				perm := rng.Perm(benchNames)
				for k := range benchDNS + benchProxy {
					i := perm[k%benchDNS] // the proxied names were looked up too
					name := benchName(g, i)
					e := audit.Event{Time: at, Source: src, Name: name}
					if k < benchDNS {
						e.Component, e.QType = audit.DNS, "AAAA"
						e.Decision = p.Decide(policy.Query{Source: src, Name: name, AnyPort: true})
						e.Attrs = []slog.Attr{slog.String("answers", fmt.Sprintf("2001:db8:ff:%x::%x", g, i))}
					} else {
						e.Component, e.Port = audit.Proxy, 443
						e.Decision = p.Decide(policy.Query{Source: src, Name: name, Port: 443, Proto: policy.TCP})
					}
					rec.Observe(e)
				}
			}
		}
		written += perDay
		for gather(reg, "fqdngate_history_rows_written_total") < float64(written) {
			if gather(reg, "fqdngate_history_dropped_total") > 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if dropped := gather(reg, "fqdngate_history_dropped_total"); dropped > 0 {
			return 0, fmt.Errorf("the recorder dropped %v decisions while building the history", dropped)
		}
	}
	var n int
	rows, err := st.Query(ctx, history.Filter{PerDay: true, PerSource: true, Limit: 1 << 40})
	if err != nil {
		return 0, err
	}
	n = len(rows)
	size, _ := st.Size(ctx)
	b.Logf("%d decisions, %d rows, %d MB", written, n, size>>20)
	return n, nil
}

func gather(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// cpuTime is the process's CPU time so far: on a shared machine the
// wall time per operation says as much about the neighbours.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAdoption times what fqdngate suggest and fqdngate simulate
// do over 30 days of history: read the file, compute, write the text.
func BenchmarkAdoption(b *testing.B) {
	path := benchHistory(b)
	ctx := context.Background()
	since := time.Now().AddDate(0, 0, -(benchDays - 1))
	open := func(b *testing.B) *history.Store {
		st, _, err := history.Open(path, history.Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		return st
	}

	b.Run("suggest", func(b *testing.B) {
		c0 := cpuTime()
		for b.Loop() {
			st := open(b)
			rows, err := st.Query(ctx, history.Filter{Since: since, Limit: 100_000})
			st.Close()
			if err != nil {
				b.Fatal(err)
			}
			var out bytes.Buffer
			suggest.WriteYAML(&out, suggest.Suggest(rows), "30d")
			if !strings.Contains(out.String(), `"*.vendor3.example.net"`) {
				b.Fatalf("suggest did not propose *.vendor3.example.net:\n%.2000s", out.String())
			}
		}
		b.ReportMetric((cpuTime()-c0).Seconds()/float64(b.N), "cpu-s/op")
	})

	// The proposal: group 0 allowed its names by a wildcard and its
	// vendor's, group 1 dropped a hundred names.
	proposed := benchPolicy(b, func(g int, names []string) []string {
		switch g {
		case 0:
			return []string{fmt.Sprintf("*.svc%d.example.com", g), fmt.Sprintf("*.vendor%d.example.net", g)}
		case 1:
			return names[:benchAllowed-100]
		}
		return names
	})
	b.Run("simulate", func(b *testing.B) {
		c0 := cpuTime()
		for b.Loop() {
			st := open(b)
			x := NewReplayer(proposed, Options{})
			err := st.Each(ctx, history.Filter{Since: since}, func(r *history.Row) error { x.Add(r); return nil })
			st.Close()
			if err != nil {
				b.Fatal(err)
			}
			rep := x.Report()
			rep.WriteText(io.Discard, 5)
			if nd, _ := rep.Count(NewlyDenied); nd < 150 {
				b.Fatalf("newly denied %d destinations, want most of 100 names by DNS and proxy", nd)
			}
			b.ReportMetric(float64(rep.Rows), "rows")
		}
		b.ReportMetric((cpuTime()-c0).Seconds()/float64(b.N), "cpu-s/op")
	})
}
