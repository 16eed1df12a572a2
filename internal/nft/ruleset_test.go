package nft

import (
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestRanges(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string // lo-hi
	}{
		{"empty", nil, nil},
		{"one", []string{"192.0.2.0/24"}, []string{"192.0.2.0-192.0.2.255"}},
		{"nested", []string{"192.0.2.0/24", "192.0.2.128/25"}, []string{"192.0.2.0-192.0.2.255"}},
		{"adjacent merge", []string{"192.0.2.0/25", "192.0.2.128/25"}, []string{"192.0.2.0-192.0.2.255"}},
		{"disjoint sorted", []string{"203.0.113.0/24", "192.0.2.1/32"}, []string{"192.0.2.1-192.0.2.1", "203.0.113.0-203.0.113.255"}},
		{"host bits masked", []string{"192.0.2.77/24"}, []string{"192.0.2.0-192.0.2.255"}},
		{"everything", []string{"0.0.0.0/0", "192.0.2.0/24"}, []string{"0.0.0.0-255.255.255.255"}},
		{"v6", []string{"2001:db8::/33", "2001:db8:8000::/33"}, []string{"2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var in []netip.Prefix
			for _, s := range tt.in {
				in = append(in, netip.MustParsePrefix(s))
			}
			var got []string
			for _, r := range ranges(in) {
				got = append(got, r.lo.String()+"-"+r.hi.String())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("range %d: got %s, want %s", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestIntervalElementsOpenEnd(t *testing.T) {
	// The top of the address space has no end element: one past it does
	// not exist, and the kernel treats the last start as open-ended.
	got := intervalElements(&setSpec{kind: cidrSet, prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}})
	if len(got) != 1 || got[0].IntervalEnd {
		t.Errorf("0.0.0.0/0 encodes as %+v, want one start element", got)
	}
	got = intervalElements(&setSpec{kind: cidrSet, prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	if len(got) != 2 || !got[1].IntervalEnd || netip.AddrFrom4([4]byte(got[1].Key)).String() != "192.0.3.0" {
		t.Errorf("192.0.2.0/24 encodes as %+v, want start 192.0.2.0 and end 192.0.3.0", got)
	}
}

func TestIdent(t *testing.T) {
	tests := []struct {
		in     string
		hashed bool
	}{
		{"bank-api", false},
		{"Payments_2", false},
		{"has space", true},
		{"dot.ted", true}, // dots separate rule from group in set names
		{strings.Repeat("a", 65), true},
	}
	for _, tt := range tests {
		got := ident(tt.in)
		if !tt.hashed && got != tt.in {
			t.Errorf("ident(%q) = %q, want it unchanged", tt.in, got)
		}
		if tt.hashed && (got[0] != 'h' || len(got) != 17) {
			t.Errorf("ident(%q) = %q, want h and 16 hex digits", tt.in, got)
		}
	}
	if ident("a b") == ident("a c") {
		t.Error("different names hash alike")
	}
}

func TestSteering(t *testing.T) {
	tests := []struct {
		listen string
		hook   policy.Hook
		want   [2]steer
	}{
		{"", policy.HookForward, [2]steer{steerNone, steerNone}},
		{"0.0.0.0:53", policy.HookForward, [2]steer{steerRedirect, steerNone}},
		{"[::]:53", policy.HookForward, [2]steer{steerRedirect, steerRedirect}},
		{"127.0.0.1:5353", policy.HookForward, [2]steer{steerNone, steerNone}},
		{"127.0.0.1:5353", policy.HookOutput, [2]steer{steerRedirect, steerNone}},
		{"[::1]:5353", policy.HookOutput, [2]steer{steerNone, steerRedirect}},
		{"198.51.100.1:53", policy.HookForward, [2]steer{steerDNAT, steerNone}},
		{"[2001:db8::1]:53", policy.HookOutput, [2]steer{steerNone, steerDNAT}},
	}
	for _, tt := range tests {
		var ap netip.AddrPort
		if tt.listen != "" {
			ap = netip.MustParseAddrPort(tt.listen)
		}
		if got := steering(ap, tt.hook); got != tt.want {
			t.Errorf("steering(%q, %v) = %v, want %v", tt.listen, tt.hook, got, tt.want)
		}
	}
}

// gatewayPolicy has what a gateway's policy can say about its inside:
// groups tied to interfaces, listeners on a wildcard address and on one.
const gatewayPolicy = `
mode: enforce
listen: {dns: "[::]:53", proxy: "198.51.100.1:3128", transparent: "[::]:3129", admin: ""}
firewall: {backend: nftables, hook: forward, table: fqdngate, transparent_ports: [443]}
sources:
  payments: {cidrs: [198.51.100.0/26, "2001:db8:1::/64"], interfaces: [pay0]}
  others: {cidrs: [198.51.100.64/26], interfaces: [oth0, oth1]}
  lab: [198.51.100.128/26]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
  - name: web
    from: [others, lab]
    to: [203.0.113.0/24]
    ports: [80, 443]
`

var goldenCases = []struct {
	name   string
	cfg    Config
	policy string
}{
	{"forward", Config{Table: "fqdngate", Hook: policy.HookForward, LogGroup: 7},
		override(samplePolicy, `listen: {dns: "0.0.0.0:53", admin: ""}`)},
	{"output", Config{Table: "fqdngate", Hook: policy.HookOutput},
		override(samplePolicy, "mode: audit", `listen: {dns: "127.0.0.1:5353", transparent: "[::]:8443", admin: ""}`,
			"firewall: {backend: nftables, hook: output, table: fqdngate, transparent_ports: [443], deny_with: reject, log_allowed: all}")},
	{"forward-reject", Config{Table: "fqdngate", Hook: policy.HookForward},
		override(samplePolicy, `listen: {dns: "0.0.0.0:53", transparent: "[::]:3129", admin: ""}`,
			"firewall: {backend: nftables, hook: forward, table: fqdngate, transparent_ports: [443], deny_with: reject, log_allowed: sampled}")},
	{"gateway", Config{Table: "fqdngate", Hook: policy.HookForward, LogGroup: 7}, gatewayPolicy},
	{"inside", Config{Table: "fqdngate", Hook: policy.HookForward, LogGroup: 7},
		override(gatewayPolicy, "mode: audit", "inside: {ranges: [198.51.100.0/24, \"2001:db8:1::/48\"], interfaces: [eth1, eth2]}",
			"firewall: {backend: nftables, hook: forward, table: fqdngate, reverse_path: loose}")},
	// A node of a cluster: DNS to the cluster DNS Service and NodeLocal
	// DNSCache intercepted before kube-proxy's DNAT, pod and service
	// ranges unfiltered and never steered to the transparent proxy.
	{"cluster", Config{Table: "fqdngate", Hook: policy.HookForward, LogGroup: 7},
		override(samplePolicy, `listen: {dns: "[::]:53", transparent: "[::]:3129", admin: ""}`,
			"firewall: {backend: nftables, hook: forward, table: fqdngate, transparent_ports: [443], intercept_dns: [198.51.100.53, 169.254.20.10, \"2001:db8:96::a\"], unfiltered: [10.244.0.0/16, 10.96.0.0/12, \"2001:db8:244::/56\"]}")},
	{"cluster-output", Config{Table: "fqdngate", Hook: policy.HookOutput},
		override(samplePolicy, `listen: {dns: "127.0.0.1:5353", admin: ""}`,
			"firewall: {backend: nftables, hook: output, table: fqdngate, intercept_dns: [198.51.100.53], unfiltered: [10.244.0.0/16]}")},
}

// TestRenderGolden pins the dry-run output for the sample policy in both
// hooks; run with -update after an intended change.
func TestRenderGolden(t *testing.T) {
	for _, tt := range goldenCases {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.policy)
			got := Render(tt.cfg, p)
			file := "testdata/render-" + tt.name + ".nft"
			if *update {
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Render differs from %s:\n%s", file, got)
			}
			// The dry run is a valid nft script: nft -c checks it against
			// the kernel without committing. netns.New skips without root,
			// except under CI=true.
			ns := netns.New(t)
			if _, err := exec.LookPath("nft"); err != nil {
				t.Fatalf("checking %s needs nft: %v", file, err)
			}
			if out, err := ns.Exec("nft", "-c", "-f", file); err != nil {
				t.Errorf("nft -c -f %s: %v\n%s", file, err, out)
			}
		})
	}
}
