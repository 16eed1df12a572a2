package dnssec

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var (
	fuzzOnce sync.Once
	fuzzV    *Validator
)

// genuine reports whether r is a record of the test hierarchy's data, or
// the expansion of one of its wildcards, compared without TTL.
func genuine(r dns.RR) bool {
	key := func(x dns.RR) string {
		c := dns.Copy(x)
		c.Header().Ttl = 0
		c.Header().Name = dns.CanonicalName(c.Header().Name)
		return strings.ToLower(c.String())
	}
	want := key(r)
	name := dns.CanonicalName(r.Header().Name)
	for _, z := range testH.Zones {
		for _, owner := range append([]string{name}, wildcardsOf(name)...) {
			for _, x := range z.Set(owner, r.Header().Rrtype) {
				c := dns.Copy(x)
				c.Header().Name = name
				if key(c) == want {
					return true
				}
			}
		}
	}
	return false
}

func wildcardsOf(name string) []string {
	var out []string
	for _, a := range ancestors(name)[1:] {
		out = append(out, "*."+a)
	}
	return out
}

// FuzzValidate: answers with arbitrary records and signatures get a
// verdict, never a panic, and are never secure unless every record is the
// hierarchy's own and a negative answer is true.
func FuzzValidate(f *testing.F) {
	seeds := []struct {
		name  string
		qtype uint16
	}{
		{"www.example.", dns.TypeA}, {"www.bank.example.", dns.TypeA}, {"x.wild.example.", dns.TypeA},
		{"y.w.p384.example.", dns.TypeA}, {"nope.example.", dns.TypeA}, {"nope.p384.example.", dns.TypeA},
		{"www.example.", dns.TypeTXT}, {"tobank.example.", dns.TypeA}, {"alias.example.", dns.TypeA},
		{"www.unsigned.example.", dns.TypeA}, {"forged.example.", dns.TypeA}, {"ent.example.", dns.TypeA},
	}
	it := &iterator{H: testH}
	for _, s := range seeds {
		m, err := it.Exchange(context.Background(), query(s.name, s.qtype))
		if err != nil {
			f.Fatal(err)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzOnce.Do(func() {
			var err error
			fuzzV, err = New(Config{Anchors: testAnchors, Exchanger: &iterator{H: testH}})
			if err != nil {
				t.Fatal(err)
			}
		})
		m := new(dns.Msg)
		if m.Unpack(b) != nil || len(m.Question) != 1 {
			return
		}
		q := new(dns.Msg)
		q.Question = m.Question
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		r := fuzzV.Validate(ctx, q, m)
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("validating took %v (%v) for %v", d, r, m)
		}
		if r.State != Secure {
			return
		}
		positive := false
		for _, rr := range m.Answer {
			if rr.Header().Rrtype == dns.TypeRRSIG {
				continue
			}
			if !genuine(rr) {
				t.Fatalf("secure verdict (%v) for a record the hierarchy does not hold: %v", r, rr)
			}
			if rr.Header().Rrtype == m.Question[0].Qtype {
				positive = true
			}
		}
		if positive {
			return
		}
		honest, err := (&iterator{H: testH}).Exchange(ctx, query(m.Question[0].Name, m.Question[0].Qtype))
		if err != nil {
			return
		}
		for _, rr := range honest.Answer {
			if rr.Header().Rrtype == m.Question[0].Qtype {
				t.Fatalf("secure denial (%v) of %s/%s, which exists: %v", r, m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], rr)
			}
		}
	})
}
