package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// TestForwardWildcardBudget (issue 11, item 8): a client tunnelling data
// out in new names under an allowed wildcard gets at most
// dns.wildcard_budget of them (300 a minute by default) to the outside
// authority; the rest are refused at the gateway. The other client keeps
// its own budget. On bb9061b every name reached the authority.
func TestForwardWildcardBudget(t *testing.T) {
	f := startForward(t, 2*time.Second, `  - name: cdn
    from: [a, b]
    to: ["**.cdn.example.com"]
    ports: [443]
`)
	auth := f.net.inet.auth
	auth.SetDynamic(func(name string, qtype uint16) []dns.RR {
		if !strings.HasSuffix(name, ".cdn.example.com") {
			return nil
		}
		return []dns.RR{dnstest.A(name, 300, "203.0.113.90")}
	})
	const budget, sent = 300, 1000
	seen := func() int {
		n := 0
		auth.mu.Lock()
		defer auth.mu.Unlock()
		for _, q := range auth.seen {
			if strings.HasSuffix(q.name, ".cdn.example.com") {
				n++
			}
		}
		return n
	}

	var names []string
	for i := range sent {
		names = append(names, fmt.Sprintf("chunk%04d-6578666966696c747261746564.cdn.example.com", i))
	}
	rcodes := f.a.askMany(t, gatewayDNS, names, 50)
	answered := 0
	for _, name := range names {
		switch rcodes[name] {
		case dns.RcodeSuccess:
			answered++
		case dns.RcodeRefused:
		default:
			t.Errorf("%s: got %s, want NOERROR or REFUSED", name, dns.RcodeToString[rcodes[name]])
		}
	}
	if answered != budget {
		t.Errorf("%d new names under the wildcard: %d answered, want %d", sent, answered, budget)
	}
	if n := seen(); n != budget {
		t.Errorf("the outside authority saw %d of the %d names, want %d", n, sent, budget)
	}

	// The other client has a budget of its own.
	before := seen()
	var others []string
	for i := range 20 {
		others = append(others, fmt.Sprintf("b%d.cdn.example.com", i))
	}
	for name, rc := range f.b.askMany(t, gatewayDNS, others, 10) {
		if rc != dns.RcodeSuccess {
			t.Errorf("client b, %s: got %s, want NOERROR", name, dns.RcodeToString[rc])
		}
	}
	if n := seen() - before; n != len(others) {
		t.Errorf("client b's names at the authority: %d, want %d", n, len(others))
	}
	if v := f.gate.metric(`fqdngate_dns_wildcard_budget_exceeded_total{rule="cdn"}`); v != sent-budget {
		t.Errorf("fqdngate_dns_wildcard_budget_exceeded_total{rule=\"cdn\"} = %v, want %d", v, sent-budget)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// askMany sends an A query for each name to server over UDP from one
// socket, at most burst in flight, and returns each reply's rcode by name.
func (c *client) askMany(t *testing.T, server string, names []string, burst int) map[string]int {
	t.Helper()
	conn, err := c.ns.Dial("udp", c.src4, server, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dc := &dns.Conn{Conn: conn}
	got := make(map[string]int, len(names))
	for start := 0; start < len(names); start += burst {
		sent := map[uint16]string{}
		for i, name := range names[start:min(start+burst, len(names))] {
			m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
			m.Id = uint16(start + i + 1)
			if err := dc.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
			sent[m.Id] = name
		}
		for len(sent) > 0 {
			conn.SetReadDeadline(time.Now().Add(reachWait))
			r, err := dc.ReadMsg()
			if err != nil {
				t.Fatalf("%d replies missing: %v", len(sent), err)
			}
			name, ok := sent[r.Id]
			if !ok {
				t.Fatalf("reply with ID %d: not asked, or answered twice", r.Id)
			}
			delete(sent, r.Id)
			got[name] = r.Rcode
		}
	}
	return got
}
