package dnssec

import (
	"context"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkValidate measures one validation with the zone keys cached:
// "verify" clears the cache of verified signatures before each run (a new
// answer: the public-key operations), "again" keeps it (the same answer,
// or a proof shared by many names).
func BenchmarkValidate(b *testing.B) {
	for _, c := range []struct {
		name  string
		qname string
		qtype uint16
	}{
		{"ECDSAP256", "www.example.", dns.TypeA},
		{"ED25519-NSEC3", "www.bank.example.", dns.TypeA},
		{"RSASHA512", "www.rsa512.example.", dns.TypeA},
		{"NXDOMAIN-NSEC3", "nope.p384.example.", dns.TypeA},
	} {
		for _, again := range []bool{false, true} {
			mode := "verify"
			if again {
				mode = "again"
			}
			b.Run(c.name+"/"+mode, func(b *testing.B) {
				it := &iterator{H: testH}
				v := newValidator(b, it)
				q := query(c.qname, c.qtype)
				m, err := it.Exchange(context.Background(), q)
				if err != nil {
					b.Fatal(err)
				}
				if r := v.Validate(context.Background(), q, m); r.State != Secure {
					b.Fatalf("got %v, want secure", r)
				}
				b.ReportAllocs()
				for b.Loop() {
					if !again {
						v.sigs.mu.Lock()
						clear(v.sigs.m)
						v.sigs.mu.Unlock()
					}
					if r := v.Validate(context.Background(), q, m); r.State != Secure {
						b.Fatalf("got %v", r)
					}
				}
			})
		}
	}
}
