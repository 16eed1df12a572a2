package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/fqdngate/fqdngate/internal/testutil/kubetest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// benchSources select the pods of namespace shop by their label group:
// g000 ... g099, for the many-pods benchmark; the latency benchmark uses
// g000 alone.
func benchSources(groups int) string {
	var b strings.Builder
	for g := range groups {
		fmt.Fprintf(&b, "  g%03d:\n    kubernetes: {namespaces: [shop], pod_selector: {matchLabels: {group: g%03d}}}\n", g, g)
	}
	return b.String()
}

// benchRules gives every group one rule, so that no group is unused.
func benchRules(groups int) string {
	var b strings.Builder
	for g := range groups {
		fmt.Fprintf(&b, "  - name: r%03d\n    from: [g%03d]\n    to: [g%03d.example.com]\n", g, g, g)
	}
	return b.String()
}

// benchPodAddr is pod i's address, in 2001:db8:4b::/48 (a cluster range of
// the policy), so any number of pods fit.
func benchPodAddr(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x00, 0x4b, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
}

// setReader reads a set of the agent's table over netlink, in the node's
// namespace: far quicker than nft(8), so the polling does not dominate
// what it measures.
type setReader struct {
	conn  *nftables.Conn
	table *nftables.Table
}

func newSetReader(tb testing.TB, ns *netns.NS, table string) *setReader {
	tb.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		tb.Fatalf("netlink to the node's nftables: %v", err)
	}
	return &setReader{conn: c, table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}}
}

// has reports whether set holds a.
func (r *setReader) has(tb testing.TB, set string, a netip.Addr) bool {
	s, err := r.conn.GetSetByName(r.table, set)
	if err != nil {
		tb.Fatalf("set %s: %v", set, err)
	}
	elems, err := r.conn.GetSetElements(s)
	if err != nil {
		tb.Fatalf("elements of set %s: %v", set, err)
	}
	return slices.ContainsFunc(elems, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, a.AsSlice()) })
}

// count returns the number of elements of set.
func (r *setReader) count(tb testing.TB, set string) int {
	s, err := r.conn.GetSetByName(r.table, set)
	if err != nil {
		tb.Fatalf("set %s: %v", set, err)
	}
	elems, err := r.conn.GetSetElements(s)
	if err != nil {
		tb.Fatalf("elements of set %s: %v", set, err)
	}
	return len(elems)
}

// waitHas polls set until it holds a (want) or not, for at most
// kernelLimit, and returns when it first did.
func (r *setReader) waitHas(tb testing.TB, set string, a netip.Addr, want bool) time.Time {
	tb.Helper()
	start := time.Now()
	for r.has(tb, set, a) != want {
		if time.Since(start) > kernelLimit {
			tb.Fatalf("set %s: %s present=%v after %v", set, a, !want, kernelLimit)
		}
		time.Sleep(500 * time.Microsecond)
	}
	return time.Now()
}

// startBenchAgent starts a node namespace with the API server and the
// agent, with groups groups; no pod has a namespace of its own: the
// benchmarks measure the kernel's sets, not traffic.
func startBenchAgent(b *testing.B, groups int) (*kubeNode, *setReader) {
	k := &kubeNode{node: netns.New(b)}
	// The wildcard: the kernel redirects the cluster DNS address
	// (intercept_dns) to the listener, which must take both families.
	k.startAgent(b, "[::]:53", benchSources(groups), benchRules(groups))
	return k, newSetReader(b, k.node, k.gate.table)
}

// quantile returns the q-quantile of sorted ds (nearest rank).
func quantile(ds []time.Duration, q float64) time.Duration {
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// BenchmarkKubePodToKernel: from a pod's creation (the Pod object, then
// its status with its address, as a kubelet writes it) to its address in
// the kernel's pod set of its group, through a real API server, the
// agent's informers and one nftables transaction. Reports p50 and p99
// over the pods created (run with -benchtime=200x).
func BenchmarkKubePodToKernel(b *testing.B) {
	k, sets := startBenchAgent(b, 1)
	var lat []time.Duration
	i := 0
	for b.Loop() {
		a := benchPodAddr(i)
		start := time.Now()
		k.api.CreatePod(b, kubetest.Pod{Namespace: podNS, Name: fmt.Sprintf("p%05d", i), Node: nodeName,
			Labels: map[string]string{"group": "g000"}, IPs: []netip.Addr{a}})
		lat = append(lat, sets.waitHas(b, "pod6.g000", a, true).Sub(start))
		i++
	}
	slices.Sort(lat)
	b.ReportMetric(float64(quantile(lat, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(quantile(lat, 0.99).Microseconds())/1000, "p99-ms")
	b.Logf("pod created to its address in the kernel, %d pods: p50 %v, p99 %v, max %v", len(lat), quantile(lat, 0.5), quantile(lat, 0.99), lat[len(lat)-1])
}

// BenchmarkKubeManyPods: FQDNGATE_BENCH_PODS pods (default 10000) in 100
// groups on one agent. Reports the agent's resident memory once they are
// all in the kernel (and its heap goal), and the time from one label change (SetPodLabels,
// moving a pod to the next group) to the kernel's sets following, per
// iteration.
func BenchmarkKubeManyPods(b *testing.B) {
	const groups = 100
	pods := 10000
	if v := os.Getenv("FQDNGATE_BENCH_PODS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < groups {
			b.Fatalf("FQDNGATE_BENCH_PODS=%q: want a number of pods >= %d", v, groups)
		}
		pods = n
	}
	k, sets := startBenchAgent(b, groups)
	group := func(i int) string { return fmt.Sprintf("g%03d", i%groups) }
	start := time.Now()
	for i := range pods {
		k.api.CreatePod(b, kubetest.Pod{Namespace: podNS, Name: fmt.Sprintf("p%05d", i), Node: nodeName,
			Labels: map[string]string{"group": group(i)}, IPs: []netip.Addr{benchPodAddr(i)}})
	}
	created := time.Since(start)
	// Every pod is in the kernel, each in its group's set once: the
	// agent follows all of them, not only the last.
	deadline := time.Now().Add(kernelLimit)
	for {
		total := 0
		for g := range groups {
			total += sets.count(b, "pod6."+group(g))
		}
		if total == pods {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the pod sets hold %d addresses %v after the last pod was created, want %d", total, kernelLimit, pods)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Logf("%d pods created in %v (%.0f/s through the API), all in the kernel %v later", pods, created.Round(time.Millisecond),
		float64(pods)/created.Seconds(), (time.Since(start) - created).Round(time.Millisecond))
	rss := agentRSS(b, k.gate)
	// The heap goal the agent's last collection set: its live heap then
	// times 1+GOGC/100 (fqdngate's GOGC is 400), so unlike the RSS it
	// does not depend on how long ago that collection was.
	goal := k.gate.metric("go_memstats_next_gc_bytes")

	var lat []time.Duration
	n := 0
	for b.Loop() {
		i := n % pods
		to := group(i + 1 + n/pods)
		a := benchPodAddr(i)
		t0 := time.Now()
		k.api.SetPodLabels(b, podNS, fmt.Sprintf("p%05d", i), map[string]string{"group": to})
		lat = append(lat, sets.waitHas(b, "pod6."+to, a, true).Sub(t0))
		n++
	}
	slices.Sort(lat)
	// After the loop: b.Loop's first call drops metrics reported before.
	b.ReportMetric(float64(rss)/(1<<20), "agent-RSS-MiB")
	b.ReportMetric(goal/(1<<20), "agent-heap-goal-MiB")
	b.ReportMetric(float64(quantile(lat, 0.5).Microseconds())/1000, "label-p50-ms")
	b.ReportMetric(float64(quantile(lat, 0.99).Microseconds())/1000, "label-p99-ms")
	b.Logf("%d pods in %d groups: agent RSS %.1f MiB; label change to the kernel: p50 %v, p99 %v over %d changes",
		pods, groups, float64(rss)/(1<<20), quantile(lat, 0.5), quantile(lat, 0.99), len(lat))
}

// agentRSS returns the resident memory of the running fqdngate, in bytes.
func agentRSS(tb testing.TB, g *gate) int64 {
	tb.Helper()
	g.mu.Lock()
	cmd := g.cmd
	g.mu.Unlock()
	// cmd is "ip netns exec ... fqdngate", which execs fqdngate: the
	// same pid.
	out, err := exec.Command("ps", "-o", "rss=", "-p", strconv.Itoa(cmd.Process.Pid)).Output()
	if err != nil {
		tb.Fatalf("ps: %v", err)
	}
	kb, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		tb.Fatalf("ps rss %q: %v", out, err)
	}
	return kb << 10
}
