package kube

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// benchPolicy has groups groups; group gN selects the pods labelled
// app=gN in any namespace.
func benchPolicy(b *testing.B, groups int) *policy.Policy {
	var s strings.Builder
	s.WriteString("dns: {upstreams: [192.0.2.53]}\nkubernetes: {node: node-a, cluster_cidrs: [10.0.0.0/8], dns: {address: 10.0.0.10}}\nsources:\n")
	for i := range groups {
		fmt.Fprintf(&s, "  g%d: {kubernetes: {namespace_selector: {}, pod_selector: {matchLabels: {app: g%d}}}}\n", i, i)
	}
	s.WriteString("rules:\n  - name: r\n    from: [")
	for i := range groups {
		if i > 0 {
			s.WriteString(", ")
		}
		fmt.Fprintf(&s, "g%d", i)
	}
	s.WriteString("]\n    to: [example.com]\n")
	p, err := policy.Parse("bench.yaml", []byte(s.String()))
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkLabelChange is the userspace cost of one pod's label change on
// an agent following 10,000 pods in 100 groups: placing the pod again and
// making the snapshot the kernel and the policy get. It reports the heap
// the followed pods and one snapshot hold.
//
//	go test -run '^$' -bench LabelChange -benchmem ./internal/kube/
func BenchmarkLabelChange(b *testing.B) {
	const pods, groups = 10_000, 100
	p := benchPolicy(b, groups)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	w, err := New(Config{Client: fake.NewClientset(), Policy: p, OnMembers: func(*policy.Members) {}})
	if err != nil {
		b.Fatal(err)
	}
	all := make([]*corev1.Pod, pods)
	for i := range pods {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		all[i] = mkPod(fmt.Sprintf("ns%d", i%50), fmt.Sprintf("pod-%d", i), "node-a", fmt.Sprintf("g%d", i%groups), a.String())
		w.podChanged(all[i])
	}
	w.synced = true
	snap := w.Prepare(p)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if snap.Len() != pods {
		b.Fatalf("snapshot holds %d addresses, want %d", snap.Len(), pods)
	}
	held := float64(after.HeapInuse-before.HeapInuse) / (1 << 20)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		pod := all[i%pods].DeepCopy()
		pod.Labels["app"] = fmt.Sprintf("g%d", (i+1)%groups)
		w.podChanged(pod)
		w.mu.Lock()
		m := w.snapshotLocked(w.pol)
		w.mu.Unlock()
		if m.Len() != pods {
			b.Fatal("lost a pod")
		}
	}
	b.ReportMetric(held, "MiB-held")
}
