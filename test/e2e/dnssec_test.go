package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestDNSSECValidation: the binary, with dns.dnssec: validate and the
// signed test hierarchy's anchor, behind a signed upstream in its
// namespace. A secure answer comes back with AD and its address is in the
// kernel; a forged one is SERVFAIL with EDE 6 and its address never
// reaches the kernel, whatever CD the client sets; a rule with dnssec:
// required refuses an unsigned zone's answer (EDE 15). The audit lines
// and the metric carry the verdicts.
func TestDNSSECValidation(t *testing.T) {
	ns := netns.New(t)
	h, err := dnssectest.Build(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	it := &dnssectest.Iterator{H: h, InMemory: true}
	up := "127.0.0.1:5353"
	for _, s := range []*dns.Server{
		{PacketConn: ns.ListenPacket("udp", up), Handler: it, UDPSize: 65535},
		{Listener: ns.Listen("tcp", up), Handler: it},
	} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = s.Shutdown() })
	}

	g := newGate(t, ns)
	anchors := filepath.Join(g.dir, "anchors")
	if err := os.WriteFile(anchors, []byte(h.Anchor), 0o644); err != nil {
		t.Fatal(err)
	}
	const listen = "127.0.0.1:5310"
	g.writePolicy(fmt.Sprintf(`listen: {dns: %q, proxy: "", admin: "127.0.0.1:0"}
dns:
  upstreams: [%q]
  dnssec: validate
  trust_anchors: %s
firewall: {backend: nftables, hook: output, table: %s, state_file: %s}
rules:
  - name: signed
    to: [www.example, forged.example]
  - name: strict
    to: [www.unsigned.example]
    dnssec: required
`, listen, up, anchors, g.table, g.stateFile()))
	g.start()

	ask := func(name string, cd bool) *dns.Msg {
		t.Helper()
		conn, err := ns.Dial("udp", "", listen, reachWait)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		m.SetEdns0(4096, true)
		m.CheckingDisabled = cd
		co := &dns.Conn{Conn: conn}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, g.logs())
		}
		return r
	}
	edeOf := func(r *dns.Msg) int {
		if o := r.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if e, ok := op.(*dns.EDNS0_EDE); ok {
					return int(e.InfoCode)
				}
			}
		}
		return -1
	}

	r := ask("www.example.", false)
	if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(r.Answer) == 0 {
		t.Fatalf("secure: got %s AD %v\n%v\n%s", dns.RcodeToString[r.Rcode], r.AuthenticatedData, r, g.logs())
	}
	for _, cd := range []bool{false, true} {
		r = ask("forged.example.", cd)
		if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 || edeOf(r) != int(dns.ExtendedErrorCodeDNSBogus) {
			t.Errorf("forged, CD %v: got %s, %d answers, EDE %d; want SERVFAIL, none, EDE 6", cd, dns.RcodeToString[r.Rcode], len(r.Answer), edeOf(r))
		}
	}
	r = ask("www.unsigned.example.", false)
	if r.Rcode != dns.RcodeRefused || edeOf(r) != int(dns.ExtendedErrorCodeBlocked) {
		t.Errorf("insecure, required: got %s, EDE %d; want REFUSED, EDE 15", dns.RcodeToString[r.Rcode], edeOf(r))
	}

	table, err := g.nft("list", "table", "inet", g.table)
	if err != nil {
		t.Fatalf("listing the table: %v", err)
	}
	if !strings.Contains(table, "192.0.2.1 ") && !strings.Contains(table, "192.0.2.1,") && !strings.Contains(table, "192.0.2.1 timeout") {
		t.Errorf("the secure answer's 192.0.2.1 is not in the kernel:\n%s", table)
	}
	for _, a := range []string{"192.0.2.166", "192.0.2.66", "192.0.2.80"} {
		if strings.Contains(table, a) {
			t.Errorf("%s (forged or refused) is in the kernel:\n%s", a, table)
		}
	}
	g.waitMetric(`fqdngate_dns_dnssec_total{state="bogus"}`, 2)
	g.waitMetric(`fqdngate_dns_dnssec_total{state="secure"}`, 1)
	deadline := time.Now().Add(10 * time.Second)
	for !(strings.Contains(g.stdout.String(), `"dnssec":"bogus"`) && strings.Contains(g.stdout.String(), `"dnssec":"insecure"`)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	audit := g.stdout.String()
	for _, want := range []string{`"dnssec":"secure"`, `"dnssec":"bogus"`, `"dnssec":"insecure"`, `"reason":"answer failed DNSSEC validation"`} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit log lacks %s:\n%s", want, tail(audit, 4096))
		}
	}
}
