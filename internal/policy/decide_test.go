package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// Addresses of the sources in testdata/decide.yaml.
var (
	srcOffice   = netip.MustParseAddr("10.1.2.3")
	srcOffice6  = netip.MustParseAddr("2001:db8:1::5")
	srcCI       = netip.MustParseAddr("10.2.0.9")
	srcLab      = netip.MustParseAddr("10.3.0.5")
	srcNoGroup  = netip.MustParseAddr("192.168.99.1")
	srcCIMapped = netip.MustParseAddr("::ffff:10.2.0.9")
	srcCINAT64  = netip.MustParseAddr("64:ff9b::a02:9")
)

func loadTestPolicy(t testing.TB, path string) *Policy {
	t.Helper()
	p, err := Load(path)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	return p
}

// decideCase is one Decide table case. want* fields left empty are checked
// as empty: a denial must not name a Rule, an allow must not name a NearRule.
type decideCase struct {
	name        string
	q           Query
	wantAction  Action
	wantReason  Reason
	wantRule    string // Decision.Rule's name
	wantPattern string
	wantGroup   string
	wantNear    string // Decision.NearRule's name
}

// tcp443 is the usual query: a name on 443/tcp from a source in no group.
func tcp443(name string) Query {
	return Query{Source: srcNoGroup, Name: name, Port: 443, Proto: TCP}
}

func with(q Query, f func(*Query)) Query { f(&q); return q }

func fromSrc(src netip.Addr, name string) Query {
	return with(tcp443(name), func(q *Query) { q.Source = src })
}

func port(name string, src netip.Addr, port uint16, proto Proto) Query {
	return Query{Source: src, Name: name, Port: port, Proto: proto}
}

func addr(a string, p uint16) Query {
	return Query{Source: srcNoGroup, Addr: netip.MustParseAddr(a), Port: p, Proto: TCP}
}

func allow(name string, q Query, rule, pattern string) decideCase {
	return decideCase{name: name, q: q, wantAction: Allow, wantReason: ReasonMatched, wantRule: rule, wantPattern: pattern}
}

func allowGroup(name string, q Query, rule, pattern, group string) decideCase {
	c := allow(name, q, rule, pattern)
	c.wantGroup = group
	return c
}

func deny(name string, q Query, reason Reason) decideCase {
	return decideCase{name: name, q: q, wantAction: Deny, wantReason: reason}
}

func near(name string, q Query, reason Reason, rule, pattern, group string) decideCase {
	return decideCase{name: name, q: q, wantAction: Deny, wantReason: reason, wantNear: rule, wantPattern: pattern, wantGroup: group}
}

var decideCases = []decideCase{
	// example.com matches only itself.
	allow("exact", tcp443("example.com"), "exact", "example.com"),
	allow("exact upper case", tcp443("EXAMPLE.COM"), "exact", "example.com"),
	allow("exact mixed case", tcp443("eXaMpLe.CoM"), "exact", "example.com"),
	allow("exact trailing dot", tcp443("example.com."), "exact", "example.com"),
	deny("exact not a subdomain", tcp443("www.example.com"), ReasonNoRule),
	deny("exact not the parent", tcp443("com"), ReasonNoRule),
	deny("exact not a longer label", tcp443("notexample.com"), ReasonNoRule),
	deny("exact not as a prefix", tcp443("example.com.evil.net"), ReasonNoRule),
	deny("exact not without the tld", tcp443("example"), ReasonNoRule),

	// *.one.example: exactly one more label, never the apex.
	allow("one label", tcp443("x.one.example"), "one-label", "*.one.example"),
	allow("one label upper, trailing dot", tcp443("X.ONE.EXAMPLE."), "one-label", "*.one.example"),
	allow("one label with underscore", tcp443("_svc.one.example"), "one-label", "*.one.example"),
	deny("one label not two", tcp443("a.b.one.example"), ReasonNoRule),
	deny("one label not the apex", tcp443("one.example"), ReasonNoRule),
	deny("one label not a longer label", tcp443("xone.example"), ReasonNoRule),
	deny("one label literal star is invalid", tcp443("*.one.example"), ReasonInvalidName),

	// **.many.example: one or more labels, never the apex.
	allow("any labels one", tcp443("x.many.example"), "any-labels", "**.many.example"),
	allow("any labels three", tcp443("a.b.c.many.example"), "any-labels", "**.many.example"),
	allow("any labels 120 deep", tcp443(strings.Repeat("a.", 120)+"many.example"), "any-labels", "**.many.example"),
	deny("any labels not the apex", tcp443("many.example"), ReasonNoRule),
	deny("any labels not a longer label", tcp443("evilmany.example"), ReasonNoRule),
	deny("any labels not the parent", tcp443("example"), ReasonNoRule),

	// .squid.example: the apex and every subdomain.
	allow("squid apex", tcp443("squid.example"), "squid", ".squid.example"),
	allow("squid apex trailing dot", tcp443("SQUID.example."), "squid", ".squid.example"),
	allow("squid one label", tcp443("x.squid.example"), "squid", ".squid.example"),
	allow("squid deep", tcp443("a.b.c.squid.example"), "squid", ".squid.example"),
	deny("squid not a longer label", tcp443("xsquid.example"), ReasonNoRule),

	// IDNs: written in Unicode, matched as punycode.
	allow("idn punycode query", tcp443("xn--bcher-kva.example"), "idn", "bücher.example"),
	allow("idn punycode upper", tcp443("XN--BCHER-KVA.EXAMPLE."), "idn", "bücher.example"),
	deny("idn unicode query is not canonical", tcp443("bücher.example"), ReasonInvalidName),
	allow("pattern written in mixed case with a dot", tcp443("mixed.example"), "mixed-case", "MiXeD.Example."),

	// Sources: groups, users, no group.
	allowGroup("group member", fromSrc(srcCI, "ci.example"), "ci-only", "ci.example", "ci"),
	allowGroup("group member mapped v6", fromSrc(srcCIMapped, "ci.example"), "ci-only", "ci.example", "ci"),
	near("nat64 spelling is not the group", fromSrc(srcCINAT64, "ci.example"), ReasonSource, "ci-only", "ci.example", ""),
	near("other group", fromSrc(srcOffice, "ci.example"), ReasonSource, "ci-only", "ci.example", ""),
	near("no group", fromSrc(srcNoGroup, "ci.example"), ReasonSource, "ci-only", "ci.example", ""),
	near("invalid source", fromSrc(netip.Addr{}, "ci.example"), ReasonSource, "ci-only", "ci.example", ""),
	allowGroup("user in group", with(tcp443("ci.example"), func(q *Query) { q.User = "alice" }), "ci-only", "ci.example", "ci"),
	near("user in no group", with(tcp443("ci.example"), func(q *Query) { q.User = "bob" }), ReasonSource, "ci-only", "ci.example", ""),
	near("unknown user", with(tcp443("ci.example"), func(q *Query) { q.User = "mallory" }), ReasonSource, "ci-only", "ci.example", ""),
	allowGroup("single-address group", fromSrc(srcLab, "web.example"), "office-web", "web.example", "lab"),
	near("next to single-address group", fromSrc(netip.MustParseAddr("10.3.0.6"), "web.example"), ReasonSource, "office-web", "web.example", ""),
	allowGroup("v6 group member", fromSrc(srcOffice6, "web.example"), "office-web", "web.example", "office"),
	allow("rule without from, no group", fromSrc(srcNoGroup, "example.com"), "exact", "example.com"),
	allow("rule without from, in a group", fromSrc(srcOffice, "example.com"), "exact", "example.com"),
	allow("rule without from, invalid source", fromSrc(netip.Addr{}, "example.com"), "exact", "example.com"),

	// Ports and protocols.
	allowGroup("listed port", port("web.example", srcOffice, 80, TCP), "office-web", "web.example", "office"),
	allowGroup("range low end", port("web.example", srcOffice, 8000, TCP), "office-web", "web.example", "office"),
	allowGroup("range middle", port("web.example", srcOffice, 8050, TCP), "office-web", "web.example", "office"),
	allowGroup("range high end", port("web.example", srcOffice, 8100, TCP), "office-web", "web.example", "office"),
	near("below range", port("web.example", srcOffice, 7999, TCP), ReasonPort, "office-web", "web.example", "office"),
	near("above range", port("web.example", srcOffice, 8101, TCP), ReasonPort, "office-web", "web.example", "office"),
	allowGroup("udp port", port("web.example", srcOffice, 53, UDP), "office-web", "web.example", "office"),
	near("udp port over tcp", port("web.example", srcOffice, 53, TCP), ReasonPort, "office-web", "web.example", "office"),
	near("tcp port over udp", port("web.example", srcOffice, 443, UDP), ReasonPort, "office-web", "web.example", "office"),
	allowGroup("any port", with(port("web.example", srcOffice, 0, TCP), func(q *Query) { q.AnyPort = true }), "office-web", "web.example", "office"),
	near("any port still checks the source", with(port("web.example", srcNoGroup, 0, TCP), func(q *Query) { q.AnyPort = true }), ReasonSource, "office-web", "web.example", ""),
	allow("omitted ports: 443/tcp", port("example.com", srcNoGroup, 443, TCP), "exact", "example.com"),
	near("omitted ports: not 80", port("example.com", srcNoGroup, 80, TCP), ReasonPort, "exact", "example.com", ""),
	near("omitted ports: not 443/udp", port("example.com", srcNoGroup, 443, UDP), ReasonPort, "exact", "example.com", ""),
	allow("omitted ports, any port", with(port("example.com", srcNoGroup, 25, TCP), func(q *Query) { q.AnyPort = true }), "exact", "example.com"),

	// First rule wins; rules only allow, so a near miss never stops a later rule.
	allow("earlier wildcard beats later exact", tcp443("api.order.example"), "order-wildcard", "**.order.example"),
	allow("later exact allows what the wildcard's ports do not", port("api.order.example", srcNoGroup, 22, TCP), "order-exact", "api.order.example"),
	allow("earlier exact beats later wildcard", tcp443("api.rev.example"), "rev-exact", "api.rev.example"),
	allow("later wildcard still matches others", tcp443("www.rev.example"), "rev-wildcard", "*.rev.example"),
	allowGroup("first rule for its source", fromSrc(srcOffice, "shared.example"), "shadow-office", "shared.example", "office"),
	allow("later rule for another source", port("shared.example", srcNoGroup, 8443, TCP), "shadow-anyone", "shared.example"),
	allow("later rule after a port miss", port("shared.example", srcOffice, 8443, TCP), "shadow-anyone", "shared.example"),
	near("port miss beats source miss", tcp443("shared.example"), ReasonPort, "shadow-anyone", "shared.example", ""),

	// Deep names.
	allow("deep one label", tcp443("x.a.b.c.d.deep.example"), "deep", "*.a.b.c.d.deep.example"),
	deny("deep apex", tcp443("a.b.c.d.deep.example"), ReasonNoRule),
	deny("deep two labels", tcp443("y.x.a.b.c.d.deep.example"), ReasonNoRule),
	deny("deep partial path", tcp443("x.b.c.d.deep.example"), ReasonNoRule),

	// A public-suffix wildcard the policy opted into.
	allow("public suffix opted in", tcp443("someone.github.io"), "public-suffix-ok", "*.github.io"),
	deny("public suffix apex", tcp443("github.io"), ReasonNoRule),

	// Names that are not host names.
	deny("no name and no address", Query{Source: srcNoGroup, Port: 443}, ReasonInvalidName),
	deny("space", tcp443("exa mple.com"), ReasonInvalidName),
	deny("empty label", tcp443("a..example.com"), ReasonInvalidName),
	deny("leading dot", tcp443(".example.com"), ReasonInvalidName),
	deny("two trailing dots", tcp443("example.com.."), ReasonInvalidName),
	deny("only a dot", tcp443("."), ReasonInvalidName),
	deny("64-byte label", tcp443(strings.Repeat("a", 64)+".many.example"), ReasonInvalidName),
	deny("254 bytes", tcp443(strings.Repeat("a.", 121)+"many.example"), ReasonInvalidName),
	deny("leading hyphen", tcp443("-x.one.example"), ReasonInvalidName),
	deny("trailing hyphen", tcp443("x-.one.example"), ReasonInvalidName),
	deny("nul byte", tcp443("example.com\x00"), ReasonInvalidName),
	deny("port in the name", tcp443("example.com:443"), ReasonInvalidName),

	// CIDR and single-IP targets decide address queries.
	allow("cidr v4", addr("203.0.113.9", 5432), "cidr-v4", "203.0.113.0/24"),
	allow("cidr v4 first address", addr("203.0.113.0", 5432), "cidr-v4", "203.0.113.0/24"),
	allow("cidr v4 last address", addr("203.0.113.255", 5432), "cidr-v4", "203.0.113.0/24"),
	allow("cidr v4 mapped", addr("::ffff:203.0.113.9", 5432), "cidr-v4", "203.0.113.0/24"),
	allow("cidr v4 via nat64", addr("64:ff9b::cb00:7109", 5432), "cidr-v4", "203.0.113.0/24"),
	near("cidr v4 wrong port", addr("203.0.113.9", 443), ReasonPort, "cidr-v4", "203.0.113.0/24", ""),
	deny("cidr v4 outside", addr("203.0.114.1", 5432), ReasonNotAllowedIP),
	allow("cidr v6", addr("2001:db8:ff::1", 443), "cidr-v6", "2001:db8:ff::/48"),
	allow("cidr v6 with zone", addr("2001:db8:ff::1%eth0", 443), "cidr-v6", "2001:db8:ff::/48"),
	deny("cidr v6 outside", addr("2001:db8:fe::1", 443), ReasonNotAllowedIP),
	allow("single ip", addr("198.51.100.7", 443), "single-ip", "198.51.100.7/32"),
	allow("single ip mapped", addr("::ffff:198.51.100.7", 443), "single-ip", "198.51.100.7/32"),
	deny("single ip neighbour", addr("198.51.100.8", 443), ReasonNotAllowedIP),
	deny("unlisted v6", addr("2606:4700::1", 443), ReasonNotAllowedIP),
	allow("ip literal in Name", with(addr("0.0.0.0", 5432), func(q *Query) { q.Addr = netip.Addr{}; q.Name = "203.0.113.9" }), "cidr-v4", "203.0.113.0/24"),
	deny("uncovered ip literal in Name", tcp443("192.0.2.1"), ReasonNotAllowedIP),
	deny("ip literal in Name does not match names", tcp443("1.2.3.4"), ReasonNotAllowedIP),
}

func TestDecide(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	for _, tt := range decideCases {
		t.Run(tt.name, func(t *testing.T) {
			got := p.Decide(tt.q)
			checkDecision(t, got, tt)
		})
	}
}

func checkDecision(t *testing.T, got Decision, tt decideCase) {
	t.Helper()
	if got.Action != tt.wantAction {
		t.Errorf("Action = %v, want %v", got.Action, tt.wantAction)
	}
	if got.Reason != tt.wantReason {
		t.Errorf("Reason = %q, want %q", got.Reason, tt.wantReason)
	}
	if got.RuleName() != tt.wantRule {
		t.Errorf("Rule = %q, want %q", got.RuleName(), tt.wantRule)
	}
	if got.Pattern != tt.wantPattern {
		t.Errorf("Pattern = %q, want %q", got.Pattern, tt.wantPattern)
	}
	if got.Group != tt.wantGroup {
		t.Errorf("Group = %q, want %q", got.Group, tt.wantGroup)
	}
	var gotNear string
	if got.NearRule != nil {
		gotNear = got.NearRule.Name
	}
	if gotNear != tt.wantNear {
		t.Errorf("NearRule = %q, want %q", gotNear, tt.wantNear)
	}
	if got.Action == Deny && got.Rule != nil {
		t.Errorf("a denial carries Rule %q; only NearRule may name a rule", got.Rule.Name)
	}
}

func TestDecideAudit(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	p.Mode = Audit // the only difference; parsing mode: audit is tested in load_test.go
	for _, tt := range decideCases {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantAction == Deny {
				tt.wantAction = WouldDeny
			}
			got := p.Decide(tt.q)
			checkDecision(t, got, tt)
			if !got.Action.Permits() {
				t.Errorf("audit mode: Action %v does not permit", got.Action)
			}
		})
	}
}

func TestActionPermits(t *testing.T) {
	tests := []struct {
		a    Action
		want bool
	}{{Deny, false}, {Allow, true}, {WouldDeny, true}, {Fail, false}}
	for _, tt := range tests {
		if got := tt.a.Permits(); got != tt.want {
			t.Errorf("%v.Permits() = %v, want %v", tt.a, got, tt.want)
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	for _, tt := range decideCases {
		if n := testing.AllocsPerRun(20, func() { p.Decide(tt.q) }); n != 0 {
			t.Errorf("%s: Decide allocates %v times per call, want 0", tt.name, n)
		}
	}
}

func TestGroupsOf(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	tests := []struct {
		name string
		addr netip.Addr
		want string
	}{
		{"office", srcOffice, "office"},
		{"office v6", srcOffice6, "office"},
		{"ci mapped", srcCIMapped, "ci"},
		{"ci nat64 spelling", srcCINAT64, ""},
		{"lab", srcLab, "lab"},
		{"none", srcNoGroup, ""},
	}
	for _, tt := range tests {
		if got := strings.Join(p.GroupsOf(tt.addr), ","); got != tt.want {
			t.Errorf("%s: GroupsOf(%s) = %q, want %q", tt.name, tt.addr, got, tt.want)
		}
	}
}

func TestNamesAddr(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	tests := []struct {
		addr string
		want bool
	}{
		{"203.0.113.1", true},
		{"::ffff:203.0.113.1", true},
		{"2001:db8:ff::9", true},
		{"198.51.100.7", true},
		{"198.51.100.8", false},
		{"10.0.0.1", false},
	}
	for _, tt := range tests {
		if got := p.NamesAddr(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("NamesAddr(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// TestRuleAllows: a rule allows on its own what Decide allows by it, and
// what a rule before it would have decided; nothing outside its names,
// sources and ports; and a rule of another policy allows nothing.
func TestRuleAllows(t *testing.T) {
	p := loadTestPolicy(t, "testdata/decide.yaml")
	rule := func(name string) *Rule {
		for _, r := range p.Rules {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no rule %q", name)
		return nil
	}
	// Every rule Decide names allows its query on its own, and no rule
	// before it does.
	for _, tt := range decideCases {
		d := p.Decide(tt.q)
		if d.Action != Allow {
			continue
		}
		if !p.RuleAllows(d.Rule, tt.q) {
			t.Errorf("%s: Decide allows by %s, RuleAllows(%s) says no", tt.name, d.Rule.Name, d.Rule.Name)
		}
		for _, r := range p.Rules[:d.Rule.Index] {
			if p.RuleAllows(r, tt.q) {
				t.Errorf("%s: Decide allows by %s, yet the earlier rule %s allows it on its own", tt.name, d.Rule.Name, r.Name)
			}
		}
	}
	tests := []struct {
		name string
		rule string
		q    Query
		want bool
	}{
		{"shadowed by an earlier rule", "order-exact", tcp443("api.order.example"), true},
		{"another name of the wildcard", "order-wildcard", tcp443("x.y.order.example"), true},
		{"the apex is not the wildcard's", "order-wildcard", tcp443("order.example"), false},
		{"a name of another rule", "exact", tcp443("web.example"), false},
		{"not on this port", "exact", port("example.com", srcNoGroup, 80, TCP), false},
		{"not for this source", "ci-only", tcp443("ci.example"), false},
		{"for this source", "ci-only", fromSrc(srcCI, "ci.example"), true},
		{"for this user", "ci-only", with(tcp443("ci.example"), func(q *Query) { q.User = "alice" }), true},
		{"an address of its CIDR", "cidr-v4", addr("203.0.113.9", 5432), true},
		{"an address of another rule's CIDR", "cidr-v4", addr("198.51.100.7", 5432), false},
		{"an address where a name goes", "cidr-v4", with(addr("0.0.0.0", 5432), func(q *Query) { q.Addr = netip.Addr{}; q.Name = "203.0.113.9" }), true},
		{"a name is not an address", "exact", addr("203.0.113.9", 443), false},
		{"invalid name", "exact", tcp443("exa mple.com"), false},
	}
	for _, tt := range tests {
		if got := p.RuleAllows(rule(tt.rule), tt.q); got != tt.want {
			t.Errorf("%s: RuleAllows(%s, %s %s:%d) = %v, want %v", tt.name, tt.rule, tt.q.Source, cmpName(tt.q), tt.q.Port, got, tt.want)
		}
	}
	other := loadTestPolicy(t, "testdata/decide.yaml")
	if p.RuleAllows(other.Rules[0], tcp443("example.com")) {
		t.Error("RuleAllows took a rule of another policy")
	}
	if p.RuleAllows(nil, tcp443("example.com")) {
		t.Error("RuleAllows(nil) allowed")
	}
	audit := loadTestPolicy(t, "testdata/decide.yaml")
	audit.Mode = Audit
	if audit.RuleAllows(audit.Rules[0], tcp443("web.example")) {
		t.Error("audit mode: RuleAllows allowed what the rule does not name")
	}
	if n := testing.AllocsPerRun(20, func() { p.RuleAllows(p.Rules[0], tcp443("example.com")) }); n != 0 {
		t.Errorf("RuleAllows allocates %v times per call, want 0", n)
	}
}

func cmpName(q Query) string {
	if q.Name != "" {
		return q.Name
	}
	return q.Addr.String()
}

// TestWildcardPattern: the pattern a name's dns.wildcard_budget is charged
// to is the wildcard that allowed it; an exact name, a CIDR or no rule has
// none.
func TestWildcardPattern(t *testing.T) {
	p, err := Parse("p.yaml", []byte(upstreams+`rules:
  - name: exact
    to: [api.example.com]
  - name: cdn
    to: ["*.cdn.example.com", "**.edge.example.com", .static.example.com]
  - name: cidr
    to: [203.0.113.0/24]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, want string }{
		{"api.example.com", ""},
		{"a.cdn.example.com", "*.cdn.example.com"},
		{"a.b.edge.example.com", "**.edge.example.com"},
		{"static.example.com", ".static.example.com"},
		{"x.static.example.com", ".static.example.com"},
		{"203.0.113.7", ""},
		{"evil.example", ""},
	} {
		d := p.Decide(Query{Source: netip.MustParseAddr("192.0.2.1"), Name: tt.name, AnyPort: true})
		if got := d.WildcardPattern(); got != tt.want {
			t.Errorf("%s: WildcardPattern() = %q, want %q (decision %v by %q)", tt.name, got, tt.want, d.Action, d.RuleName())
		}
	}
}

func TestSettingsHasNoRules(t *testing.T) {
	p, err := Parse("f.yaml", []byte("sources: {web: [10.0.0.0/8]}\nrules:\n  - name: a\n    to: [a.example]\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := p.Settings()
	if len(s.Rules) != 0 || s.Rule("a") != nil || len(s.Sources) != 1 {
		t.Fatalf("Settings kept rules %v, rule a %v, sources %v", s.Rules, s.Rule("a"), s.Sources)
	}
	if d := s.Decide(Query{Source: netip.MustParseAddr("10.0.0.1"), Name: "a.example", Port: 443, Proto: TCP}); d.Action == Allow {
		t.Fatalf("Settings' policy allowed a.example: %+v", d)
	}
	if p.Rule("a") == nil {
		t.Fatal("Settings changed the policy it copied")
	}
}
