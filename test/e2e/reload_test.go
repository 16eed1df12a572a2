package e2e

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

const (
	reloadRulesV1 = `  - name: api
    from: [a]
    to: [api.example.com]
  - name: keep
    from: [a]
    to: [keep.example.com]
  - name: b-only
    from: [b]
    to: [b.example.com]
`
	// V2 drops the api rule.
	reloadRulesV2 = `  - name: keep
    from: [a]
    to: [keep.example.com]
  - name: b-only
    from: [b]
    to: [b.example.com]
`
)

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// ruleset returns the gate's table without set elements and counters: what
// a policy programs, not what traffic did.
func (g *gate) ruleset() string {
	g.t.Helper()
	out, err := g.nft("-t", "list", "table", "inet", g.table)
	if err != nil {
		g.t.Fatalf("listing table %s: %v\n%s", g.table, err, out)
	}
	return counters.ReplaceAllString(out, "counter")
}

// TestReload: a reload that removes a rule closes its addresses within
// seconds and keeps the rest; a policy that does not load, or that the
// backend cannot apply, leaves the old table in force.
func TestReload(t *testing.T) {
	f := startForward(t, 2*time.Second, reloadRulesV1)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	auth.Set("keep.example.com", dnstest.A("keep.example.com", 300, "203.0.113.11"))
	apiDst, keepDst := ap("203.0.113.10", allowedPort), ap("203.0.113.11", allowedPort)
	for _, name := range []string{"api.example.com", "keep.example.com"} {
		if _, err := f.a.resolveAndGet(name, dns.TypeA, allowedPort); err != nil {
			t.Fatalf("%s before the reload: %v\n%s", name, err, f.gate.logs())
		}
	}

	// Saving the file reloads it: api's address closes within seconds.
	saved := time.Now()
	f.gate.writePolicy(f.settings.render(reloadRulesV2))
	for f.a.dropped(apiDst) != nil {
		if time.Since(saved) > 5*time.Second {
			t.Fatalf("api's address still open 5s after the rule was removed\n%s", f.gate.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("access removed %v after the policy was saved", time.Since(saved).Round(10*time.Millisecond))
	f.gate.waitMetric(`fqdngate_policy_generation`, 2)
	if r, err := f.a.exchange("udp", gatewayDNS, "api.example.com", dns.TypeA, reachWait); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("api.example.com after the reload: %v %v, want NXDOMAIN", r, err)
	}
	// The surviving rule keeps what it learned: no fresh query needed.
	mustReach(t, f.a, "keep.example.com", keepDst)

	// A policy with errors is rejected; the table does not change.
	before := f.gate.ruleset()
	f.gate.writePolicy(f.settings.render(reloadRulesV1) + "  - name: broken\n    to: [\"*.com\"]\n")
	f.gate.waitMetric(`fqdngate_policy_reloads_total{result="failure"}`, 1)
	if after := f.gate.ruleset(); after != before {
		t.Errorf("a rejected policy changed the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	mustReach(t, f.a, "keep.example.com", keepDst)
	mustDrop(t, f.a, apiDst)

	// A policy that loads but cannot be applied (the table may not change
	// on reload) is rejected too; neither table changes.
	renamed := f.settings
	renamed.table = f.gate.table + "x"
	f.gate.writePolicy(renamed.render(reloadRulesV1))
	f.gate.waitMetric(`fqdngate_policy_reloads_total{result="failure"}`, 2)
	if after := f.gate.ruleset(); after != before {
		t.Errorf("an unappliable policy changed the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if out, err := f.gate.nft("list", "table", "inet", renamed.table); err == nil {
		t.Errorf("an unappliable policy created table %s:\n%s", renamed.table, out)
	}
	mustReach(t, f.a, "keep.example.com", keepDst)
	mustDrop(t, f.a, apiDst)
	if !strings.Contains(f.gate.stderr.String(), "previous policy stays in force") {
		t.Errorf("the rejected reloads were not logged\n%s", f.gate.logs())
	}

	// A good policy after the failures applies again.
	f.gate.writePolicy(f.settings.render(reloadRulesV1))
	f.gate.waitMetric(`fqdngate_policy_generation`, 3)
	if _, err := f.a.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
		t.Errorf("api.example.com after restoring its rule: %v\n%s", err, f.gate.logs())
	}
}

// TestReloadBindFailureKeepsRedirect: a reload that moves the DNS listener
// to a port another socket holds is rejected as a whole. The kernel keeps
// redirecting clients' DNS to the port fqdngate still listens on, so DNS
// sent to the outside resolver is still answered, by the old policy.
func TestReloadBindFailureKeepsRedirect(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	auth.Set("b.example.com", dnstest.A("b.example.com", 300, "203.0.113.50"))
	before := f.gate.ruleset()

	// Another process holds the new port, over UDP and TCP.
	moved := f.settings
	moved.dnsListen = gwClient4 + ":5353"
	f.net.gw.ListenPacket("udp", moved.dnsListen)
	f.net.gw.Listen("tcp", moved.dnsListen)
	// The new policy also lets group a resolve b.example.com: it must not
	// apply either.
	f.gate.writePolicy(moved.render(basicRules + "  - name: a-too\n    from: [a]\n    to: [b.example.com]\n"))
	f.gate.waitMetric(`fqdngate_policy_reloads_total{result="failure"}`, 1)

	if after := f.gate.ruleset(); after != before {
		t.Errorf("a reload whose listener could not be bound changed the kernel's table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, network := range []string{"udp", "tcp"} {
		// Redirected to fqdngate, which answers on its old port.
		r, err := f.a.exchange(network, authorityAddr, "api.example.com", dns.TypeA, reachWait)
		if err != nil {
			t.Fatalf("direct DNS over %s after the failed reload: %v\n%s", network, err, f.gate.logs())
		}
		if addrs, _ := answerAddrs(r); len(addrs) != 1 || addrs[0] != netip.MustParseAddr("203.0.113.10") {
			t.Errorf("direct DNS over %s after the failed reload: got %v (%s), want 203.0.113.10", network, addrs, dns.RcodeToString[r.Rcode])
		}
		// The old policy decides.
		r, err = f.a.exchange(network, gatewayDNS, "b.example.com", dns.TypeA, reachWait)
		if err != nil {
			t.Fatalf("DNS over %s to the old listener: %v", network, err)
		}
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("b.example.com for group a after the failed reload: got %s, want NXDOMAIN (the old policy)", dns.RcodeToString[r.Rcode])
		}
	}
	mustReach(t, f.a, "api.example.com", ap("203.0.113.10", allowedPort))
	if got := f.gate.metric(`fqdngate_policy_generation`); got != 1 {
		t.Errorf("fqdngate_policy_generation = %v after the failed reload, want 1", got)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
