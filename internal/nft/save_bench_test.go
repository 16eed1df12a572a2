package nft

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// BenchmarkSaveChurn measures what keeping the state file costs under
// steady churn: N learned addresses (as BenchmarkLearnedMemory fills
// them) in a namespace, and answers that keep refreshing the expiries of
// random existing ones (2,000 addresses a second, 20 every 10 ms, each
// moved far enough to cost a kernel write and a change of the mirror).
// The churn runs for 30 seconds with the state file on, then 30 seconds
// with it off (SetStateFile("")); the process's CPU-seconds a second
// (getrusage: user + system, the kernel's work for the transactions and
// the file, and the garbage collector, included) are reported for each,
// and their difference as save-cpu-s/s: the CPU that saving takes a
// second of churn.
func BenchmarkSaveChurn(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				saveChurn(b, n)
			}
		})
	}
}

func saveChurn(b *testing.B, n int) {
	ns := netns.New(b)
	p, err := policy.Parse("bench.yaml", []byte(memoryPolicy))
	if err != nil {
		b.Fatal(err)
	}
	state := filepath.Join(b.TempDir(), "state.json")
	be, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd(), StateFile: state})
	if err != nil {
		b.Fatal(err)
	}
	if err := be.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { be.Run(ctx); close(ran) }()
	defer func() { cancel(); <-ran; be.Close() }()
	names := memoryNames(n / 10)
	base := time.Now().Add(time.Hour)
	fillLearned(b, be, names, base)
	if got := be.Stats().Learned; got != n {
		b.Fatalf("the backend holds %d addresses, want %d", got, n)
	}
	time.Sleep(2 * time.Second) // the first writes of the whole file, as after any fill

	rng := rand.New(rand.NewPCG(1, 2))
	step := 0
	churn := func(d time.Duration) (cpuPerSec float64, refreshed int) {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		start, cpu0 := time.Now(), cpuSeconds(b)
		batch := make([]learn.Entry, 0, 10)
		for time.Since(start) < d {
			<-t.C
			step++
			for range 2 {
				k := rng.IntN(len(names))
				rg := memoryRuleGroups[k%len(memoryRuleGroups)]
				batch = batch[:0]
				// Each step moves the expiry 2 s on: past refreshSlack,
				// so every refresh reaches the kernel and the mirror.
				exp := base.Add(time.Duration(step) * 2 * time.Second)
				for i := k * 10; i < k*10+10; i++ {
					batch = append(batch, learn.Entry{Name: names[k], Rule: rg[0], Group: rg[1], Addr: memoryAddr(i), Expires: exp})
				}
				if err := be.Publish(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
				refreshed += len(batch)
			}
		}
		el := time.Since(start).Seconds()
		return (cpuSeconds(b) - cpu0) / el, refreshed
	}
	b.ResetTimer()
	on, refreshed := churn(30 * time.Second)
	be.SetStateFile("")
	time.Sleep(time.Second) // a write under way ends
	off, _ := churn(30 * time.Second)
	b.StopTimer()
	if f := be.stateWriteFailures.Load(); f > 0 {
		b.Errorf("%d failed writes of the state file", f)
	}
	b.ReportMetric(on, "on-cpu-s/s")
	b.ReportMetric(off, "off-cpu-s/s")
	b.ReportMetric(on-off, "save-cpu-s/s")
	b.ReportMetric(float64(refreshed)/30, "refreshes/s")
}
