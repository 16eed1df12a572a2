package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// observeWindow is how long group a observes after the test writes its
// policy: long enough for a loaded machine to start the gateway and run
// the checks before the deadline.
const observeWindow = 30 * time.Second

// TestObserveUntil: group a observes until a time a few seconds ahead.
// Until then its unlisted name is answered and its addresses, learned or
// not, pass the kernel, logged as would-deny; group b stays enforced.
// Once the time passes, the same process (no reload, no restart) refuses
// the name and the kernel drops a's new connections.
func TestObserveUntil(t *testing.T) {
	deadline := time.Now().Add(observeWindow).Truncate(time.Second)
	f := startForwardWith(t, 2*time.Second, basicRules, func(s *policySettings) {
		s.sources = `  a: {cidrs: [192.0.2.10/32, "2001:db8:c::10/128"], observe_until: ` + deadline.UTC().Format(time.RFC3339) + `}
  b: [192.0.2.20/32, "2001:db8:c::20/128"]
`
	})
	auth := f.net.inet.auth
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	// Observing: answered, reachable, logged as would-deny.
	r, err := f.a.exchange("udp", gatewayDNS, "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("observing, unlisted name: got %s with %d answers, want the authority's answer", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	mustReach(t, f.a, "evil.example.com", ap("203.0.113.66", allowedPort))
	mustReach(t, f.a, "raw.example.com", ap("2001:db8:100::77", otherPort))
	// Group b is enforced.
	mustDrop(t, f.b, ap("203.0.113.66", allowedPort))
	if !strings.Contains(f.gate.stdout.String(), `"name":"evil.example.com","qtype":"A","action":"would-deny","rule":"","reason":"no rule allows this destination","observing":"a"`) {
		t.Errorf("no would-deny audit line for group a's unlisted name")
	}
	if out, err := f.gate.nft("list", "chain", "inet", f.gate.table, "enforce"); err != nil || !strings.Contains(out, "would-deny: a observes until") {
		t.Errorf("the enforce chain has no accept for the observing group (%v):\n%s", err, out)
	}
	if time.Now().After(deadline) {
		t.Fatalf("the checks before observe_until ran past it (machine too slow for a %s window); nothing shows", observeWindow)
	}
	if t.Failed() {
		t.Fatal(f.gate.logs())
	}

	// The deadline passes: the daemon applies the ruleset again by itself.
	time.Sleep(time.Until(deadline))
	for wait := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := f.gate.nft("list", "chain", "inet", f.gate.table, "enforce")
		if err == nil && !strings.Contains(out, "would-deny") {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("20s after observe_until the kernel still accepts group a:\n%s\n%s", out, f.gate.logs())
		}
	}
	r, err = f.a.exchange("udp", gatewayDNS, "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNameError {
		t.Errorf("after observe_until: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))
	mustDrop(t, f.a, ap("2001:db8:100::77", otherPort))
	// What the rules allow still passes.
	mustReach(t, f.a, "api.example.com", ap("198.51.100.5", allowedPort))
	if log := f.gate.stderr.String(); !strings.Contains(log, "observe_until passed; the group is enforced") || strings.Count(log, `msg="policy loaded"`) != 1 ||
		strings.Count(log, `msg="source group observes`) != 1 {
		t.Errorf("want one start, one line that group a observes, and the observe_until line in the daemon's log")
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}

// downWindow is how long group a observes in TestObserveUntilDaemonDown:
// long enough for a loaded machine to start the gateway and check that
// a's raw traffic passes.
const downWindow = 20 * time.Second

// TestObserveUntilDaemonDown: fqdngate is killed (SIGKILL, its table
// stays) while group a observes. Nothing applies the ruleset at the
// deadline, yet from the deadline on the kernel drops a's raw traffic on
// its own: the accept for the group carries the deadline.
func TestObserveUntilDaemonDown(t *testing.T) {
	deadline := time.Now().Add(downWindow).Truncate(time.Second)
	f := startForwardWith(t, 2*time.Second, basicRules, func(s *policySettings) {
		s.sources = `  a: {cidrs: [192.0.2.10/32, "2001:db8:c::10/128"], observe_until: ` + deadline.UTC().Format(time.RFC3339) + `}
  b: [192.0.2.20/32, "2001:db8:c::20/128"]
`
	})
	raw4, raw6 := ap("203.0.113.77", otherPort), ap("2001:db8:100::77", otherPort)
	mustReach(t, f.a, "raw.example.com", raw4)
	mustReach(t, f.a, "raw.example.com", raw6)
	mustDrop(t, f.b, raw4)
	if t.Failed() {
		t.Fatal(f.gate.logs())
	}
	f.gate.kill9()
	if time.Now().After(deadline) {
		t.Fatalf("the checks before observe_until ran past it (machine too slow for a %s window); nothing shows", downWindow)
	}
	// The daemon is down: a still passes until the deadline.
	mustReach(t, f.a, "raw.example.com", raw4)
	if time.Now().After(deadline) {
		t.Fatalf("the checks before observe_until ran past it (machine too slow for a %s window); nothing shows", downWindow)
	}

	time.Sleep(time.Until(deadline) + 200*time.Millisecond)
	mustDrop(t, f.a, raw4)
	mustDrop(t, f.a, raw6)
	// Nothing tidied the table: the kernel did it with the rule in place.
	if out, err := f.gate.nft("list", "chain", "inet", f.gate.table, "enforce"); err != nil || strings.Count(out, "would-deny: a observes until") != 2 {
		t.Errorf("want the table and both of group a's expired accepts still in the kernel (%v):\n%s", err, out)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
