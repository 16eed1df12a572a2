package simulate

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

var (
	office1  = netip.MustParseAddr("192.0.2.10")
	office2  = netip.MustParseAddr("192.0.2.11")
	payments = netip.MustParseAddr("198.51.100.5")
)

// base is the policy in force while the history below was recorded.
const base = `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  payments: [198.51.100.0/28]
rules:
  - name: api
    from: [office]
    to: [api.example]
    ports: [443]
`

// recordHistoryFile writes decisions into a new history file the way the
// daemon does (the audit logger's sink, the Recorder, the Store) and
// returns the per-source rows simulate reads.
func recordHistoryFile(t *testing.T, evs []audit.Event) ([]history.Row, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.db")
	st, _, err := history.Open(path, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	bp := mustParse(t, base)
	rec, err := history.NewRecorder(history.RecorderConfig{Store: st, GroupsOf: bp.GroupsOf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- rec.Run(ctx) }()
	l := audit.New(nil, "json", nil)
	l.SetSink(rec)
	for _, e := range evs {
		l.Record(context.Background(), e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rows, err := st.Query(context.Background(), history.Filter{PerSource: true, Limit: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	return rows, path
}

func mustParse(t *testing.T, y string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("proposed.yaml", []byte(y))
	if err != nil {
		t.Fatalf("parsing policy: %v", err)
	}
	return p
}

// weekOfHistory is a history of a week under base: office reads api.example
// through DNS and the proxy, asks for tracker.example, a TXT record and
// an address directly; payments observes (would-deny) pay.example.
func weekOfHistory(t *testing.T) []history.Row {
	rows, _ := weekOfHistoryFile(t)
	return rows
}

func weekOfHistoryFile(t *testing.T) ([]history.Row, string) {
	bp := mustParse(t, base)
	now := time.Now()
	api := bp.Rule("api")
	var evs []audit.Event
	add := func(n int, e audit.Event) {
		e.Time = now
		for range n {
			evs = append(evs, e)
		}
	}
	allow := policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: api, Pattern: "api.example", Group: "office"}
	deny := func(r policy.Reason) policy.Decision { return policy.Decision{Action: policy.Deny, Reason: r} }
	answers := []slog.Attr{slog.String("answers", "203.0.113.4")}
	add(3, audit.Event{Component: audit.DNS, Source: office1, Name: "api.example", QType: "A", Decision: allow, Attrs: answers})
	add(2, audit.Event{Component: audit.DNS, Source: office2, Name: "api.example", QType: "A", Decision: allow, Attrs: answers})
	add(2, audit.Event{Component: audit.Proxy, Source: office1, Name: "api.example", Port: 443, Decision: allow})
	add(1, audit.Event{Component: audit.DNS, Source: office1, Name: "tracker.example", QType: "A", Decision: deny(policy.ReasonNoRule)})
	add(1, audit.Event{Component: audit.DNS, Source: office1, Name: "api.example", QType: "TXT",
		Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonQType}})
	add(4, audit.Event{Component: audit.Proxy, Source: payments, Name: "pay.example", Port: 443,
		Decision: policy.Decision{Action: policy.WouldDeny, Reason: policy.ReasonNoRule}})
	add(5, audit.Event{Component: audit.Firewall, Source: office1, Name: "203.0.113.9", Port: 443, Decision: deny(policy.ReasonNotAllowedIP)})
	add(1, audit.Event{Component: audit.DNS, Source: office2, Name: "evil.example", QType: "A",
		Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonRebinding}})
	return recordHistoryFile(t, evs)
}

type want struct {
	group     string
	outcome   Outcome
	dest      string
	hits      int64
	sources   int
	nowPrefix string
}

func TestRun(t *testing.T) {
	rows := weekOfHistory(t)
	tests := []struct {
		name     string
		proposed string
		opts     Options
		want     []want
		breaks   bool
	}{
		{
			name:     "the policy in force changes nothing but what payments observes",
			proposed: base,
			want:     []want{{"payments", StillDenied, "proxy pay.example:443", 4, 1, "deny: no rule"}},
		},
		{
			name: "a policy without the api rule denies what was allowed",
			proposed: `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  payments: [198.51.100.0/28]
rules:
  - name: other
    to: [other.example]
`,
			want: []want{
				{"office", NewlyDenied, "dns api.example A", 5, 2, "deny: no rule"},
				{"office", NewlyDenied, "proxy api.example:443", 2, 1, "deny: no rule"},
				{"payments", StillDenied, "proxy pay.example:443", 4, 1, "deny: no rule"},
			},
			breaks: true,
		},
		{
			name: "a port the rule no longer lists is denied to the proxy only",
			proposed: `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  payments: [198.51.100.0/28]
rules:
  - name: api
    from: [office]
    to: [api.example]
    ports: [8443]
`,
			want: []want{
				{"office", NewlyDenied, "proxy api.example:443", 2, 1, "deny: destination is allowed for this source, but not on this port"},
				{"payments", StillDenied, "proxy pay.example:443", 4, 1, "deny: no rule"},
			},
			breaks: true,
		},
		{
			name: "a group narrowed to one address denies the other",
			proposed: `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.10]
  payments: [198.51.100.0/28]
rules:
  - name: api
    from: [office]
    to: [api.example]
    ports: [443]
`,
			want: []want{
				{"", NewlyDenied, "dns api.example A", 2, 1, "deny: destination is allowed, but not for this source"},
				{"payments", StillDenied, "proxy pay.example:443", 4, 1, "deny: no rule"},
			},
			breaks: true,
		},
		{
			name: "allowing more: payments' observed name, the tracker and TXT",
			proposed: `
dns: {upstreams: [192.0.2.53], qtypes: [A, AAAA, TXT]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  payments: [198.51.100.0/28]
rules:
  - name: api
    from: [office]
    to: [api.example, tracker.example]
    ports: [443]
  - name: pay
    from: [payments]
    to: [pay.example]
`,
			want: []want{
				{"office", NewlyAllowed, "dns api.example TXT", 1, 1, "allow by rule api"},
				{"office", NewlyAllowed, "dns tracker.example A", 1, 1, "allow by rule api"},
				{"payments", NewlyAllowed, "proxy pay.example:443", 4, 1, "allow by rule pay"},
			},
		},
		{
			name:     "--group narrows to the sources the proposal places in it",
			proposed: base,
			opts:     Options{Group: "office"},
			want:     nil,
		},
		{
			name: "record types: dropping A from dns.qtypes denies the DNS lookups",
			proposed: `
dns: {upstreams: [192.0.2.53], qtypes: [AAAA]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  payments: [198.51.100.0/28]
rules:
  - name: api
    from: [office]
    to: [api.example]
    ports: [443]
`,
			want: []want{
				{"office", NewlyDenied, "dns api.example A", 5, 2, "deny: record type not allowed"},
				{"payments", StillDenied, "proxy pay.example:443", 4, 1, "deny: no rule"},
			},
			breaks: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := Run(mustParse(t, tt.proposed), rows, tt.opts)
			var got []want
			for _, g := range rep.Groups {
				for _, o := range []Outcome{NewlyDenied, NewlyAllowed, StillDenied} {
					for _, c := range g.Changes[o] {
						got = append(got, want{g.Name, o, dest2(c), c.Hits, c.Sources, c.Now})
					}
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d changes, want %d:\n got %+v\nwant %+v", len(got), len(tt.want), got, tt.want)
			}
			for i, w := range tt.want {
				g := got[i]
				if g.group != w.group || g.outcome != w.outcome || g.dest != w.dest || g.hits != w.hits || g.sources != w.sources || !strings.HasPrefix(g.nowPrefix, w.nowPrefix) {
					t.Errorf("change %d: got %+v, want %+v", i, g, w)
				}
			}
			if rep.Breaks() != tt.breaks {
				t.Errorf("Breaks() = %v, want %v", rep.Breaks(), tt.breaks)
			}
		})
	}
}

// TestRunSkips: what the history cannot replay is counted by why, never
// guessed.
func TestRunSkips(t *testing.T) {
	rep := Run(mustParse(t, base), weekOfHistory(t), Options{})
	got := map[string]int64{}
	for _, s := range rep.Skipped {
		got[s.Why] = s.Hits
	}
	want := map[string]int64{
		skipFirewall: 5,
		"refused for a reason beyond the rules: " + policy.ReasonRebinding.String(): 1,
	}
	if len(got) != len(want) {
		t.Fatalf("skipped %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("skipped %q: %d hits, want %d", k, got[k], v)
		}
	}
	if rep.Hits != 3+2+2+1+1+4 {
		t.Errorf("replayed %d decisions, want 13", rep.Hits)
	}
}

// TestRunPodsAndUsers: sources in pod-selecting groups and proxy
// decisions that a user's groups may have made are not replayed.
func TestRunPodsAndUsers(t *testing.T) {
	rows := []history.Row{
		{Group: "web", Source: "192.0.2.20", Component: "dns", Name: "api.example", QType: "A", Action: "allow", Rule: "api", Reason: "matched", Hits: 7},
		{Group: "ci", Source: "192.0.2.30", Component: "proxy", Name: "ci.example", Port: 443, Action: "allow", Rule: "ci", Reason: "matched", Hits: 3},
	}
	p := mustParse(t, `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
kubernetes: {node: node-1, cluster_cidrs: [10.244.0.0/16, 10.96.0.0/12], dns: {address: [10.96.0.10]}}
sources:
  web: {kubernetes: {namespaces: [shop]}}
  ci: [10.2.0.0/16]
users:
  alice:
    hash: $2a$04$CKxvxTcDqB6cnxi.Chjma.9r/0VfUe5QryqVoh5azytZmaPdIyGwa
    groups: [ci]
rules:
  - name: other
    to: [other.example]
`)
	rep := Run(p, rows, Options{})
	if rep.Breaks() {
		t.Errorf("a replay it cannot make faithfully must not count as denied: %+v", rep.Groups)
	}
	got := map[string]int64{}
	for _, s := range rep.Skipped {
		got[s.Why] = s.Hits
	}
	if got[skipPods] != 7 || got[skipUser] != 3 {
		t.Errorf("skipped %v; want 7 hits for pods, 3 for a proxy user", got)
	}
}

func TestWriteText(t *testing.T) {
	rep := Run(mustParse(t, `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
rules: []
`), weekOfHistory(t), Options{})
	var b bytes.Buffer
	rep.WriteText(&b, 1)
	out := b.String()
	for _, s := range []string{"group office", "newly denied: 2 destinations, 7 hits", "dns api.example A", "... and 1 more",
		"not replayed", skipFirewall, "FAIL: the proposal denies traffic the history recorded as allowed"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

// TestReplayerStreams: the rows as stored (one per day and source,
// Store.Each) replay to the same report as the per-source query.
func TestReplayerStreams(t *testing.T) {
	rows, path := weekOfHistoryFile(t)
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	proposed := mustParse(t, `
dns: {upstreams: [192.0.2.53]}
firewall: {backend: none}
sources:
  office: [192.0.2.10]
rules:
  - name: api
    from: [office]
    to: [api.example, tracker.example]
`)
	want := Run(proposed, rows, Options{})
	x := NewReplayer(proposed, Options{})
	if err := st.Each(context.Background(), history.Filter{}, func(r *history.Row) error { x.Add(r); return nil }); err != nil {
		t.Fatal(err)
	}
	got := x.Report()
	var a, b bytes.Buffer
	want.WriteText(&a, 10)
	got.WriteText(&b, 10)
	if a.String() != b.String() {
		t.Errorf("streamed:\n%s\nwant (per-source query):\n%s", b.String(), a.String())
	}
	if nd, _ := got.Count(NewlyDenied); nd == 0 {
		t.Errorf("the proposal narrows office to one address; want newly denied:\n%s", b.String())
	}
}

// TestDecideDNSObserving: a record type dns.qtypes refuses is a deny
// where Decide enforces, and a would-deny naming the group where it does
// not (a group that observes, audit mode), as the DNS firewall records it.
func TestDecideDNSObserving(t *testing.T) {
	const y = `
mode: %s
dns: {upstreams: [192.0.2.53], qtypes: [A], forward: [{zone: corp.example, to: [192.0.2.54]}]}
firewall: {backend: none}
sources:
  office: [192.0.2.0/28]
  newteam: {cidrs: [198.51.100.0/28], observe_until: "%s"}
rules:
  - name: api
    from: [office, newteam]
    to: [api.example]
    ports: [443]
`
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	future, past := "2026-12-31", "2026-12-01"
	newteam := netip.MustParseAddr("198.51.100.5")
	tests := []struct {
		name, mode, until string
		src               netip.Addr
		qname, qtype      string
		action            policy.Action
		reason            policy.Reason
		observing         string
	}{
		{"enforced group, type refused", "enforce", future, office1, "api.example", "TXT", policy.Deny, policy.ReasonQType, ""},
		{"observing group, type refused", "enforce", future, newteam, "api.example", "TXT", policy.WouldDeny, policy.ReasonQType, "newteam"},
		{"observing group, no rule and type refused", "enforce", future, newteam, "other.example", "TXT", policy.WouldDeny, policy.ReasonNoRule, "newteam"},
		{"observing group, type allowed", "enforce", future, newteam, "api.example", "A", policy.Allow, policy.ReasonMatched, ""},
		{"group past observe_until, type refused", "enforce", past, newteam, "api.example", "TXT", policy.Deny, policy.ReasonQType, ""},
		{"audit mode, type refused", "audit", past, office1, "api.example", "TXT", policy.WouldDeny, policy.ReasonQType, ""},
		{"observing group, zone transfer of a forward zone", "enforce", future, newteam, "corp.example", "AXFR", policy.Deny, policy.ReasonQType, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, fmt.Sprintf(y, tt.mode, tt.until))
			p.SetClock(func() time.Time { return now })
			d, ok := decideDNS(p, tt.src, tt.qname, tt.qtype)
			if !ok {
				t.Fatalf("decideDNS: record type %s not understood", tt.qtype)
			}
			if d.Action != tt.action || d.Reason != tt.reason || d.Observing != tt.observing {
				t.Errorf("got %s (%s, observing %q), want %s (%s, observing %q)", d.Action, d.Reason, d.Observing, tt.action, tt.reason, tt.observing)
			}
		})
	}
}
