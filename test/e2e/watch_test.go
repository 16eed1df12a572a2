package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// openWindow breaks the gateway's table with tamper and measures, from
// group a, how long traffic to unlisted passes and to learned does not
// (see netns.OpenWindow).
func openWindow(t *testing.T, f *forward, unlisted, learned string, tamper func()) (closed, reachable time.Duration) {
	t.Helper()
	return netns.OpenWindow(t, tamper,
		func(d time.Duration) (net.Conn, error) { return f.a.ns.Dial("tcp", srcA, unlisted, d) },
		func(d time.Duration) (net.Conn, error) { return f.a.ns.Dial("tcp", srcA, learned, d) },
		150*time.Millisecond, 20*time.Second, f.gate.logs)
}

// TestTableDeletedUnderDaemon: `nft delete table` under a running fqdngate
// opened egress and direct DNS until the next reload, with /readyz saying
// ready. Now the daemon puts the table back, learned addresses and all,
// within a second (measured from a client: unlisted traffic dropped
// again, learned address reachable again), logs who did it and counts
// it. While the table cannot be put back (another process took its name
// with nft's owner flag), /readyz says not ready and why; once it can,
// the daemon restores it and /readyz says ready again.
func TestTableDeletedUnderDaemon(t *testing.T) {
	f := startForward(t, 2*time.Second, basicRules)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))
	api, unlisted := ap("203.0.113.10", allowedPort), ap("203.0.113.77", allowedPort)
	if _, _, err := f.a.lookup("api.example.com", dns.TypeA); err != nil {
		t.Fatalf("%v\n%s", err, f.gate.logs())
	}
	mustReach(t, f.a, "api.example.com", api)
	mustDrop(t, f.a, unlisted)
	if got, err := f.gate.get("/readyz"); err != nil || got != "ready\n" {
		t.Fatalf("/readyz before: %q, %v", got, err)
	}

	// Deleted by someone else: back within a second.
	closed, reachable := openWindow(t, f, unlisted.String(), api.String(), func() {
		if out, err := f.gate.nft("delete", "table", "inet", f.gate.table); err != nil {
			t.Fatalf("deleting the table: %v\n%s", err, out)
		}
	})
	t.Logf("after nft delete table: unlisted traffic dropped again within %v, learned address reachable again within %v", closed, reachable)
	if closed > time.Second || reachable > time.Second {
		t.Errorf("after nft delete table: unlisted traffic dropped again after %v, learned address reachable again after %v; want both under 1s", closed, reachable)
	}
	f.gate.waitMetric("fqdngate_firewall_restores_total", 1)
	// The restore is counted a moment before it is forgotten.
	waitReadyz(t, f.gate, "ready after the restore", func(s string) bool { return s == "ready\n" })
	mustReach(t, f.a, "api.example.com", api)
	mustDrop(t, f.a, unlisted)
	mustDrop(t, f.b, api)
	// Direct DNS is redirected to fqdngate again: the unlisted name gets
	// NXDOMAIN, not the authority's answer.
	if r, err := f.a.exchange("udp", authorityAddr, "evil.example.com", dns.TypeA, reachWait); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("direct DNS after the restore: %v, %v; want NXDOMAIN from fqdngate", r, err)
	}
	log := f.gate.stderr.String()
	for _, want := range []string{`msg="another process changed the nftables table; restored it"`, `change="table deleted`, "(nft)", "learned=1"} {
		if !strings.Contains(log, want) {
			t.Errorf("stderr lacks %s", want)
		}
	}

	// Taken by someone else: not ready while it lasts.
	squatter := netns.SquatTable(t, f.net.gw, f.gate.table)
	waitReadyz(t, f.gate, "not ready while the table is someone else's, saying why", func(s string) bool {
		return strings.HasPrefix(s, "not ready: nftables table inet "+f.gate.table+" was changed by another process (table deleted") &&
			strings.Contains(s, "another process may own a table of that name")
	})
	f.gate.waitMetric("fqdngate_firewall_restore_failures_total", 1)
	squatter.Close() // the kernel deletes the table it owned
	waitReadyz(t, f.gate, "ready once the name is free", func(s string) bool { return s == "ready\n" })
	// Readiness can come back a moment before the restore is counted: the
	// watcher sees the rebuild's own commit as it lands.
	f.gate.waitMetric("fqdngate_firewall_restores_total", 2)
	if got := f.gate.metric("fqdngate_firewall_restores_total"); got != 2 {
		t.Errorf("fqdngate_firewall_restores_total = %v, want 2", got)
	}
	mustReach(t, f.a, "api.example.com", api)
	mustDrop(t, f.a, unlisted)
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// waitReadyz polls the gate's /readyz until its body satisfies ok, for up
// to ten seconds.
func waitReadyz(t *testing.T, g *gate, want string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := g.get("/readyz")
		if err == nil && ok(got) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: %q, %v; want %s\n%s", got, err, want, g.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
