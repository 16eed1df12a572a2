package audit

import (
	"context"
	"io"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

type names []string

func (n *names) Observe(e Event) { *n = append(*n, e.Name) }

// Every sink sees every decision, and no sink sees the lines that add
// to one.
func TestSinks(t *testing.T) {
	l := New(io.Discard, "json", nil)
	var a, b names
	l.SetSink(&a)
	l.SetSink(&b)
	ctx := context.Background()
	l.Record(ctx, Event{Component: DNS, Name: "one.example", Decision: policy.Decision{Action: policy.Deny}})
	l.Record(ctx, Event{Component: Proxy, Name: "one.example", Closed: true})
	l.Record(ctx, Event{Component: Proxy, Name: "hold.example", Msg: "fleet hold timed out"})
	l.Record(ctx, Event{Component: Proxy, Name: "two.example", Decision: policy.Decision{Action: policy.Allow}})
	for _, got := range []names{a, b} {
		if len(got) != 2 || got[0] != "one.example" || got[1] != "two.example" {
			t.Errorf("a sink saw %q, want [one.example two.example]", got)
		}
	}
}
