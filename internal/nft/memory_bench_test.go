package nft

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Four rules over three source groups, one without from (open to every
// source), as a gateway's learned addresses spread over several sets.
const memoryPolicy = `
firewall: {backend: nftables, hook: forward, table: fqdngate}
sources:
  office: [198.51.100.0/26]
  servers: [198.51.100.64/26]
  lab: [198.51.100.128/26]
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

// memoryRuleGroups are the rule and group pairs of memoryPolicy.
var memoryRuleGroups = [][2]string{{"web", "office"}, {"web", "lab"}, {"api", "servers"}, {"updates", ""}, {"db", "servers"}, {"db", "office"}}

// memoryNames returns n names spread over memoryPolicy's rules:
// host<i>.<rule>.example.
func memoryNames(n int) []dnsname.Name {
	names := make([]dnsname.Name, n)
	for i := range names {
		names[i] = dnsname.Name(fmt.Sprintf("host%d.%s.example", i, memoryRuleGroups[i%len(memoryRuleGroups)][0]))
	}
	return names
}

// memoryAddr is the i-th address: one in eight IPv4, from the benchmarking
// range 198.18.0.0/15 (RFC 2544; nothing is sent to it), the rest IPv6 in
// 2001:db8::/32.
func memoryAddr(i int) netip.Addr {
	if i%8 == 0 {
		j := i / 8
		return netip.AddrFrom4([4]byte{198, 18 + byte(j>>16&1), byte(j >> 8), byte(j)})
	}
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 9: 1, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
}

// procStatus reads a kB field of /proc/self/status, in bytes.
func procStatus(b *testing.B, field string) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// slabBytes adds up the kernel's slab caches (objects in use × object
// size), from /proc/slabinfo.
func slabBytes(b *testing.B) float64 {
	f, err := os.Open("/proc/slabinfo")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	var total float64
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) < 4 || strings.HasPrefix(fs[0], "#") || fs[0] == "slabinfo" {
			continue
		}
		active, _ := strconv.ParseFloat(fs[1], 64)
		size, _ := strconv.ParseFloat(fs[3], 64)
		total += active * size
	}
	return total
}

// gcCost forces gcRuns collections and returns the median wall time of
// one and the process CPU time (user and system, from getrusage) one
// took on average: with nothing else running in the process, the
// collector's marking and sweeping of what the heap holds.
func gcCost(b *testing.B) (wall, cpu time.Duration) {
	const gcRuns = 5
	cpuNow := func() time.Duration {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	walls := make([]time.Duration, gcRuns)
	c0 := cpuNow()
	for i := range walls {
		t := time.Now()
		runtime.GC()
		walls[i] = time.Since(t)
	}
	cpu = (cpuNow() - c0) / gcRuns
	slices.Sort(walls)
	return walls[gcRuns/2], cpu
}

// BenchmarkLearnedMemory holds N learned addresses (IPv4 and IPv6 mixed,
// N/10 names of ten addresses, six rule and group pairs) in an nftables
// backend with a state file, in a namespace, and reports what an address
// costs: the Go heap it holds (live heap after GC, over the backend's
// idle heap), the process RSS after returning freed memory to the OS, the
// highest RSS on the way (garbage included: what a daemon would show),
// the kernel's slab memory freed by deleting the table afterwards, and
// what a collection costs with the addresses held: the scannable heap
// they add per address, and a forced runtime.GC's median wall time and
// average process CPU time (gc-ns, gc-cpu-ns; the CPU figure depends
// less on other load than the wall time).
// Run it alone and once (-benchtime=1x): the kernel figure is the
// machine's, so other work moves it. FQDNGATE_HEAPPROFILE=file writes a
// heap profile once the addresses are held.
func BenchmarkLearnedMemory(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			for range b.N {
				learnedMemory(b, n)
			}
		})
	}
}

func learnedMemory(b *testing.B, n int) {
	ns := netns.New(b)
	p, err := policy.Parse("bench.yaml", []byte(memoryPolicy))
	if err != nil {
		b.Fatal(err)
	}
	be, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd(), StateFile: filepath.Join(b.TempDir(), "state.json")})
	if err != nil {
		b.Fatal(err)
	}
	if err := be.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { be.Run(ctx); close(done) }()
	defer func() { cancel(); <-done; be.Close() }()

	names := memoryNames(n / 10)
	heap0 := float64(memtest.SettledHeap())
	scan0 := float64(memtest.ScannableHeap())
	debug.FreeOSMemory()
	rss0, hwm0 := procStatus(b, "VmRSS"), procStatus(b, "VmHWM")
	slab0 := slabBytes(b)

	start := time.Now()
	fillLearned(b, be, names, time.Now().Add(time.Hour))
	fill := time.Since(start)
	// Let the state file be written, as a running daemon does.
	time.Sleep(2 * saveDelay)
	be.save()
	if got := be.Stats().Learned; got != n {
		b.Fatalf("the backend holds %d addresses, want %d", got, n)
	}
	slab1 := slabBytes(b)
	heap1 := float64(memtest.SettledHeap())
	scan1 := float64(memtest.ScannableHeap())
	gcWall, gcCPU := gcCost(b)
	hwm1 := procStatus(b, "VmHWM")
	debug.FreeOSMemory()
	rss1 := procStatus(b, "VmRSS")
	memtest.WriteHeapProfile(b)
	runtime.KeepAlive(names)
	if err := be.Remove(); err != nil {
		b.Fatal(err)
	}
	// The kernel frees a deleted set's elements after RCU grace periods,
	// a million of them over seconds: wait until the slab stops shrinking.
	slab2 := slabBytes(b)
	for range 30 {
		time.Sleep(500 * time.Millisecond)
		s := slabBytes(b)
		if s >= slab2-float64(n) { // less than a byte an element freed since
			slab2 = min(s, slab2)
			break
		}
		slab2 = s
	}

	b.ReportMetric(float64(n)/fill.Seconds(), "addrs/s")
	b.ReportMetric((heap1-heap0)/float64(n), "heap-B/addr")
	b.ReportMetric((rss1-rss0)/float64(n), "rss-B/addr")
	b.ReportMetric((max(hwm1, hwm0)-rss0)/float64(n), "peak-rss-B/addr")
	b.ReportMetric((slab1-slab0)/float64(n), "kernel-fill-B/addr")
	b.ReportMetric((slab1-slab2)/float64(n), "kernel-freed-B/addr")
	b.ReportMetric((scan1-scan0)/float64(n), "scan-B/addr")
	b.ReportMetric(float64(gcWall.Nanoseconds()), "gc-ns")
	b.ReportMetric(float64(gcCPU.Nanoseconds()), "gc-cpu-ns")
}

// fillLearned publishes ten addresses a name for names, from four
// goroutines, the way the DNS firewall hands them over.
func fillLearned(b testing.TB, be *Backend, names []dnsname.Name, exp time.Time) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			batch := make([]learn.Entry, 0, 10)
			for k := w; k < len(names); k += 4 {
				rg := memoryRuleGroups[k%len(memoryRuleGroups)]
				batch = batch[:0]
				for i := k * 10; i < k*10+10; i++ {
					batch = append(batch, learn.Entry{Name: names[k], Rule: rg[0], Group: rg[1], Addr: memoryAddr(i), Expires: exp})
				}
				if err := be.Publish(context.Background(), batch); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
