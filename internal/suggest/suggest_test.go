package suggest

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

func denied(group, name string, hits int64, port uint16, answers ...string) history.Row {
	return history.Row{Group: group, Component: "dns", Name: name, Port: port, Action: "deny", Reason: policy.ReasonNoRule.String(),
		Hits: hits, Sources: 1, FirstSeen: t0, LastSeen: t0.Add(time.Hour), Answers: answers}
}

type got struct {
	group, pattern string
	flags          []string
	ports          []uint16
}

func TestSuggest(t *testing.T) {
	for _, tt := range []struct {
		name string
		rows []history.Row
		want []got
	}{
		{
			name: "three siblings below a registrable domain collapse",
			rows: []history.Row{denied("office", "a.example.com", 2, 0), denied("office", "b.example.com", 2, 0), denied("office", "c.example.com", 2, 0)},
			want: []got{{"office", "*.example.com", nil, nil}},
		},
		{
			name: "two siblings stay names",
			rows: []history.Row{denied("office", "a.example.com", 3, 0), denied("office", "b.example.com", 2, 0)},
			want: []got{{"office", "a.example.com", nil, nil}, {"office", "b.example.com", nil, nil}},
		},
		{
			name: "deeper siblings collapse under their own parent",
			rows: []history.Row{denied("ci", "x.eu.cdn.example.org", 2, 443), denied("ci", "y.eu.cdn.example.org", 2, 443), denied("ci", "z.eu.cdn.example.org", 2, 8443)},
			want: []got{{"ci", "*.eu.cdn.example.org", nil, []uint16{443, 8443}}},
		},
		{
			name: "never a public suffix: co.uk",
			rows: []history.Row{denied("g", "a.co.uk", 2, 0), denied("g", "b.co.uk", 2, 0), denied("g", "c.co.uk", 2, 0)},
			want: []got{{"g", "a.co.uk", nil, nil}, {"g", "b.co.uk", nil, nil}, {"g", "c.co.uk", nil, nil}},
		},
		{
			name: "never a shared hosting suffix: github.io",
			rows: []history.Row{denied("g", "alice.github.io", 2, 0), denied("g", "bob.github.io", 2, 0), denied("g", "carol.github.io", 2, 0)},
			want: []got{{"g", "alice.github.io", nil, nil}, {"g", "bob.github.io", nil, nil}, {"g", "carol.github.io", nil, nil}},
		},
		{
			name: "never a top-level domain",
			rows: []history.Row{denied("g", "a.com", 2, 0), denied("g", "b.com", 2, 0), denied("g", "c.com", 2, 0)},
			want: []got{{"g", "a.com", nil, nil}, {"g", "b.com", nil, nil}, {"g", "c.com", nil, nil}},
		},
		{
			name: "flags: IP literal, DoH endpoint, DoT port, seen once",
			rows: []history.Row{
				{Group: "g", Component: "firewall", Name: "203.0.113.9", Port: 443, Action: "deny", Reason: policy.ReasonNotAllowedIP.String(), Hits: 5, Sources: 1, FirstSeen: t0, LastSeen: t0},
				denied("g", "dns.google", 4, 443),
				denied("g", "resolver.example.net", 3, 853),
				denied("g", "typo.example.net", 1, 0),
			},
			want: []got{
				{"g", "203.0.113.9", []string{FlagIPLiteral}, []uint16{443}},
				{"g", "dns.google", []string{FlagResolver}, []uint16{443}},
				{"g", "resolver.example.net", []string{FlagResolver}, []uint16{853}},
				{"g", "typo.example.net", []string{FlagSeenOnce}, nil},
			},
		},
		{
			name: "a name on an address shared by many names is flagged",
			rows: []history.Row{
				{Group: "g", Component: "dns", Name: "shop.example", Action: "would-deny", Reason: policy.ReasonNoRule.String(), Hits: 3, Sources: 1, FirstSeen: t0, LastSeen: t0, Answers: []string{"198.51.100.1"}},
				{Group: "g", Component: "dns", Name: "n1.example", Action: "allow", Hits: 2, Answers: []string{"198.51.100.1"}},
				{Group: "g", Component: "dns", Name: "n2.example", Action: "allow", Hits: 2, Answers: []string{"198.51.100.1"}},
				{Group: "g", Component: "dns", Name: "n3.example", Action: "allow", Hits: 2, Answers: []string{"198.51.100.1"}},
				{Group: "g", Component: "dns", Name: "n4.example", Action: "allow", Hits: 2, Answers: []string{"198.51.100.1"}},
			},
			want: []got{{"g", "shop.example", []string{FlagCDN}, nil}},
		},
		{
			name: "allowed rows and refusals a rule cannot fix are not suggested",
			rows: []history.Row{
				{Group: "g", Component: "dns", Name: "ok.example", Action: "allow", Reason: "matched", Hits: 9},
				{Group: "g", Component: "dns", Name: "rebind.example", Action: "deny", Reason: policy.ReasonRebinding.String(), Hits: 9},
			},
			want: nil,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var g []got
			for _, grp := range Suggest(tt.rows) {
				for _, tg := range grp.Targets {
					g = append(g, got{grp.Name, tg.Pattern, tg.Flags, tg.Ports})
				}
			}
			if !reflect.DeepEqual(g, tt.want) {
				t.Errorf("got  %+v\nwant %+v", g, tt.want)
			}
		})
	}
}

// TestWriteYAMLLoads: the suggestion, once the groups exist, is a policy
// fqdngate loads, and flagged targets are not in it.
func TestWriteYAMLLoads(t *testing.T) {
	rows := []history.Row{
		denied("office", "a.example.com", 2, 0), denied("office", "b.example.com", 2, 0), denied("office", "c.example.com", 2, 0),
		denied("office", "api.example.org", 4, 8443),
		denied("office", "once.example.net", 1, 0),
	}
	var b bytes.Buffer
	WriteYAML(&b, Suggest(rows), "7d")
	out := b.String()
	for _, want := range []string{`- "*.example.com" # 3 names (a.example.com, b.example.com, c.example.com), 6 hits, 1 source, first 2026-12-01, last 2026-12-01`, `ports: [8443]`, `# !! seen-once`, `# - "once.example.net"`} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	policyText := "dns: {upstreams: [192.0.2.53]}\nsources: {office: [192.0.2.0/24]}\n" + out
	p, err := policy.Parse("suggested.yaml", []byte(policyText))
	if err != nil {
		t.Fatalf("the suggestion does not load: %v\n%s", err, policyText)
	}
	if len(p.Rules) != 2 {
		t.Errorf("got %d rules, want 2 (DNS-only and 8443)", len(p.Rules))
	}
}
