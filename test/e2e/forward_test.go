package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

const basicRules = `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [443]
  - name: partner
    from: [a]
    to: [198.51.100.0/25]
    ports: [443]
  - name: b-only
    from: [b]
    to: [b.example.com]
`

// TestForwardAllowedAndUnlisted: through the gateway, an allowed name is
// reachable on its port once resolved and on no other; an unlisted name is
// not answered and its address stays closed; raw addresses are closed
// unless a CIDR rule lists them.
func TestForwardAllowedAndUnlisted(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"), dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	// Default deny: nothing is learned before the first answer.
	mustDrop(t, f.a, ap("203.0.113.10", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::10", allowedPort))

	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addr, err := f.a.resolveAndGet("api.example.com", qt, allowedPort)
		if err != nil {
			t.Fatalf("allowed name over %s: %v\n%s", dns.TypeToString[qt], err, f.gate.logs())
		}
		mustDrop(t, f.a, netip.AddrPortFrom(addr, otherPort))
	}

	// An unlisted name: fqdngate answers NXDOMAIN itself, the authority
	// never hears of it, and the address it would have given stays closed.
	r, err := f.a.exchange("udp", gatewayDNS, "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("unlisted name: got %s with %d answers, want NXDOMAIN", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	if n := auth.Seen("evil.example.com", 0); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name, want 0", n)
	}
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))

	// Raw addresses no rule lists.
	mustDrop(t, f.a, ap("203.0.113.77", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::77", allowedPort))

	// A CIDR target needs no DNS, on its port only, within its prefix only.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", allowedPort))
	mustDrop(t, f.a, ap("198.51.100.5", otherPort))
	mustDrop(t, f.a, ap("198.51.100.200", allowedPort))
	// Group b has neither rule. (b needs a rule of its own: a group that
	// no rule names is not covered, and the gateway leaves uncovered
	// sources unfiltered.)
	mustDrop(t, f.b, ap("198.51.100.5", allowedPort))
	mustDrop(t, f.b, ap("203.0.113.10", allowedPort))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

const isolationRules = `  - name: api
    from: [a]
    to: [api.example.com]
  - name: shared
    from: [a, b]
    to: [shared.example.com]
  - name: b-only
    from: [b]
    to: [b.example.com]
`

// TestForwardGroupIsolation: an address is opened for the group whose
// query learned it, not for the other group, even when both may use the
// name.
func TestForwardGroupIsolation(t *testing.T) {
	f := startForward(t, 2*time.Second, isolationRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"), dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))
	auth.Set("shared.example.com", dnstest.A("shared.example.com", 300, "203.0.113.40"))
	auth.Set("b.example.com", dnstest.A("b.example.com", 300, "203.0.113.50"))

	// a's name: open for a, closed for b, and b may not resolve it.
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addr, err := f.a.resolveAndGet("api.example.com", qt, allowedPort)
		if err != nil {
			t.Fatalf("group a, its own name: %v\n%s", err, f.gate.logs())
		}
		mustDrop(t, f.b, netip.AddrPortFrom(addr, allowedPort))
	}
	if _, _, err := f.b.lookup("api.example.com", dns.TypeA); err == nil {
		t.Error("group b resolved group a's name, want a refusal")
	}
	mustDrop(t, f.b, ap("203.0.113.10", allowedPort))

	// A name both groups may use: a's query opens it for a only; b must
	// ask for itself.
	if _, err := f.a.resolveAndGet("shared.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("group a, shared name: %v", err)
	}
	mustDrop(t, f.b, ap("203.0.113.40", allowedPort))
	if _, err := f.b.resolveAndGet("shared.example.com", dns.TypeA, allowedPort); err != nil {
		t.Errorf("group b, shared name after its own query: %v", err)
	}

	// b's name: the reverse.
	if _, err := f.b.resolveAndGet("b.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("group b, its own name: %v", err)
	}
	mustDrop(t, f.a, ap("203.0.113.50", allowedPort))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// TestForwardDirectDNS: clients that query the outside resolver directly
// are answered by fqdngate (their DNS is redirected to it), so they learn
// nothing the policy forbids; DNS over IPv6, which fqdngate does not
// listen for here, and DNS-over-TLS are dropped; TXT is refused.
func TestForwardDirectDNS(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"), rrTXT("api.example.com", 300, "exfiltrate me"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	for _, server := range []string{authorityAddr, "203.0.113.53:53"} {
		for _, network := range []string{"udp", "tcp"} {
			// An allowed name asked of the outside resolver: fqdngate
			// answers and learns, so the address opens.
			r, err := f.a.exchange(network, server, "api.example.com", dns.TypeA, reachWait)
			if err != nil {
				t.Fatalf("direct query to %s over %s: %v\n%s", server, network, err, f.gate.logs())
			}
			addrs, _ := answerAddrs(r)
			if len(addrs) != 1 || addrs[0] != netip.MustParseAddr("203.0.113.10") {
				t.Errorf("direct query to %s over %s: got %v (%s), want 203.0.113.10", server, network, addrs, dns.RcodeToString[r.Rcode])
			}
			// An unlisted name: NXDOMAIN, though the authority has it.
			r, err = f.a.exchange(network, server, "evil.example.com", dns.TypeA, reachWait)
			if err != nil {
				t.Fatalf("direct query to %s over %s: %v", server, network, err)
			}
			if r.Rcode != dns.RcodeNameError {
				t.Errorf("direct query to %s over %s for an unlisted name: got %s %v, want NXDOMAIN", server, network, dns.RcodeToString[r.Rcode], r.Answer)
			}
			// TXT for an allowed name: refused.
			r, err = f.a.exchange(network, server, "api.example.com", dns.TypeTXT, reachWait)
			if err != nil {
				t.Fatalf("TXT query to %s over %s: %v", server, network, err)
			}
			if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
				t.Errorf("TXT query to %s over %s: got %s with %d answers, want REFUSED", server, network, dns.RcodeToString[r.Rcode], len(r.Answer))
			}
		}
	}
	// Neither the unlisted name nor TXT ever left the gateway.
	if n := auth.Seen("evil.example.com", 0); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name, want 0", n)
	}
	if n := auth.Seen("api.example.com", dns.TypeTXT); n != 0 {
		t.Errorf("the authority saw %d TXT queries, want 0", n)
	}
	mustReach(t, f.a, "api.example.com", ap("203.0.113.10", allowedPort))
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))

	// fqdngate listens on IPv4 only: DNS over IPv6 cannot be redirected,
	// so it is dropped rather than let through.
	before := auth.Seen("api.example.com", 0)
	if r, err := f.a.exchange("udp", authorityAddr6, "api.example.com", dns.TypeA, time.Second); err == nil {
		t.Errorf("direct DNS over IPv6: got an answer (%s), want it dropped", dns.RcodeToString[r.Rcode])
	}
	mustDrop(t, f.a, ap(inet6, 53))
	if n := auth.Seen("api.example.com", 0); n != before {
		t.Errorf("the authority answered %d queries over IPv6, want 0", n-before)
	}
	// DNS-over-TLS to the outside resolver is just a closed port.
	mustDrop(t, f.a, ap(inet4, 853))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// TestForwardRelearnExtendsExpiry: a client that asks again for a name
// whose answer has not changed must keep reaching it for the new answer's
// TTL + grace, not the first answer's. (Regression: the backend once
// re-sent elements with only a timeout, which Linux ignores when it equals
// the element's current one, so addresses closed at first learn + TTL +
// grace however often clients resolved them.)
func TestForwardRelearnExtendsExpiry(t *testing.T) {
	const ttl = 2
	grace := time.Second
	f := startForward(t, grace, `  - name: relearn
    from: [a]
    to: [relearn.example.com]
`)
	f.net.inet.auth.Set("relearn.example.com", dnstest.A("relearn.example.com", ttl, "203.0.113.60"))
	dst := ap("203.0.113.60", allowedPort)

	t0 := time.Now()
	if _, err := f.a.resolveAndGet("relearn.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("first answer: %v\n%s", err, f.gate.logs())
	}
	// Past fqdngate's cached copy: the second answer comes from upstream
	// with the full TTL again.
	time.Sleep(time.Until(t0.Add(ttl*time.Second + 200*time.Millisecond)))
	_, got, err := f.a.lookup("relearn.example.com", dns.TypeA)
	t1 := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if got != ttl {
		t.Fatalf("test timing: the second answer has TTL %d, want a fresh %d", got, ttl)
	}
	// After the first answer's TTL + grace, before the second's TTL.
	at := t0.Add(ttl*time.Second + grace + 500*time.Millisecond)
	if valid := t1.Add(ttl * time.Second); !at.Before(valid) {
		t.Fatalf("test timing: checking at t=%v, after the second answer expired at t=%v", at.Sub(t0), valid.Sub(t0))
	}
	time.Sleep(time.Until(at))
	if err := f.a.get("relearn.example.com", dst, 2*time.Second); err != nil {
		set, _ := f.gate.nft("list", "set", "inet", f.gate.table, "learn4.relearn.a")
		t.Errorf("t=%.1fs, within the second answer's TTL: %v; want it reachable until t=%.1fs\n%s",
			at.Sub(t0).Seconds(), err, t1.Add(ttl*time.Second+grace).Sub(t0).Seconds(), set)
	}
}

// TestForwardCachedAnswerWithoutGrace: with dns.grace 0s an address must
// stay open for exactly as long as the TTL of every answer that carried
// it. A second client asking within the same second gets fqdngate's
// cached answer with the TTL undiminished, so the address must stay open
// until that answer's TTL ends, not the first one's. (Regression: Publish
// once skipped elements programmed to expire within 1s of the new expiry,
// closing addresses before answers already handed out expired.)
func TestForwardCachedAnswerWithoutGrace(t *testing.T) {
	const ttl = 3
	f := startForward(t, 0, `  - name: nograce
    from: [a]
    to: [nograce.example.com]
`)
	f.net.inet.auth.Set("nograce.example.com", dnstest.A("nograce.example.com", ttl, "203.0.113.61"))
	dst := ap("203.0.113.61", allowedPort)

	t0 := time.Now()
	if _, err := f.a.resolveAndGet("nograce.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("first answer: %v\n%s", err, f.gate.logs())
	}
	time.Sleep(time.Until(t0.Add(600 * time.Millisecond)))
	_, got, err := f.a.lookup("nograce.example.com", dns.TypeA)
	t1 := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if got != ttl || t1.Sub(t0) >= time.Second {
		t.Fatalf("test timing: the second answer came at t=%v with TTL %d, want TTL %d within the first second", t1.Sub(t0), got, ttl)
	}
	// After the first answer's TTL, before the second's.
	at := t0.Add(ttl*time.Second + 300*time.Millisecond)
	time.Sleep(time.Until(at))
	if err := f.a.get("nograce.example.com", dst, 2*time.Second); err != nil {
		t.Errorf("t=%.1fs, within the second answer's TTL (until t=%.1fs): %v; want it reachable",
			at.Sub(t0).Seconds(), t1.Add(ttl*time.Second).Sub(t0).Seconds(), err)
	}
}
