package main

import (
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// wellKnown are ports the quick start must not take: DNS, mDNS, the
// usual HTTP alternatives, Prometheus and Cockpit.
var wellKnown = map[string]string{"53": "DNS", "5353": "mDNS", "80": "HTTP", "8080": "HTTP alternative", "9090": "Prometheus, Cockpit", "9100": "node_exporter"}

// TestQuickstartPorts: the quick-start policy listens on loopback, on
// ports no well-known service uses, and the README says the same ports.
func TestQuickstartPorts(t *testing.T) {
	p, err := policy.Load("../../examples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`DNS on (\d+), proxy on (\d+), admin on (\d+)`).FindStringSubmatch(string(readme))
	if m == nil {
		t.Fatal(`README.md no longer says "DNS on N, proxy on N, admin on N"`)
	}
	for i, l := range []struct{ name, addr string }{{"dns", p.Listen.DNS}, {"proxy", p.Listen.Proxy}, {"admin", p.Listen.Admin}} {
		host, port, err := net.SplitHostPort(l.addr)
		if err != nil {
			t.Fatalf("listen.%s: %v", l.name, err)
		}
		if host != "127.0.0.1" {
			t.Errorf("listen.%s is on %s, want loopback", l.name, host)
		}
		if what, ok := wellKnown[port]; ok {
			t.Errorf("listen.%s is on port %s, which %s uses", l.name, port, what)
		}
		if m[i+1] != port {
			t.Errorf("README.md says %s on %s, examples/quickstart.yaml %s", l.name, m[i+1], port)
		}
		if !strings.Contains(string(readme), l.addr) {
			t.Errorf("README.md never shows %s", l.addr)
		}
	}
}

// TestQuickstartRuns is the README's start command: the real binary on
// the bundled policy, without root privileges it would need, answering
// on the ports the README names.
func TestQuickstartRuns(t *testing.T) {
	p, err := policy.Load("../../examples/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{p.Listen.DNS, p.Listen.Proxy, p.Listen.Admin} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("%s is taken on this machine (another fqdngate running?): %v", a, err)
		}
		l.Close()
	}
	d := startDaemon(t, "../../examples/quickstart.yaml")
	if d.admin != p.Listen.Admin {
		t.Fatalf("admin listens on %s, want %s", d.admin, p.Listen.Admin)
	}
	deadline := time.Now().Add(20 * time.Second)
	for body := d.get(t, "/readyz"); !strings.HasPrefix(body, "ready"); body = d.get(t, "/readyz") {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never ok: %q; stderr:\n%s", body, d.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A name the policy does not list is refused without any upstream.
	q := new(dns.Msg).SetQuestion("example.net.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(q, p.Listen.DNS)
	if err != nil {
		t.Fatalf("query to %s: %v", p.Listen.DNS, err)
	}
	if r.Rcode != dns.RcodeNameError {
		t.Errorf("example.net: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}
