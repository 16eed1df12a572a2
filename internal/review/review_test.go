package review

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestStrict(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		want   []string // each warning as line:col: and a fragment
	}{
		{"clean", `sources: {pay: [10.1.0.0/24]}
rules:
  - name: bank
    from: [pay]
    to: [api.bank.example]
  - name: ntp
    to: [time.example]
    ports: [123/udp]
`, nil},
		{"no rules", "rules: []\n", []string{"1:1: the policy has no rules"}},
		{"from shadowed by a rule for everyone", `sources: {pay: [10.1.0.0/24]}
rules:
  - name: all-bank
    to: ["**.bank.example"]
  - name: pay-api
    from: [pay]
    to: [api.bank.example]
`, []string{`5:5: rule "pay-api" allows nothing rule "all-bank" (line 3) does not already allow to every source: its from: restriction changes nothing`}},
		{"a narrower earlier rule shadows nothing", `sources: {pay: [10.1.0.0/24]}
rules:
  - name: pay-api
    from: [pay]
    to: [api.bank.example]
  - name: all-bank
    to: ["**.bank.example"]
`, nil},
		{"other ports are not shadowed", `sources: {pay: [10.1.0.0/24]}
rules:
  - name: all-bank
    to: ["**.bank.example"]
  - name: pay-api
    from: [pay]
    to: [api.bank.example]
    ports: [8443]
`, nil},
		{"one-label does not cover deeper", `sources: {pay: [10.1.0.0/24]}
rules:
  - name: all-bank
    to: ["*.bank.example"]
  - name: pay-api
    from: [pay]
    to: [a.b.bank.example]
`, nil},
		{"same rule twice for everyone", `rules:
  - name: a
    to: [.example.com]
    ports: [443, 80]
  - name: b
    to: [www.example.com, "*.example.com"]
`, []string{`5:5: rule "b" allows nothing rule "a" (line 2) does not already allow to every source: it changes nothing`,
			`6:10: rule "b": target "www.example.com" is already covered by "*.example.com"`}},
		{"duplicate targets", `rules:
  - name: a
    to: [example.com, "**.example.com", api.example.com, example.com]
`, []string{`3:41: rule "a": target "api.example.com" is already covered by "**.example.com"`, `3:58: rule "a": target "example.com" is already covered by "example.com"`}},
		{"covered CIDR", `rules:
  - name: db
    to: [203.0.113.0/24, 203.0.113.8/29]
    ports: [5432]
`, []string{`3:26: rule "db": target 203.0.113.8/29 is already covered by 203.0.113.0/24`}},
		{"every address and every port", `rules:
  - name: open
    to: [0.0.0.0/0, "::/0"]
    ports: [1-65535]
`, []string{`3:10: rule "open" allows 0.0.0.0/0: every IPv4 address`, `3:21: rule "open" allows ::/0: every IPv6 address`, `4:12: rule "open" allows every port`}},
		{"unused group", `sources:
  pay: [10.1.0.0/24]
  office: [10.2.0.0/24]
rules:
  - name: bank
    from: [pay]
    to: [api.bank.example]
`, []string{`3:3: source group "office" is named in no rule's from`}},
		// Adoption starts with a group no rule names yet, observing.
		{"observing group no rule names", `
sources:
  pay: [10.1.0.0/24]
  newteam: {cidrs: [10.2.0.0/24], observe_until: 2999-01-31}
rules:
  - name: bank
    from: [pay]
    to: [api.bank.example]
`, nil},
		{"group no rule names, observe_until passed", `
sources:
  pay: [10.1.0.0/24]
  newteam: {cidrs: [10.2.0.0/24], observe_until: 2000-01-31}
rules:
  - name: bank
    from: [pay]
    to: [api.bank.example]
`, []string{`4:3: source group "newteam" is named in no rule's from`}},
		{"users in a group no rule names, observing or not", `
sources:
  pay: [10.1.0.0/24]
  newteam: {cidrs: [10.2.0.0/24], observe_until: 2999-01-31}
  old: [10.3.0.0/24]
users:
  dev: {hash: $2a$10$9NVs4IKQzj/hhlwwy57XlOTqYB3k6yNqzTiCZASEx4oGLc0aodDMa, groups: [newteam]}
  ops: {hash: $2a$10$9NVs4IKQzj/hhlwwy57XlOTqYB3k6yNqzTiCZASEx4oGLc0aodDMa, groups: [old]}
rules:
  - name: bank
    from: [pay]
    to: [api.bank.example]
`, []string{`5:3: source group "old" is named in no rule's from`, `8:3: user "ops" is in no group a rule's from names`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte(tt.policy))
			if err != nil {
				t.Fatal(err)
			}
			ws := Strict(p, "p.yaml", []byte(tt.policy))
			if len(ws) != len(tt.want) {
				t.Fatalf("got %d warnings, want %d:\n%s", len(ws), len(tt.want), join(ws))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(ws[i].String(), "p.yaml:"+w[:strings.Index(w, " ")]) || !strings.Contains(ws[i].String(), w[strings.Index(w, " ")+1:]) {
					t.Errorf("warning %d = %s\nwant p.yaml:%s", i, ws[i], w)
				}
			}
		})
	}
}

func join(ws []Warning) string {
	var b strings.Builder
	for _, w := range ws {
		b.WriteString(w.String() + "\n")
	}
	return b.String()
}

func TestCovers(t *testing.T) {
	pat := func(s string) policy.Pattern {
		p, err := policy.Parse("p.yaml", []byte("rules: [{name: r, to: [\""+s+"\"]}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		return p.Rules[0].Names[0]
	}
	tests := []struct {
		p, q string
		want bool
	}{
		{"example.com", "example.com", true},
		{"example.com", "www.example.com", false},
		{"*.example.com", "www.example.com", true},
		{"*.example.com", "a.www.example.com", false},
		{"*.example.com", "*.example.com", true},
		{"*.example.com", "**.example.com", false},
		{"**.example.com", "a.b.example.com", true},
		{"**.example.com", "example.com", false},
		{"**.example.com", "*.example.com", true},
		{"**.example.com", ".example.com", false},
		{"**.example.com", ".www.example.com", true},
		{".example.com", "example.com", true},
		{".example.com", "**.example.com", true},
		{".example.com", "*.www.example.com", true},
		{"www.example.com", "*.example.com", false},
	}
	for _, tt := range tests {
		if got := covers(pat(tt.p), pat(tt.q)); got != tt.want {
			t.Errorf("covers(%s, %s) = %v, want %v", tt.p, tt.q, got, tt.want)
		}
	}
}

func TestNftablesScale(t *testing.T) {
	rules := func(n int, from string) string {
		var b strings.Builder
		b.WriteString("sources:\n  a: [10.0.0.0/8]\n  b: [192.168.0.0/16]\nrules:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - {name: r%d, to: [r%d.example]%s}\n", i, i, from)
		}
		return b.String()
	}
	for _, c := range []struct {
		name, yaml string
		warn       bool
	}{
		{"nftables, 4,000 rules", "firewall: {backend: nftables}\n" + rules(4000, ""), false},
		{"nftables, 4,001 rules", "firewall: {backend: nftables}\n" + rules(4001, ""), true},
		{"nftables, 2,001 rules from two groups", "firewall: {backend: nftables}\n" + rules(2001, ", from: [a, b]"), true},
		{"no backend, 5,000 rules", rules(5000, ""), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			ws := NftablesScale(p, "p.yaml")
			if (len(ws) > 0) != c.warn {
				t.Fatalf("warnings %v, want a warning: %v", ws, c.warn)
			}
			if c.warn && !strings.Contains(ws[0].String(), "p.yaml: warning: firewall.backend nftables with") {
				t.Errorf("warning %q", ws[0])
			}
		})
	}
}
