package dnsfw

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// A DNS-over-HTTPS upstream serves the firewall as any other: an allowed
// name is answered and learned through it; when it fails, the client gets
// SERVFAIL, the audit line says the upstream failed, and the failure is
// counted against the upstream.
func TestDoHUpstream(t *testing.T) {
	doh := dnstest.NewDoHServer(t, dnstest.Zone(
		dnstest.A("api.bank.example", 300, "192.0.2.10"),
		dnstest.A("x.edge.bank.example", 300, "192.0.2.11"),
		dnstest.SOA("bank.example", 3600, 60),
	), false)
	up := doh.Upstream(false)
	metrics, err := NewMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := resolver.New(resolver.Config{Upstreams: []policy.Upstream{up}, Timeout: 5 * time.Second, Observer: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Close() })
	e := newEnv(t, nil, opts{cfg: func(c *Config) { c.Exchanger = res; c.Metrics = metrics }})

	r := e.ask(payments, "api.bank.example", dns.TypeA)
	if got := answerAddrs(r); r.Rcode != dns.RcodeSuccess || len(got) != 1 || got[0] != "192.0.2.10" {
		t.Fatalf("got %s %v, want NOERROR 192.0.2.10", dns.RcodeToString[r.Rcode], got)
	}
	if l := e.auditLines(1)[0]; l["action"] != "allow" || l["upstream"] != up.String() {
		t.Errorf("audit line %v, want action allow from upstream %s", l, up)
	}
	if got := e.learned("api.bank.example"); len(got) != 1 || got[0].Addr.String() != "192.0.2.10" {
		t.Errorf("learned %v, want 192.0.2.10", got)
	}

	doh.SetFault(dnstest.DoH500)
	r = e.ask(payments, "x.edge.bank.example", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("failing DoH upstream: got %s %v, want SERVFAIL without records", dns.RcodeToString[r.Rcode], r.Answer)
	}
	if l := e.auditLines(2)[1]; l["action"] != "fail" || l["reason"] != policy.ReasonUpstream.String() {
		t.Errorf("audit line %v, want action fail, reason %s", l, policy.ReasonUpstream)
	}
	if got := waitCounter(t, metrics.upstreamFails.WithLabelValues(up.String()), 1); got != 1 {
		t.Errorf("counted %v failures of %s, want 1", got, up)
	}
	if len(e.learned("x.edge.bank.example")) != 0 {
		t.Error("learned an address the failing upstream never gave")
	}
	if n := e.up.QueryCount(); n != 0 {
		t.Errorf("the policy's UDP upstream saw %d queries, want none", n)
	}
}
