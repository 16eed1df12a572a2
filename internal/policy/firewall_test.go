package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// steeringPolicy is a policy with the nftables backend, the given hook and
// transparent listener, sources a (IPv4) and b (IPv6), and rules.
func steeringPolicy(hook, transparent, rules string) string {
	return fmt.Sprintf(`dns: {upstreams: [192.0.2.53]}
listen: {transparent: %q}
firewall:
  backend: nftables
  hook: %s
  transparent_ports: [443]
sources:
  a: [192.0.2.0/24]
  b: ["2001:db8:1::/64"]
rules:
%s`, transparent, hook, rules)
}

const (
	rulesA   = "  - name: web\n    from: [a]\n    to: example.com\n"
	rulesB   = "  - name: web\n    from: [b]\n    to: example.com\n"
	rulesAny = "  - name: web\n    to: example.com\n"
)

// TestTransparentSteering: a transparent listener the kernel cannot steer
// some source's family to is refused at listen.transparent, saying what to
// write; one it can steer every family to is accepted.
func TestTransparentSteering(t *testing.T) {
	tests := []struct {
		name, hook, listen, rules string
		want                      []string // nil: the policy is valid
	}{
		{"forward dual-stack", "forward", "[::]:3129", rulesAny, nil},
		{"forward v4 wildcard, v4 sources", "forward", "0.0.0.0:3129", rulesA, nil},
		{"forward v4 address, v4 sources", "forward", "192.0.2.1:3129", rulesA, nil},
		{"forward v6 address, v6 sources", "forward", "[2001:db8:1::1]:3129", rulesB, nil},
		{"output loopback, v4 sources", "output", "127.0.0.1:3129", rulesA, nil},
		{"output dual-stack", "output", "[::]:3129", rulesAny, nil},
		{"forward loopback", "forward", "127.0.0.1:3129", rulesA,
			[]string{"listen.transparent 127.0.0.1:3129 is on loopback", "firewall.hook: forward", "listen on [::]:3129"}},
		{"forward v6 loopback", "forward", "[::1]:3129", rulesB,
			[]string{"is on loopback", "listen on [::]:3129"}},
		{"forward v4 wildcard, rule for every source", "forward", "0.0.0.0:3129", rulesAny,
			[]string{"cannot receive IPv6 connections to firewall.transparent_ports (such as 443)", `rule "web" applies to every source`, "listen on [::]:3129 to steer both families"}},
		{"forward v4 address, v6 group", "forward", "192.0.2.1:3129", rulesB,
			[]string{"cannot receive IPv6 connections", `source group "b" of rule "web" has IPv6 addresses`}},
		{"forward v6 address, v4 group", "forward", "[2001:db8:1::1]:3129", rulesA,
			[]string{"cannot receive IPv4 connections", `source group "a"`}},
		{"output v4 loopback, rule for every source", "output", "127.0.0.1:3129", rulesAny,
			[]string{"listen.transparent 127.0.0.1:3129 cannot receive IPv6 connections", "listen on [::]:3129"}},
		{"output v6 loopback, v4 group", "output", "[::1]:3129", rulesA,
			[]string{"cannot receive IPv4 connections"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(steeringPolicy(tt.hook, tt.listen, tt.rules)))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse: %v, want it valid", err)
				}
				return
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) != 1 {
				t.Fatalf("Parse: %v, want one error", err)
			}
			if e := list[0]; e.Line != 2 || e.Col != 23 {
				t.Errorf("error at %d:%d, want 2:23 (listen.transparent): %s", e.Line, e.Col, e.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(list[0].Msg, w) {
					t.Errorf("message %q does not contain %q", list[0].Msg, w)
				}
			}
		})
	}
}

func TestTransparentPortsWithoutListener(t *testing.T) {
	y := "dns: {upstreams: [192.0.2.53]}\nfirewall:\n  backend: nftables\n  transparent_ports: [443]\n"
	_, err := Parse("p.yaml", []byte(y))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("Parse: %v, want one error", err)
	}
	if e := list[0]; e.Line != 4 || e.Col != 22 || !strings.Contains(e.Msg, "firewall.transparent_ports needs listen.transparent") {
		t.Errorf("got %v, want p.yaml:4:22: firewall.transparent_ports needs listen.transparent", e)
	}
	// Without the nftables backend nothing is steered, and nothing to check.
	if _, err := Parse("p.yaml", []byte("dns: {upstreams: [192.0.2.53]}\nlisten: {transparent: \"127.0.0.1:3129\"}\nfirewall:\n  hook: forward\n  transparent_ports: [443]\n")); err != nil {
		t.Errorf("backend none: %v, want valid", err)
	}
}

func TestSteered(t *testing.T) {
	tests := []struct {
		listen string
		hook   Hook
		v4, v6 bool
	}{
		{"", HookForward, false, false},
		{"0.0.0.0:53", HookForward, true, false},
		{"[::]:53", HookForward, true, true},
		{"[::]:53", HookOutput, true, true},
		{"127.0.0.1:5353", HookForward, false, false},
		{"127.0.0.1:5353", HookOutput, true, false},
		{"[::1]:5353", HookOutput, false, true},
		{"198.51.100.1:53", HookForward, true, false},
		{"[2001:db8::1]:53", HookOutput, false, true},
		{"[::ffff:198.51.100.1]:53", HookForward, true, false},
	}
	for _, tt := range tests {
		var ap netip.AddrPort
		if tt.listen != "" {
			ap = netip.MustParseAddrPort(tt.listen)
		}
		if v4, v6 := Steered(ap, tt.hook); v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("Steered(%q, %v) = %v, %v; want %v, %v", tt.listen, tt.hook, v4, v6, tt.v4, tt.v6)
		}
	}
}

// TestListenNetwork: an IPv4 listener, 0.0.0.0 included, binds IPv4 only,
// as Steered has it; "[::]" binds both families.
func TestListenNetwork(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"0.0.0.0:53", "udp4"},
		{"127.0.0.1:53", "udp4"},
		{"198.51.100.1:53", "udp4"},
		{"[::ffff:198.51.100.1]:53", "udp4"},
		{"[::]:53", "udp"},
		{"[::1]:53", "udp"},
		{"[2001:db8::1]:53", "udp"},
		{"not an address", "udp"},
	} {
		if got := ListenNetwork("udp", tt.addr); got != tt.want {
			t.Errorf("ListenNetwork(udp, %q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

func TestRuleByName(t *testing.T) {
	p, err := Parse("p.yaml", []byte(steeringPolicy("forward", "[::]:3129", rulesA+"  - name: other\n    to: other.example\n")))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"web", "other"} {
		if r := p.Rule(name); r == nil || r.Name != name {
			t.Errorf("Rule(%q) = %v", name, r)
		}
	}
	if r := p.Rule("nope"); r != nil {
		t.Errorf("Rule(nope) = %v, want nil", r)
	}
}

// TestTransparentSteeringInside: on a gateway only the inside is steered,
// so a rule for every source needs the listener to receive the families
// the inside has, not both.
func TestTransparentSteeringInside(t *testing.T) {
	for _, tt := range []struct {
		name, inside string
		wantErr      bool
	}{
		{"IPv4 inside", "inside: {ranges: [192.0.2.0/24]}", false},
		{"dual-stack inside", `inside: {ranges: [192.0.2.0/24, "2001:db8:1::/64"]}`, true},
		{"inside by interface", "inside: {interfaces: [eth1]}", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(`dns: {upstreams: [192.0.2.53]}
listen: {transparent: "0.0.0.0:3129"}
firewall: {backend: nftables, hook: forward, transparent_ports: [443]}
`+tt.inside+`
rules:
`+rulesAny))
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("Parse: %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr && !strings.Contains(err.Error(), "cannot receive IPv6 connections") {
				t.Errorf("Parse: %v, want it to say the listener cannot receive IPv6", err)
			}
		})
	}
}
