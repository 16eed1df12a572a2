package dnsfw

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// budgetRules allow two wildcards: one for payments and web, one for
// payments only.
const budgetRules = `  - name: cdn
    from: [payments, web]
    to: ["**.cdn.bank.example"]
    ports: [443]
  - name: other
    from: [payments]
    to: ["*.other.example"]
    ports: [443]`

// wildcardZone answers every name under cdn.bank.example and other.example
// with an address, as an attacker's authoritative server answers the
// names it is sent: for 300s, or not at all for names whose first label
// starts with "ttl0" (so they are never cached).
func wildcardZone(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if !strings.HasSuffix(name, ".cdn.bank.example.") && !strings.HasSuffix(name, ".other.example.") {
		_ = w.WriteMsg(dnstest.Reply(r, dns.RcodeNameError))
		return
	}
	var ttl uint32 = 300
	if strings.HasPrefix(name, "ttl0") {
		ttl = 0
	}
	m := dnstest.Reply(r, dns.RcodeSuccess)
	if q.Qtype == dns.TypeA {
		m.Answer = append(m.Answer, dnstest.A(q.Name, ttl, "192.0.2.77"))
	}
	_ = w.WriteMsg(m)
}

// askMany sends a query for each name from src over one socket, at most
// burst in flight, and returns the rcode of each reply by name.
func askMany(t *testing.T, e *env, src string, names []string, burst int) map[string]int {
	t.Helper()
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(e.udp))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadBuffer(1 << 20)
	got := make(map[string]int, len(names))
	buf := make([]byte, 4096)
	for start := 0; start < len(names); start += burst {
		sent := map[uint16]string{}
		for i, name := range names[start:min(start+burst, len(names))] {
			m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
			m.Id = uint16(i + 1)
			b, _ := m.Pack()
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
			sent[m.Id] = name
		}
		for len(sent) > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("%d replies missing: %v", len(sent), err)
			}
			r := new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil {
				t.Fatal(err)
			}
			name, ok := sent[r.Id]
			if !ok {
				t.Fatalf("reply with ID %d: not asked, or answered twice", r.Id)
			}
			delete(sent, r.Id)
			got[name] = r.Rcode
		}
	}
	return got
}

// TestWildcardBudget: a client sending 20,000 new names under an allowed
// wildcard, as a DNS tunnel does, gets dns.wildcard_budget (300 by
// default) of them to the upstream in a minute; the rest are refused,
// counted and logged. Another client, and the same client under another
// wildcard, keep their own budgets; names the client sent already, and
// cached names, cost nothing; a minute later the budget is whole again.
func TestWildcardBudget(t *testing.T) {
	e := newEnv(t, wildcardZone, opts{dns: "  rate_limit: 0", rules: budgetRules})
	const budget = 300 // the default
	if b := e.pol.Load().DNS.WildcardBudget; b != budget {
		t.Fatalf("dns.wildcard_budget defaults to %d, want %d", b, budget)
	}

	// A few names the upstream will not let be cached, charged first.
	var names []string
	for i := range 20_000 {
		prefix := "x"
		if i < 5 {
			prefix = "ttl0"
		}
		names = append(names, fmt.Sprintf("%s%05d.cdn.bank.example", prefix, i))
	}
	got := askMany(t, e, payments, names, 100)
	answered, refused := 0, 0
	for _, name := range names {
		switch got[name] {
		case dns.RcodeSuccess:
			answered++
		case dns.RcodeRefused:
			refused++
		default:
			t.Errorf("%s: got %s, want NOERROR or REFUSED", name, dns.RcodeToString[got[name]])
		}
	}
	if answered != budget || refused != len(names)-budget {
		t.Errorf("20,000 new names: %d answered, %d refused; want %d and %d", answered, refused, budget, len(names)-budget)
	}
	if n := e.up.QueryCount(); n != budget {
		t.Errorf("the upstream saw %d queries, want %d", n, budget)
	}
	if got := testCounter(t, e.fw.metrics.budget.WithLabelValues("cdn")); got != float64(len(names)-budget) {
		t.Errorf("fqdngate_dns_wildcard_budget_exceeded_total{rule=cdn}: got %v, want %d", got, len(names)-budget)
	}
	// One audit line per query: the refusals say why, name the rule that
	// allowed the name as near_rule, and the client.
	lines := e.auditLines(len(names))
	if len(lines) != len(names) {
		t.Fatalf("audit lines: got %d, want %d", len(lines), len(names))
	}
	over := 0
	for _, l := range lines {
		if l["rcode"] != "REFUSED" {
			continue
		}
		over++
		if l["action"] != "deny" || l["rule"] != "" || l["near_rule"] != "cdn" || l["source"] != payments ||
			l["reason"] != "too many new names under this wildcard (dns.wildcard_budget)" ||
			l["dns_reason"] != "client over dns.wildcard_budget: 300 new names a minute under **.cdn.bank.example" {
			t.Fatalf("refusal's audit line: %v", l)
		}
	}
	if over != len(names)-budget {
		t.Errorf("audit lines of refusals: got %d, want %d", over, len(names)-budget)
	}

	before := e.up.QueryCount()
	// Free: a name sent in the window already, from the cache or (not
	// cacheable) from the upstream again, in any case; the upstream sees
	// it in lower case.
	for _, name := range []string{"x00100.cdn.bank.example", "ttl000001.cdn.bank.example", "TTL000001.Cdn.Bank.Example"} {
		if r := e.ask(payments, name, dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Errorf("%s, sent in the window already: got %s, want NOERROR", name, dns.RcodeToString[r.Rcode])
		}
	}
	if n := e.up.QueryCount() - before; n != 2 {
		t.Errorf("names sent already: %d reached the upstream, want 2 (the uncacheable one, twice)", n)
	}
	for _, q := range e.up.Queries()[before:] {
		if name := q.Msg.Question[0].Name; name != "ttl000001.cdn.bank.example." {
			t.Errorf("the upstream was asked %q, want it in lower case", name)
		}
	}
	// Another client under the same wildcard, and the same client under
	// another wildcard, have budgets of their own.
	fresh := func(prefix, suffix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("%s%d.%s", prefix, i, suffix))
		}
		return out
	}
	for _, c := range []struct {
		src   string
		names []string
	}{
		{web, fresh("w", "cdn.bank.example", 20)},
		{payments, fresh("o", "other.example", 20)},
	} {
		for name, rc := range askMany(t, e, c.src, c.names, 10) {
			if rc != dns.RcodeSuccess {
				t.Errorf("%s from %s: got %s, want NOERROR", name, c.src, dns.RcodeToString[rc])
			}
		}
	}
	// The window rolls: a minute after its first name, the client has
	// its whole budget again, and no more.
	e.clock.Advance(budgetWindow)
	got = askMany(t, e, payments, fresh("later", "cdn.bank.example", budget+1), 50)
	answered = 0
	for _, rc := range got {
		if rc == dns.RcodeSuccess {
			answered++
		}
	}
	if answered != budget {
		t.Errorf("a minute later, %d new names: %d answered, want %d", budget+1, answered, budget)
	}
}

// TestWildcardBudgetOff: with dns.wildcard_budget 0, and for names an
// exact pattern allows, nothing is counted.
func TestWildcardBudgetOff(t *testing.T) {
	rules := budgetRules + "\n  - name: exact\n    from: [web]\n    to: [a.other.example, b.other.example]\n    ports: [443]"
	e := newEnv(t, wildcardZone, opts{dns: "  rate_limit: 0\n  wildcard_budget: 0", rules: rules})
	var names []string
	for i := range 500 {
		names = append(names, fmt.Sprintf("n%d.cdn.bank.example", i))
	}
	for name, rc := range askMany(t, e, payments, names, 50) {
		if rc != dns.RcodeSuccess {
			t.Fatalf("budget off, %s: got %s", name, dns.RcodeToString[rc])
		}
	}
	e.pol.Store(e.policy(opts{dns: "  rate_limit: 0\n  wildcard_budget: 1", rules: rules}))
	for range 3 {
		for _, name := range []string{"ttl0a.other.example", "a.other.example", "b.other.example"} {
			if r := e.ask(web, name, dns.TypeA); name != "ttl0a.other.example" && r.Rcode != dns.RcodeSuccess {
				t.Errorf("%s, an exact name, budget 1: got %s", name, dns.RcodeToString[r.Rcode])
			}
		}
	}
	if n, _ := e.fw.budgets.size(); n != 0 {
		t.Errorf("budgets kept for exact names: %d", n)
	}
}

// TestWildcardBudgetAuditMode: over the budget, audit mode lets the query
// through and logs would-deny.
func TestWildcardBudgetAuditMode(t *testing.T) {
	e := newEnv(t, wildcardZone, opts{mode: "audit", dns: "  wildcard_budget: 2", rules: budgetRules})
	for i, want := range []string{"allow", "allow", "would-deny"} {
		if r := e.ask(payments, fmt.Sprintf("a%d.cdn.bank.example", i), dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Errorf("query %d: got %s, want NOERROR", i, dns.RcodeToString[r.Rcode])
		}
		lines := e.auditLines(i + 1)
		if l := lines[len(lines)-1]; l["action"] != want {
			t.Errorf("query %d: action %v, want %s (%v)", i, l["action"], want, l)
		}
	}
	if n := e.up.QueryCount(); n != 3 {
		t.Errorf("upstream queries: %d, want 3", n)
	}
}

// TestBudgetsBounded: a flood of new names from spoofed sources keeps at
// most the bounds' buckets and names; a client seen recently keeps its
// count across a rotation.
func TestBudgetsBounded(t *testing.T) {
	b := newBudgets(64, 1024)
	now := time.Now()
	for i := range 50_000 {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		for j := range 3 {
			b.charge(src, "**.cdn.example", fmt.Sprintf("n%d-%d.cdn.example", i, j), 10, now)
		}
		if buckets, names := b.size(); buckets > 64 || names > 1024+10 {
			t.Fatalf("after %d sources: %d buckets, %d names; want at most 64 and 1034", i+1, buckets, names)
		}
	}
	// One client fills its budget; the flood goes on; it is still over.
	c := netip.MustParseAddr("192.0.2.1")
	for i := range 5 {
		if !b.charge(c, "**.cdn.example", fmt.Sprintf("c%d.cdn.example", i), 5, now) {
			t.Fatalf("name %d of 5: refused", i)
		}
	}
	for i := range 20 {
		b.charge(netip.AddrFrom4([4]byte{10, 9, 9, byte(i)}), "**.cdn.example", "x.cdn.example", 5, now)
	}
	if b.charge(c, "**.cdn.example", "c5.cdn.example", 5, now) {
		t.Error("sixth name, budget 5: allowed")
	}
	if !b.charge(c, "**.cdn.example", "c2.cdn.example", 5, now) {
		t.Error("a name charged already: refused")
	}
	// Timestamps a little out of order (queries from several readers and
	// workers) stay in their window.
	d := netip.MustParseAddr("192.0.2.2")
	for i := range 10 {
		b.charge(d, "p", fmt.Sprintf("d%d", i), 10, now.Add(time.Duration(i%2)*-time.Millisecond))
	}
	if b.charge(d, "p", "d10", 10, now.Add(-time.Millisecond)) {
		t.Error("an eleventh name, budget 10, timestamps out of order: allowed")
	}
	// IPv6 clients share a budget per /64.
	if !b.charge(netip.MustParseAddr("2001:db8::1"), "p", "a", 1, now) || b.charge(netip.MustParseAddr("2001:db8::2"), "p", "b", 1, now) {
		t.Error("two addresses of one /64: want one budget between them")
	}
}

// TestBudgetLargeBucket: a budget past the small bucket's size keeps
// counting exactly: every name charged once, repeats free in either form,
// the limit holds, and a new window starts empty.
func TestBudgetLargeBucket(t *testing.T) {
	b := newBudgets(maxBudgetBuckets, maxBudgetNames)
	client := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1_700_000_000, 0)
	const limit = 5 * smallBucket
	name := func(i int) string { return "n" + strconv.Itoa(i) + ".cdn.example" }
	for i := range limit {
		if !b.charge(client, "**.cdn.example", name(i), limit, now) {
			t.Fatalf("name %d of %d refused", i+1, limit)
		}
	}
	for _, i := range []int{0, smallBucket - 1, smallBucket, limit - 1} {
		if !b.charge(client, "**.cdn.example", name(i), limit, now) {
			t.Errorf("name %d, charged before, refused", i)
		}
	}
	if b.charge(client, "**.cdn.example", name(limit), limit, now) {
		t.Errorf("name %d over a budget of %d allowed", limit+1, limit)
	}
	if _, names := b.size(); names != limit {
		t.Errorf("names held: %d, want %d", names, limit)
	}
	now = now.Add(budgetWindow)
	if !b.charge(client, "**.cdn.example", name(limit), limit, now) {
		t.Errorf("a new window refused a new name")
	}
	if _, names := b.size(); names != 1 {
		t.Errorf("names held in the new window: %d, want 1", names)
	}
}

// BenchmarkBudgetCharge: charging a new name under a budget large enough
// never to refuse (what the DNS benchmark's one client does) costs a set
// insertion, whatever the budget.
func BenchmarkBudgetCharge(b *testing.B) {
	bs := newBudgets(maxBudgetBuckets, maxBudgetNames)
	client := netip.MustParseAddr("192.0.2.7")
	names := make([]string, 100_000)
	for i := range names {
		names[i] = "n" + strconv.Itoa(i) + ".bench.example"
	}
	now := time.Unix(1_700_000_000, 0)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if !bs.charge(client, "**.bench.example", names[i%len(names)], 1_000_000, now) {
			b.Fatal("refused")
		}
	}
}
