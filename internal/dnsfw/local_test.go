package dnsfw

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// testHost is a HostAddrs a test changes, as addresses come and go.
type testHost struct {
	mu      sync.Mutex
	addrs   []netip.Addr
	version uint64
}

func (h *testHost) Contains(a netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.addrs, a)
}

func (h *testHost) Version() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.version
}

func (h *testHost) add(a string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addrs = append(h.addrs, netip.MustParseAddr(a))
	h.version++
}

// TestHostAddressesStripped (issue 11, item 5): an address of the host
// fqdngate runs on is removed from answers as loopback is, also one that
// is public, and also once it became the host's after the answer was
// cached; the firewall's own lookups (the proxy's) say so in an error the
// proxy can tell from a failure to resolve.
func TestHostAddressesStripped(t *testing.T) {
	host := &testHost{}
	host.add("192.0.2.1")
	z := zone(
		dnstest.A("gw.bank.example", 300, "192.0.2.1"),
		dnstest.A("mixed.bank.example", 300, "192.0.2.1"),
		dnstest.A("mixed.bank.example", 300, "192.0.2.31"),
	)
	rules := "  - name: gw\n    from: [payments]\n    to: [gw.bank.example, mixed.bank.example]\n    ports: [443]"
	e, pub := fastEnv(t, z, opts{rules: rules, cfg: func(c *Config) { c.Local = host }})

	if r := e.ask(payments, "gw.bank.example", dns.TypeA); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("a name answered with the host's address: got %s %v, want SERVFAIL with no answer", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
	lines := e.auditLines(1)
	if l := lines[0]; l["action"] != "deny" || l["near_rule"] != "gw" || l["dns_reason"] != noteRebinding {
		t.Errorf("audit line: %v", l)
	}
	if r := e.ask(payments, "mixed.bank.example", dns.TypeA); !slices.Equal(answerAddrs(r), []string{"192.0.2.31"}) {
		t.Errorf("the host's address and another: got %v, want only the other", answerAddrs(r))
	}
	pub.mu.Lock()
	for _, b := range pub.batches {
		for _, en := range b {
			if en.Addr == netip.MustParseAddr("192.0.2.1") {
				t.Errorf("published the host's address: %+v", en)
			}
		}
	}
	pub.mu.Unlock()

	// Cached and answered from the fast path; then the address becomes
	// the host's: the next answer, from either path, leaves it out.
	for range 3 {
		if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("api.bank.example: got %s", dns.RcodeToString[r.Rcode])
		}
	}
	if e.fw.fastHits.Load() == 0 {
		t.Fatal("no fast answers")
	}
	host.add("192.0.2.10")
	if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("after 192.0.2.10 became the host's: got %s %v, want SERVFAIL", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}

	_, err := e.fw.LookupNetIP(context.Background(), "gw.bank.example")
	var ce *netaddr.ClassError
	if !errors.As(err, &ce) || ce.Class != netaddr.Local {
		t.Errorf("LookupNetIP of a name answered with the host's address: got %v, want a ClassError for local", err)
	}
	_, err = e.fw.LookupNetIP(context.Background(), "nothing.bank.example")
	if errors.As(err, &ce) {
		t.Errorf("LookupNetIP of a name that does not exist: got a ClassError (%v)", err)
	}

	// A CIDR rule that names the address lets it through.
	e.pol.Store(e.policy(opts{rules: rules + "\n  - name: gw-ip\n    to: [192.0.2.1/32]\n    ports: [443]"}))
	if r := e.ask(payments, "gw.bank.example", dns.TypeA); !slices.Equal(answerAddrs(r), []string{"192.0.2.1"}) {
		t.Errorf("named by a CIDR rule: got %s %v, want 192.0.2.1", dns.RcodeToString[r.Rcode], answerAddrs(r))
	}
}
