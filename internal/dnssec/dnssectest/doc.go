// Package dnssectest is a signed DNS hierarchy for tests and benchmarks,
// as httptest is a web server: a test root, example., bank.example. and
// others, signed with several algorithms (NSEC, NSEC3, NSEC3 opt-out,
// faults signed in), served by one loopback authoritative server per zone,
// and an Iterator that resolves from the test root as a recursive upstream
// would, signatures and all. Its Anchor is the suite's own trust anchor.
//
//	h, err := dnssectest.Build(time.Now())
//	err = h.Start()
//	defer h.Stop()
//	srv := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: &dnssectest.Iterator{H: h}}
//
// Zones and their contents are listed at Build. Not for production use:
// keys are generated at Build and kept in memory.
package dnssectest

import "github.com/miekg/dns"

// RRKey names an RRset of a zone.
type RRKey struct {
	Name string // canonical: lower case, fully qualified
	Type uint16
}

// Set returns the RRset name/rtype of the zone, as signed.
func (z *Zone) Set(name string, rtype uint16) []dns.RR { return z.Sets[RRKey{name, rtype}] }
