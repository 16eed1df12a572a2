package policy

import (
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Usage counts a rule's hits: the traffic decisions its rule allowed, as
// recorded (the audit logger counts every allowed decision with a source
// as it writes its line, so explain and refreshes do not count). It is
// safe for concurrent use; a nil *Usage counts nothing and reads zero.
type Usage struct {
	hits atomic.Uint64
	last atomic.Int64 // Unix nanoseconds of the last hit; 0: never
}

// Hit counts one hit at t.
func (u *Usage) Hit(t time.Time) {
	if u == nil {
		return
	}
	u.hits.Add(1)
	ns := t.UnixNano()
	// The newest time wins; concurrent hits may arrive out of order.
	for {
		old := u.last.Load()
		if ns <= old || u.last.CompareAndSwap(old, ns) {
			return
		}
	}
}

// Hits returns the number of hits so far.
func (u *Usage) Hits() uint64 {
	if u == nil {
		return 0
	}
	return u.hits.Load()
}

// LastHit returns the time of the newest hit, zero if none.
func (u *Usage) LastHit() time.Time {
	if u == nil {
		return time.Time{}
	}
	if ns := u.last.Load(); ns != 0 {
		return time.Unix(0, ns).UTC()
	}
	return time.Time{}
}

// Usage returns the rule's hit counter: nil for a rule that was not
// compiled by Parse (such as a placeholder for a removed rule).
func (r *Rule) Usage() *Usage { return r.usage }

// KeepUsage makes every rule of p that old has too (same name, same
// sources, targets and ports) continue old's counter, so that a reload
// does not reset what unchanged rules have counted. A rule whose meaning
// changed starts at zero: its old hits said nothing about the new one.
// Call it before p is shared.
func (p *Policy) KeepUsage(old *Policy) {
	if old == nil {
		return
	}
	for i, r := range p.Rules {
		var o *Rule
		if i < len(old.Rules) && old.Rules[i].Name == r.Name {
			o = old.Rules[i] // a reload mostly keeps the rules in order
		} else {
			o = old.Rule(r.Name)
		}
		if o != nil && o.usage != nil && sameMeaning(r, o) {
			r.usage = o.usage
		}
	}
}

// sameMeaning reports whether a and b allow the same sources the same
// targets on the same ports.
func sameMeaning(a, b *Rule) bool {
	if !slices.Equal(a.From, b.From) || !slices.Equal(a.Prefixes, b.Prefixes) || !slices.Equal(a.Ports, b.Ports) || len(a.Names) != len(b.Names) {
		return false
	}
	for i := range a.Names {
		if a.Names[i].Raw != b.Names[i].Raw {
			return false
		}
	}
	return (a.From == nil) == (b.From == nil)
}

// Written returns the range the way the policy spells it: 443/tcp,
// 8000-8100/tcp. (Not String: the tests and messages print ranges as
// structs.)
func (r PortRange) Written() string {
	s := strconv.Itoa(int(r.Lo))
	if r.Hi != r.Lo {
		s += "-" + strconv.Itoa(int(r.Hi))
	}
	return s + "/" + r.Proto.String()
}

// RuleUsage is one rule's usage, for /v1/rules, explain and the console.
type RuleUsage struct {
	Name  string   `json:"name"`
	From  []string `json:"from"`  // empty: every source
	To    []string `json:"to"`    // names as written, then CIDRs
	Ports []string `json:"ports"` // like 443/tcp, 8000-8100/tcp; empty: every port
	Hits  uint64   `json:"hits"`
	// LastHit is the newest hit, nil if none since the counter started
	// (the process started, or the rule last changed).
	LastHit *time.Time `json:"last_hit"`
}

// RulesUsage returns every rule's usage, in file order.
func (p *Policy) RulesUsage() []RuleUsage {
	out := make([]RuleUsage, 0, len(p.Rules))
	for _, r := range p.Rules {
		out = append(out, r.UsageOf())
	}
	return out
}

// UsageOf returns r's usage.
func (r *Rule) UsageOf() RuleUsage {
	u := RuleUsage{Name: r.Name, From: append([]string{}, r.From...), To: make([]string, 0, len(r.Names)+len(r.Prefixes)), Ports: make([]string, 0, len(r.Ports)), Hits: r.usage.Hits()}
	for _, n := range r.Names {
		u.To = append(u.To, n.Raw)
	}
	for _, x := range r.Prefixes {
		u.To = append(u.To, x.String())
	}
	for _, pr := range r.Ports {
		u.Ports = append(u.Ports, pr.Written())
	}
	if t := r.usage.LastHit(); !t.IsZero() {
		u.LastHit = &t
	}
	return u
}
