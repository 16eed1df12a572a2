package dnsfw

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

// The signed hierarchy (internal/dnssec/dnssectest) behind the firewall,
// its signatures valid at the env's clock.
var (
	signedOnce sync.Once
	signedH    *dnssectest.Hierarchy
	signedErr  error
)

func signedHierarchy(t *testing.T) *dnssectest.Hierarchy {
	t.Helper()
	signedOnce.Do(func() {
		now := (&fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}).Now()
		if signedH, signedErr = dnssectest.Build(now); signedErr == nil {
			signedErr = signedH.Start() // served for the rest of the package's tests
		}
	})
	if signedErr != nil {
		t.Fatalf("the signed test hierarchy: %v", signedErr)
	}
	return signedH
}

// signedRules: signed allows the hierarchy's names to everyone; strict
// requires DNSSEC.
const signedRules = `
  - name: signed
    to: [www.example, forged.example, expired.example, future.example, "*.wild.example", www.unsigned.example, alias.example, www.bank.example, nope.example, www.unsupalg.example]
  - name: strict
    to: [www.rsa512.example, www.shop.bank.example, nope.p384.example]
    dnssec: required
`

// signedEnv is a firewall validating answers from a recursive upstream over
// the signed hierarchy; filter, if not nil, changes the upstream's
// answers.
func signedEnv(t *testing.T, mode string, filter func(*dns.Msg)) *env {
	t.Helper()
	up, o := signedSetup(t, mode, filter)
	return newEnv(t, up, o)
}

// signedSetup returns the upstream and the opts of signedEnv.
func signedSetup(t *testing.T, mode string, filter func(*dns.Msg)) (dns.HandlerFunc, opts) {
	t.Helper()
	h := signedHierarchy(t)
	anchors := filepath.Join(t.TempDir(), "anchors")
	if err := os.WriteFile(anchors, []byte(h.Anchor), 0o600); err != nil {
		t.Fatal(err)
	}
	it := &dnssectest.Iterator{H: h, Filter: filter}
	return it.ServeDNS, opts{mode: mode, dns: "  dnssec: validate\n  trust_anchors: " + anchors, rules: signedRules}
}

// query is a question with EDNS; do sets DO, ad and cd the header bits.
func query(name string, qtype uint16, do, ad, cd bool) *dns.Msg {
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(4096, do)
	m.AuthenticatedData, m.CheckingDisabled = ad, cd
	return m
}

func (e *env) send(src string, m *dns.Msg) *dns.Msg {
	e.t.Helper()
	r, err := e.exchange(src, "udp", m, 10*time.Second)
	if err != nil {
		e.t.Fatalf("query %s from %s: %v", m.Question[0].Name, src, err)
	}
	return r
}

// ede returns the reply's Extended DNS Error, if any.
func ede(r *dns.Msg) (uint16, bool) {
	if o := r.IsEdns0(); o != nil {
		for _, op := range o.Option {
			if e, ok := op.(*dns.EDNS0_EDE); ok {
				return e.InfoCode, true
			}
		}
	}
	return 0, false
}

func hasType(rrs []dns.RR, t uint16) bool {
	for _, r := range rrs {
		if r.Header().Rrtype == t {
			return true
		}
	}
	return false
}

// TestDNSSECSecure: a secure answer is released and learned; AD goes to
// clients that set AD or DO, RRSIGs only to those that set DO; the audit
// line says secure; the cached answer keeps its state, on the fast path
// too.
func TestDNSSECSecure(t *testing.T) {
	e := signedEnv(t, "", nil)
	tests := []struct {
		name       string
		do, ad     bool
		wantAD     bool
		wantRRSIGs bool
	}{
		{"DO", true, false, true, true},
		{"AD without DO", false, true, true, false},
		{"neither", false, false, false, false},
		{"DO again, from the cache", true, false, true, true},
		{"DO again, from the fast path", true, false, true, true},
	}
	for i, tt := range tests {
		r := e.send(stranger, query("www.example", dns.TypeA, tt.do, tt.ad, false))
		if r.Rcode != dns.RcodeSuccess || len(answerAddrs(r)) != 1 || answerAddrs(r)[0] != "192.0.2.1" {
			t.Fatalf("%s: got %s %v, want NOERROR 192.0.2.1\n%v", tt.name, dns.RcodeToString[r.Rcode], answerAddrs(r), r)
		}
		if r.AuthenticatedData != tt.wantAD || hasType(r.Answer, dns.TypeRRSIG) != tt.wantRRSIGs {
			t.Errorf("%s: AD %v, RRSIGs %v; want AD %v, RRSIGs %v", tt.name, r.AuthenticatedData, hasType(r.Answer, dns.TypeRRSIG), tt.wantAD, tt.wantRRSIGs)
		}
		line := e.auditLines(i + 1)[i]
		if line["action"] != "allow" || line["dnssec"] != "secure" {
			t.Errorf("%s: audit line %v, want allow, dnssec=secure", tt.name, line)
		}
		if i >= 3 && line["upstream"] != "cache" {
			t.Errorf("%s: upstream %v, want cache", tt.name, line["upstream"])
		}
	}
	if e.fw.fastHits.Load() == 0 {
		t.Error("the fast path never answered the repeated DO query")
	}
	if got := e.learned("www.example"); len(got) != 1 || got[0].Rule != "signed" || got[0].DNSSEC != "secure" {
		t.Errorf("learned %v, want 192.0.2.1 for rule signed, secure", got)
	}
	if got := testCounter(t, e.fw.metrics.dnssec.WithLabelValues("secure")); got < 1 {
		t.Errorf("fqdngate_dns_dnssec_total{state=secure} = %v, want at least 1", got)
	}
}

// TestDNSSECBogus: bogus answers are SERVFAIL with the EDE that says why,
// never learned, never cached; a client's CD bit changes nothing; audit
// mode does not release them either.
func TestDNSSECBogus(t *testing.T) {
	tests := []struct {
		name, qname string
		mode        string
		cd          bool
		filter      func(*dns.Msg)
		ede         uint16
	}{
		{name: "bad signature", qname: "forged.example", ede: dns.ExtendedErrorCodeDNSBogus},
		{name: "bad signature, client sets CD", qname: "forged.example", cd: true, ede: dns.ExtendedErrorCodeDNSBogus},
		{name: "bad signature, audit mode", qname: "forged.example", mode: "audit", ede: dns.ExtendedErrorCodeDNSBogus},
		{name: "expired", qname: "expired.example", ede: dns.ExtendedErrorCodeSignatureExpired},
		{name: "not yet valid", qname: "future.example", cd: true, ede: dns.ExtendedErrorCodeSignatureNotYetValid},
		{name: "upstream strips RRSIGs", qname: "www.example", filter: dnssectest.StripRRSIGs, ede: dns.ExtendedErrorCodeRRSIGsMissing},
		{name: "NXDOMAIN without its proof", qname: "nope.example", filter: dnssectest.StripDenial, ede: dns.ExtendedErrorCodeNSECMissing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := signedEnv(t, tt.mode, tt.filter)
			for i := range 2 { // the second must not come from a cache
				r := e.send(stranger, query(tt.qname, dns.TypeA, true, false, tt.cd))
				if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
					t.Fatalf("query %d: got %s with %d answers, want SERVFAIL and none", i, dns.RcodeToString[r.Rcode], len(r.Answer))
				}
				if code, ok := ede(r); !ok || code != tt.ede {
					t.Errorf("query %d: EDE %d (%v), want %d (%s)", i, code, ok, tt.ede, dns.ExtendedErrorCodeToString[tt.ede])
				}
				line := e.auditLines(i + 1)[i]
				if line["action"] != "fail" || line["dnssec"] == "secure" || line["dnssec"] == nil || line["upstream"] == "cache" || line["rule"] != "" {
					t.Errorf("query %d: audit line %v, want action fail, dnssec bogus or indeterminate, not from the cache, no rule", i, line)
				}
				if line["reason"] != "answer failed DNSSEC validation" || line["near_rule"] != "signed" || !strings.HasPrefix(fmt.Sprint(line["dns_reason"]), "answer failed DNSSEC validation: bogus (") {
					t.Errorf("query %d: reason %v, near_rule %v", i, line["reason"], line["near_rule"])
				}
			}
			if got := e.learned(tt.qname); len(got) != 0 {
				t.Errorf("learned %v from a bogus answer", got)
			}
			if got := testCounter(t, e.fw.metrics.dnssec.WithLabelValues("bogus")); got < 2 {
				t.Errorf("fqdngate_dns_dnssec_total{state=bogus} = %v, want at least 2", got)
			}
		})
	}
}

// TestDNSSECInsecure: an unsigned zone's answer is released without AD,
// unless the rule requires DNSSEC: then REFUSED with EDE 15 and nothing
// learned, from the cache too. A secure answer passes the required rule.
func TestDNSSECInsecure(t *testing.T) {
	e := signedEnv(t, "", nil)
	r := e.send(stranger, query("www.unsigned.example", dns.TypeA, true, true, false))
	if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || len(answerAddrs(r)) != 1 {
		t.Fatalf("insecure, optional: got %s AD %v %v, want NOERROR without AD, one address", dns.RcodeToString[r.Rcode], r.AuthenticatedData, answerAddrs(r))
	}
	if l := e.auditLines(1)[0]; l["action"] != "allow" || l["dnssec"] != "insecure" {
		t.Errorf("audit line %v, want allow, dnssec=insecure", l)
	}
	if got := e.learned("www.unsigned.example"); len(got) != 1 || got[0].DNSSEC != "insecure" {
		t.Errorf("insecure answer of an optional rule: learned %v, want one entry, insecure", got)
	}

	for i := range 2 {
		r = e.send(stranger, query("www.shop.bank.example", dns.TypeA, true, false, false))
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
			t.Fatalf("insecure, required, query %d: got %s with %d answers, want REFUSED", i, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		if code, ok := ede(r); !ok || code != dns.ExtendedErrorCodeBlocked {
			t.Errorf("query %d: EDE %d (%v), want 15 (Blocked)", i, code, ok)
		}
		l := e.auditLines(2 + i)[1+i]
		if l["action"] != "deny" || l["dnssec"] != "insecure" || l["near_rule"] != "strict" || l["reason"] != "answer is not DNSSEC-secure and the rule requires it (dnssec: required)" {
			t.Errorf("query %d: audit line %v, want deny, dnssec=insecure, near_rule strict", i, l)
		}
	}
	if got := e.learned("www.shop.bank.example"); len(got) != 0 {
		t.Errorf("learned %v from an insecure answer of a required rule", got)
	}

	r = e.send(stranger, query("www.rsa512.example", dns.TypeA, false, false, false))
	if r.Rcode != dns.RcodeSuccess || len(answerAddrs(r)) != 1 {
		t.Fatalf("secure, required: got %s %v, want NOERROR", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
	if len(e.learned("www.rsa512.example")) != 1 {
		t.Errorf("secure answer of a required rule not learned")
	}
	r = e.send(stranger, query("nope.p384.example", dns.TypeA, true, false, false))
	if r.Rcode != dns.RcodeNameError || !r.AuthenticatedData || !hasType(r.Ns, dns.TypeNSEC3) {
		t.Errorf("secure NXDOMAIN, required: got %s AD %v, want NXDOMAIN with AD and its NSEC3 proof\n%v", dns.RcodeToString[r.Rcode], r.AuthenticatedData, r)
	}
}

// TestDNSSECUnsupportedAlgorithm: a zone insecure because its DS names an
// algorithm fqdngate does not support is answered, with EDE 1 as
// information, from the cache too.
func TestDNSSECUnsupportedAlgorithm(t *testing.T) {
	e := signedEnv(t, "", nil)
	for i := range 3 {
		r := e.send(stranger, query("www.unsupalg.example", dns.TypeA, false, false, false))
		if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData || len(answerAddrs(r)) != 1 {
			t.Fatalf("query %d: got %s AD %v %v, want NOERROR without AD, one address", i, dns.RcodeToString[r.Rcode], r.AuthenticatedData, answerAddrs(r))
		}
		if code, ok := ede(r); !ok || code != dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm {
			t.Errorf("query %d: EDE %d (%v), want 1 (Unsupported DNSKEY Algorithm)", i, code, ok)
		}
		if l := e.auditLines(i + 1)[i]; l["action"] != "allow" || l["dnssec"] != "insecure" {
			t.Errorf("query %d: audit line %v, want allow, dnssec=insecure", i, l)
		}
	}
}

// TestDNSSECAuditModeInsecure: audit mode answers what a required rule
// would refuse, and says so.
func TestDNSSECAuditModeInsecure(t *testing.T) {
	e := signedEnv(t, "audit", nil)
	r := e.send(stranger, query("www.shop.bank.example", dns.TypeA, false, false, false))
	if r.Rcode != dns.RcodeSuccess || len(answerAddrs(r)) != 1 {
		t.Fatalf("got %s %v, want the answer", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
	if l := e.auditLines(1)[0]; l["action"] != "would-deny" || l["dnssec"] != "insecure" {
		t.Errorf("audit line %v, want would-deny, dnssec=insecure", l)
	}
}

// TestDNSSECReloadValidates: an answer cached while validation was off is
// not served once a reload turns it on; the answer is fetched and
// validated.
func TestDNSSECReloadValidates(t *testing.T) {
	e := signedEnv(t, "", nil)
	validate := e.pol.Load()
	e.pol.Store(e.policy(opts{rules: "  - name: signed\n    to: [www.example]\n"}))
	r := e.send(stranger, query("www.example", dns.TypeA, true, false, true))
	if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData {
		t.Fatalf("off: got %s AD %v, want NOERROR without AD (the upstream does not validate)", dns.RcodeToString[r.Rcode], r.AuthenticatedData)
	}
	if l := e.auditLines(1)[0]; l["dnssec"] != nil {
		t.Errorf("off: audit line %v has dnssec", l)
	}
	if got := e.learned("www.example"); len(got) != 1 || got[0].DNSSEC != "" {
		t.Errorf("off: learned %v, want one entry without a DNSSEC verdict", got)
	}
	e.pol.Store(validate)
	r = e.send(stranger, query("www.example", dns.TypeA, true, false, true))
	if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData {
		t.Fatalf("validate: got %s AD %v, want NOERROR with AD", dns.RcodeToString[r.Rcode], r.AuthenticatedData)
	}
	if l := e.auditLines(2)[1]; l["dnssec"] != "secure" || l["upstream"] == "cache" {
		t.Errorf("validate: audit line %v, want dnssec=secure, not from the cache", l)
	}
}

// TestDNSSECRefresh: a refresh of a dnssec: required rule learns only
// secure answers; insecure ones are refused and bogus ones fail, with the
// verdict in the audit line and on the learned entries.
func TestDNSSECRefresh(t *testing.T) {
	up, o := signedSetup(t, "", nil)
	o.rules = `
  - name: fresh
    to: [www.rsa512.example, www.shop.bank.example, forged.example]
    refresh: 1m
    dnssec: required
`
	pub := &recordingPublisher{}
	o.cfg = func(c *Config) { c.Publisher = pub }
	e := newEnv(t, up, o)
	startRefresh(t, e)
	waitRefreshes(t, e, 6) // three names, A and AAAA
	var got []string
	for _, en := range pub.take() {
		got = append(got, string(en.Name)+"/"+en.Addr.String()+"/"+en.DNSSEC)
	}
	if want := []string{"www.rsa512.example/192.0.2.40/secure"}; !slices.Equal(got, want) {
		t.Errorf("published %v, want %v", got, want)
	}
	want := map[string][3]string{ // name: action, reason, dnssec
		"www.rsa512.example":    {"allow", "matched", "secure"},
		"www.shop.bank.example": {"deny", "answer is not DNSSEC-secure and the rule requires it (dnssec: required)", "insecure"},
		"forged.example":        {"fail", "answer failed DNSSEC validation", "bogus"},
	}
	seen := 0
	for _, l := range e.auditLines(6) {
		w, ok := want[fmt.Sprint(l["name"])]
		if !ok || l["qtype"] != "A" {
			continue
		}
		seen++
		if l["action"] != w[0] || l["reason"] != w[1] || l["dnssec"] != w[2] || l["transport"] != "refresh" {
			t.Errorf("%s: audit line %v, want %v", l["name"], l, w)
		}
	}
	if seen != len(want) {
		t.Errorf("audit lines of %d of the %d names' A refreshes", seen, len(want))
	}
}
