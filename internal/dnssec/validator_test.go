package dnssec

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

func newValidator(t testing.TB, ex Exchanger) *Validator {
	t.Helper()
	v, err := New(Config{Anchors: testAnchors, Exchanger: ex})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func query(name string, qtype uint16) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(4096, true)
	q.CheckingDisabled = true
	return q
}

// ask gets the answer the test upstream gives and validates it.
func ask(t *testing.T, v *Validator, it *iterator, name string, qtype uint16) (*dns.Msg, Result) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := query(name, qtype)
	resp, err := it.Exchange(ctx, q)
	if err != nil {
		t.Fatalf("upstream for %s: %v", name, err)
	}
	return resp, v.Validate(ctx, q, resp)
}

// Faulty upstreams, as filters of the test iterator.
var (
	stripRRSIGs = dnssectest.StripRRSIGs
	stripDenial = dnssectest.StripDenial
)

type validateCase struct {
	name   string
	qname  string
	qtype  uint16
	filter func(*dns.Msg) // applied to every upstream response, fetches included
	want   State
	ede    uint16
	rcode  int
}

// validateCases are the verdicts on the test hierarchy; the Unbound oracle
// (unbound_test.go) must agree on those without a filter.
var validateCases = []validateCase{
	{name: "secure ECDSAP256 NSEC zone", qname: "www.example.", qtype: dns.TypeA, want: Secure},
	{name: "secure AAAA", qname: "www.example.", qtype: dns.TypeAAAA, want: Secure},
	{name: "secure ED25519 NSEC3 zone", qname: "www.bank.example.", qtype: dns.TypeA, want: Secure},
	{name: "secure ECDSAP384", qname: "www.p384.example.", qtype: dns.TypeA, want: Secure},
	{name: "secure RSASHA512", qname: "www.rsa512.example.", qtype: dns.TypeA, want: Secure},
	{name: "secure DNSKEY of a zone", qname: "example.", qtype: dns.TypeDNSKEY, want: Secure},
	{name: "secure DS", qname: "bank.example.", qtype: dns.TypeDS, want: Secure},
	{name: "KSK rollover: two keys, DS for the new, data by the old", qname: "www.roll.example.", qtype: dns.TypeA, want: Secure},
	{name: "secure below an NSEC3 parent", qname: "www.sub.p384.example.", qtype: dns.TypeA, want: Secure},
	{name: "DNAME into a signed zone", qname: "www.dn.example.", qtype: dns.TypeA, want: Secure},
	{name: "DNAME into an unsigned zone", qname: "www.dnu.example.", qtype: dns.TypeA, want: Insecure},
	{name: "SHA-1 DS only", qname: "www.sha1ds.example.", qtype: dns.TypeA, want: Secure},
	{name: "CNAME between signed zones", qname: "tobank.example.", qtype: dns.TypeA, want: Secure},
	{name: "wildcard NSEC", qname: "x.wild.example.", qtype: dns.TypeA, want: Secure},
	{name: "wildcard NSEC3", qname: "y.w.p384.example.", qtype: dns.TypeA, want: Secure},
	{name: "wildcard NSEC3 deep", qname: "a.b.w.p384.example.", qtype: dns.TypeA, want: Secure},
	{name: "wildcard NSEC3 NODATA", qname: "y.w.p384.example.", qtype: dns.TypeTXT, want: Secure},
	{name: "wildcard in an NSEC3 opt-out span", qname: "y.w.bank.example.", qtype: dns.TypeA, want: Insecure},
	{name: "NXDOMAIN NSEC", qname: "nope.example.", qtype: dns.TypeA, want: Secure, rcode: dns.RcodeNameError},
	{name: "NXDOMAIN NSEC3", qname: "nope.p384.example.", qtype: dns.TypeA, want: Secure, rcode: dns.RcodeNameError},
	{name: "NXDOMAIN NSEC3 deep", qname: "a.b.nope.p384.example.", qtype: dns.TypeA, want: Secure, rcode: dns.RcodeNameError},
	{name: "NODATA NSEC", qname: "www.example.", qtype: dns.TypeTXT, want: Secure},
	{name: "NODATA NSEC3", qname: "www.p384.example.", qtype: dns.TypeTXT, want: Secure},
	{name: "NODATA at an empty non-terminal", qname: "ent.example.", qtype: dns.TypeA, want: Secure},
	{name: "wildcard NODATA NSEC", qname: "x.wild.example.", qtype: dns.TypeTXT, want: Secure},
	{name: "NXDOMAIN in an NSEC3 opt-out span", qname: "nope.bank.example.", qtype: dns.TypeA, want: Insecure, rcode: dns.RcodeNameError},

	{name: "insecure delegation proven by NSEC", qname: "www.unsigned.example.", qtype: dns.TypeA, want: Insecure},
	{name: "insecure delegation proven by NSEC3 opt-out", qname: "www.shop.bank.example.", qtype: dns.TypeA, want: Insecure},
	{name: "DS of an unsupported algorithm", qname: "www.unsupalg.example.", qtype: dns.TypeA, want: Insecure, ede: dns.ExtendedErrorCodeUnsupportedDNSKEYAlgorithm},
	{name: "CNAME from a signed zone into an unsigned one", qname: "alias.example.", qtype: dns.TypeA, want: Insecure},

	{name: "bogus signature", qname: "forged.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeDNSBogus},
	{name: "expired RRSIG", qname: "expired.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeSignatureExpired},
	{name: "RRSIG not yet valid", qname: "future.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeSignatureNotYetValid},
	{name: "DS without a matching key", qname: "www.badds.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeDNSKEYMissing},
	{name: "SHA-1 DS ignored beside a failing SHA-256 DS", qname: "www.mixedds.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeDNSKEYMissing},
	{name: "the key the DS names is revoked", qname: "www.revoked.example.", qtype: dns.TypeA, want: Bogus, ede: dns.ExtendedErrorCodeDNSKEYMissing},
	{name: "upstream strips RRSIGs", qname: "www.example.", qtype: dns.TypeA, filter: stripRRSIGs, want: Bogus, ede: dns.ExtendedErrorCodeRRSIGsMissing},
	{name: "upstream strips RRSIGs below the root", qname: "www.bank.example.", qtype: dns.TypeA, filter: stripRRSIGs, want: Bogus, ede: dns.ExtendedErrorCodeRRSIGsMissing},
	{name: "stripped RRSIGs cannot fake an unsigned delegation", qname: "www.unsigned.example.", qtype: dns.TypeA, filter: stripRRSIGs, want: Bogus},
	{name: "NXDOMAIN without its proof", qname: "nope.example.", qtype: dns.TypeA, filter: stripDenial, want: Bogus, ede: dns.ExtendedErrorCodeNSECMissing, rcode: dns.RcodeNameError},
	{name: "NODATA without its proof (NSEC3)", qname: "www.p384.example.", qtype: dns.TypeTXT, filter: stripDenial, want: Bogus, ede: dns.ExtendedErrorCodeNSECMissing},
}

func TestValidate(t *testing.T) {
	for _, tc := range validateCases {
		t.Run(tc.name, func(t *testing.T) {
			it := &iterator{H: testH, Filter: tc.filter}
			v := newValidator(t, it)
			resp, got := ask(t, v, it, tc.qname, tc.qtype)
			if resp.Rcode != tc.rcode {
				t.Fatalf("upstream rcode %s, want %s (test hierarchy broken)", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
			}
			if got.State != tc.want {
				t.Fatalf("%s %s: got %v, want %v\n%v", tc.qname, dns.TypeToString[tc.qtype], got, tc.want, resp)
			}
			if tc.ede != 0 && got.EDE != tc.ede {
				t.Errorf("EDE %d (%s), want %d (%s); %v", got.EDE, dns.ExtendedErrorCodeToString[got.EDE], tc.ede, dns.ExtendedErrorCodeToString[tc.ede], got)
			}
			if got.Reason == "" {
				t.Errorf("no reason given for %v", got.State)
			}
		})
	}
}
