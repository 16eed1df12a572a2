package e2e

import (
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
