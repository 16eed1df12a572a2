package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// decisions returns the audit log's decision lines whose fields include
// every one of want.
func (g *gate) decisions(want map[string]any) []auditLine {
	var out []auditLine
	for _, l := range g.auditLog() {
		if l["msg"] == "decision" && l.has(want) {
			out = append(out, l)
		}
	}
	return out
}

// waitDecisions waits until at least n decision lines match want.
func (g *gate) waitDecisions(want map[string]any, n int) []auditLine {
	g.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := g.decisions(want)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%d audit lines match %v after 10s, want %d\n%s", len(got), want, n, g.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLogAllowed: with firewall.log_allowed: all, a new connection the
// kernel allows to a learned address is one audit line naming the rule
// and group that allowed it; with log_allowed off (the default), none.
func TestLogAllowed(t *testing.T) {
	for _, mode := range []string{"all", "off"} {
		t.Run(mode, func(t *testing.T) {
			f := startForwardWith(t, 2*time.Second, basicRules, func(s *policySettings) {
				s.firewall = []string{"log_allowed: " + mode}
			})
			f.net.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
			if _, err := f.a.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
				t.Fatalf("allowed name: %v\n%s", err, f.gate.logs())
			}
			allow := map[string]any{"component": "firewall", "action": "allow"}
			conn := map[string]any{"component": "firewall", "action": "allow", "source": srcA, "name": "203.0.113.10", "port": allowedPort}
			// A denied connection afterwards: its drop sample is the
			// barrier that an allow line, if any, had time to arrive by.
			mustDrop(t, f.a, ap("203.0.113.77", allowedPort))
			f.gate.waitDecisions(map[string]any{"component": "firewall", "action": "deny", "name": "203.0.113.77"}, 1)
			if mode == "off" {
				if got := f.gate.decisions(allow); len(got) != 0 {
					t.Errorf("log_allowed off wrote %d allow lines, want none: %v", len(got), got)
				}
				if n := f.gate.metric("fqdngate_firewall_allow_logs_total"); n != 0 {
					t.Errorf("fqdngate_firewall_allow_logs_total = %v, want 0", n)
				}
				return
			}
			f.gate.waitDecisions(conn, 1)
			time.Sleep(300 * time.Millisecond) // a second line would be a duplicate
			got := f.gate.decisions(conn)
			if len(got) != 1 {
				t.Fatalf("got %d allow lines for the connection, want 1: %v", len(got), got)
			}
			for k, v := range map[string]any{"rule": "api", "group": "a", "proto": "tcp", "reason": "matched", "sampled": false} {
				if fmt.Sprint(got[0][k]) != fmt.Sprint(v) {
					t.Errorf("allow line: %s = %v, want %v\n%v", k, got[0][k], v, got[0])
				}
			}
			if all := f.gate.decisions(allow); len(all) != 1 {
				t.Errorf("got %d allow lines in all, want only the connection's: %v", len(all), all)
			}
			f.gate.waitMetric("fqdngate_firewall_allow_logs_total", 1)
			if n := f.gate.metric("fqdngate_firewall_allow_logs_lost_total"); n != 0 {
				t.Errorf("fqdngate_firewall_allow_logs_lost_total = %v, want 0", n)
			}
		})
	}
}
