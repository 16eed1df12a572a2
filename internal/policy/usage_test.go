package policy

import (
	"sync"
	"testing"
	"time"
)

const usagePolicy = upstreams + `sources: {pay: [10.1.0.0/24]}
rules:
  - name: api
    from: [pay]
    to: [api.example.com, "*.cdn.example.com", 203.0.113.0/24]
    ports: [443, "8000-8100/udp"]
  - name: docs
    to: docs.example.com
`

func TestUsage(t *testing.T) {
	p, err := Parse("p.yaml", []byte(usagePolicy))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Rules[0].Usage().Hit(t0.Add(time.Duration(i) * time.Second))
		}()
	}
	wg.Wait()
	got := p.RulesUsage()
	if len(got) != 2 {
		t.Fatalf("got %d rules, want 2", len(got))
	}
	api := got[0]
	if api.Name != "api" || api.Hits != 100 || api.LastHit == nil || !api.LastHit.Equal(t0.Add(99*time.Second)) {
		t.Errorf("api: got %+v (last %v), want 100 hits, the last at +99s (the newest, whatever order they came in)", api, api.LastHit)
	}
	if want := []string{"api.example.com", "*.cdn.example.com", "203.0.113.0/24"}; !equalStrings(api.To, want) {
		t.Errorf("api.To = %v, want %v", api.To, want)
	}
	if want := []string{"443/tcp", "8000-8100/udp"}; !equalStrings(api.Ports, want) {
		t.Errorf("api.Ports = %v, want %v", api.Ports, want)
	}
	if want := []string{"pay"}; !equalStrings(api.From, want) {
		t.Errorf("api.From = %v, want %v", api.From, want)
	}
	if d := got[1]; d.Hits != 0 || d.LastHit != nil || d.From == nil || len(d.From) != 0 || d.Ports == nil {
		t.Errorf("docs: got %+v, want no hits, empty (not null) from and ports", d)
	}
	var nilUsage *Usage
	nilUsage.Hit(t0) // a placeholder rule's: counts nothing, does not crash
	if nilUsage.Hits() != 0 || !nilUsage.LastHit().IsZero() {
		t.Errorf("nil Usage reads %d, %v; want zero", nilUsage.Hits(), nilUsage.LastHit())
	}
}

// A reload keeps the counters of rules that did not change, and starts
// the changed or new ones at zero.
func TestKeepUsage(t *testing.T) {
	old, err := Parse("p.yaml", []byte(usagePolicy))
	if err != nil {
		t.Fatal(err)
	}
	old.Rules[0].Usage().Hit(time.Now())
	old.Rules[1].Usage().Hit(time.Now())
	for _, tt := range []struct {
		name, yaml string
		api, docs  uint64
	}{
		{"unchanged", usagePolicy, 1, 1},
		{"rule order and other rules changed", upstreams + "sources: {pay: [10.1.0.0/24]}\nrules:\n  - name: docs\n    to: docs.example.com\n  - name: new\n    to: new.example.com\n  - name: api\n    from: [pay]\n    to: [api.example.com, \"*.cdn.example.com\", 203.0.113.0/24]\n    ports: [443, \"8000-8100/udp\"]\n", 1, 1},
		{"ports changed", upstreams + "sources: {pay: [10.1.0.0/24]}\nrules:\n  - name: api\n    from: [pay]\n    to: [api.example.com, \"*.cdn.example.com\", 203.0.113.0/24]\n    ports: [443]\n  - name: docs\n    to: docs.example.com\n", 0, 1},
		{"from added", upstreams + "sources: {pay: [10.1.0.0/24]}\nrules:\n  - name: api\n    from: [pay]\n    to: [api.example.com, \"*.cdn.example.com\", 203.0.113.0/24]\n    ports: [443, \"8000-8100/udp\"]\n  - name: docs\n    from: [pay]\n    to: docs.example.com\n", 1, 0},
		{"target changed", upstreams + "sources: {pay: [10.1.0.0/24]}\nrules:\n  - name: api\n    from: [pay]\n    to: [api.example.com, \"*.cdn.example.com\", 203.0.113.0/24]\n    ports: [443, \"8000-8100/udp\"]\n  - name: docs\n    to: docs2.example.com\n", 1, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			p.KeepUsage(old)
			if got := p.Rule("api").Usage().Hits(); got != tt.api {
				t.Errorf("api: %d hits, want %d", got, tt.api)
			}
			if got := p.Rule("docs").Usage().Hits(); got != tt.docs {
				t.Errorf("docs: %d hits, want %d", got, tt.docs)
			}
			if r := p.Rule("new"); r != nil && r.Usage().Hits() != 0 {
				t.Errorf("new: %d hits, want 0", r.Usage().Hits())
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkUsageHit is the cost a rule's hit adds to each allowed
// decision's audit line: one atomic add and one compare-and-swap, on one
// rule from every core (the worst case: one hot rule).
func BenchmarkUsageHit(b *testing.B) {
	var u Usage
	t := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var i time.Duration
		for pb.Next() {
			i++ // a later time each hit, as a clock gives: the CAS runs
			u.Hit(t.Add(i))
		}
	})
}
