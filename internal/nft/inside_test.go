package nft

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestApplyMatchesRender: for every golden policy, the kernel lists the
// table Apply programs exactly as it lists the dry-run script compiled by
// nft. Each expression this package builds (the fib lookup of the reverse
// path check, iifname sets, prefix tests, ...) means what its text says.
func TestApplyMatchesRender(t *testing.T) {
	for _, tt := range goldenCases {
		t.Run(tt.name, func(t *testing.T) {
			ns := netns.New(t)
			p := mustParse(t, tt.policy)
			cfg := tt.cfg
			cfg.Table = "applied"
			cfg.NetNSFd = ns.Fd()
			b, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Apply(context.Background(), p); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			cfg.Table = "rendered"
			script := filepath.Join(t.TempDir(), "rendered.nft")
			if err := os.WriteFile(script, []byte(Render(cfg, p)), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := ns.Exec("nft", "-f", script); err != nil {
				t.Fatalf("nft -f %s: %v\n%s", script, err, out)
			}
			applied := ns.MustExec("nft", "list", "table", "inet", "applied")
			rendered := ns.MustExec("nft", "list", "table", "inet", "rendered")
			if want := strings.Replace(rendered, "table inet rendered", "table inet applied", 1); applied != want {
				t.Errorf("the kernel lists what Apply programmed as\n%s\nand the dry run as\n%s", applied, want)
			}
		})
	}
}

// TestShowInside: firewall show describes the reverse path check, the
// interfaces and the listeners' filter as nft would.
func TestShowInside(t *testing.T) {
	ns := netns.New(t)
	p := mustParse(t, gatewayPolicy)
	b := startBackend(t, ns, Config{Hook: p.Firewall.Hook}, p)
	var buf bytes.Buffer
	if err := b.Show(&buf); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	for _, want := range []string{
		"chain reverse_path (type filter hook prerouting priority -300, policy accept)",
		"meta iiftype loopback accept  # this host",
		"ip saddr 0.0.0.0 accept  # no address yet",
		"ip6 saddr fe80::/10 accept  # link-local",
		"fib saddr . iif oif missing counter packets 0 bytes 0 drop  # reverse path strict",
		"set iif.payments                             ifname             1 elements",
		"ip saddr @src4.payments iifname @iif.payments ip daddr @learn4.bank-api.payments",
		"chain listeners (type filter hook input priority 0, policy accept)",
		"ip saddr @inside4.payments iifname @iif.payments accept  # inside",
		"ip daddr 198.51.100.1 meta l4proto tcp th dport 3128 counter packets 0 bytes 0 drop  # listen.proxy from outside",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("Show output lacks %q:\n%s", want, got)
		}
	}
}
