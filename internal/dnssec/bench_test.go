package dnssec

import (
	"context"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkValidate measures one validation with the zone keys cached
// (the path every new name takes once its zone is known): the walk from
// the cache and the signature checks of the answer.
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
		b.Run(c.name, func(b *testing.B) {
			it := &iterator{h: testH}
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
				if r := v.Validate(context.Background(), q, m); r.State != Secure {
					b.Fatalf("got %v", r)
				}
			}
		})
	}
}
