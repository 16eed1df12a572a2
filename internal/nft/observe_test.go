package nft

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// A group that observes gets an accept after the drop sample, for a group
// no rule names too, that holds only until its date; past its date the
// same policy renders without it.
func TestRenderObserving(t *testing.T) {
	y := strings.Replace(samplePolicy, "  payments: [198.51.100.10/32]\n",
		"  payments: [198.51.100.10/32]\n  newteam: {cidrs: [198.51.100.20/32, \"2001:db8::20/128\"], observe_until: 2027-01-31}\n", 1)
	p := mustParse(t, y)
	now := time.Date(2027, 1, 31, 23, 0, 0, 0, time.UTC)
	p.SetClock(func() time.Time { return now })
	out := Render(Config{Table: "fqdngate", Hook: p.Firewall.Hook}, p)
	for _, want := range []string{
		// 1801440000 is 2027-02-01T00:00:00Z: the kernel stops accepting
		// then by itself.
		"ip saddr @src4.newteam meta time < 1801440000 counter accept comment \"would-deny: newteam observes until 2027-02-01T00:00:00Z\"",
		"ip6 saddr @src6.newteam meta time < 1801440000 counter accept comment \"would-deny: newteam observes until 2027-02-01T00:00:00Z\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("observing: no %q in\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "sample of drops"), strings.Index(out, "would-deny: newteam"); i < 0 || j < i {
		t.Errorf("the observing accept must follow the drop sample:\n%s", out)
	}
	// The dry run with the deadline is a valid nft script.
	ns := netns.New(t)
	file := filepath.Join(t.TempDir(), "observe.nft")
	if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.Exec("nft", "-c", "-f", file); err != nil {
		t.Errorf("nft -c -f: %v\n%s", err, out)
	}
	now = now.Add(time.Hour)
	if out := Render(Config{Table: "fqdngate", Hook: p.Firewall.Hook}, p); strings.Contains(out, "newteam") {
		t.Errorf("after observe_until the group is still in the table:\n%s", out)
	}
}

// observeKernelPolicy: group newteam observes until %s; no rule names it.
const observeKernelPolicy = `
mode: enforce
firewall: {backend: nftables, hook: forward, table: fqdngate}
sources:
  payments: [198.51.100.10/32]
  newteam: {cidrs: [198.51.100.11/32, "2001:db8:1::10/128"], observe_until: "%s"}
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
    ports: [443]
`

// TestObserveDeadlineInKernel: the observing group's accept carries its
// deadline, so the kernel stops accepting the group at the deadline by
// itself: nothing applies the ruleset again in this test, as nothing
// would with the daemon down.
func TestObserveDeadlineInKernel(t *testing.T) {
	n := newForwardNet(t)
	// Two to three seconds ahead, on a whole second, as nft prints it.
	until := time.Now().Truncate(time.Second).Add(3 * time.Second)
	p := mustParse(t, fmt.Sprintf(observeKernelPolicy, until.UTC().Format(time.RFC3339)))
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)

	// The rule as the kernel holds it: meta time < until, in nanoseconds,
	// turned big-endian for cmp (the byteorder expression is not decoded
	// by the nftables library, so it is not in the list read back).
	b.nlMu.Lock()
	rules, err := b.conn.GetRules(b.table, &nftables.Chain{Name: enforceChain, Table: b.table})
	b.nlMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	var observing int
	for _, r := range rules {
		c, _ := userdata.GetString(r.UserData, ruleComment)
		if !strings.HasPrefix(c, "would-deny: newteam") {
			continue
		}
		observing++
		var found bool
		for i, e := range r.Exprs {
			m, ok := e.(*expr.Meta)
			if !ok || m.Key != metaKeyTimeNS || i+1 >= len(r.Exprs) {
				continue
			}
			cmp, ok := r.Exprs[i+1].(*expr.Cmp)
			if !ok || cmp.Op != expr.CmpOpLt || len(cmp.Data) != 8 {
				t.Errorf("rule %q: meta time is followed by %#v, want cmp lt of 8 bytes", c, r.Exprs[i+1])
				continue
			}
			if got := time.Unix(0, int64(binary.BigEndian.Uint64(cmp.Data))); !got.Equal(until) {
				t.Errorf("rule %q: meta time < %s, want < %s", c, got.UTC(), until.UTC())
			}
			found = true
		}
		if !found {
			t.Errorf("rule %q carries no deadline: %s", c, describe(r.Exprs))
		}
	}
	if observing != 2 {
		t.Errorf("%d would-deny rules for newteam in the kernel, want 2 (IPv4, IPv6)", observing)
	}
	// nft prints it as a date in its local time zone.
	want := `meta time < "` + until.Local().Format("2006-01-02 15:04:05") + `" counter`
	if out := n.gw.MustExec("nft", "list", "chain", "inet", "fqdngate", enforceChain); strings.Count(out, want) != 2 {
		t.Errorf("nft lists no %q for both families:\n%s", want, out)
	}

	// fqdngate firewall show reads it back the same way.
	var show strings.Builder
	if err := b.Show(&show); err != nil {
		t.Fatal(err)
	}
	if want := "meta time < " + until.UTC().Format(time.RFC3339Nano); strings.Count(show.String(), want) != 2 {
		t.Errorf("Show lists no %q for both families:\n%s", want, show.String())
	}

	cases := func(observing bool) []reach {
		return []reach{
			{srcOthers, srvC, "443", observing}, // newteam, no rule allows it
			{srcPay6, srvA6, "443", observing},
			{srcPayments, srvC, "443", false}, // payments is enforced throughout
		}
	}
	checkReach(t, n.client, cases(true))
	if time.Now().After(until) {
		t.Fatalf("the checks before the deadline ran past it (machine too slow for a 2s window); nothing shows")
	}
	time.Sleep(time.Until(until) + 100*time.Millisecond)
	checkReach(t, n.client, cases(false))
	if out := n.gw.MustExec("nft", "list", "chain", "inet", "fqdngate", enforceChain); !strings.Contains(out, "would-deny: newteam") {
		t.Errorf("the rule is gone: something applied the ruleset again, and the test shows nothing:\n%s", out)
	}
}
