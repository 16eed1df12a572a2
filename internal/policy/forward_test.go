package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// forwardPolicy is a policy with the given lines under dns: and rules.
func forwardPolicy(dnsLines, rules string) string {
	return fmt.Sprintf(`dns:
  upstreams: [192.0.2.53]
%s
rules:
  - name: web
    to: [example.com, "*.example.net"]
%s`, dnsLines, rules)
}

// TestForwardZones: valid zones compile, sorted longest first, with their
// servers; Forwarded finds the longest zone holding a name, search-path
// forms included, and nothing outside.
func TestForwardZones(t *testing.T) {
	p, err := Parse("p.yaml", []byte(forwardPolicy(`  forward:
    - {zone: cluster.local, to: [198.51.100.10]}
    - {zone: Svc.Cluster.Local., to: ["198.51.100.11:5353", "tls://dns.corp@198.51.100.12"]}
    - {zone: 10.in-addr.arpa, to: 198.51.100.10}
    - {zone: corp.example.org, to: [198.51.100.20, "https://dns.corp@198.51.100.21/dns-query"]}`, "")))
	if err != nil {
		t.Fatal(err)
	}
	var zones []string
	for _, z := range p.DNS.Forward {
		zones = append(zones, z.String())
	}
	want := []string{
		"svc.cluster.local (to 198.51.100.11:5353, tls://dns.corp@198.51.100.12:853)",
		"corp.example.org (to 198.51.100.20:53, https://dns.corp@198.51.100.21:443/dns-query)",
		"10.in-addr.arpa (to 198.51.100.10:53)",
		"cluster.local (to 198.51.100.10:53)",
	}
	if strings.Join(zones, "|") != strings.Join(want, "|") {
		t.Errorf("zones:\n got %q\nwant %q", zones, want)
	}
	tests := []struct{ name, zone string }{
		{"cluster.local", "cluster.local"},
		{"CLUSTER.local.", "cluster.local"},
		{"kube-dns.kube-system.svc.cluster.local.", "svc.cluster.local"},
		{"api.example.com.payments.svc.cluster.local", "svc.cluster.local"}, // search-path form
		{"svc.cluster.local", "svc.cluster.local"},
		{"pod.ns.pod.cluster.local", "cluster.local"},
		{"7.0.244.10.in-addr.arpa", "10.in-addr.arpa"},
		{"dc1.corp.example.org", "corp.example.org"},
		{"api.example.com", ""},
		{"xcluster.local", ""},
		{"local", ""},
		{"11.in-addr.arpa", ""},
		{"example.org", ""},
		{"bad..name.cluster.local", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got := ""
		if z := p.Forwarded(tt.name); z != nil {
			got = string(z.Zone)
		}
		if got != tt.zone {
			t.Errorf("Forwarded(%q) = %q, want %q", tt.name, got, tt.zone)
		}
	}
	if n := testing.AllocsPerRun(100, func() { p.Forwarded("api.example.com.payments.svc.cluster.local.") }); n != 0 {
		t.Errorf("Forwarded allocates %v times, want 0", n)
	}
}

// TestForwardErrors: every mistake in dns.forward is positioned and says
// what to write instead.
func TestForwardErrors(t *testing.T) {
	tests := []struct {
		name, dns, rules string
		line, col        int
		want             []string
	}{
		{"root", "  forward: [{zone: ., to: [198.51.100.10]}]", "", 3, 20,
			[]string{`zone "." is the root`, "name an internal zone like cluster.local"}},
		{"public suffix", "  forward: [{zone: com, to: [198.51.100.10]}]", "", 3, 20,
			[]string{"zone com is a public suffix", "corp.example.com"}},
		{"all of in-addr.arpa", "  forward: [{zone: in-addr.arpa, to: [198.51.100.10]}]", "", 3, 20,
			[]string{"zone in-addr.arpa is a public suffix", "{reverse: 10.96.0.0/12"}},
		{"wildcard", `  forward: [{zone: "*.cluster.local", to: [198.51.100.10]}]`, "", 3, 20,
			[]string{"is a pattern", "without wildcards"}},
		{"bad name", "  forward: [{zone: clu..ster, to: [198.51.100.10]}]", "", 3, 20,
			[]string{"is not a valid name", "cluster.local"}},
		{"no servers", "  forward: [{zone: cluster.local, to: []}]", "", 3, 39,
			[]string{"zone cluster.local has no servers", "to: [198.51.100.10]"}},
		{"no to", "  forward: [{zone: cluster.local}]", "", 3, 13,
			[]string{"zone cluster.local has no servers"}},
		{"no zone", "  forward: [{to: [198.51.100.10]}]", "", 3, 13,
			[]string{"has no zone", "{zone: cluster.local"}},
		{"server is a name", "  forward: [{zone: cluster.local, to: [kube-dns]}]", "", 3, 40,
			[]string{"zone cluster.local:", "upstreams are IP addresses"}},
		{"fqdngate itself", "  forward: [{zone: cluster.local, to: [127.0.0.1:15353]}]", "", 3, 40,
			[]string{"127.0.0.1:15353 is fqdngate's own DNS listener", "go round in circles"}},
		{"twice", "  forward:\n    - {zone: cluster.local, to: [198.51.100.10]}\n    - {zone: Cluster.Local, to: [198.51.100.11]}", "", 5, 14,
			[]string{"zone cluster.local is listed twice (first at line 4)", "merge its servers"}},
		{"unknown key", "  forward: [{zone: cluster.local, servers: [198.51.100.10]}]", "", 3, 35,
			[]string{`unknown key "servers"`}},
		{"zone and reverse", "  forward: [{zone: cluster.local, reverse: 10.96.0.0/12, to: [198.51.100.10]}]", "", 3, 44,
			[]string{"has both zone and reverse"}},
		{"reverse not a CIDR", "  forward: [{reverse: 10.96.0.0/33, to: [198.51.100.10]}]", "", 3, 23,
			[]string{`reverse "10.96.0.0/33" is not a CIDR`}},
		{"reverse host bits", "  forward: [{reverse: 10.96.1.0/12, to: [198.51.100.10]}]", "", 3, 23,
			[]string{"has bits set past the prefix length; write 10.96.0.0/12"}},
		{"reverse everything", "  forward: [{reverse: 0.0.0.0/0, to: [198.51.100.10]}]", "", 3, 23,
			[]string{"is every address"}},
		{"reverse twice", "  forward:\n    - {zone: 10.in-addr.arpa, to: [198.51.100.10]}\n    - {reverse: 10.0.0.0/8, to: [198.51.100.11]}", "", 5, 17,
			[]string{"zone 10.in-addr.arpa is listed twice (first at line 4)"}},
		{"reverse without servers", "  forward: [{reverse: 10.244.0.0/16}]", "", 3, 13,
			[]string{"reverse 10.244.0.0/16 has no servers"}},
		{"rule names a name in the zone", "  forward: [{zone: corp.example.org, to: [198.51.100.10]}]",
			"  - name: intranet\n    to: [wiki.corp.example.org]\n", 3, 20,
			[]string{"zone corp.example.org covers \"wiki.corp.example.org\" of rule \"intranet\"", "never learned", "forward a narrower zone"}},
		{"rule wildcard in the zone", "  forward: [{zone: corp.example.org, to: [198.51.100.10]}]",
			"  - name: intranet\n    to: [\"**.corp.example.org\"]\n", 3, 20,
			[]string{`covers "**.corp.example.org" of rule "intranet"`}},
		{"rule names the apex", "  forward: [{zone: corp.example.org, to: [198.51.100.10]}]",
			"  - name: intranet\n    to: [.corp.example.org]\n", 3, 20,
			[]string{`covers ".corp.example.org"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(forwardPolicy(tt.dns, tt.rules)))
			var list ErrorList
			if !errors.As(err, &list) || len(list) != 1 {
				t.Fatalf("Parse: %v, want one error", err)
			}
			e := list[0]
			if e.Line != tt.line || e.Col != tt.col {
				t.Errorf("error at %d:%d, want %d:%d: %s", e.Line, e.Col, tt.line, tt.col, e.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(e.Msg, w) {
					t.Errorf("message %q does not contain %q", e.Msg, w)
				}
			}
		})
	}
}

// TestForwardReverse: reverse: CIDR forwards the reverse zones of the
// range, one per value of the bits up to the next label boundary.
func TestForwardReverse(t *testing.T) {
	_, err := Parse("p.yaml", []byte(forwardPolicy(`  forward:
    - {reverse: 10.244.0.0/16, to: [198.51.100.10]}
    - {reverse: 172.16.0.0/8, to: [198.51.100.10]}`, "")))
	if err == nil || !strings.Contains(err.Error(), "write 172.0.0.0/8") {
		t.Fatalf("Parse: %v, want the host-bits error for 172.16.0.0/8", err)
	}
	p, err := Parse("p.yaml", []byte(forwardPolicy(`  forward:
    - {reverse: 10.244.0.0/16, to: [198.51.100.10]}
    - {reverse: 10.96.0.0/12, to: [198.51.100.10]}
    - {reverse: 192.0.2.128/25, to: [198.51.100.10]}
    - {reverse: "2001:db8:244::/54", to: [198.51.100.10]}`, "")))
	if err != nil {
		t.Fatal(err)
	}
	var zones []string
	for _, z := range p.DNS.Forward {
		zones = append(zones, string(z.Zone))
	}
	slices.Sort(zones)
	var want []string
	want = append(want, "244.10.in-addr.arpa")
	for i := 96; i <= 111; i++ {
		want = append(want, fmt.Sprintf("%d.10.in-addr.arpa", i))
	}
	for i := 128; i <= 255; i++ {
		want = append(want, fmt.Sprintf("%d.2.0.192.in-addr.arpa", i))
	}
	for _, n := range []string{"0", "1", "2", "3"} { // /54 is 13 nibbles plus two bits: the 14th nibble is 0-3
		want = append(want, n+".0.4.4.2.0.8.b.d.0.1.0.0.2.ip6.arpa")
	}
	slices.Sort(want)
	if !slices.Equal(zones, want) {
		t.Errorf("zones:\n got %q\nwant %q", zones, want)
	}
	for name, zone := range map[string]string{
		"7.0.244.10.in-addr.arpa":                "244.10.in-addr.arpa",
		"10.0.96.10.in-addr.arpa":                "96.10.in-addr.arpa",
		"1.2.3.111.10.in-addr.arpa":              "111.10.in-addr.arpa",
		"1.2.3.112.10.in-addr.arpa":              "",
		"5.200.2.0.192.in-addr.arpa":             "200.2.0.192.in-addr.arpa",
		"5.100.2.0.192.in-addr.arpa":             "",
		"a.3.0.4.4.2.0.8.b.d.0.1.0.0.2.ip6.arpa": "3.0.4.4.2.0.8.b.d.0.1.0.0.2.ip6.arpa",
		"a.4.0.4.4.2.0.8.b.d.0.1.0.0.2.ip6.arpa": "",
	} {
		got := ""
		if z := p.Forwarded(name); z != nil {
			got = string(z.Zone)
		}
		if got != zone {
			t.Errorf("Forwarded(%q) = %q, want %q", name, got, zone)
		}
	}
}

// TestForwardBesideWildcard: a wildcard above a zone is no error; the
// zone takes the names under it (Decide denies them), the rule the rest.
func TestForwardBesideWildcard(t *testing.T) {
	p, err := Parse("p.yaml", []byte(forwardPolicy("  forward: [{zone: corp.example.org, to: [198.51.100.10]}]",
		"  - name: org\n    to: [\"**.example.org\"]\n")))
	if err != nil {
		t.Fatal(err)
	}
	if p.Forwarded("dc.corp.example.org") == nil {
		t.Error("dc.corp.example.org is not forwarded")
	}
	if p.Forwarded("www.example.org") != nil {
		t.Error("www.example.org is forwarded")
	}
	if d := p.Decide(Query{Name: "www.example.org", AnyPort: true}); d.Action != Allow {
		t.Errorf("www.example.org: %v, want allow", d.Action)
	}
	// Inside the zone the rule opens nothing: not for the proxy, not by
	// port, not the apex.
	for _, q := range []Query{
		{Name: "dc.corp.example.org", Port: 443},
		{Name: "DC.corp.example.org.", AnyPort: true},
		{Name: "corp.example.org", Port: 443},
	} {
		d := p.Decide(q)
		if d.Action != Deny || d.Reason != ReasonForwarded || d.Rule != nil || d.Pattern != "corp.example.org" {
			t.Errorf("Decide(%+v) = %+v, want deny, reason forwarded zone, pattern corp.example.org", q, d)
		}
		if p.RuleAllows(p.Rules[1], q) {
			t.Errorf("RuleAllows(org, %+v), want false", q)
		}
	}
	if n := testing.AllocsPerRun(100, func() { p.Decide(Query{Name: "dc.corp.example.org", Port: 443}) }); n != 0 {
		t.Errorf("Decide allocates %v times for a name in a zone, want 0", n)
	}
}

// firewallPolicy is a policy with the nftables backend, hook, listen.dns and
// the given lines under firewall:.
func firewallPolicy(hook, dnsListen, lines string) string {
	return fmt.Sprintf(`dns: {upstreams: [192.0.2.53]}
listen: {dns: %q}
firewall:
  backend: nftables
  hook: %s
%s
sources:
  pods: [10.244.0.0/16, "2001:db8:244::/56"]
rules:
  - name: web
    to: example.com
`, dnsListen, hook, lines)
}

// TestInterceptAndUnfiltered: the two firewall lists compile to addresses
// and ranges; their mistakes are positioned and say what to write.
func TestInterceptAndUnfiltered(t *testing.T) {
	p, err := Parse("p.yaml", []byte(firewallPolicy("forward", "[::]:53",
		"  intercept_dns: [198.51.100.10, 169.254.20.10, \"2001:db8:96::a\"]\n  unfiltered: [10.244.0.0/16, 198.51.100.0/24, \"2001:db8:244::/56\"]")))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(p.Firewall.InterceptDNS); got != "[198.51.100.10 169.254.20.10 2001:db8:96::a]" {
		t.Errorf("InterceptDNS = %s", got)
	}
	if got := fmt.Sprint(p.Firewall.Unfiltered); got != "[10.244.0.0/16 198.51.100.0/24 2001:db8:244::/56]" {
		t.Errorf("Unfiltered = %s", got)
	}
	if len(p.Firewall.InterceptDNS) != 3 || p.Firewall.InterceptDNS[0] != netip.MustParseAddr("198.51.100.10") {
		t.Errorf("InterceptDNS = %v", p.Firewall.InterceptDNS)
	}

	tests := []struct {
		name, hook, listen, lines string
		line, col                 int
		want                      []string
	}{
		{"intercept a CIDR", "forward", "[::]:53", "  intercept_dns: [198.51.100.0/24]", 6, 19,
			[]string{`"198.51.100.0/24" is not an IP address`, "like 198.51.100.10"}},
		{"intercept a name", "forward", "[::]:53", "  intercept_dns: kube-dns", 6, 18,
			[]string{`"kube-dns" is not an IP address`}},
		{"intercept loopback", "output", "127.0.0.1:53", "  intercept_dns: [127.0.0.53]", 6, 19,
			[]string{"127.0.0.53 is no DNS service's address"}},
		{"intercept twice", "forward", "[::]:53", "  intercept_dns: [198.51.100.10, 198.51.100.10]", 6, 34,
			[]string{"198.51.100.10 is listed twice"}},
		{"intercept empty", "forward", "[::]:53", "  intercept_dns: []", 6, 18,
			[]string{"firewall.intercept_dns is empty"}},
		{"intercept IPv6 to an IPv4 listener", "forward", "0.0.0.0:53", "  intercept_dns: [\"2001:db8:96::a\"]", 6, 19,
			[]string{"listen.dns 0.0.0.0:53 cannot receive the IPv6 queries", `listen on "[::]:53"`}},
		{"intercept on loopback with hook forward", "forward", "127.0.0.1:53", "  intercept_dns: [198.51.100.10]", 6, 19,
			[]string{"cannot receive the IPv4 queries"}},
		{"unfiltered everything", "forward", "[::]:53", "  unfiltered: [0.0.0.0/0]", 6, 16,
			[]string{"0.0.0.0/0 is every address, so nothing would be filtered"}},
		{"unfiltered host bits", "forward", "[::]:53", "  unfiltered: [10.244.1.0/16]", 6, 16,
			[]string{"has bits set past the prefix length; write 10.244.0.0/16"}},
		{"unfiltered empty", "forward", "[::]:53", "  unfiltered: []", 6, 15,
			[]string{"firewall.unfiltered is empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(firewallPolicy(tt.hook, tt.listen, tt.lines)))
			var list ErrorList
			if !errors.As(err, &list) || len(list) != 1 {
				t.Fatalf("Parse: %v, want one error", err)
			}
			e := list[0]
			if e.Line != tt.line || e.Col != tt.col {
				t.Errorf("error at %d:%d, want %d:%d: %s", e.Line, e.Col, tt.line, tt.col, e.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(e.Msg, w) {
					t.Errorf("message %q does not contain %q", e.Msg, w)
				}
			}
		})
	}
	// Without the kernel backend neither can be done.
	for _, key := range []string{"intercept_dns: [198.51.100.10]", "unfiltered: [10.244.0.0/16]"} {
		y := "dns: {upstreams: [192.0.2.53]}\nfirewall:\n  " + key + "\nrules: [{name: web, to: example.com}]\n"
		_, err := Parse("p.yaml", []byte(y))
		if err == nil || !strings.Contains(err.Error(), "needs firewall.backend: nftables") || !strings.Contains(err.Error(), "p.yaml:3:") {
			t.Errorf("%s without nftables: %v, want a positioned error asking for the backend", key, err)
		}
	}
}
