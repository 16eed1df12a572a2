package dnssec

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

// upstreamAnswer fetches the honest answer from the test hierarchy.
func upstreamAnswer(t *testing.T, name string, qtype uint16) (*dns.Msg, *dns.Msg) {
	t.Helper()
	it := &iterator{H: testH}
	q := query(name, qtype)
	resp, err := it.Exchange(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return q, resp
}

// Forgeries built from genuine signed material: each must be bogus, never
// secure or insecure.
func TestForgedAnswers(t *testing.T) {
	tests := []struct {
		name  string
		qname string
		qtype uint16
		forge func(t *testing.T, m *dns.Msg)
	}{
		{"address changed after signing", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer[0].(*dns.A).A = net.ParseIP("203.0.113.66").To4()
		}},
		{"extra unsigned record in a signed RRset", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP("203.0.113.66").To4()})
		}},
		{"extra unsigned RRset beside the answer", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "evil.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP("203.0.113.66").To4()})
		}},
		{"signed record of another name renamed", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, other := upstreamAnswer(t, "www.rsa512.example.", dns.TypeA)
			for _, r := range other.Answer {
				r.Header().Name = "www.example."
			}
			m.Answer = other.Answer
		}},
		{"signature of the same name in another zone's clothing", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			for _, r := range m.Answer {
				if s, ok := r.(*dns.RRSIG); ok {
					s.SignerName = "."
				}
			}
		}},
		{"wildcard expansion without its proof", "x.wild.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Ns = nil
		}},
		{"wildcard expansion onto an existing name", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, w := upstreamAnswer(t, "www.wild.example.", dns.TypeA)
			for _, r := range w.Answer {
				r.Header().Name = "www.example."
			}
			m.Answer = w.Answer
			m.Ns = w.Ns
		}},
		{"NXDOMAIN for an existing name with another name's proof", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, nx := upstreamAnswer(t, "nope.example.", dns.TypeA)
			m.Answer = nil
			m.Rcode = dns.RcodeNameError
			m.Ns = nx.Ns
		}},
		{"NODATA for an existing type using the name's own NSEC", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, nd := upstreamAnswer(t, "www.example.", dns.TypeTXT)
			m.Answer = nil
			m.Ns = nd.Ns
		}},
		{"NXDOMAIN NSEC3 replayed for an existing name", "www.p384.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, nx := upstreamAnswer(t, "nope.p384.example.", dns.TypeA)
			m.Answer = nil
			m.Rcode = dns.RcodeNameError
			m.Ns = nx.Ns
		}},
		{"NXDOMAIN below a signed delegation proven by the parent", "www.bank.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, nx := upstreamAnswer(t, "bank.example.", dns.TypeDS) // carries example.'s records about bank.example
			m.Answer = nil
			m.Rcode = dns.RcodeNameError
			m.Ns = nx.Ns
		}},
		{"NXDOMAIN for an empty non-terminal", "ent.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Rcode = dns.RcodeNameError // the genuine NODATA proof, rcode flipped
		}},
		{"NXDOMAIN for a name a wildcard answers", "x.wild.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer = nil
			m.Rcode = dns.RcodeNameError
		}},
		{"NODATA for a CNAME owner", "tobank.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, n := upstreamAnswer(t, "tobank.example.", dns.TypeNSEC)
			m.Answer = nil
			m.Ns = n.Answer
		}},
		{"NXDOMAIN without the wildcard's denial", "nope.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			var ns []dns.RR
			for _, r := range m.Ns {
				if r.Header().Name != "example." || r.Header().Rrtype == dns.TypeSOA || (r.Header().Rrtype == dns.TypeRRSIG && r.(*dns.RRSIG).TypeCovered == dns.TypeSOA) {
					ns = append(ns, r)
				}
			}
			if len(ns) == len(m.Ns) {
				t.Fatalf("no apex NSEC to remove in %v", m.Ns)
			}
			m.Ns = ns
		}},
		{"NXDOMAIN below a signed delegation from the parent's NSEC3", "www.sub.p384.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			p := testH.Zones["p384.example."]
			m.Answer = nil
			m.Rcode = dns.RcodeNameError
			m.Ns = p.SOA(p.Cover("sub.p384.example.", "www.sub.p384.example.", "*.sub.p384.example."))
		}},
		{"NODATA from the parent side of a cut", "bank.example.", dns.TypeSOA, func(t *testing.T, m *dns.Msg) {
			ex := testH.Zones["example."]
			m.Answer = nil
			m.Ns = ex.WithSigs(ex.SOA(nil), dnssectest.RRKey{Name: "bank.example.", Type: dns.TypeNSEC})
		}},
		{"NXDOMAIN rcode on a positive answer", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Rcode = dns.RcodeNameError
		}},
		{"record of another class", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: "www.example.", Rrtype: dns.TypeTXT, Class: dns.ClassCHAOS, Ttl: 300}, Txt: []string{"x"}})
		}},
		{"DNAME-synthesized CNAME retargeted", "www.dn.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, u := upstreamAnswer(t, "www.unsigned.example.", dns.TypeA)
			for i, r := range m.Answer {
				if c, ok := r.(*dns.CNAME); ok {
					c.Target = "www.unsigned.example."
					m.Answer = append(m.Answer[:i+1], u.Answer...)
					return
				}
			}
			t.Fatal("no CNAME in the DNAME answer")
		}},
		{"DNAME's signature stripped", "www.dn.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			var out []dns.RR
			for _, r := range m.Answer {
				if s, ok := r.(*dns.RRSIG); !ok || s.TypeCovered != dns.TypeDNAME {
					out = append(out, r)
				}
			}
			m.Answer = out
		}},
		{"RRSIG's original TTL and expiry raised, signature bytes kept", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			for _, r := range m.Answer {
				if s, ok := r.(*dns.RRSIG); ok {
					s.OrigTtl = 1 << 30
					s.Expiration += 365 * 86400
				}
			}
		}},
		{"CNAME's signature stripped", "tobank.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer = append(m.Answer[:1], m.Answer[2:]...)
		}},
		{"CNAME retargeted", "tobank.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			m.Answer[0].(*dns.CNAME).Target = "www.unsigned.example."
			_, u := upstreamAnswer(t, "www.unsigned.example.", dns.TypeA)
			m.Answer = append(m.Answer[:2], u.Answer...)
		}},
		{"answer to another question", "www.example.", dns.TypeA, func(t *testing.T, m *dns.Msg) {
			_, o := upstreamAnswer(t, "www.bank.example.", dns.TypeA)
			m.Answer = o.Answer
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it := &iterator{H: testH}
			v := newValidator(t, it)
			q, m := upstreamAnswer(t, tc.qname, tc.qtype)
			if got := v.Validate(context.Background(), q, m); got.State != Secure {
				t.Fatalf("honest answer: got %v, want secure", got)
			}
			tc.forge(t, m)
			if got := v.Validate(context.Background(), q, m); got.State != Bogus {
				t.Fatalf("forged answer: got %v, want bogus\n%v", got, m)
			}
		})
	}
}

// A DS answer replaced by the parent's NSEC for the delegation, which
// lists DS: the delegation must not turn insecure.
func TestDSDeniedByItsOwnNSEC(t *testing.T) {
	ex := testH.Zones["example."]
	it := &iterator{H: testH, Filter: func(m *dns.Msg) {
		if q := m.Question[0]; q.Name == "bank.example." && q.Qtype == dns.TypeDS {
			m.Answer = nil
			m.Ns = ex.WithSigs(ex.SOA(nil), dnssectest.RRKey{Name: "bank.example.", Type: dns.TypeNSEC})
		}
	}}
	v := newValidator(t, it)
	q, m := upstreamAnswer(t, "www.bank.example.", dns.TypeA)
	if r := v.Validate(context.Background(), q, m); r.State != Bogus {
		t.Fatalf("got %v, want bogus", r)
	}
}

// An upstream that cannot deliver the keys leaves the verdict
// indeterminate, never insecure; a caller that gives up gets
// indeterminate at once.
func TestUnreachableKeys(t *testing.T) {
	it := &iterator{H: testH}
	q, m := upstreamAnswer(t, "www.bank.example.", dns.TypeA)

	failing := ExchangerFunc(func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		if q.Question[0].Name == "bank.example." {
			r := new(dns.Msg)
			r.SetRcode(q, dns.RcodeServerFailure)
			return r, nil
		}
		return it.Exchange(ctx, q)
	})
	r := newValidator(t, failing).Validate(context.Background(), q, m)
	if r.State != Indeterminate || r.EDE != dns.ExtendedErrorCodeNetworkError {
		t.Fatalf("SERVFAIL on the DS fetch: got %v EDE %d, want indeterminate with EDE %d", r, r.EDE, dns.ExtendedErrorCodeNetworkError)
	}

	release := make(chan struct{})
	defer close(release)
	stuck := ExchangerFunc(func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		<-release
		return nil, context.Canceled
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r := newValidator(t, stuck).Validate(ctx, q, m); r.State != Indeterminate {
		t.Fatalf("cancelled caller: got %v, want indeterminate", r)
	}
}

// The TTLs of a message are not signed: a secure verdict bounds them by
// the signatures' original TTL and expiry, whatever the message claims.
func TestMaxTTL(t *testing.T) {
	v := newValidator(t, &iterator{H: testH})
	for _, c := range []struct {
		name  string
		qtype uint16
	}{{"www.example.", dns.TypeA}, {"nope.example.", dns.TypeA}, {"x.wild.example.", dns.TypeA}, {"www.p384.example.", dns.TypeTXT}} {
		q, m := upstreamAnswer(t, c.name, c.qtype)
		for _, r := range append(m.Answer, m.Ns...) {
			r.Header().Ttl = 1 << 30
		}
		r := v.Validate(context.Background(), q, m)
		if r.State != Secure {
			t.Fatalf("%s: got %v, want secure", c.name, r)
		}
		if r.MaxTTL == 0 || r.MaxTTL > 3600 {
			t.Errorf("%s %s: MaxTTL %d, want the signed original TTL (300 or 3600 here)", c.name, dns.TypeToString[c.qtype], r.MaxTTL)
		}
	}
	q, m := upstreamAnswer(t, "www.unsigned.example.", dns.TypeA)
	if r := v.Validate(context.Background(), q, m); r.State != Insecure || r.MaxTTL != 0 {
		t.Fatalf("insecure answer: got %v MaxTTL %d, want insecure with MaxTTL 0", r, r.MaxTTL)
	}
}

// countingExchanger counts the queries per question, concurrently.
type countingExchanger struct {
	Exchanger
	mu sync.Mutex // guards following
	n  map[string]int
}

func (c *countingExchanger) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	c.mu.Lock()
	c.n[strings.ToLower(q.Question[0].Name)+"/"+dns.TypeToString[q.Question[0].Qtype]]++
	c.mu.Unlock()
	if !q.CheckingDisabled || q.IsEdns0() == nil || !q.IsEdns0().Do() {
		return nil, &rcodeError{dns.RcodeRefused} // fetches must ask for everything
	}
	return c.Exchanger.Exchange(ctx, q)
}

func (c *countingExchanger) count(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// Zone keys are fetched once per TTL, not per query, and concurrent
// misses share one fetch.
func TestKeysFetchedOnce(t *testing.T) {
	c := &countingExchanger{Exchanger: &iterator{H: testH}, n: map[string]int{}}
	v := newValidator(t, c)
	q, m := upstreamAnswer(t, "www.bank.example.", dns.TypeA)
	var wg sync.WaitGroup
	results := make(chan Result, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- v.Validate(context.Background(), q, m)
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.State != Secure {
			t.Fatalf("got %v, want secure", r)
		}
	}
	for _, k := range []string{"./DNSKEY", "example./DNSKEY", "example./DS", "bank.example./DNSKEY", "bank.example./DS"} {
		if n := c.count(k); n != 1 {
			t.Errorf("%s fetched %d times, want 1", k, n)
		}
	}
	if r := v.Validate(context.Background(), q, m); r.State != Secure {
		t.Fatalf("again: got %v", r)
	}
	if n := c.count("bank.example./DNSKEY"); n != 1 {
		t.Errorf("after a cached validation bank.example./DNSKEY fetched %d times, want 1", n)
	}
}

// The clock is injectable: a day and a half later every signature of the
// hierarchy has expired, and a fresh validator says so.
func TestClock(t *testing.T) {
	later := func() time.Time { return time.Now().Add(36 * time.Hour) }
	v, err := New(Config{Anchors: testAnchors, Exchanger: &iterator{H: testH}, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	q, m := upstreamAnswer(t, "www.example.", dns.TypeA)
	r := v.Validate(context.Background(), q, m)
	if r.State != Bogus || r.EDE != dns.ExtendedErrorCodeSignatureExpired {
		t.Fatalf("got %v EDE %d, want bogus with EDE %d", r, r.EDE, dns.ExtendedErrorCodeSignatureExpired)
	}
}

// The key cache stays within its bound.
func TestCacheBound(t *testing.T) {
	v, err := New(Config{Anchors: testAnchors, Exchanger: &iterator{H: testH}, MaxEntries: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"www.example.", "www.bank.example.", "www.p384.example.", "www.rsa512.example.", "www.roll.example."} {
		q, m := upstreamAnswer(t, n, dns.TypeA)
		if r := v.Validate(context.Background(), q, m); r.State != Secure {
			t.Fatalf("%s: got %v, want secure", n, r)
		}
		if l := v.cache.len(); l > 3 {
			t.Fatalf("cache holds %d entries, bound 3", l)
		}
	}
}

// The built-in root anchors do not vouch for the test root: everything is
// bogus, nothing secure.
func TestDefaultAnchors(t *testing.T) {
	v, err := New(Config{Exchanger: &iterator{H: testH}})
	if err != nil {
		t.Fatal(err)
	}
	q, m := upstreamAnswer(t, "www.example.", dns.TypeA)
	if r := v.Validate(context.Background(), q, m); r.State != Bogus || r.EDE != dns.ExtendedErrorCodeDNSKEYMissing {
		t.Fatalf("got %v EDE %d, want bogus, DNSKEY missing", r, r.EDE)
	}
	a := DefaultAnchors()
	if len(a.ds["."]) != 2 || a.ds["."][0].KeyTag != 20326 || a.ds["."][1].KeyTag != 38696 {
		t.Fatalf("built-in anchors: %v", a.ds["."])
	}
}

func TestParseAnchors(t *testing.T) {
	tests := []struct {
		name, text, err string
	}{
		{"DS", ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D", ""},
		{"DNSKEY", "example. IN DNSKEY 257 3 13 " + testH.Zones["example."].Keys[0].Pub.PublicKey, ""},
		{"empty", "; nothing\n", "no trust anchor"},
		{"wrong type", "example. IN A 192.0.2.1", "record type A is not an anchor"},
		{"not a zone key", "example. IN DNSKEY 0 3 13 " + testH.Zones["example."].Keys[0].Pub.PublicKey, "zone key flag"},
		{"garbage", ". IN DS nonsense", "reading trust anchors"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAnchors(tc.text, "anchors.txt")
			if tc.err == "" && err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// A DNSKEY trust anchor works like a DS one.
func TestDNSKEYAnchor(t *testing.T) {
	a, err := ParseAnchors(testH.Zones["."].Keys[0].Pub.String(), "anchor")
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Config{Anchors: a, Exchanger: &iterator{H: testH}})
	if err != nil {
		t.Fatal(err)
	}
	q, m := upstreamAnswer(t, "www.bank.example.", dns.TypeA)
	if r := v.Validate(context.Background(), q, m); r.State != Secure {
		t.Fatalf("got %v, want secure", r)
	}
}

func TestNoExchanger(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without an Exchanger: no error")
	}
}
