package nft

import (
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestShowNewStatements: firewall show reads back what the hardened
// ruleset programs: conntrack states and neighbour discovery matches, as
// nft would write them.
func TestShowNewStatements(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(outputPolicy, `listen: {dns: "127.0.0.1:5353"}`,
		"firewall: {backend: nftables, hook: output, table: fqdngate}"))
	b := startBackend(t, n.gw, Config{Hook: policy.HookOutput, LogGroup: 3}, p)
	var buf strings.Builder
	if err := b.Show(&buf); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	for _, want := range []string{
		"ct state established accept  # established flows",
		"ct state related meta l4proto ipv6-icmp accept  # icmp errors of tracked flows",
		"meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 133-137 ip6 hoplimit 255 ip6 daddr fe80::/10 accept",
		"ip6 daddr ff02::/16 accept",
		"icmpv6 type 133-137 meta skuid 0-4294967295 counter packets 0 bytes 0 drop",
		"icmpv6 type 135-136 ip6 hoplimit 255 accept",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Show output lacks %q:\n%s", want, got)
		}
	}
}
