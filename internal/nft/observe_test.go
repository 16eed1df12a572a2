package nft

import (
	"strings"
	"testing"
	"time"
)

// A group that observes gets an accept after the drop sample, for a group
// no rule names too; past its date the same policy renders without it.
func TestRenderObserving(t *testing.T) {
	y := strings.Replace(samplePolicy, "  payments: [198.51.100.10/32]\n",
		"  payments: [198.51.100.10/32]\n  newteam: {cidrs: [198.51.100.20/32, \"2001:db8::20/128\"], observe_until: 2027-01-31}\n", 1)
	p := mustParse(t, y)
	now := time.Date(2027, 1, 31, 23, 0, 0, 0, time.UTC)
	p.SetClock(func() time.Time { return now })
	out := Render(Config{Table: "fqdngate", Hook: p.Firewall.Hook}, p)
	for _, want := range []string{
		"ip saddr @src4.newteam counter accept comment \"would-deny: newteam observes until 2027-02-01T00:00:00Z\"",
		"ip6 saddr @src6.newteam counter accept comment \"would-deny: newteam observes until 2027-02-01T00:00:00Z\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("observing: no %q in\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "sample of drops"), strings.Index(out, "would-deny: newteam"); i < 0 || j < i {
		t.Errorf("the observing accept must follow the drop sample:\n%s", out)
	}
	now = now.Add(time.Hour)
	if out := Render(Config{Table: "fqdngate", Hook: p.Firewall.Hook}, p); strings.Contains(out, "newteam") {
		t.Errorf("after observe_until the group is still in the table:\n%s", out)
	}
}
