package dnsfw

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// BenchmarkQueryDuringReload is BenchmarkQueryUDP's allowed A query with a
// policy of 100,000 more rules, "idle", and "reloading": meanwhile another
// goroutine parses and compiles the same 100,000-rule policy again and
// again and puts each in force, as the daemon's reload does (the worst
// case: one reload after another, not one). Compare p50-µs and p99-µs of
// the two; cpu-ns/op of "reloading" includes the reloads' CPU, and
// reloads counts how many were put in force during the run. Run with:
//
//	go test -run '^$' -bench BenchmarkQueryDuringReload -benchtime 20000x -count 5 ./internal/dnsfw/
func BenchmarkQueryDuringReload(b *testing.B) {
	rules := reloadBenchRules(100_000)
	for _, cache := range []string{"on", "off"} {
		for _, reload := range []bool{false, true} {
			name := "cache=" + cache + "/idle"
			if reload {
				name = "cache=" + cache + "/reloading"
			}
			b.Run(name, func(b *testing.B) {
				dnsLines := "  cache: " + map[string]string{"on": "true", "off": "false"}[cache] + "\n  rate_limit: 0\n  max_inflight: 100000"
				e := newEnv(b, dnstest.Zone(dnstest.A("api.bank.example", 300, "192.0.2.10")), opts{
					dns:   dnsLines,
					rules: rules,
					cfg: func(c *Config) {
						c.Now = time.Now
						c.Audit = audit.New(io.Discard, "json", nil)
					},
				})
				// What e.policy parsed, to parse again off the test goroutine.
				y := []byte(strings.NewReplacer("MODE", "enforce", "UPSTREAM", e.up.Addr.String(), "DNS", dnsLines, "RULES", rules).Replace(testPolicy))
				var (
					stop    = make(chan struct{})
					wg      sync.WaitGroup
					reloads atomic.Int64
				)
				if reload {
					wg.Go(func() {
						for {
							select {
							case <-stop:
								return
							default:
							}
							p, err := policy.Parse("test.yaml", y)
							if err != nil {
								b.Error(err)
								return
							}
							e.pol.Store(p)
							reloads.Add(1)
						}
					})
				}
				benchUDP(b, e.udp, "api.bank.example.", 0)
				close(stop)
				wg.Wait()
				b.ReportMetric(float64(reloads.Load()), "reloads")
			})
		}
	}
}

// reloadBenchRules writes n rules in the shape of the policy package's
// loader benchmark: a third exact names, a third *. and a third **.
// wildcards over 101 second-level domains, every fourth rule limited to a
// source group, every fifth with more ports. None names api.bank.example.
func reloadBenchRules(n int) string {
	var b strings.Builder
	for i := range n {
		var to string
		switch i % 3 {
		case 0:
			to = fmt.Sprintf("host%d.svc%d.example%d.com", i, i%997, i%101)
		case 1:
			to = fmt.Sprintf("*.w%d.example%d.com", i, i%101)
		default:
			to = fmt.Sprintf("**.d%d.example%d.com", i, i%101)
		}
		fmt.Fprintf(&b, "  - name: r%d\n    to: [%q]\n", i, to)
		if i%4 == 0 {
			b.WriteString("    from: [web]\n")
		}
		if i%5 == 0 {
			b.WriteString("    ports: [80, 443, 8000-8100]\n")
		}
	}
	return b.String()
}
