package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// podPolicy selects the forward topology's clients as pods: the cluster
// ranges are the client network.
const podPolicy = `
mode: enforce
listen: {dns: "[::]:5353"}
dns: {upstreams: [192.0.2.53]}
firewall: {backend: nftables, hook: forward, table: fqdngate}
kubernetes: {node: node-a, cluster_cidrs: [198.51.100.0/24, "2001:db8:1::/64"], dns: {address: 198.51.100.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: checkout}}}}
  web: {kubernetes: {namespaces: [payments], pod_selector: {matchLabels: {app: web}}}}
rules:
  - name: partner-db
    from: [checkout]
    to: [203.0.113.0/24]
    ports: [5432]
  - name: web
    from: [web]
    to: [www.example]
    ports: [8080]
`

func pod(name, app string, addrs ...string) policy.Pod {
	p := policy.Pod{Namespace: "payments", Name: name, Labels: map[string]string{"app": app}}
	for _, a := range addrs {
		p.Addrs = append(p.Addrs, netip.MustParseAddr(a))
	}
	return p
}

// setMembers makes m p's snapshot and the kernel's, as the daemon does.
func setMembers(t *testing.T, b *Backend, p *policy.Policy, pods []policy.Pod) MembersChange {
	t.Helper()
	m := p.NewMembers(pods, true)
	if err := p.SetMembers(m); err != nil {
		t.Fatal(err)
	}
	ch, err := b.SetMembers(context.Background(), m)
	if err != nil {
		t.Fatalf("SetMembers: %v", err)
	}
	return ch
}

func TestPodSetsFollowMembers(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, podPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	publish(t, b, "web", "web", srvB, time.Minute)

	// No snapshot yet: the groups have no members, nothing is open.
	checkReach(t, n.client, []reach{
		{srcPayments, srvCIDR, "5432", false},
		{srcOthers, srvB, "8080", false},
	})

	checkout := pod("checkout-1", "checkout", srcPayments, srcPay6)
	web := pod("web-1", "web", srcOthers)
	if ch := setMembers(t, b, p, []policy.Pod{checkout, web}); ch != (MembersChange{Added: 3}) {
		t.Errorf("first snapshot changed %+v, want 3 added", ch)
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvCIDR, "5432", true},
		{srcPayments, srvB, "8080", false},
		{srcOthers, srvB, "8080", true},
		{srcOthers, srvCIDR, "5432", false},
	})
	if got := podElements(t, n.gw, "pod4.checkout"); !slices.Equal(got, []string{srcPayments}) {
		t.Errorf("pod4.checkout holds %v", got)
	}
	if got := podElements(t, n.gw, "pod6.checkout"); !slices.Equal(got, []string{srcPay6}) {
		t.Errorf("pod6.checkout holds %v", got)
	}

	// A label change moves the pod from checkout to web.
	checkout.Labels["app"] = "web"
	if ch := setMembers(t, b, p, []policy.Pod{checkout, web}); ch != (MembersChange{Added: 2, Removed: 2}) {
		t.Errorf("label change changed %+v, want 2 added, 2 removed", ch)
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvCIDR, "5432", false},
		{srcPayments, srvB, "8080", true},
	})

	// The pod is deleted and a new one gets its address: the new pod is
	// in its own group only.
	reuse := pod("checkout-2", "checkout", srcPayments)
	setMembers(t, b, p, []policy.Pod{reuse, web})
	checkReach(t, n.client, []reach{
		{srcPayments, srvCIDR, "5432", true},
		{srcPayments, srvB, "8080", false},
		{srcPay6, srvCIDR, "5432", false}, // its old IPv6 address went with it
	})
	if got := podElements(t, n.gw, "pod4.web"); !slices.Equal(got, []string{srcOthers}) {
		t.Errorf("pod4.web holds %v, want only %s", got, srcOthers)
	}

	// A re-apply keeps the members: it fills the sets from the snapshot.
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvCIDR, "5432", true}})

	// A snapshot of another policy is refused, and changes nothing.
	other := mustParse(t, podPolicy)
	if _, err := b.SetMembers(context.Background(), other.NewMembers(nil, true)); !errors.Is(err, ErrStaleMembers) {
		t.Errorf("snapshot of another policy: got %v, want ErrStaleMembers", err)
	}
	// A snapshot that is not synced empties the groups: fail closed.
	setMembersUnsynced(t, b, p)
	checkReach(t, n.client, []reach{
		{srcPayments, srvCIDR, "5432", false},
		{srcOthers, srvB, "8080", false},
	})
}

func setMembersUnsynced(t *testing.T, b *Backend, p *policy.Policy) {
	t.Helper()
	m := p.NewMembers(nil, false)
	if err := p.SetMembers(m); err != nil {
		t.Fatal(err)
	}
	if _, err := b.SetMembers(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestPodSetRestored: an element another process deletes from a pod set
// is put back by the watcher, with the members as SetMembers last left
// them.
func TestPodSetRestored(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, podPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true}, p)
	setMembers(t, b, p, []policy.Pod{pod("checkout-1", "checkout", srcPayments)})
	n.gw.MustExec("nft", "delete", "element", "inet", "fqdngate", "pod4.checkout", "{", srcPayments, "}")
	// The watcher counts a restore once its commit is done, after the
	// elements are back: wait for both, so the count read below is final.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(podElements(t, n.gw, "pod4.checkout"), []string{srcPayments}) || b.restores.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pod4.checkout holds %v 10s after the delete, want %s back", podElements(t, n.gw, "pod4.checkout"), srcPayments)
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvCIDR, "5432", true}})
	// And the backend's own updates are not taken for tampering.
	restores := b.restores.Load()
	setMembers(t, b, p, []policy.Pod{pod("checkout-1", "checkout", srcPayments), pod("checkout-2", "checkout", srcOthers)})
	b.check(false)
	if err := b.Enforcing(); err != nil || b.restores.Load() != restores {
		t.Errorf("after SetMembers: Enforcing %v, restores %d → %d", err, restores, b.restores.Load())
	}
}

// podElements lists a pod set's addresses as nft shows them.
func podElements(t *testing.T, ns *netns.NS, set string) []string {
	t.Helper()
	out := ns.MustExec("nft", "list", "set", "inet", "fqdngate", set)
	i := strings.Index(out, "elements = {")
	if i < 0 {
		return nil
	}
	body := out[i+len("elements = {"):]
	body = body[:strings.Index(body, "}")]
	var got []string
	for _, f := range strings.Split(body, ",") {
		if f = strings.TrimSpace(f); f != "" {
			got = append(got, f)
		}
	}
	slices.Sort(got)
	return got
}

func TestDiffAddrs(t *testing.T) {
	a := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	for _, tt := range []struct {
		name              string
		old, cur          []netip.Addr
		wantGone, wantAdd []netip.Addr
	}{
		{"none", nil, nil, nil, nil},
		{"all new", nil, a("10.0.0.1", "10.0.0.2"), nil, a("10.0.0.1", "10.0.0.2")},
		{"all gone", a("10.0.0.1"), nil, a("10.0.0.1"), nil},
		{"same", a("10.0.0.1", "10.0.0.2"), a("10.0.0.1", "10.0.0.2"), nil, nil},
		{"mixed", a("10.0.0.1", "10.0.0.3", "10.0.0.5"), a("10.0.0.2", "10.0.0.3", "10.0.0.6"), a("10.0.0.1", "10.0.0.5"), a("10.0.0.2", "10.0.0.6")},
	} {
		gone, added := diffAddrs(tt.old, tt.cur)
		if !slices.Equal(gone, tt.wantGone) || !slices.Equal(added, tt.wantAdd) {
			t.Errorf("%s: got gone %v, added %v; want %v, %v", tt.name, gone, added, tt.wantGone, tt.wantAdd)
		}
	}
}

func TestRenderPodSets(t *testing.T) {
	p := mustParse(t, podPolicy)
	if err := p.SetMembers(p.NewMembers([]policy.Pod{pod("c", "checkout", "198.51.100.10", "198.51.100.7")}, true)); err != nil {
		t.Fatal(err)
	}
	out := Render(Config{Table: "fqdngate", Hook: policy.HookForward}, p)
	for _, want := range []string{
		"set pod4.checkout {\n\t\ttype ipv4_addr\n\t\telements = { 198.51.100.7, 198.51.100.10 }\n\t}",
		"set pod6.web {\n\t\ttype ipv6_addr\n\t}",
		`ip saddr @pod4.checkout ip daddr @cidr4.partner-db meta l4proto tcp th dport 5432 accept comment "rule partner-db from checkout"`,
		`ip6 saddr @pod6.web ip6 daddr @learn6.web.web meta l4proto tcp th dport 8080 accept comment "rule web from web"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q:\n%s", want, out)
		}
	}
}

// BenchmarkSetMembersLabelChange is the kernel's share of a label change
// on an agent with 10,000 pods in 100 groups: one pod moves from one
// group to another, SetMembers diffs the snapshot against the pod sets and
// sends one transaction (one delete, one add).
//
//	go test -run '^$' -bench SetMembers ./internal/nft/
func BenchmarkSetMembersLabelChange(b *testing.B) {
	const pods, groups = 10_000, 100
	var y strings.Builder
	y.WriteString("listen: {dns: \"[::]:5353\"}\ndns: {upstreams: [192.0.2.53]}\nfirewall: {backend: nftables, hook: forward, table: fqdngate}\nkubernetes: {node: n, cluster_cidrs: [10.0.0.0/8], dns: {address: 10.0.0.10}}\nsources:\n")
	from := make([]string, groups)
	for i := range groups {
		from[i] = fmt.Sprintf("g%d", i)
		fmt.Fprintf(&y, "  g%d: {kubernetes: {namespace_selector: {}, pod_selector: {matchLabels: {app: g%d}}}}\n", i, i)
	}
	fmt.Fprintf(&y, "rules:\n  - name: r\n    from: [%s]\n    to: [203.0.113.0/24]\n", strings.Join(from, ", "))
	ns := netns.New(b)
	p, err := policy.Parse("bench.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	all := make([]policy.Pod, pods)
	for i := range pods {
		all[i] = policy.Pod{Namespace: "ns", Name: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": fmt.Sprintf("g%d", i%groups)},
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}}
	}
	if err := p.SetMembers(p.NewMembers(all, true)); err != nil {
		b.Fatal(err)
	}
	be, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	if err := be.Apply(context.Background(), p); err != nil {
		b.Fatal(err)
	}
	for i := 0; b.Loop(); i++ {
		// The snapshot is kube's to make (see internal/kube's benchmark).
		b.StopTimer()
		k := i % pods
		all[k].Labels = map[string]string{"app": fmt.Sprintf("g%d", (i+1)%groups)}
		m := p.NewMembers(all, true)
		b.StartTimer()
		ch, err := be.SetMembers(context.Background(), m)
		if err != nil || ch != (MembersChange{Added: 1, Removed: 1}) {
			b.Fatalf("SetMembers: %+v, %v", ch, err)
		}
	}
}

// TestSetMembersRepairs: when the element diff cannot apply (someone
// else removed an element SetMembers means to delete, and no watcher put
// it back), the pod sets are rewritten whole, and end as the snapshot
// says.
func TestSetMembersRepairs(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, podPolicy)
	var logs syncbuf.Buffer
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, p)
	setMembers(t, b, p, []policy.Pod{pod("c1", "checkout", srcPayments), pod("c2", "checkout", srcOthers)})
	n.gw.MustExec("nft", "delete", "element", "inet", "fqdngate", "pod4.checkout", "{", srcPayments, "}")
	// c1 goes: deleting its element fails, the transaction is refused.
	setMembers(t, b, p, []policy.Pod{pod("c2", "checkout", srcOthers), pod("w1", "web", srcPay6)})
	if !strings.Contains(logs.String(), "pod set update failed; rewriting") {
		t.Errorf("the element diff did not fail, so the repair went untested; log:\n%s", logs.String())
	}
	if got := podElements(t, n.gw, "pod4.checkout"); !slices.Equal(got, []string{srcOthers}) {
		t.Errorf("pod4.checkout holds %v, want %s", got, srcOthers)
	}
	if got := podElements(t, n.gw, "pod6.web"); !slices.Equal(got, []string{srcPay6}) {
		t.Errorf("pod6.web holds %v, want %s", got, srcPay6)
	}
	checkReach(t, n.client, []reach{
		{srcOthers, srvCIDR, "5432", true},
		{srcPayments, srvCIDR, "5432", false},
	})
}

// TestPodSetsKeptOnAdoption: a restarted agent adopts the table before it
// has listed the pods. Its first Apply, with no synced snapshot yet, keeps
// the pod sets as the previous process left them (emptying them would cut
// every pod off until the listing); the first synced snapshot replaces
// them, stale addresses included.
func TestPodSetsKeptOnAdoption(t *testing.T) {
	n := newForwardNet(t)
	before := mustParse(t, podPolicy)
	b1, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: n.gw.Fd()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b1.Apply(context.Background(), before); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	setMembers(t, b1, before, []policy.Pod{pod("checkout-1", "checkout", srcPayments)})
	b1.Close() // the process ends; the table stays

	p := mustParse(t, podPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	if got := podElements(t, n.gw, "pod4.checkout"); !slices.Equal(got, []string{srcPayments}) {
		t.Fatalf("after adoption and an Apply without a synced snapshot, pod4.checkout holds %v, want %s kept", got, srcPayments)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvCIDR, "5432", true}})
	setMembersUnsynced(t, b, p)
	if got := podElements(t, n.gw, "pod4.checkout"); !slices.Equal(got, []string{srcPayments}) {
		t.Fatalf("after an unsynced snapshot, pod4.checkout holds %v, want %s kept", got, srcPayments)
	}
	// The first synced snapshot is the truth: checkout-1 went while no
	// agent ran.
	setMembers(t, b, p, []policy.Pod{pod("checkout-2", "checkout", srcOthers)})
	if got := podElements(t, n.gw, "pod4.checkout"); !slices.Equal(got, []string{srcOthers}) {
		t.Fatalf("after the synced snapshot, pod4.checkout holds %v, want only %s", got, srcOthers)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvCIDR, "5432", false}, {srcOthers, srvCIDR, "5432", true}})
	// The carry is over: a later unsynced Apply (a reload's) does not
	// bring the adopted addresses back.
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := podElements(t, n.gw, "pod4.checkout"); slices.Contains(got, srcPayments) {
		t.Errorf("a later Apply brought %s back: %v", srcPayments, got)
	}
}
