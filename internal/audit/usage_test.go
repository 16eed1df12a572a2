package audit

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Record counts a rule's hit for each decision it allowed from a source,
// and nothing else: denials (which carry no rule), a tunnel's closing
// line, lines that add to a decision, and fqdngate's own refreshes.
func TestRecordCountsRuleHits(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte("dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: api\n    to: api.example.com\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := p.Rules[0]
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	src := netip.MustParseAddr("192.0.2.10")
	allow := policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: r}
	l := New(io.Discard, "json", nil)
	for _, e := range []Event{
		{Component: DNS, Source: src, Name: "api.example.com", Decision: allow, Time: at},
		{Component: Proxy, Source: src, Name: "api.example.com", Port: 443, Decision: allow, Time: at.Add(time.Second)},
		{Component: Proxy, Source: src, Name: "api.example.com", Port: 443, Decision: allow, Time: at.Add(time.Hour), Closed: true},
		{Component: DNS, Source: src, Name: "api.example.com", Decision: allow, Time: at.Add(time.Hour), Msg: "hold_timeout"},
		{Component: DNS, Name: "api.example.com", Decision: allow, Time: at.Add(time.Hour)}, // a refresh
		{Component: DNS, Source: src, Name: "evil.example.com", Decision: policy.Decision{Action: policy.Deny, NearRule: r}, Time: at.Add(time.Hour)},
	} {
		l.Record(context.Background(), e)
	}
	if got := r.Usage().Hits(); got != 2 {
		t.Errorf("hits: got %d, want 2", got)
	}
	if got := r.Usage().LastHit(); !got.Equal(at.Add(time.Second)) {
		t.Errorf("last hit: got %v, want %v", got, at.Add(time.Second))
	}
	// Without a destination (audit output off) it still counts.
	New(nil, "json", nil).Record(context.Background(), Event{Component: DNS, Source: src, Decision: allow, Time: at.Add(2 * time.Second)})
	if got := r.Usage().Hits(); got != 3 {
		t.Errorf("hits with no audit output: got %d, want 3", got)
	}
}
