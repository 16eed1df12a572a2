package explain

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestParseTarget(t *testing.T) {
	tests := []struct {
		in      string
		want    Target
		wantErr string
	}{
		{in: "api.bank.example", want: Target{Name: "api.bank.example", Port: 443}},
		{in: "API.Bank.Example.:8443", want: Target{Name: "api.bank.example", Port: 8443}},
		{in: "dns.example:853/udp", want: Target{Name: "dns.example", Port: 853, Proto: policy.UDP}},
		{in: "bücher.example", want: Target{Name: "xn--bcher-kva.example", Port: 443}},
		{in: "203.0.113.7:5432", want: Target{Addr: netip.MustParseAddr("203.0.113.7"), Port: 5432}},
		{in: "[2001:db8::1]:443/tcp", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443}},
		{in: "2001:db8::1", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443}},
		{in: "a.example:0", wantErr: "port must be 1 to 65535"},
		{in: "a.example:70000", wantErr: "port must be 1 to 65535"},
		{in: "a.example:443/sctp", wantErr: "protocol must be tcp or udp"},
		{in: "bad..name", wantErr: "empty label"},
		{in: "https://api.bank.example/v1/pay?x=1", want: Target{Name: "api.bank.example", Port: 443}},
		{in: "HTTP://user:pw@www.example.com#top", want: Target{Name: "www.example.com", Port: 80}},
		{in: "http://www.example.com:8080/", want: Target{Name: "www.example.com", Port: 8080}},
		{in: "wss://203.0.113.7/socket", want: Target{Addr: netip.MustParseAddr("203.0.113.7"), Port: 443}},
		{in: "https://[2001:db8::1]/", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 443}},
		{in: "https://[2001:db8::1]:8443/x", want: Target{Addr: netip.MustParseAddr("2001:db8::1"), Port: 8443}},
		{in: "postgres://db.example:5432/app", want: Target{Name: "db.example", Port: 5432}},
		{in: "postgres://db.example/app", wantErr: "has no port fqdngate knows"},
		{in: "https://2001:db8::1/", wantErr: "needs brackets"},
		{in: "https:///path", wantErr: "no host"},
		{in: "https://a.example:0/", wantErr: "port must be 1 to 65535"},
		{in: "https://bad..name/", wantErr: "empty label"},
	}
	for _, tt := range tests {
		got, err := ParseTarget(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTarget(%q): got error %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseTarget(%q): got %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

const explainPolicy = `listen: {dns: "", proxy: "", admin: ""}
sources: {payments: [10.1.0.0/24]}
rules:
  - name: bank-api
    from: [payments]
    to: ["*.bank.example"]
    ports: [443, 53/udp]
  - name: db
    from: [payments]
    to: [db.partner.example]
    ports: [5432]
    inspect_tunnels: false
  - name: partner
    to: [203.0.113.0/24, "**.cdn.example"]
`

// gatewayPolicy is explainPolicy on a gateway, where the kernel applies
// the rules to every source routed through.
const gatewayPolicy = `firewall: {backend: nftables, hook: forward, state_file: ""}
dns: {upstreams: [192.0.2.53], wildcard_budget: 0}
` + explainPolicy

func TestExplain(t *testing.T) {
	this := netaddr.HostList{netip.MustParseAddr("192.0.2.129")}
	tests := []struct {
		name     string
		policy   string
		host     netaddr.Host
		from, to string
		want     Result   // the fields compared: Action, Rule, Served, InspectTunnels, BudgetPattern, WildcardBudget, Routed
		text     []string // lines the text holds
		notText  []string // and does not
	}{
		{
			name: "allowed under a wildcard", policy: explainPolicy, from: "10.1.0.7", to: "api.bank.example:443",
			want: Result{Action: "allow", Rule: "bank-api", Served: true, InspectTunnels: ptr(true), BudgetPattern: "*.bank.example", WildcardBudget: 300},
			text: []string{"ALLOW: 10.1.0.7 -> api.bank.example port 443/tcp", "rule:    bank-api", "via:     source group payments",
				"tunnels: inspected", "budget:  300 new names a minute per client under *.bank.example (dns.wildcard_budget)"},
		},
		{
			name: "allowed over UDP: no tunnels", policy: explainPolicy, from: "10.1.0.7", to: "ns.bank.example:53/udp",
			want: Result{Action: "allow", Rule: "bank-api", Served: true, BudgetPattern: "*.bank.example", WildcardBudget: 300},
			text: []string{"budget:  300"}, notText: []string{"tunnels:"},
		},
		{
			name: "exact name, tunnels not inspected, no budget", policy: explainPolicy, from: "10.1.0.7", to: "db.partner.example:5432",
			want: Result{Action: "allow", Rule: "db", Served: true, InspectTunnels: ptr(false)},
			text: []string{"tunnels: not inspected (inspect_tunnels: false)"}, notText: []string{"budget:"},
		},
		{
			name: "CIDR: no budget", policy: explainPolicy, from: "10.1.0.7", to: "203.0.113.7:443",
			want:    Result{Action: "allow", Rule: "partner", Served: true, InspectTunnels: ptr(true)},
			notText: []string{"budget:"},
		},
		{
			name: "budget off", policy: gatewayPolicy, from: "10.1.0.7", to: "a.b.cdn.example",
			want: Result{Action: "allow", Rule: "partner", Served: true, InspectTunnels: ptr(true), BudgetPattern: "**.cdn.example"},
			text: []string{"budget:  none: dns.wildcard_budget is 0, every new name under **.cdn.example reaches the upstream"},
		},
		{
			name: "denied on a port: no extras", policy: explainPolicy, from: "10.1.0.7", to: "api.bank.example:80",
			want:    Result{Action: "deny", Served: true},
			text:    []string{"DENY: 10.1.0.7 -> api.bank.example port 80/tcp", "source groups: payments", "not on this port", "closest: rule bank-api (pattern *.bank.example)"},
			notText: []string{"tunnels:", "budget:"},
		},
		{
			name: "outside the inside", policy: explainPolicy, from: "203.0.113.9", to: "x.cdn.example",
			want: Result{Action: "deny", Served: false},
			text: []string{"DENY: 203.0.113.9 -> x.cdn.example port 443/tcp",
				"reason:  not served: 203.0.113.9 is outside the inside (inside: source groups payments)",
				"only for its inside and this host"},
			notText: []string{"rule:", "tunnels:", "budget:", "routed:"},
		},
		{
			name: "outside, on a gateway that routes it", policy: gatewayPolicy, from: "198.51.100.9", to: "203.0.113.7:443",
			want: Result{Action: "deny", Served: false, Routed: &Routed{Action: "allow", Rule: "partner", Pattern: "203.0.113.0/24"}},
			text: []string{"not served: 198.51.100.9 is outside the inside",
				"routed:  the kernel still lets this source's traffic through the gateway by rule partner (pattern 203.0.113.0/24)"},
		},
		{
			name: "outside, on a gateway that drops it", policy: gatewayPolicy, from: "198.51.100.9", to: "api.bank.example",
			want: Result{Action: "deny", Served: false}, notText: []string{"routed:"},
		},
		{
			name: "outside, on a gateway in audit mode", policy: "mode: audit\n" + gatewayPolicy, from: "198.51.100.9", to: "api.bank.example",
			want: Result{Action: "deny", Served: false, Routed: &Routed{Action: "would-deny"}},
			text: []string{"routed:  in audit mode the kernel still lets this source's traffic through the gateway, counted as would-deny"},
		},
		{
			name: "loopback is this host", policy: explainPolicy, from: "127.0.0.1", to: "203.0.113.7:443",
			want: Result{Action: "allow", Rule: "partner", Served: true, InspectTunnels: ptr(true)},
		},
		{
			name: "an address of this host, known", policy: explainPolicy, host: this, from: "192.0.2.129", to: "203.0.113.7:443",
			want: Result{Action: "allow", Rule: "partner", Served: true, InspectTunnels: ptr(true)},
		},
		{
			name: "an address of this host, unknown", policy: explainPolicy, from: "192.0.2.129", to: "203.0.113.7:443",
			want: Result{Action: "deny", Served: false},
		},
		{
			name: "no inside at all", policy: "listen: {dns: \"\", proxy: \"\", admin: \"\"}\nrules: [{name: a, to: a.example}]\n", from: "192.0.2.1", to: "a.example",
			want: Result{Action: "deny", Served: false},
			text: []string{"(inside: none: the policy has no source groups and no inside key)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("t.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			res, err := Explain(p, tt.from, tt.to, tt.host)
			if err != nil {
				t.Fatal(err)
			}
			got := Result{Action: res.Action, Rule: res.Rule, Served: res.Served, InspectTunnels: res.InspectTunnels,
				BudgetPattern: res.BudgetPattern, WildcardBudget: res.WildcardBudget, Routed: res.Routed}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %s, want %s", show(got), show(tt.want))
			}
			text := res.Text()
			for _, w := range tt.text {
				if !strings.Contains(text, w) {
					t.Errorf("text lacks %q:\n%s", w, text)
				}
			}
			for _, w := range tt.notText {
				if strings.Contains(text, w) {
					t.Errorf("text holds %q:\n%s", w, text)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func show(r Result) string {
	b, _ := json.Marshal(r)
	return string(b)
}

func TestExplainBadSource(t *testing.T) {
	p, err := policy.Parse("t.yaml", []byte(explainPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Explain(p, "not-an-ip", "a.example", nil); err == nil {
		t.Error("a source that is not an IP must be an error")
	}
}

// TestExplainForwardZone: a name in a forward zone is denied whatever the
// rules say (a wildcard above the zone included), and the explanation
// names the zone and what it means.
func TestExplainForwardZone(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`dns:
  upstreams: [192.0.2.53]
  forward: [{zone: corp.example.org, to: [192.0.2.10]}]
sources: {office: [10.1.0.0/16]}
rules:
  - name: org
    to: ["**.example.org"]
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Explain(p, "10.1.0.7", "dc.corp.example.org", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Action != "deny" || r.Reason != "forwarded zone" || r.Zone != "corp.example.org" || r.Rule != "" {
		t.Errorf("Explain = %+v, want deny, reason forwarded zone, zone corp.example.org", r)
	}
	if txt := r.Text(); !strings.Contains(txt, "zone:    corp.example.org (dns.forward)") || !strings.Contains(txt, "never learned") {
		t.Errorf("Text:\n%s\nwant the zone and that its addresses are never learned", txt)
	}
	if r, _ := Explain(p, "10.1.0.7", "www.example.org", nil); r.Action != "allow" || r.Zone != "" {
		t.Errorf("outside the zone: %+v, want allow by rule org", r)
	}
}

// TestExplainPod: a source that is a pod's address, by the policy's pod
// snapshot, is named with its pod and its groups.
func TestExplainPod(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`dns: {upstreams: [192.0.2.53]}
kubernetes: {node: n1, cluster_cidrs: [10.244.0.0/16], dns: {address: 10.244.0.10}}
sources:
  checkout: {kubernetes: {namespaces: [payments]}}
rules: [{name: bank, from: [checkout], to: [api.bank.example]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddr("10.244.1.5")
	if err := p.SetMembers(p.NewMembers([]policy.Pod{{Namespace: "payments", Name: "c1", Addrs: []netip.Addr{src}}}, true)); err != nil {
		t.Fatal(err)
	}
	r, err := Explain(p, src.String(), "api.bank.example:443", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Pod != "payments/c1" || r.Action != "allow" || r.Group != "checkout" {
		t.Errorf("got pod %q, %s via %q; want payments/c1, allow via checkout", r.Pod, r.Action, r.Group)
	}
	if !strings.Contains(r.Text(), "  pod:     payments/c1\n") {
		t.Errorf("text lacks the pod:\n%s", r.Text())
	}
	if r, _ := Explain(p, "10.244.1.6", "api.bank.example:443", nil); r.Pod != "" || r.Action != "deny" {
		t.Errorf("another address: pod %q, %s; want none, deny", r.Pod, r.Action)
	}
}

// FuzzParseTarget: /v1/explain hands it untrusted text. It never panics,
// and a target it accepts has a port and exactly one of a name and an
// address.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"api.bank.example", "a.example:8443/udp", "[2001:db8::1]:443", "https://u@a.example:8080/p?q#f", "wss://[::1]/", "x://", "https://[", "http://:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTarget(s)
		if err != nil {
			return
		}
		if got.Port == 0 || (got.Name == "") == !got.Addr.IsValid() {
			t.Errorf("ParseTarget(%q) = %+v", s, got)
		}
	})
}

// TestExplainDNSSEC: with validation on, an allowed name shows whether its
// rule requires secure answers; without it, nothing is said.
func TestExplainDNSSEC(t *testing.T) {
	const pol = `listen: {dns: "", proxy: "", admin: ""}
dns: {upstreams: [192.0.2.53], dnssec: validate}
rules:
  - name: bank-api
    to: [api.bank.example]
    dnssec: required
  - name: web
    to: [www.example]
`
	tests := []struct {
		policy, to, want, text string
	}{
		{pol, "api.bank.example", "required", "dnssec:  required: answered and learned only when DNSSEC proves the answer secure (dnssec: required)"},
		{pol, "www.example", "validated", "dnssec:  validated: bogus answers are refused, answers from unsigned zones are answered (dns.dnssec: validate)"},
		{pol, "evil.example", "", ""},
		{"listen: {dns: \"\", proxy: \"\", admin: \"\"}\nrules: [{name: web, to: www.example}]\n", "www.example", "", ""},
	}
	for _, tt := range tests {
		p, err := policy.Parse("t.yaml", []byte(tt.policy))
		if err != nil {
			t.Fatal(err)
		}
		res, err := Explain(p, "127.0.0.1", tt.to, nil)
		if err != nil {
			t.Fatal(err)
		}
		text := res.Text()
		if res.DNSSEC != tt.want || tt.text != "" && !strings.Contains(text, tt.text) || tt.text == "" && strings.Contains(text, "dnssec:") {
			t.Errorf("%s: DNSSEC %q, want %q; text:\n%s", tt.to, res.DNSSEC, tt.want, text)
		}
	}
}
