package fleet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// BenchmarkPublish publishes one new address at a time at the first of a
// fleet of gateways on an embedded three-member etcd (fsync on), and
// reports the latency of Publish, local programming and hold included:
// p50-ms and p99-ms, and the etcd writes each publication cost.
func BenchmarkPublish(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		for _, tc := range []struct {
			name     string
			hold     Hold
			gateways int
		}{
			{"hold=local", HoldLocal, 2},
			{"hold=peers/gateways=2", HoldPeers, 2},
			{"hold=peers/gateways=3", HoldPeers, 3},
		} {
			name := tc.name
			if !fsync {
				name += "/fsync=off"
			}
			b.Run(name, func(b *testing.B) { benchPublish(b, fsync, tc.hold, tc.gateways) })
		}
	}
}

// startFleet starts an embedded three-member etcd and n gateways with
// hold, and returns them once every gateway sees the others.
func startFleet(b *testing.B, fsync bool, hold Hold, n int) (*etcdtest.Cluster, []*gateway) {
	var opts []etcdtest.Option
	if !fsync {
		opts = append(opts, etcdtest.NoFsync())
	}
	c := etcdtest.Start(b, 3, opts...)
	var gws []*gateway
	for i := range n {
		gws = append(gws, startGateway(b, c.Client(b), fmt.Sprintf("g%d", i), nil, func(o *Options) { o.Hold = hold }))
	}
	settle(b, gws...)
	return c, gws
}

func benchPublish(b *testing.B, fsync bool, hold Hold, n int) {
	c, gws := startFleet(b, fsync, hold, n)
	first := gws[0]
	cli := c.Client(b)
	before := etcdWrites(b, cli, gws...)
	var lat []time.Duration
	batch := make([]learn.Entry, 1)
	i := 0
	for b.Loop() {
		i++
		batch[0] = benchEntry(i)
		start := time.Now()
		if err := first.Publish(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	// hold: local writes after Publish returns: count those writes too.
	waitFor(b, "every element written", func() bool { return first.count(first.m.written) >= float64(len(lat)) })
	writes := etcdWrites(b, cli, gws...) - before
	reportLatency(b, lat)
	b.ReportMetric(float64(writes)/float64(len(lat)), "etcd-writes/op")
	if timeouts := first.holdsEnded("timeout_release"); timeouts > 0 {
		b.Errorf("%v holds timed out", timeouts)
	}
}

// reportLatency reports the median and 99th percentile of lat, in
// milliseconds.
func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	ms := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

// benchEntry is the i-th of distinct new elements.
func benchEntry(i int) learn.Entry {
	return learn.Entry{
		Name:    dnsname.Name(fmt.Sprintf("n%d.cdn.example", i)),
		Addr:    netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}),
		Rule:    "everyone",
		Expires: time.Now().Add(5 * time.Minute),
	}
}

// BenchmarkPublishParallel: many answers at once at each of three
// gateways with hold: peers, as a busy fleet sees them; elements/s is
// the fleet's rate of new addresses, every one acknowledged by all three
// before its Publish returned. cpu-µs/element is the CPU time of the
// whole process (the three etcd members and the three gateways, which
// enforce into memory) per element: less sensitive than the rate to a
// machine shared with others. hold/write is the mean hold over the mean
// round trip of a learned transaction: how many etcd round trips an
// answer waits (two at least: its own write, the others'
// acknowledgement). elements/batch is the mean size of the batches
// written: each is one etcd key.
func BenchmarkPublishParallel(b *testing.B) {
	b.Run("fsync=on", func(b *testing.B) { benchPublishParallel(b, true) })
	b.Run("fsync=off", func(b *testing.B) { benchPublishParallel(b, false) })
}

func benchPublishParallel(b *testing.B, fsync bool) {
	c, gws := startFleet(b, fsync, HoldPeers, 3)
	cli := c.Client(b)
	before := etcdWrites(b, cli, gws...)
	txns0, alone0 := proposals(gws)
	var seq atomic.Int64
	b.SetParallelism(64) // goroutines per GOMAXPROCS: concurrent queries
	cpu0 := cpuTime(b)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		batch := make([]learn.Entry, 1)
		for pb.Next() {
			i := int(seq.Add(1))
			batch[0] = benchEntry(i)
			if err := gws[i%len(gws)].Publish(context.Background(), batch); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	cpu := cpuTime(b) - cpu0
	b.StopTimer()
	writes := etcdWrites(b, cli, gws...) - before
	b.ReportMetric(float64(seq.Load())/elapsed.Seconds(), "elements/s")
	b.ReportMetric(float64(writes)/float64(seq.Load()), "etcd-writes/op")
	b.ReportMetric(float64(cpu.Microseconds())/float64(seq.Load()), "cpu-µs/element")
	// Every write request the gateways sent (each one etcd proposal,
	// whether or not it changed anything), and of those the watermarks
	// written alone.
	txns, alone := proposals(gws)
	b.ReportMetric((txns-txns0)/float64(seq.Load()), "proposals/op")
	b.ReportMetric((alone-alone0)/float64(seq.Load()), "watermark-alone/op")
	var elems, batches float64
	for _, g := range gws {
		var m dto.Metric
		if err := g.m.flushSize.Write(&m); err != nil {
			b.Fatal(err)
		}
		elems += m.Histogram.GetSampleSum()
		batches += float64(m.Histogram.GetSampleCount())
	}
	if batches > 0 {
		// Each batch is one put and one compare in etcd; the watermark
		// rides along or goes alone (counted in etcd-writes/op).
		b.ReportMetric(elems/batches, "elements/batch")
	}
	var hold, write float64
	for _, g := range gws {
		hold += histMean(b, g.m.holdTime)
		write += histMean(b, g.m.writeTime.WithLabelValues("learned").(prometheus.Histogram))
	}
	if write > 0 {
		b.ReportMetric(hold/write, "hold/write")
	}
	var timeouts float64
	for _, g := range gws {
		timeouts += g.holdsEnded("timeout_release")
	}
	if timeouts > 0 {
		b.Errorf("%v holds timed out", timeouts)
	}
}

// proposals counts the write requests the gateways sent to etcd (each one
// raft proposal, whether or not it changed anything), and of those the
// watermarks written alone.
func proposals(gws []*gateway) (all, alone float64) {
	for _, g := range gws {
		for _, kind := range []string{"learned", "watermark", "lease", "node"} {
			all += g.count(g.m.writes.WithLabelValues(kind))
		}
		alone += g.count(g.m.writes.WithLabelValues("watermark"))
	}
	return all, alone
}

// cpuTime is the CPU time (user and system) the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// histMean is the mean of the observations of h.
func histMean(b *testing.B, h prometheus.Histogram) float64 {
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		b.Fatal(err)
	}
	if m.Histogram.GetSampleCount() == 0 {
		return 0
	}
	return m.Histogram.GetSampleSum() / float64(m.Histogram.GetSampleCount())
}

// arrivals is a local publisher that reports when each element reaches
// it, then publishes to its store.
type arrivals struct {
	store *learn.Store
	at    chan time.Time
}

func (a *arrivals) Publish(ctx context.Context, batch []learn.Entry) error {
	now := time.Now()
	for range batch {
		select {
		case a.at <- now:
		default:
		}
	}
	return a.store.Publish(ctx, batch)
}

// BenchmarkPropagation: the time from an answer at one gateway (hold:
// local, so that nothing waits for the other) to its address being
// programmed at the other: p50-ms and p99-ms.
func BenchmarkPropagation(b *testing.B) {
	for _, fsync := range []bool{true, false} {
		name := "fsync=on"
		if !fsync {
			name = "fsync=off"
		}
		b.Run(name, func(b *testing.B) {
			var opts []etcdtest.Option
			if !fsync {
				opts = append(opts, etcdtest.NoFsync())
			}
			c := etcdtest.Start(b, 3, opts...)
			a := startGateway(b, c.Client(b), "a", nil, func(o *Options) { o.Hold = HoldLocal })
			at := make(chan time.Time, 1)
			other := startGateway(b, c.Client(b), "b", func(s *learn.Store) learn.Publisher { return &arrivals{store: s, at: at} }, nil)
			settle(b, a, other)
			var lat []time.Duration
			batch := make([]learn.Entry, 1)
			i := 0
			for b.Loop() {
				i++
				batch[0] = benchEntry(i)
				start := time.Now()
				if err := a.Publish(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
				select {
				case got := <-at:
					lat = append(lat, got.Sub(start))
				case <-time.After(waitTimeout):
					b.Fatal("the element never reached the other gateway")
				}
			}
			reportLatency(b, lat)
		})
	}
}
