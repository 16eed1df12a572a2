package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
)

// memoryPolicyYAML is the policy of BenchmarkFleetMemory: six rule and
// group pairs (memoryRuleGroups), ten addresses a name.
const memoryPolicyYAML = `
dns:
  upstreams: [192.0.2.53:53]
  max_learned_per_name: 16
sources:
  office: [198.51.100.0/26]
  lab: [198.51.100.64/26]
  servers: [198.51.100.128/25]
rules:
  - name: web
    from: [office, lab]
    to: ["*.web.example"]
    ports: [443]
  - name: api
    from: [servers]
    to: ["*.api.example"]
    ports: [443, 8443]
  - name: updates
    to: ["*.updates.example"]
    ports: [443]
  - name: db
    from: [servers, office]
    to: ["*.db.example"]
    ports: [5432]
`

// memoryRuleGroups are the rule and group pairs of memoryPolicyYAML.
var memoryRuleGroups = [][2]string{{"web", "office"}, {"web", "lab"}, {"api", "servers"}, {"updates", ""}, {"db", "servers"}, {"db", "office"}}

// memoryEntry is the i-th of n elements: names of ten addresses each
// (host<k>.<rule>.example), one address in eight IPv4 (from the three
// documentation ranges, repeated across names), the rest IPv6 in
// 2001:db8::/32, all unique.
func memoryEntry(i int, exp time.Time) learn.Entry {
	k := i / 10
	rg := memoryRuleGroups[k%len(memoryRuleGroups)]
	var addr netip.Addr
	if i%8 == 0 {
		j := i / 8 % 768
		addr = netip.AddrFrom4([4]byte{[]byte{192, 198, 203}[j/256], []byte{0, 51, 0}[j/256], []byte{2, 100, 113}[j/256], byte(j)})
	} else {
		addr = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 9: 1, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
	}
	return learn.Entry{
		Name:    dnsname.Name(fmt.Sprintf("host%d.%s.example", k, rg[0])),
		Addr:    addr,
		Rule:    rg[0],
		Group:   rg[1],
		Expires: exp,
	}
}

// nothing is a local publisher that holds nothing: what the fleet holds
// is the fleet's own.
type nothing struct{}

func (nothing) Publish(context.Context, []learn.Entry) error { return nil }

// BenchmarkFleetMemory makes one gateway of a three-gateway fleet hold N
// learned elements as it would: two thirds written by its two peers
// (loaded from etcd when it starts: the same path as the watch), one
// third published by itself (hold: local; written to etcd, and its own
// batches skipped when they come back). Its local publisher holds
// nothing, or with local=store is a learn.Store (a fleet gateway without
// nftables, whose figures are then the fleet's and the store's). It reports what the fleet layer holds per element: the live
// heap (after two collections) with the gateway running, over the heap
// once the gateway is stopped and dropped (etcd and the client stay), and
// the heap the collector has to scan (runtime/metrics
// /gc/scan/heap:bytes), the same way. Both are independent of the
// machine's load. FQDNGATE_HEAPPROFILE=file writes a heap profile once
// the elements are held.
func BenchmarkFleetMemory(b *testing.B) {
	for _, store := range []bool{false, true} {
		for _, n := range []int{100_000, 1_000_000} {
			name := fmt.Sprintf("N=%d", n)
			if store {
				name += "/local=store"
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					fleetMemory(b, n, store)
				}
			})
		}
	}
}

func fleetMemory(b *testing.B, n int, store bool) {
	c := etcdtest.Start(b, 1, etcdtest.NoFsync())
	cli := c.Client(b)
	p, err := policy.Parse("bench.yaml", []byte(memoryPolicyYAML))
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(30 * time.Minute)
	own := n / 3
	// The peers' batches, as their flushers write them.
	ctx := context.Background()
	for peer, lo := range []int{own, own + (n-own)/2} {
		hi := []int{own + (n-own)/2, n}[peer]
		for seq := uint64(0); lo < hi; seq++ {
			val := []byte(batchHeader)
			for end := min(hi, lo+maxBatch); lo < end; lo++ {
				e := memoryEntry(lo, exp)
				val = appendBatchLine(val, string(appendKey(nil, e.Name, e.Addr, e.Rule, e.Group)), ceilUnix(e.Expires))
			}
			key := "/fqdngate/learned/" + batchKey(fmt.Sprintf("p%d", peer+1), 1, seq)
			if _, err := cli.Put(ctx, key, string(val)); err != nil {
				b.Fatal(err)
			}
		}
	}

	heap1, scan1 := holdFleet(b, cli, p, n, own, exp, store)
	heap0, scan0 := float64(memtest.SettledHeap()), float64(memtest.ScannableHeap())
	b.ReportMetric((heap1-heap0)/float64(n), "B/element")
	b.ReportMetric((scan1-scan0)/float64(n), "scan-B/element")
}

// holdFleet starts gateway g0, waits until it has loaded what etcd holds,
// publishes elements 0 to own, and returns the live heap and the
// scannable heap while it holds every one of the n; the gateway is
// stopped when it returns, and unreachable.
func holdFleet(b *testing.B, cli *clientv3.Client, p *policy.Policy, n, own int, exp time.Time, store bool) (heap, scan float64) {
	var local learn.Publisher = nothing{}
	if store {
		local = learn.NewStore(learn.StoreConfig{MaxEntries: n, MaxPerName: p.DNS.MaxLearnedPerName})
	}
	f, err := New(cli, Options{
		Node:         "g0",
		Local:        local,
		Accept:       Accept(p, nil),
		MaxPerName:   p.DNS.MaxLearnedPerName,
		Hold:         HoldLocal,
		Registerer:   prometheus.NewRegistry(),
		Logger:       slog.New(slog.DiscardHandler),
		NodeTTL:      15 * time.Second,
		WriteTimeout: 15 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case <-f.Loaded():
	case <-time.After(waitTimeout):
		b.Fatalf("not loaded: %v", f.Degraded())
	}
	// Its own third, an answer (a name's ten addresses) at a time.
	for i := 0; i < own; i += 10 {
		batch := make([]learn.Entry, 0, 10)
		for j := i; j < min(own, i+10); j++ {
			batch = append(batch, memoryEntry(j, exp))
		}
		if err := f.Publish(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, "every own element written", func() bool { return promtest.ToFloat64(f.m.written) >= float64(own) })
	f.mu.Lock()
	held, counted := len(f.mirror.elems), 0
	for _, v := range f.mirror.names.vals {
		counted += int(v.n)
	}
	f.mu.Unlock()
	if held != n || counted != n {
		b.Fatalf("the fleet holds %d elements and counts %d, want %d", held, counted, n)
	}
	heap, scan = float64(memtest.SettledHeap()), float64(memtest.ScannableHeap())
	if path := os.Getenv("FQDNGATE_HEAPPROFILE"); path != "" {
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(out); err != nil {
			b.Fatal(err)
		}
		out.Close()
	}
	return heap, scan
}

// BenchmarkPublishCoalesced: Publish of an answer of ten addresses that
// etcd holds already with a later expiry (a name answered from cache
// again), with 100,000 elements in the mirror: the lookups that decide
// nothing is written. No etcd: the gateway is never run (it holds
// locally, as when degraded), and the local publisher holds nothing.
func BenchmarkPublishCoalesced(b *testing.B) {
	const n = 100_000
	f, err := New(new(clientv3.Client), Options{Node: "g0", Local: nothing{}, Accept: func(learn.Entry) error { return nil }, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	exp := time.Now().Add(30 * time.Minute)
	f.mu.Lock()
	for i := range n {
		e := memoryEntry(i, exp)
		f.mirror.raise(&e, ceilUnix(exp)+60, 1)
	}
	f.mu.Unlock()
	answers := make([][]learn.Entry, n/10)
	for i := range answers {
		for j := range 10 {
			answers[i] = append(answers[i], memoryEntry(i*10+j, exp))
		}
	}
	ctx := context.Background()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Publish(ctx, answers[i%len(answers)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if got := promtest.ToFloat64(f.m.coalesced); got != float64(10*i) {
		b.Fatalf("%v entries coalesced, want %d", got, 10*i)
	}
}
