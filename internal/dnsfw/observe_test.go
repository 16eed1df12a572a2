package dnsfw

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// A group with observe_until gets the upstream's answers to what the
// policy denies it, logged as would-deny with the group; other groups
// stay enforced; once the policy's clock passes the date the same policy,
// not reloaded, refuses.
func TestObservingGroup(t *testing.T) {
	e := newEnv(t, zone(dnstest.A("evil.example", 300, "198.51.100.66")), opts{dns: "  cache: false"})
	y := strings.NewReplacer("MODE", "enforce", "UPSTREAM", e.up.Addr.String(), "DNS", "  cache: false", "RULES", "",
		"  payments: [127.0.0.2/32]", "  payments: {cidrs: [127.0.0.2/32], observe_until: 2026-01-02T04:00:00Z}").Replace(testPolicy)
	p, err := policy.Parse("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	p.SetClock(e.clock.Now) // 2026-01-02T03:04:05Z
	e.pol.Store(p)

	steps := []struct {
		src, name  string
		qtype      uint16
		wantRcode  int
		wantAction string
		observing  any
	}{
		{payments, "evil.example", dns.TypeA, dns.RcodeSuccess, "would-deny", "payments"},
		{payments, "api.bank.example", dns.TypeTXT, dns.RcodeSuccess, "would-deny", "payments"},
		{payments, "api.bank.example", dns.TypeA, dns.RcodeSuccess, "allow", nil},
		{web, "evil.example", dns.TypeA, dns.RcodeNameError, "deny", nil},
	}
	for i, s := range steps {
		r := e.ask(s.src, s.name, s.qtype)
		if r.Rcode != s.wantRcode {
			t.Errorf("%s %s from %s: got %s, want %s", s.name, dns.TypeToString[s.qtype], s.src, dns.RcodeToString[r.Rcode], dns.RcodeToString[s.wantRcode])
		}
		l := e.auditLines(i + 1)[i]
		if l["action"] != s.wantAction || l["observing"] != s.observing {
			t.Errorf("%s %s from %s: audit action %v observing %v, want %s observing %v", s.name, dns.TypeToString[s.qtype], s.src, l["action"], l["observing"], s.wantAction, s.observing)
		}
	}
	if r := e.ask(payments, "evil.example", dns.TypeA); len(r.Answer) == 0 {
		t.Errorf("observing: got %d answers, want the upstream's", len(r.Answer))
	}

	e.clock.Advance(time.Hour) // past 04:00
	if r := e.ask(payments, "evil.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after observe_until: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if r := e.ask(payments, "api.bank.example", dns.TypeTXT); r.Rcode != dns.RcodeRefused {
		t.Errorf("after observe_until, TXT: got %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	lines := e.auditLines(len(steps) + 3)
	if l := lines[len(steps)+1]; l["action"] != "deny" || l["observing"] != nil {
		t.Errorf("after observe_until: audit action %v observing %v, want deny", l["action"], l["observing"])
	}
}
