package dnsfw

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// clusterZone answers for cluster.local and 10.in-addr.arpa as a cluster's
// DNS would: private addresses, SRV, PTR, NXDOMAIN for everything else.
func clusterZone(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	switch {
	case q.Name == "kube-dns.kube-system.svc.cluster.local." && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, dnstest.A(q.Name, 5, "10.96.0.10"))
	case q.Name == "_dns._udp.kube-dns.kube-system.svc.cluster.local." && q.Qtype == dns.TypeSRV:
		m.Answer = append(m.Answer, &dns.SRV{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 5},
			Priority: 0, Weight: 100, Port: 53, Target: "kube-dns.kube-system.svc.cluster.local."})
	case q.Name == "10.0.96.10.in-addr.arpa." && q.Qtype == dns.TypePTR:
		m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 5},
			Ptr: "kube-dns.kube-system.svc.cluster.local."})
	case q.Name == "broken.svc.cluster.local.":
		m.Rcode = dns.RcodeServerFailure
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, dnstest.SOA("cluster.local", 5, 5))
	}
	_ = w.WriteMsg(m)
}

// forwardEnv is a firewall whose policy forwards cluster.local and
// 10.in-addr.arpa to zone, and everything else to the env's upstream,
// which answers public.example.
func forwardEnv(t *testing.T, noFast bool) (*env, *dnstest.Server) {
	zone := dnstest.NewServer(t, clusterZone)
	o := opts{
		dns:    fmt.Sprintf("  forward: [{zone: cluster.local, to: [%s]}, {zone: 10.in-addr.arpa, to: [%s]}]", zone.Addr, zone.Addr),
		noFast: noFast,
	}
	var zones *resolver.Zones
	o.cfg = func(c *Config) {
		p := c.Policy()
		var err error
		zones, err = resolver.NewZones(p.DNS.Forward, resolver.Config{Timeout: p.DNS.Timeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { zones.Close() })
		c.Forwarder = zones
	}
	e := newEnv(t, func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		if r.Question[0].Name == "public.example." && r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, dnstest.A("public.example", 60, "203.0.113.7"))
		}
		_ = w.WriteMsg(m)
	}, o)
	return e, zone
}

// TestForwardZone: a name in a forward zone is answered by the zone's
// servers for any client, without a rule, with every record type and the
// private addresses the zone gives; nothing of it is learned or sent to
// the upstreams; it is audited as allowed, reason "forwarded zone", and
// cached. The same name without the zone's suffix is decided by the rules.
func TestForwardZone(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(fmt.Sprintf("fast=%v", fast), func(t *testing.T) {
			e, zone := forwardEnv(t, !fast)

			r := e.ask(stranger, "kube-dns.kube-system.svc.cluster.local", dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || fmt.Sprint(answerAddrs(r)) != "[10.96.0.10]" {
				t.Fatalf("A kube-dns: %s %v, want NOERROR [10.96.0.10] (private, kept: the zone is internal)", dns.RcodeToString[r.Rcode], answerAddrs(r))
			}
			l := e.auditLines(1)[0]
			if l["action"] != "allow" || l["reason"] != "forwarded zone" || l["rule"] != "" || l["answers"] != "10.96.0.10" ||
				l["upstream"] != zone.Addr.String() || l["zone"] != "cluster.local" {
				t.Errorf("audit line %v, want action allow, reason forwarded zone, no rule, zone cluster.local, answers 10.96.0.10, upstream %s", l, zone.Addr)
			}

			// Any record type the zone has, from any client.
			r = e.ask(payments, "_dns._udp.kube-dns.kube-system.svc.cluster.local", dns.TypeSRV)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeSRV {
				t.Errorf("SRV: %v, want the zone's SRV record", r)
			}
			r = e.ask(web, "10.0.96.10.in-addr.arpa", dns.TypePTR)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "kube-dns.kube-system.svc.cluster.local." {
				t.Errorf("PTR: %v, want the zone's PTR record", r)
			}

			// A search-path form is under the zone: the zone says NXDOMAIN.
			// The name itself is the rules' (rule everyone allows it).
			r = e.ask(stranger, "public.example.payments.svc.cluster.local", dns.TypeA)
			if r.Rcode != dns.RcodeNameError {
				t.Errorf("search-path form: %s, want the zone's NXDOMAIN", dns.RcodeToString[r.Rcode])
			}
			if r = e.ask(stranger, "public.example", dns.TypeA); r.Rcode != dns.RcodeSuccess || fmt.Sprint(answerAddrs(r)) != "[203.0.113.7]" {
				t.Errorf("public.example: %v, want the upstream's answer", r)
			}
			if r = e.ask(stranger, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
				t.Errorf("api.bank.example for a stranger: %s, want the rules' denial", dns.RcodeToString[r.Rcode])
			}

			// Cached like any answer; the fast path never serves it.
			before := zone.QueryCount()
			for range 3 {
				if r = e.ask(stranger, "kube-dns.kube-system.svc.cluster.local", dns.TypeA); fmt.Sprint(answerAddrs(r)) != "[10.96.0.10]" {
					t.Fatalf("again: %v", r)
				}
			}
			if n := zone.QueryCount(); n != before {
				t.Errorf("the zone's server was asked %d more times, want 0 (cached)", n-before)
			}
			// Audit lines of concurrent handlers need not land in query
			// order: count the cached ones by name.
			cached := 0
			for _, l := range e.auditLines(9) {
				if l["name"] == "kube-dns.kube-system.svc.cluster.local" && l["upstream"] == "cache" && l["reason"] == "forwarded zone" {
					cached++
				}
			}
			if cached != 3 {
				t.Errorf("%d audit lines of cached answers with reason forwarded zone, want 3:\n%s", cached, e.log.String())
			}
			if n := e.fw.fastHits.Load(); n != 0 {
				t.Errorf("the fast path answered %d forwarded queries, want 0", n)
			}

			// Never learned; never sent to the upstreams.
			for _, en := range e.fw.Learned().List() {
				if string(en.Name) != "public.example" {
					t.Errorf("learned %v, want only public.example's address", en)
				}
			}
			for _, q := range e.up.Queries() {
				if n := q.Msg.Question[0].Name; n != "public.example." {
					t.Errorf("the upstreams were asked %s", n)
				}
			}
		})
	}
}

// TestForwardZoneFailures: a zone server's SERVFAIL, silence, or a zone
// transfer are refused the way the upstreams' are, and a truncated answer
// is asked again over TCP.
func TestForwardZoneFailures(t *testing.T) {
	e, zone := forwardEnv(t, true)

	r := e.ask(stranger, "broken.svc.cluster.local", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("zone SERVFAIL: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if l := e.auditLines(1)[0]; l["action"] != "fail" || l["reason"] != "upstream unreachable or failed" {
		t.Errorf("audit line %v, want action fail, reason upstream unreachable or failed", l)
	}

	m := new(dns.Msg).SetQuestion("cluster.local.", dns.TypeAXFR)
	r, err := e.exchange(stranger, "tcp", m, 3*time.Second)
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("AXFR: %v %v, want REFUSED", r, err)
	}
	if l := e.auditLines(2)[1]; l["action"] != "deny" || l["dns_reason"] != "zone transfers are not forwarded" {
		t.Errorf("AXFR audit line %v", l)
	}

	zone.SetFault(dnstest.Fault{TruncateUDP: true})
	zone.Reset()
	r = e.ask(stranger, "kube-dns.kube-system.svc.cluster.local", dns.TypeA)
	if fmt.Sprint(answerAddrs(r)) != "[10.96.0.10]" {
		t.Errorf("after truncation: %v, want the answer over TCP", r)
	}
	if qs := zone.Queries(); len(qs) != 2 || qs[0].Net != "udp" || qs[1].Net != "tcp" {
		t.Errorf("zone server saw %d queries, want UDP then TCP", len(qs))
	}

	zone.SetFault(dnstest.Fault{Drop: true})
	m = new(dns.Msg).SetQuestion("silent.svc.cluster.local.", dns.TypeA)
	r, err = e.exchange(stranger, "udp", m, 10*time.Second)
	if err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("silent zone server: %v %v, want SERVFAIL", r, err)
	}
	if len(e.up.Queries()) != 0 {
		t.Errorf("the upstreams were asked %d queries, want none", len(e.up.Queries()))
	}
}

// TestForwardZoneWithoutForwarder: without a Forwarder, a zone's names
// fail; they never go to the upstreams.
func TestForwardZoneWithoutForwarder(t *testing.T) {
	zone := dnstest.NewServer(t, clusterZone)
	e := newEnv(t, nil, opts{dns: fmt.Sprintf("  forward: [{zone: cluster.local, to: [%s]}]", zone.Addr)})
	if r := e.ask(stranger, "kube-dns.kube-system.svc.cluster.local", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("got %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if e.up.QueryCount() != 0 || zone.QueryCount() != 0 {
		t.Errorf("upstream asked %d, zone %d times; want 0 and 0", e.up.QueryCount(), zone.QueryCount())
	}
}

// TestClusterReverseZones: with a kubernetes section, a PTR lookup of a
// pod or service address (the reverse zones of kubernetes.cluster_cidrs)
// goes to the cluster DNS like a cluster.local name, for any client,
// without a rule, and nothing of it is learned; a PTR lookup outside the
// cluster ranges is the rules' (here: denied). The policy forwards to the
// cluster DNS address; the test points those zones at its stand-in.
func TestClusterReverseZones(t *testing.T) {
	zone := dnstest.NewServer(t, clusterZone)
	o := opts{dns: "kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12], dns: {address: 10.96.0.10}}"}
	o.cfg = func(c *Config) {
		var fwd []policy.ForwardZone
		for _, z := range c.Policy().DNS.Forward {
			if len(z.To) != 1 || z.To[0].Addr.String() != "10.96.0.10:53" {
				t.Fatalf("zone %s forwards to %v, want the cluster DNS 10.96.0.10:53", z.Zone, z.To)
			}
			fwd = append(fwd, policy.ForwardZone{Zone: z.Zone, To: []policy.Upstream{{Addr: zone.Addr}}})
		}
		zones, err := resolver.NewZones(fwd, resolver.Config{Timeout: c.Policy().DNS.Timeout})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { zones.Close() })
		c.Forwarder = zones
	}
	e := newEnv(t, nil, o)

	r := e.ask(stranger, "10.0.96.10.in-addr.arpa", dns.TypePTR)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "kube-dns.kube-system.svc.cluster.local." {
		t.Fatalf("PTR of the cluster DNS address: %v, want the cluster DNS's PTR record", r)
	}
	if l := e.auditLines(1)[0]; l["action"] != "allow" || l["reason"] != "forwarded zone" || l["zone"] != "96.10.in-addr.arpa" {
		t.Errorf("audit line %v, want allow, forwarded zone 96.10.in-addr.arpa", l)
	}
	// A pod address the cluster DNS has no name for: its NXDOMAIN.
	if r = e.ask(payments, "5.1.244.10.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeNameError {
		t.Errorf("PTR of a pod address: %s, want the cluster DNS's NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if got := zone.QueryCount(); got != 2 {
		t.Errorf("the cluster DNS was asked %d queries, want 2", got)
	}
	// Outside the cluster ranges: the rules', which allow no PTR name.
	if r = e.ask(stranger, "7.113.0.203.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeNameError {
		t.Errorf("PTR outside the cluster: %s, want the rules' denial", dns.RcodeToString[r.Rcode])
	}
	if l := e.auditLines(3)[2]; l["action"] != "deny" {
		t.Errorf("audit line %v, want a denial", l)
	}
	if got := zone.QueryCount(); got != 2 {
		t.Errorf("the cluster DNS was asked %d queries, want still 2", got)
	}
	if n := len(e.fw.Learned().List()); n != 0 {
		t.Errorf("%d addresses learned, want none", n)
	}
	if n := e.up.QueryCount(); n != 0 {
		t.Errorf("the upstreams were asked %d queries, want none", n)
	}
}
