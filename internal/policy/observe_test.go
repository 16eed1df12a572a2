package policy

import (
	"net/netip"
	"testing"
	"time"
)

const observePolicy = upstreams + `sources:
  payments:
    cidrs: [10.9.0.0/24]
    observe_until: 2027-01-31
  ci:
    cidrs: [10.8.0.0/24]
    observe_until: 2027-01-10T12:00:00Z
  office: [10.7.0.0/24]
users:
  alice: {hash: "$2a$10$abcdefghijklmnopqrstuu0123456789012345678901234567890", groups: [payments]}
rules:
  - name: api
    from: [payments, office]
    to: api.example.com
    ports: [443]
`

func mustParseObserve(t *testing.T) *Policy {
	t.Helper()
	p, err := Parse("p.yaml", []byte(observePolicy))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestObserveUntilParsed(t *testing.T) {
	p := mustParseObserve(t)
	want := map[string]Observe{
		// A date observes through that day, UTC.
		"payments": {Until: time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC), Written: "2027-01-31", At: Pos{5, 20}},
		"ci":       {Until: time.Date(2027, 1, 10, 12, 0, 0, 0, time.UTC), Written: "2027-01-10T12:00:00Z", At: Pos{8, 20}},
	}
	if len(p.Observe) != len(want) {
		t.Fatalf("got %d observing groups %v, want %d", len(p.Observe), p.Observe, len(want))
	}
	for g, w := range want {
		if got := p.Observe[g]; !got.Until.Equal(w.Until) || got.Written != w.Written || got.At != w.At {
			t.Errorf("%s: got %+v, want %+v", g, got, w)
		}
	}
	at := time.Date(2027, 1, 15, 0, 0, 0, 0, time.UTC)
	got := p.Observed(at)
	if len(got) != 2 || got[0].Group != "ci" || got[0].Observing || got[1].Group != "payments" || !got[1].Observing {
		t.Errorf("Observed(%v) = %+v, want ci enforced, payments observing", at, got)
	}
	if next, ok := p.NextObserveEnd(at); !ok || !next.Equal(want["payments"].Until) {
		t.Errorf("NextObserveEnd(%v) = %v, %v; want %v", at, next, ok, want["payments"].Until)
	}
	if _, ok := p.NextObserveEnd(want["payments"].Until); ok {
		t.Errorf("NextObserveEnd at the last deadline: got one, want none")
	}
}

func TestDecideObserving(t *testing.T) {
	p := mustParseObserve(t)
	var now time.Time
	p.SetClock(func() time.Time { return now })
	payments := netip.MustParseAddr("10.9.0.5")
	office := netip.MustParseAddr("10.7.0.5")
	ci := netip.MustParseAddr("10.8.0.5")
	before := time.Date(2027, 1, 31, 23, 59, 59, 0, time.UTC)
	after := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name      string
		now       time.Time
		q         Query
		want      Action
		observing string
	}{
		{"observing group, denied name: would-deny", before, Query{Source: payments, Name: "evil.example.net", AnyPort: true}, WouldDeny, "payments"},
		{"observing group, denied port", before, Query{Source: payments, Name: "api.example.com", Port: 80, Proto: TCP}, WouldDeny, "payments"},
		{"observing group, allowed: allow", before, Query{Source: payments, Name: "api.example.com", Port: 443, Proto: TCP}, Allow, ""},
		{"observing group, IP literal", before, Query{Source: payments, Addr: netip.MustParseAddr("192.0.2.1"), Port: 443, Proto: TCP}, WouldDeny, "payments"},
		{"observing group's user from elsewhere", before, Query{Source: netip.MustParseAddr("192.0.2.77"), User: "alice", Name: "evil.example.net", Port: 443, Proto: TCP}, WouldDeny, "payments"},
		{"mapped address of an observing source", before, Query{Source: netip.MustParseAddr("::ffff:10.9.0.5"), Name: "evil.example.net", AnyPort: true}, WouldDeny, "payments"},
		{"enforced group", before, Query{Source: office, Name: "evil.example.net", AnyPort: true}, Deny, ""},
		{"no group", before, Query{Source: netip.MustParseAddr("192.0.2.9"), Name: "evil.example.net", AnyPort: true}, Deny, ""},
		{"past its time: enforced", before, Query{Source: ci, Name: "evil.example.net", AnyPort: true}, Deny, ""},
		{"at the deadline: enforced", after, Query{Source: payments, Name: "evil.example.net", AnyPort: true}, Deny, ""},
		{"after the deadline, allowed stays allowed", after, Query{Source: payments, Name: "api.example.com", Port: 443, Proto: TCP}, Allow, ""},
		{"invalid name, observing", before, Query{Source: payments, Name: "bad_name..", AnyPort: true}, WouldDeny, "payments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			now = tt.now
			d := p.Decide(tt.q)
			if d.Action != tt.want || d.Observing != tt.observing {
				t.Errorf("got %s (observing %q), want %s (observing %q)", d.Action, d.Observing, tt.want, tt.observing)
			}
			if d.Action == WouldDeny && d.Rule != nil {
				t.Errorf("a would-deny names rule %q; want none", d.Rule.Name)
			}
			if g := p.ObservedBy(&tt.q); g != tt.observing && tt.want != Allow {
				t.Errorf("ObservedBy = %q, want %q", g, tt.observing)
			}
			enforced := p.Enforced(&tt.q)
			if wantEnf := tt.observing == ""; enforced != wantEnf && tt.want != Allow {
				t.Errorf("Enforced = %v, want %v", enforced, wantEnf)
			}
		})
	}
}

// A clock that crosses the deadline switches the same *Policy, without
// a reload.
func TestObserveCrossesDeadline(t *testing.T) {
	p := mustParseObserve(t)
	now := time.Date(2027, 1, 31, 12, 0, 0, 0, time.UTC)
	p.SetClock(func() time.Time { return now })
	q := Query{Source: netip.MustParseAddr("10.9.0.5"), Name: "evil.example.net", AnyPort: true}
	if a := p.Decide(q).Action; a != WouldDeny {
		t.Fatalf("before: got %s, want would-deny", a)
	}
	if !p.Observing("payments", now) {
		t.Error("Observing(payments) before = false, want true")
	}
	now = now.Add(12 * time.Hour)
	if a := p.Decide(q).Action; a != Deny {
		t.Fatalf("after: got %s, want deny", a)
	}
	if p.Observing("payments", now) {
		t.Error("Observing(payments) after = true, want false")
	}
}

// Audit mode stays the whole daemon's: it needs no group.
func TestObserveWithAuditMode(t *testing.T) {
	p, err := Parse("p.yaml", []byte("mode: audit\n"+observePolicy))
	if err != nil {
		t.Fatal(err)
	}
	q := Query{Source: netip.MustParseAddr("10.7.0.5"), Name: "evil.example.net", AnyPort: true}
	if d := p.Decide(q); d.Action != WouldDeny || d.Observing != "" {
		t.Errorf("got %s observing %q, want would-deny by audit mode", d.Action, d.Observing)
	}
	q.Source = netip.MustParseAddr("10.9.0.5") // payments, which observes too
	if d, g := p.Decide(q), p.ObservedBy(&q); d.Action != WouldDeny || d.Observing != "" || g != "" {
		t.Errorf("got %s observing %q, ObservedBy %q; want would-deny by audit mode, no group", d.Action, d.Observing, g)
	}
}

func init() {
	errorCases = append(errorCases,
		errorCase{"observe_until not a date", upstreams + "sources:\n  p:\n    cidrs: [10.0.0.0/8]\n    observe_until: 31/01/2027\n", 5, 20, []string{"sources.p.observe_until", `"31/01/2027" is not a date`, "2027-01-31"}},
		errorCase{"observe_until a list", upstreams + "sources:\n  p:\n    cidrs: [10.0.0.0/8]\n    observe_until: [2027-01-31]\n", 5, 20, []string{"sources.p.observe_until must be a single value"}},
		errorCase{"observe_until alone", upstreams + "sources:\n  p:\n    observe_until: 2027-01-31\n", 3, 3, []string{`source group "p" has no cidrs`}},
		errorCase{"observe_until misspelt", upstreams + "sources:\n  p:\n    cidrs: [10.0.0.0/8]\n    observe_untill: 2027-01-31\n", 5, 5, []string{`did you mean "observe_until"?`}},
	)
}
