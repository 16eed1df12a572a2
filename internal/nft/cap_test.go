package nft

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// kernelElems lists the addresses a set holds, as the kernel reports them.
func kernelElems(t *testing.T, ns *netns.NS, set string) []string {
	t.Helper()
	out := ns.MustExec("nft", "-j", "list", "set", "inet", "fqdngate", set)
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("decoding nft -j output: %v\n%s", err, out)
	}
	var got []string
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			var e struct {
				Elem struct {
					Val string `json:"val"`
				} `json:"elem"`
			}
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatalf("decoding element %s: %v", raw, err)
			}
			got = append(got, e.Elem.Val)
		}
	}
	slices.Sort(got)
	return got
}

func learnedAddrs(b *Backend) []string {
	var got []string
	for _, e := range b.Learned() {
		got = append(got, e.Addr.String())
	}
	slices.Sort(got)
	return got
}

func publishName(t *testing.T, b *Backend, name dnsname.Name, ttls map[string]time.Duration) {
	t.Helper()
	var batch []learn.Entry
	for addr, ttl := range ttls {
		batch = append(batch, learn.Entry{Name: name, Rule: "bank-api", Group: "payments", Addr: netip.MustParseAddr(addr), Expires: time.Now().Add(ttl)})
	}
	// Sorted by expiry, so that eviction order does not depend on map order.
	slices.SortFunc(batch, func(a, b learn.Entry) int { return a.Expires.Compare(b.Expires) })
	if err := b.Publish(context.Background(), batch); err != nil {
		t.Fatalf("Publish for %s: %v", name, err)
	}
}

// TestPerNameCap: a name over dns.max_learned_per_name loses the address
// that expires soonest, in the kernel too, unless another name holds it.
func TestPerNameCap(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(forwardPolicy, "dns: {max_learned_per_name: 2}"))
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	const set = "learn4.bank-api.payments"

	publishName(t, b, "cdn.example", map[string]time.Duration{srvA: time.Minute, srvB: 2 * time.Minute})
	publishName(t, b, "cdn.example", map[string]time.Duration{srvC: 3 * time.Minute})
	want := []string{srvB, srvC}
	if got := kernelElems(t, n.gw, set); !slices.Equal(got, want) {
		t.Errorf("kernel holds %v, want %v (%s expired soonest)", got, want, srvA)
	}
	if got := learnedAddrs(b); !slices.Equal(got, want) {
		t.Errorf("Learned() = %v, want %v", got, want)
	}
	if got := b.Stats().CapEvictions; got != 1 {
		t.Errorf("CapEvictions = %d, want 1", got)
	}
	if got := b.Dropped(); got != 1 {
		t.Errorf("Dropped() = %d, want 1: the DNS firewall must publish again", got)
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", false},
		{srcPayments, srvC, "443", true},
	})

	// An address another name holds stays in the kernel when one name
	// lets go of it.
	publishName(t, b, "other.example", map[string]time.Duration{srvB: 5 * time.Second})
	publishName(t, b, "cdn.example", map[string]time.Duration{"192.0.2.9": 4 * time.Minute}) // pushes out srvB
	want = []string{srvB, srvC, "192.0.2.9"}
	slices.Sort(want)
	if got := kernelElems(t, n.gw, set); !slices.Equal(got, want) {
		t.Errorf("kernel holds %v, want %v (other.example still holds %s)", got, want, srvB)
	}
	if got := b.Stats().CapEvictions; got != 2 {
		t.Errorf("CapEvictions = %d, want 2", got)
	}

	// One answer bigger than the cap keeps its latest-expiring addresses,
	// and never programs the others.
	publishName(t, b, "big.example", map[string]time.Duration{
		"192.0.2.20": time.Minute, "192.0.2.21": 2 * time.Minute, "192.0.2.22": 3 * time.Minute, "192.0.2.23": 4 * time.Minute,
	})
	got := kernelElems(t, n.gw, set)
	for _, a := range []string{"192.0.2.20", "192.0.2.21"} {
		if slices.Contains(got, a) {
			t.Errorf("kernel holds %s, which big.example's own answer pushed out: %v", a, got)
		}
	}
	for _, a := range []string{"192.0.2.22", "192.0.2.23"} {
		if !slices.Contains(got, a) {
			t.Errorf("kernel lacks %s: %v", a, got)
		}
	}
}

// TestCapFollowsReload: a reload that lowers the cap applies at the
// name's next new address.
func TestCapFollowsReload(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	publishName(t, b, "cdn.example", map[string]time.Duration{srvA: time.Minute, srvB: 2 * time.Minute, srvC: 3 * time.Minute})
	if err := b.Apply(context.Background(), mustParse(t, override(forwardPolicy, "dns: {max_learned_per_name: 1}"))); err != nil {
		t.Fatal(err)
	}
	publishName(t, b, "cdn.example", map[string]time.Duration{"192.0.2.9": 4 * time.Minute})
	if got, want := kernelElems(t, n.gw, "learn4.bank-api.payments"), []string{"192.0.2.9"}; !slices.Equal(got, want) {
		t.Errorf("kernel holds %v, want %v", got, want)
	}
	if got := b.Stats().CapEvictions; got != 3 {
		t.Errorf("CapEvictions = %d, want 3", got)
	}
}

// TestSweep: expired holds leave memory, so a name that is never seen again
// does not keep its entries, and its addresses no longer count.
func TestSweep(t *testing.T) {
	n := newForwardNet(t)
	var skew atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Now: clock}, mustParse(t, forwardPolicy))
	publishName(t, b, "cdn.example", map[string]time.Duration{srvA: time.Minute})
	skew.Store(int64(2 * time.Minute))
	b.sweep()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	if len(b.names) != 0 || len(b.known) != 0 || b.programmed != 0 {
		t.Errorf("after the sweep: %d names, %d elements, %d mirrored; want none", len(b.names), len(b.known), b.programmed)
	}
}
