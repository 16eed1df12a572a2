package dnsfw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// pathQuery is one query a pathCase sends.
type pathQuery struct {
	src, name string
	qtype     uint16
}

// pathCase is a refusal (or, for control, an answer) that the fast path
// and the ordinary path must decide alike.
type pathCase struct {
	name string
	zone dns.HandlerFunc // nil: zone()
	o    opts
	// warm are asked first, each three times, so the cache holds their
	// answers and the fast path its readies.
	warm []pathQuery
	// before runs after warming, on each env (a reload, a failing hook).
	before func(*pathEnv)
	// ask is sent times times (once if 0); each reply is compared.
	ask   pathQuery
	times int
	// want is the rcode of the last reply to ask (-1: none), and
	// wantAction its audit line's action ("" when not audited).
	want       int
	wantAction string
	// forward adds the forward zones cluster.local and 10.in-addr.arpa,
	// served by clusterZone, with a Forwarder.
	forward bool
}

// pathEnv is an env and the hooks a case may turn.
type pathEnv struct {
	*env
	pub      *droppingPublisher
	host     *testHost
	reg      *prometheus.Registry
	verifyOK atomic.Bool
}

// TestOneDecisionPath sends every refusal the DNS firewall makes, and the
// answers it withholds until it has done something first, to a firewall
// whose UDP socket serves from the fast path (with a warm cache, so the
// fast path holds a ready reply wherever it can) and to one whose every
// query takes the ordinary path, and requires the same reply bytes, the
// same audit lines and the same metrics from both: the fast path decides
// nothing the ordinary path would decide differently.
func TestOneDecisionPath(t *testing.T) {
	cdn := dnstest.Zone(
		dnstest.CNAME("cdn.edge.bank.example", 120, "api.bank.example"),
		dnstest.A("api.bank.example", 300, "192.0.2.10"),
	)
	pubCDN := dnstest.Zone(
		dnstest.CNAME("cdn.public.example", 120, "api.bank.example"),
		dnstest.A("api.bank.example", 300, "192.0.2.10"),
	)
	everyCDN := "  - name: every-cdn\n    to: [cdn.public.example]\n    ports: [443]"
	webCDN := "  - name: web-cdn\n    from: [web]\n    to: [cdn.edge.bank.example]\n    ports: [443]"
	verified := "  - name: verified\n    from: [web]\n    to: [verified.example]\n    ports: [443]\n    tls: {verify: true}"
	extra := "  - name: extra\n    from: [payments]\n    to: [extra.example]\n    ports: [443]"
	apiA := pathQuery{payments, "api.bank.example", dns.TypeA}
	kubeDNS := pathQuery{stranger, "kube-dns.kube-system.svc.cluster.local", dns.TypeA}

	cases := []pathCase{
		{name: "allowed (control)", warm: []pathQuery{apiA}, ask: apiA, times: 3, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "allowed, mixed case", warm: []pathQuery{apiA}, ask: pathQuery{payments, "API.bank.Example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "denied name", warm: []pathQuery{apiA}, ask: pathQuery{payments, "evil.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		{name: "denied name, deny_with refused", o: opts{dns: "  deny_with: refused"}, warm: []pathQuery{apiA},
			ask: pathQuery{payments, "evil.example", dns.TypeA}, want: dns.RcodeRefused, wantAction: "deny"},
		{name: "denied name, deny_with drop", o: opts{dns: "  deny_with: drop"}, warm: []pathQuery{apiA},
			ask: pathQuery{payments, "evil.example", dns.TypeA}, want: -1, wantAction: "deny"},
		{name: "near miss: another group's name", warm: []pathQuery{apiA}, ask: pathQuery{web, "api.bank.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		{name: "near miss: a source in no group", warm: []pathQuery{apiA}, ask: pathQuery{stranger, "api.bank.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		{name: "record type", warm: []pathQuery{apiA}, ask: pathQuery{payments, "api.bank.example", dns.TypeTXT}, want: dns.RcodeRefused, wantAction: "deny"},
		{name: "record type, audit mode", o: opts{mode: "audit"}, warm: []pathQuery{apiA, {payments, "api.bank.example", dns.TypeTXT}},
			ask: pathQuery{payments, "api.bank.example", dns.TypeTXT}, want: dns.RcodeSuccess, wantAction: "would-deny"},
		{name: "another group's name, audit mode", o: opts{mode: "audit"}, warm: []pathQuery{apiA},
			ask: pathQuery{web, "api.bank.example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "would-deny"},
		{name: "allowed, audit mode", o: opts{mode: "audit"}, warm: []pathQuery{apiA}, ask: apiA, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "CNAME chain another client may follow", zone: cdn, o: opts{dns: "  inspect_cname: true", rules: webCDN},
			warm: []pathQuery{{payments, "cdn.edge.bank.example", dns.TypeA}},
			ask:  pathQuery{web, "cdn.edge.bank.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		// The ready was published for the rule and group that allow web
		// too: only the chain tells the two clients apart.
		{name: "CNAME chain, same rule and group", zone: pubCDN, o: opts{dns: "  inspect_cname: true", rules: everyCDN},
			warm: []pathQuery{{payments, "cdn.public.example", dns.TypeA}},
			ask:  pathQuery{web, "cdn.public.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		{name: "CNAME chain, audit mode", zone: cdn, o: opts{mode: "audit", dns: "  inspect_cname: true", rules: webCDN},
			warm: []pathQuery{{payments, "cdn.edge.bank.example", dns.TypeA}},
			ask:  pathQuery{web, "cdn.edge.bank.example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "would-deny"},
		{name: "CNAME chain the client may follow", zone: cdn, o: opts{dns: "  inspect_cname: true", rules: webCDN},
			warm: []pathQuery{{payments, "cdn.edge.bank.example", dns.TypeA}},
			ask:  pathQuery{payments, "cdn.edge.bank.example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "rebinding", zone: dnstest.Zone(dnstest.A("api.bank.example", 300, "10.0.0.1")), warm: []pathQuery{apiA},
			ask: apiA, want: dns.RcodeServerFailure, wantAction: "deny"},
		{name: "rebinding, partly", zone: dnstest.Zone(dnstest.A("api.bank.example", 300, "10.0.0.1"), dnstest.A("api.bank.example", 300, "192.0.2.10")),
			warm: []pathQuery{apiA}, ask: apiA, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "an answer's address became the host's", warm: []pathQuery{apiA},
			before: func(e *pathEnv) { e.host.add("192.0.2.10") },
			ask:    apiA, want: dns.RcodeServerFailure, wantAction: "deny"},
		{name: "tls.verify passes", zone: zone(dnstest.A("verified.example", 300, "192.0.2.40")), o: opts{rules: verified},
			warm: []pathQuery{{web, "verified.example", dns.TypeA}},
			ask:  pathQuery{web, "verified.example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "tls.verify fails", zone: zone(dnstest.A("verified.example", 300, "192.0.2.40")), o: opts{rules: verified},
			warm:   []pathQuery{{web, "verified.example", dns.TypeA}},
			before: func(e *pathEnv) { e.verifyOK.Store(false) },
			ask:    pathQuery{web, "verified.example", dns.TypeA}, want: dns.RcodeServerFailure, wantAction: "deny"},
		{name: "rate limit", o: opts{dns: "  rate_limit: 1\n  rate_burst: 5"}, warm: []pathQuery{apiA},
			ask: apiA, times: 4, want: dns.RcodeRefused},
		{name: "reload removed the rule", o: opts{rules: extra}, zone: zone(dnstest.A("extra.example", 300, "192.0.2.50")),
			warm:   []pathQuery{{payments, "extra.example", dns.TypeA}},
			before: func(e *pathEnv) { e.pol.Store(e.policy(opts{})) },
			ask:    pathQuery{payments, "extra.example", dns.TypeA}, want: dns.RcodeNameError, wantAction: "deny"},
		// The budget charges only what goes upstream: a cached name costs
		// nothing on either path, a new one is refused on both.
		{name: "wildcard budget spent, cached name", zone: wildcardZone, o: opts{dns: "  wildcard_budget: 2", rules: budgetRules},
			warm: []pathQuery{{payments, "a.cdn.bank.example", dns.TypeA}, {payments, "b.cdn.bank.example", dns.TypeA}},
			ask:  pathQuery{payments, "a.cdn.bank.example", dns.TypeA}, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "wildcard budget spent, new name", zone: wildcardZone, o: opts{dns: "  wildcard_budget: 2", rules: budgetRules},
			warm: []pathQuery{{payments, "a.cdn.bank.example", dns.TypeA}, {payments, "b.cdn.bank.example", dns.TypeA}},
			ask:  pathQuery{payments, "c.cdn.bank.example", dns.TypeA}, times: 2, want: dns.RcodeRefused, wantAction: "deny"},
		{name: "wildcard budget spent, audit mode", zone: wildcardZone, o: opts{mode: "audit", dns: "  wildcard_budget: 1", rules: budgetRules},
			warm: []pathQuery{{payments, "a.cdn.bank.example", dns.TypeA}},
			ask:  pathQuery{payments, "c.cdn.bank.example", dns.TypeA}, want: dns.RcodeSuccess, wantAction: "would-deny"},
		{name: "publisher dropped entries since", warm: []pathQuery{apiA},
			before: func(e *pathEnv) { e.pub.drops.Add(1) },
			ask:    apiA, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "forwarded zone", forward: true, warm: []pathQuery{kubeDNS}, ask: kubeDNS, times: 3, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "forwarded zone, audit mode", forward: true, o: opts{mode: "audit"}, warm: []pathQuery{kubeDNS}, ask: kubeDNS, times: 2,
			want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "forwarded zone, any record type", forward: true, warm: []pathQuery{{web, "10.0.96.10.in-addr.arpa", dns.TypePTR}},
			ask: pathQuery{web, "10.0.96.10.in-addr.arpa", dns.TypePTR}, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
		{name: "forwarded zone, zone transfer", forward: true, warm: []pathQuery{kubeDNS}, ask: pathQuery{stranger, "cluster.local", dns.TypeAXFR},
			want: dns.RcodeRefused, wantAction: "deny"},
		{name: "forwarded zone, search-path form", forward: true, warm: []pathQuery{kubeDNS},
			ask: pathQuery{payments, "api.bank.example.payments.svc.cluster.local", dns.TypeA}, times: 2, want: dns.RcodeNameError, wantAction: "allow"},
		// A public name may not alias into a forward zone: its addresses
		// would be learned for the public name.
		{name: "CNAME chain into a forward zone", forward: true, o: opts{dns: "  inspect_cname: true", rules: everyCDN},
			zone: dnstest.Zone(dnstest.CNAME("cdn.public.example", 120, "x.svc.cluster.local"), dnstest.A("x.svc.cluster.local", 300, "192.0.2.77")),
			warm: []pathQuery{{payments, "cdn.public.example", dns.TypeA}},
			ask:  pathQuery{payments, "cdn.public.example", dns.TypeA}, times: 2, want: dns.RcodeNameError, wantAction: "deny"},
		{name: "answer needs a later expiry", zone: dnstest.Zone(dnstest.A("api.bank.example", 20, "192.0.2.10")), warm: []pathQuery{apiA},
			before: func(e *pathEnv) { e.clock.Advance(5 * time.Second) },
			ask:    apiA, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
	}
	// DNSSEC (dns.dnssec: validate) on the signed hierarchy: the verdict
	// kept with the cache entry decides on both paths.
	signedUp, signed := signedSetup(t, "", nil)
	_, signedAudit := signedSetup(t, "audit", nil)
	wwwEx := pathQuery{stranger, "www.example", dns.TypeA}
	shop := pathQuery{stranger, "www.shop.bank.example", dns.TypeA}
	forged := pathQuery{stranger, "forged.example", dns.TypeA}
	cases = append(cases,
		pathCase{name: "DNSSEC secure", zone: signedUp, o: signed, warm: []pathQuery{wwwEx}, ask: wwwEx, times: 3, want: dns.RcodeSuccess, wantAction: "allow"},
		pathCase{name: "DNSSEC required, insecure", zone: signedUp, o: signed, warm: []pathQuery{wwwEx, shop}, ask: shop, times: 2, want: dns.RcodeRefused, wantAction: "deny"},
		pathCase{name: "DNSSEC required, insecure, audit mode", zone: signedUp, o: signedAudit, warm: []pathQuery{wwwEx, shop}, ask: shop, times: 2,
			want: dns.RcodeSuccess, wantAction: "would-deny"},
		pathCase{name: "DNSSEC insecure, unsupported algorithm (EDE 1)", zone: signedUp, o: signed, warm: []pathQuery{wwwEx, {stranger, "www.unsupalg.example", dns.TypeA}},
			ask: pathQuery{stranger, "www.unsupalg.example", dns.TypeA}, times: 2, want: dns.RcodeSuccess, wantAction: "allow"},
		pathCase{name: "DNSSEC bogus", zone: signedUp, o: signed, warm: []pathQuery{wwwEx, forged}, ask: forged, times: 2, want: dns.RcodeServerFailure, wantAction: "fail"},
	)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testOneDecisionPath(t, tc) })
	}
}

func testOneDecisionPath(t *testing.T, tc pathCase) {
	z := tc.zone
	if z == nil {
		z = zone()
	}
	newPathEnv := func(noFast bool) *pathEnv {
		pe := &pathEnv{pub: &droppingPublisher{}, host: &testHost{}, reg: prometheus.NewRegistry()}
		pe.verifyOK.Store(true)
		o := tc.o
		o.noFast = noFast
		var zones *resolver.Zones
		if tc.forward {
			cz := dnstest.NewServer(t, clusterZone)
			o.dns += fmt.Sprintf("\n  forward: [{zone: cluster.local, to: [%s]}, {zone: 10.in-addr.arpa, to: [%s]}]", cz.Addr, cz.Addr)
		}
		o.cfg = func(c *Config) {
			if tc.forward {
				var err error
				if zones, err = resolver.NewZones(c.Policy().DNS.Forward, resolver.Config{}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { zones.Close() })
				c.Forwarder = zones
			}
			c.Publisher = pe.pub
			c.Registerer = pe.reg
			c.Local = pe.host
			c.Verify = func(context.Context, string, netip.Addr, uint16, *policy.TLS) error {
				if pe.verifyOK.Load() {
					return nil
				}
				return errors.New("certificate signed by unknown authority")
			}
		}
		pe.env = newEnv(t, z, o)
		return pe
	}
	fast, slow := newPathEnv(false), newPathEnv(true)
	both := []*pathEnv{fast, slow}

	id := uint16(0)
	sent := 0
	for _, q := range tc.warm {
		for range 3 {
			id++
			sent++
			for _, e := range both {
				rawAsk(t, e.env, q, id, 5*time.Second)
			}
		}
	}
	if tc.before != nil {
		for _, e := range both {
			// The warm queries' lines are written after their replies:
			// wait for them, or a clock that before moves could stamp them.
			pathAudit(t, e, sent)
			tc.before(e)
		}
	}
	seen := fast.fw.fastHits.Load() + fast.fw.handovers.Load()
	times := max(tc.times, 1)
	var last []byte
	for i := range times {
		id++
		sent++
		// A reply is waited for generously; one that must not come, briefly.
		wait := 5 * time.Second
		if tc.want < 0 {
			wait = 500 * time.Millisecond
		}
		f, s := rawAsk(t, fast.env, tc.ask, id, wait), rawAsk(t, slow.env, tc.ask, id, wait)
		if !bytes.Equal(f, s) {
			t.Errorf("reply %d to %s %s from %s:\nfast path: %s\nordinary:  %s", i+1, tc.ask.name,
				dns.TypeToString[tc.ask.qtype], tc.ask.src, replyString(f), replyString(s))
		}
		last = s
	}
	if got := fast.fw.fastHits.Load() + fast.fw.handovers.Load() - seen; got != uint64(times) {
		t.Errorf("the fast path admitted %d of the %d queries compared; the comparison did not test it", got, times)
	}
	if n := slow.fw.fastHits.Load() + slow.fw.handovers.Load(); n != 0 {
		t.Fatalf("the ordinary-path firewall took the fast path %d times", n)
	}
	if tc.name == "allowed (control)" && fast.fw.fastHits.Load() == 0 {
		t.Error("the fast path answered nothing, even with a warm cache")
	}
	switch {
	case tc.want < 0 && last != nil:
		t.Errorf("last reply: got %s, want none", replyString(last))
	case tc.want >= 0 && last == nil:
		t.Errorf("last reply: got none, want %s", dns.RcodeToString[tc.want])
	case tc.want >= 0 && int(last[3]&0xF) != tc.want:
		t.Errorf("last reply: got %s, want rcode %s", replyString(last), dns.RcodeToString[tc.want])
	}

	// Every query is counted (before its line is written); then the lines
	// of those that are audited.
	fl, sl := pathAudit(t, fast, sent), pathAudit(t, slow, sent)
	if !slices.Equal(fl, sl) {
		t.Errorf("audit lines differ:\nfast path:\n  %s\nordinary:\n  %s", strings.Join(fl, "\n  "), strings.Join(sl, "\n  "))
	}
	if tc.wantAction != "" {
		// The lines of the compared queries (the warm ones come from other
		// sources or names, or before them).
		n := 0
		for _, l := range sl {
			var a map[string]any
			if json.Unmarshal([]byte(l), &a) == nil && a["source"] == tc.ask.src && a["action"] == tc.wantAction &&
				strings.EqualFold(a["name"].(string), tc.ask.name) && a["qtype"] == dns.TypeToString[tc.ask.qtype] {
				n++
			}
		}
		if n < times {
			t.Errorf("audit lines for the compared queries with action %s: %d, want %d\n  %s", tc.wantAction, n, times, strings.Join(sl, "\n  "))
		}
	}
	if fm, sm := pathMetrics(t, fast), pathMetrics(t, slow); fm != sm {
		t.Errorf("metrics differ:\nfast path:\n%s\nordinary:\n%s", fm, sm)
	}
}

// rawAsk sends q from its source with id and EDNS (1232 bytes) and returns
// the reply's bytes, or nil when none came within wait.
func rawAsk(t *testing.T, e *env, q pathQuery, id uint16, wait time.Duration) []byte {
	t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(q.name), q.qtype)
	m.Id = id
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(q.src)}, net.UDPAddrFromAddrPort(e.udp))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		t.Fatal(err)
	}
	return buf[:n]
}

func replyString(b []byte) string {
	if b == nil {
		return "no reply"
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return fmt.Sprintf("%x (%v)", b, err)
	}
	return fmt.Sprintf("%x\n%s", b, m)
}

// pathAudit waits until e has counted sent queries and written the lines
// of those it audits, and returns them, normalised (no times, latencies or
// upstream addresses, which differ between two firewalls) and sorted (a
// line is written after its reply, so consecutive ones may swap).
func pathAudit(t *testing.T, e *pathEnv, sent int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var quiet float64
	for {
		var total float64
		mfs, err := e.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		quiet = 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case "fqdngate_dns_queries_total":
					total += m.GetCounter().GetValue()
				case "fqdngate_dns_refused_total":
					quiet += m.GetCounter().GetValue()
				}
			}
		}
		if int(total) >= sent || time.Now().After(deadline) {
			if int(total) != sent {
				t.Fatalf("queries counted: %v, want %d", total, sent)
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	var out []string
	for _, m := range e.auditLines(sent - int(quiet)) {
		delete(m, "time")
		delete(m, "latency")
		if m["upstream"] != "cache" && m["upstream"] != "" {
			m["upstream"] = "upstream"
		}
		j, _ := json.Marshal(m)
		out = append(out, string(j))
	}
	if len(out) != sent-int(quiet) {
		t.Fatalf("audit lines: %d, want %d", len(out), sent-int(quiet))
	}
	slices.Sort(out)
	return out
}

// pathMetrics returns e's counters, one per line.
func pathMetrics(t *testing.T, e *pathEnv) string {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetCounter() == nil {
				continue
			}
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			lines = append(lines, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue()))
		}
	}
	return strings.Join(lines, "\n")
}
