package nft

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestTransparentPortNeverFallsBack: TCP to a transparent port that the nat
// chain could not steer (here IPv6, with an IPv4-only listener) is
// dropped, not accepted by the learned sets: those know the address, not
// the name the client asks for. The loader refuses such a listener; the
// kernel holds the line on its own too.
func TestTransparentPortNeverFallsBack(t *testing.T) {
	n := newForwardNet(t)
	tcpBanner(t, n.gw.Listen("tcp", "198.51.100.1:3129"), "proxy")
	p := mustParse(t, override(forwardPolicy, `listen: {dns: "", transparent: "[::]:3129"}`,
		"firewall: {backend: nftables, hook: forward, table: fqdngate, transparent_ports: [443]}"))
	// What the loader would refuse: IPv6 sources, an IPv4-only listener.
	p.Listen.Transparent = "198.51.100.1:3129"
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	publish(t, b, "bank-api", "payments", srvA6, time.Minute)
	publish(t, b, "bank-api", "payments", srvA, time.Minute)

	if got := tcpRead(n.client, srcPay6, "["+srvA6+"]:443"); got != "" {
		t.Errorf("IPv6 to the learned address on transparent port 443: server said %q, want the connection dropped", got)
	}
	if got := tcpRead(n.client, srcPayments, srvA+":443"); got != "proxy" {
		t.Errorf("IPv4 to transparent port 443: got %q, want the transparent proxy", got)
	}
	// Other ports of learned addresses are the learned sets' to decide.
	publish(t, b, "web", "others", srvB, time.Minute)
	checkReach(t, n.client, []reach{{srcOthers, srvB, "8080", true}})
}

// TestDenyVerdicts: what ends a denial in each mode and with each
// deny_with. Audit mode never drops or rejects, whatever deny_with says.
func TestDenyVerdicts(t *testing.T) {
	for _, tt := range []struct {
		mode, denyWith string
		want, never    []string
	}{
		{"enforce", "drop", []string{"counter drop comment \"default deny\""}, []string{"reject"}},
		{"enforce", "reject", []string{
			"meta l4proto tcp counter reject with tcp reset comment \"default deny\"",
			"counter reject with icmpx admin-prohibited comment \"default deny\"",
			"meta nfproto ipv6 meta l4proto udp th dport 53 counter reject with icmpx admin-prohibited",
		}, []string{"drop comment \"default deny\"", "drop comment \"dns"}},
		// The listeners chain drops the outside's packets in every mode:
		// who fqdngate serves is not a policy decision audit mode relaxes.
		{"audit", "drop", []string{"counter comment \"default deny\""}, []string{"drop comment \"default deny", "drop comment \"dns", "drop comment \"transparent", "reject"}},
		{"audit", "reject", []string{"counter comment \"default deny\""}, []string{"drop comment \"default deny", "drop comment \"dns", "drop comment \"transparent", "reject"}},
	} {
		for _, hook := range []string{"forward", "output"} {
			p := mustParse(t, override(samplePolicy, "mode: "+tt.mode, `listen: {dns: "0.0.0.0:53", admin: ""}`,
				"firewall: {backend: nftables, hook: "+hook+", table: fqdngate, deny_with: "+tt.denyWith+"}"))
			h := policy.HookForward
			if hook == "output" {
				h = policy.HookOutput
			}
			got := Render(Config{Table: "fqdngate", Hook: h}, p)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("%s, deny_with %s, hook %s: ruleset lacks %q:\n%s", tt.mode, tt.denyWith, hook, w, got)
				}
			}
			for _, w := range tt.never {
				if strings.Contains(got, w) {
					t.Errorf("%s, deny_with %s, hook %s: ruleset has %q:\n%s", tt.mode, tt.denyWith, hook, w, got)
				}
			}
		}
	}
}

// TestAllowLog: a new connection an accept rule lets through reaches
// OnAllow with the rule and group of that kernel rule; an established
// one does not come again; a packet logged under the ruleset before a
// reload is still attributed after it.
func TestAllowLog(t *testing.T) {
	n := newForwardNet(t)
	allowed := make(chan Allowed, 16)
	onAllow := func(a Allowed) {
		select {
		case allowed <- a:
		default:
		}
	}
	p := mustParse(t, override(forwardPolicy, "firewall: {backend: nftables, hook: forward, table: fqdngate, log_allowed: all}"))
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, OnAllow: onAllow}, p)
	if b.allowNflog == nil {
		t.Fatal("the allow log's nflog group was not bound (see the log)")
	}
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	c, err := dial(n.client, srcPayments, srvA, "443", reachWait)
	if err != nil {
		t.Fatal(err)
	}
	// More packets of the same connection: established, not logged.
	c.Write([]byte("hello\n"))
	c.Close()
	checkReach(t, n.client, []reach{{srcOthers, srvCIDR, "5432", true}})

	want := []Allowed{
		{Src: netip.MustParseAddr(srcPayments), Dst: netip.MustParseAddr(srvA), Proto: policy.TCP, Port: 443, Rule: "bank-api", Group: "payments"},
		{Src: netip.MustParseAddr(srcOthers), Dst: netip.MustParseAddr(srvCIDR), Proto: policy.TCP, Port: 5432, Rule: "partner-db", Group: "others"},
	}
	for i, w := range want {
		select {
		case got := <-allowed:
			if got != w {
				t.Errorf("allow %d: got %+v, want %+v", i, got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("allow %d: nothing after 5s, want %+v", i, w)
		}
	}
	select {
	case got := <-allowed:
		t.Errorf("an extra allow: %+v", got)
	case <-time.After(300 * time.Millisecond):
	}

	// The prefixes of the ruleset before a reload still resolve after it.
	before := allowPrefix(allowKey{rule: "web", group: "others"})
	if err := b.Apply(t.Context(), mustParse(t, override(forwardPolicy, "firewall: {backend: nftables, hook: forward, table: fqdngate, log_allowed: sampled}"))); err != nil {
		t.Fatal(err)
	}
	if k, ok := b.allowNames.Load().lookup(before); !ok || k.rule != "web" || k.group != "others" || k.sampled {
		t.Errorf("after a reload, %q resolves to %+v, %v; want rule web, group others", before, k, ok)
	}
	if s := b.Stats(); s.AllowLogs != 2 || s.AllowLogsLost != 0 {
		t.Errorf("Stats = %+v, want 2 allow logs and none lost", s)
	}
}

func TestAllowPrefix(t *testing.T) {
	long := strings.Repeat("r", 63)
	longGroup := strings.Repeat("g", 63)
	tests := []struct {
		k    allowKey
		want string
	}{
		{allowKey{rule: "bank-api", group: "payments"}, "fqdngate allow bank-api payments"},
		{allowKey{rule: "partner-db"}, "fqdngate allow partner-db"},
		{allowKey{rule: "bank-api", group: "payments", sampled: true}, "fqdngate allow-sample bank-api payments"},
		{allowKey{rule: long, group: longGroup, sampled: true}, "fqdngate allow-sample " + long + " #"},
	}
	for _, tt := range tests {
		got := allowPrefix(tt.k)
		if !strings.HasPrefix(got, tt.want) || (!strings.HasSuffix(tt.want, "#") && got != tt.want) {
			t.Errorf("allowPrefix(%+v) = %q, want %q", tt.k, got, tt.want)
		}
		if len(got) > maxLogPrefix {
			t.Errorf("allowPrefix(%+v) is %d bytes, over the kernel's %d", tt.k, len(got), maxLogPrefix)
		}
	}
	if allowPrefix(allowKey{rule: long, group: longGroup}) == allowPrefix(allowKey{rule: long, group: longGroup[1:] + "h"}) {
		t.Error("two long groups share a prefix")
	}
}

// TestShowNewStatements: firewall show reads back what the hardened
// ruleset programs: conntrack states, neighbour discovery matches, reject
// verdicts and allow log prefixes, as nft would write them.
func TestShowNewStatements(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(outputPolicy, `listen: {dns: "127.0.0.1:5353"}`,
		"firewall: {backend: nftables, hook: output, table: fqdngate, deny_with: reject, log_allowed: sampled}"))
	b := startBackend(t, n.gw, Config{Hook: policy.HookOutput, LogGroup: 3, AllowLogGroup: 4}, p)
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
		`limit rate 10/second log prefix "fqdngate allow-sample bank-api" group 4  # rule bank-api`,
		"meta l4proto tcp counter packets 0 bytes 0 reject with tcp reset  # default deny",
		"counter packets 0 bytes 0 reject with icmpx admin-prohibited  # default deny",
	} {
		// Counters count what the namespace sent since the ruleset went
		// in: the kernel's MLD reports for the addresses just added are
		// delayed by up to a second or two, and meet the default deny.
		re := regexp.MustCompile(strings.ReplaceAll(regexp.QuoteMeta(want), "counter packets 0 bytes 0", `counter packets \d+ bytes \d+`))
		if !re.MatchString(got) {
			t.Errorf("Show output lacks %q:\n%s", want, got)
		}
	}
}
