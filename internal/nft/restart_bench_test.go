package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// cpuSeconds is the process's user plus system CPU time so far: the
// kernel's work for a netlink dump or a transaction counts as the
// system time of the process that asked.
func cpuSeconds(b testing.TB) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// BenchmarkRestart holds N learned addresses (as BenchmarkLearnedMemory
// fills them) in a namespace, writes the state file, stops the backend,
// and times a restart: a new backend adopting the table and reading the
// state file (New) and its first Apply, after which the daemon answers.
// Meanwhile a sample of 600 elements is asked of the kernel, one get
// each, every 100 ms: a missing one would be a dropped connection.
// It reports wall time and CPU-seconds (user+system of the process, the
// kernel's dump work and the sample's gets included) of New and of Apply,
// and of the check that Run makes afterwards of the elements New took from
// the state file (verify: it runs while the daemon answers), how many New
// took from the file, the state file's write as a whole (a snapshot,
// CPU-seconds), and the sample's misses. With journal=N, every address
// is refreshed after the snapshot, so that the restart reads the
// snapshot and a journal of N changes (the most it holds before a new
// snapshot; journal-B is its size).
func BenchmarkRestart(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		for _, journal := range []bool{false, true} {
			name := fmt.Sprintf("N=%d", n)
			if journal {
				name += ",journal=N"
			}
			b.Run(name, func(b *testing.B) {
				for range b.N {
					restart(b, n, journal)
				}
			})
		}
	}
}

func restart(b *testing.B, n int, journal bool) {
	ns := netns.New(b)
	p, err := policy.Parse("bench.yaml", []byte(memoryPolicy))
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd(), StateFile: filepath.Join(b.TempDir(), "state.json")}
	be, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := be.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { be.Run(ctx); close(ran) }()
	names := memoryNames(n / 10)
	fillLearned(b, be, names, time.Now().Add(time.Hour))
	if got := be.Stats().Learned; got != n {
		b.Fatalf("the backend holds %d addresses, want %d", got, n)
	}
	be.stateMu.Lock()
	cpu0 := cpuSeconds(b)
	_, err = be.snapshotLocked(cfg.StateFile)
	saveCPU := cpuSeconds(b) - cpu0
	be.stateMu.Unlock()
	if err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(cfg.StateFile)
	if err != nil {
		b.Fatal(err)
	}
	if journal {
		fillLearned(b, be, names, time.Now().Add(2*time.Hour))
	}
	// The sample: every n/600-th address, in its set.
	type elem struct {
		set string
		a   netip.Addr
	}
	var sample []elem
	be.memMu.Lock()
	for i := 0; i < n; i += n / 600 {
		rg := memoryRuleGroups[(i/10)%len(memoryRuleGroups)]
		a := memoryAddr(i)
		sample = append(sample, elem{be.learned[learnKey{rg[0], rg[1], familyOf(a)}], a})
	}
	be.memMu.Unlock()
	ask := func() (held, asked int) {
		return kernelHolds(b, ns, func(yield func(string, netip.Addr) bool) {
			for _, e := range sample {
				if !yield(e.set, e.a) {
					return
				}
			}
		})
	}
	if held, asked := ask(); held != asked {
		b.Fatalf("before the restart the kernel holds %d of %d sampled elements", held, asked)
	}
	cancel() // Run writes the state file once more as it ends
	<-ran
	if err := be.Close(); err != nil {
		b.Fatal(err)
	}
	if be.stateWriteFailures.Load() > 0 {
		b.Fatal("the state file was not written")
	}
	jfi, err := os.Stat(journalPath(cfg.StateFile))
	if err != nil {
		b.Fatal(err)
	}

	var missed, rounds atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			held, asked := ask()
			missed.Add(int64(asked - held))
			rounds.Add(1)
			select { // a round every 100 ms, not competing with the restart for the CPU
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	b.ResetTimer()
	start, cpu0 := time.Now(), cpuSeconds(b)
	be2, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	ran2 := make(chan struct{})
	go func() { be2.Run(ctx2); close(ran2) }()
	newWall, newCPU := time.Since(start), cpuSeconds(b)-cpu0
	start, cpu0 = time.Now(), cpuSeconds(b)
	if err := be2.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	applyWall, applyCPU := time.Since(start), cpuSeconds(b)-cpu0
	b.StopTimer()
	// Meanwhile Run checks what New took from the state file; the
	// sample keeps asking until it is done.
	start, cpu0 = time.Now(), cpuSeconds(b)
	for be2.verified.Load() < uint64(be2.toVerify) {
		time.Sleep(10 * time.Millisecond)
	}
	verifyWall, verifyCPU := time.Since(start), cpuSeconds(b)-cpu0
	close(stop)
	<-watched
	defer func() { cancel2(); <-ran2; be2.Close() }()
	if got := be2.Stats().Learned; got != n {
		b.Errorf("after the restart the backend holds %d addresses, want %d", got, n)
	}
	if held, asked := ask(); held != asked {
		b.Errorf("after the restart the kernel holds %d of %d sampled elements", held, asked)
	}
	b.ReportMetric((newWall + applyWall).Seconds(), "ready-s")
	b.ReportMetric(newCPU+applyCPU, "ready-cpu-s")
	b.ReportMetric(newWall.Seconds(), "new-s")
	b.ReportMetric(newCPU, "new-cpu-s")
	b.ReportMetric(applyWall.Seconds(), "apply-s")
	b.ReportMetric(applyCPU, "apply-cpu-s")
	b.ReportMetric(verifyWall.Seconds(), "verify-s")
	b.ReportMetric(verifyCPU, "verify-cpu-s")
	b.ReportMetric(float64(be2.toVerify), "from-file")
	b.ReportMetric(saveCPU, "save-cpu-s")
	b.ReportMetric(float64(fi.Size())/float64(n), "state-B/addr")
	b.ReportMetric(float64(jfi.Size()), "journal-B")
	b.ReportMetric(float64(missed.Load()), "missed")
	b.ReportMetric(float64(rounds.Load()), "sample-rounds")
}
