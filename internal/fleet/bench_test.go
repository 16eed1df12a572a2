package fleet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// BenchmarkPublish publishes one new address at a time at the first of a
// fleet of gateways on an embedded three-member etcd (fsync on), and
// reports the latency of Publish, local programming and hold included:
// p50-ms and p99-ms, and the etcd writes each publication cost.
func BenchmarkPublish(b *testing.B) {
	for _, tc := range []struct {
		name     string
		hold     Hold
		gateways int
	}{
		{"hold=local", HoldLocal, 2},
		{"hold=peers/gateways=2", HoldPeers, 2},
		{"hold=peers/gateways=3", HoldPeers, 3},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := etcdtest.Start(b, 3)
			var gws []*gateway
			for i := range tc.gateways {
				gws = append(gws, startGateway(b, c.Client(b), fmt.Sprintf("g%d", i), nil, func(o *Options) { o.Hold = tc.hold }))
			}
			for _, g := range gws {
				g.waitLoaded(b)
			}
			first := gws[0]
			waitFor(b, "the first gateway to see the others", func() bool {
				first.mu.Lock()
				defer first.mu.Unlock()
				return len(first.live) == tc.gateways-1
			})
			cli := c.Client(b)
			before := etcdWrites(b, cli, gws...)
			var lat []time.Duration
			batch := make([]learn.Entry, 1)
			i := 0
			for b.Loop() {
				i++
				batch[0] = learn.Entry{
					Name:    dnsname.Name(fmt.Sprintf("n%d.cdn.example", i)),
					Addr:    netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}),
					Rule:    "everyone",
					Expires: time.Now().Add(5 * time.Minute),
				}
				start := time.Now()
				if err := first.Publish(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			writes := etcdWrites(b, cli, gws...) - before
			slices.Sort(lat)
			ms := func(q float64) float64 {
				return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
			}
			b.ReportMetric(ms(0.50), "p50-ms")
			b.ReportMetric(ms(0.99), "p99-ms")
			b.ReportMetric(float64(writes)/float64(len(lat)), "etcd-writes/op")
			if timeouts := first.holdsEnded("timeout_release"); timeouts > 0 {
				b.Errorf("%v holds timed out", timeouts)
			}
		})
	}
}
