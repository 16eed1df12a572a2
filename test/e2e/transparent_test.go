package e2e

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

const transparentRules = `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [443]
`

// TestTransparentSteersEveryFamily: with transparent_ports, every family
// a source can use goes through the transparent proxy, which checks the
// SNI: a hello for another name to a learned IPv6 address is refused, not
// let through by the learned sets. A policy whose listener cannot receive
// IPv6 (here an IPv4 address, reached by DNAT) is refused at reload and
// by check, so IPv6 keeps going through the proxy. (Before, the reload
// applied, IPv6 to port 443 fell through to the learned sets, and any SNI
// reached the learned address.)
func TestTransparentSteersEveryFamily(t *testing.T) {
	f := startForwardWith(t, 2*time.Second, transparentRules, func(s *policySettings) {
		s.transparent = "[::]:3129"
		s.firewall = []string{"transparent_ports: [443]"}
	})
	f.net.inet.auth.Set("api.example.com",
		dnstest.A("api.example.com", 300, "203.0.113.10"), dnstest.AAAA("api.example.com", 300, "2001:db8:100::10"))

	var learned []netip.AddrPort
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		addr, err := f.a.resolveAndGet("api.example.com", qt, allowedPort)
		if err != nil {
			t.Fatalf("allowed name over %s, through the transparent proxy: %v\n%s", dns.TypeToString[qt], err, f.gate.logs())
		}
		learned = append(learned, netip.AddrPortFrom(addr, allowedPort))
	}
	foreignSNI := func(when string) {
		t.Helper()
		for _, dst := range learned {
			if err := f.a.get("evil.example.com", dst, reachWait); err == nil {
				t.Errorf("%s: a hello for evil.example.com reached %s, the learned address of api.example.com; want the transparent proxy to refuse it", when, dst)
			}
		}
	}
	foreignSNI("dual-stack listener")

	// An IPv4-only listener: refused, and the dual-stack one stays.
	v4only := f.settings
	v4only.transparent = gwClient4 + ":3129"
	body := v4only.render(transparentRules)
	f.gate.writePolicy(body)
	deadline := time.Now().Add(10 * time.Second)
	for f.gate.metric(`fqdngate_policy_reloads_total{result="failure"}`) < 1 && f.gate.metric("fqdngate_policy_generation") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the reload was neither applied nor refused within 10s\n%s", f.gate.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	foreignSNI("after a reload to an IPv4-only listener")
	if !strings.Contains(f.gate.stderr.String(), "listen on [::]:3129 to steer both families") {
		t.Errorf("the refused reload does not say what to write\n%s", f.gate.logs())
	}
	// check says the same, positioned.
	out, err := exec.Command(binary, "check", "-c", f.gate.policy).CombinedOutput()
	if err == nil || !strings.Contains(string(out), f.gate.policy+":1:") || !strings.Contains(string(out), "cannot receive IPv6 connections") {
		t.Errorf("fqdngate check on the IPv4-only listener: %v\n%s; want a positioned refusal", err, out)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
