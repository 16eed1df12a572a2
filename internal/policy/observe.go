package policy

import (
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Observe is a source group's observe_until: until Until, what the policy
// would deny the group's sources is allowed and recorded as would-deny;
// from Until on it is enforced. Nothing needs to reload at Until: Decide
// reads the policy's clock, and the kernel rule that accepts the group
// carries Until (internal/nft), so the kernel stops on its own, with or
// without the daemon; the daemon re-applies the ruleset only to tidy.
type Observe struct {
	// Until is the first instant the group is enforced. For a date
	// (observe_until: 2027-01-31) it is the start of the next day, UTC:
	// the group observes through the whole day written.
	Until time.Time
	// Written is the value as written, for messages.
	Written string
	// At is where observe_until is written.
	At Pos
}

// ObservedGroup is one group with observe_until, for explain, /v1/policy,
// the console and the kernel ruleset (whose accept for the group carries
// Until).
type ObservedGroup struct {
	Group   string    `json:"group"`
	Until   time.Time `json:"until"`   // first instant enforced
	Written string    `json:"written"` // observe_until as written
	// Observing is true while now is before Until.
	Observing bool `json:"observing"`
}

// observed is one entry of Policy.observeOrder: the groups with
// observe_until, by name, for Decide's walk.
type observed struct {
	group string
	until time.Time
}

// dateLayout is observe_until's date form.
const dateLayout = "2006-01-02"

// parseObserveUntil reads observe_until: a date (observe through that day,
// UTC) or an RFC 3339 time (observe until that instant).
func parseObserveUntil(s string) (time.Time, bool) {
	if t, err := time.Parse(dateLayout, s); err == nil {
		return t.AddDate(0, 0, 1), true
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), true
	}
	return time.Time{}, false
}

// observeUntil decodes sources.<group>.observe_until.
func (d *decoder) observeUntil(dst *Observe, set *bool, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		t, ok := parseObserveUntil(strings.TrimSpace(s))
		if !ok {
			d.errorf(n, "%s: %q is not a date; write it like 2027-01-31 (observed through that day, UTC) or 2027-01-31T18:00:00Z", path, s)
			return
		}
		n = d.deref(n)
		*dst = Observe{Until: t, Written: s, At: Pos{n.Line, n.Column}}
		*set = true
	}
}

// SetClock makes the policy read the time from now, for observe_until.
// Call it before the policy is shared; if never called, time.Now.
func (p *Policy) SetClock(now func() time.Time) { p.clock = now }

// Now is the policy's clock (SetClock).
func (p *Policy) Now() time.Time {
	if p.clock != nil {
		return p.clock()
	}
	return time.Now()
}

// Observed returns every group with observe_until, by name, saying
// whether it observes at now.
func (p *Policy) Observed(now time.Time) []ObservedGroup {
	out := make([]ObservedGroup, 0, len(p.observeOrder))
	for _, o := range p.observeOrder {
		out = append(out, ObservedGroup{Group: o.group, Until: o.until, Written: p.Observe[o.group].Written, Observing: now.Before(o.until)})
	}
	return out
}

// Observing reports whether group g observes at now.
func (p *Policy) Observing(g string, now time.Time) bool {
	o, ok := p.Observe[g]
	return ok && now.Before(o.Until)
}

// NextObserveEnd returns the earliest observe_until after now: when a
// group becomes enforced, and the kernel ruleset is applied again to
// remove its expired accept.
func (p *Policy) NextObserveEnd(now time.Time) (time.Time, bool) {
	var next time.Time
	for _, o := range p.observeOrder {
		if now.Before(o.until) && (next.IsZero() || o.until.Before(next)) {
			next = o.until
		}
	}
	return next, !next.IsZero()
}

// Enforced reports whether a denial for q's source (its address, and its
// proxy user's groups) is enforced now: false in audit mode, and while a
// group the source is in observes (observe_until). Components that refuse
// on top of Decide (a record type, a budget) ask it, so that they follow
// Decide.
func (p *Policy) Enforced(q *Query) bool {
	return p.Mode == Enforce && p.observer(q) == ""
}

// ObservedBy returns the group whose observe_until lets q's source
// through now: "" when its denials are enforced, and in audit mode (the
// whole daemon observes, no group). Components that refuse on top of
// Decide name it in their would-deny (Decision.Observing).
func (p *Policy) ObservedBy(q *Query) string {
	if p.Mode == Audit {
		return ""
	}
	return p.observer(q)
}

// observer returns a group q's source is in that observes now, or "". A
// source in several groups observes if any of them does: the kernel
// accepts it by any of its groups' sets as well.
func (p *Policy) observer(q *Query) string {
	if len(p.observeOrder) == 0 {
		return ""
	}
	now := p.Now()
	src := sourceAddr(q.Source)
	var (
		mb            Member
		looked, found bool
	)
	for _, o := range p.observeOrder {
		if !now.Before(o.until) {
			continue
		}
		for _, pfx := range p.Sources[o.group] {
			if pfx.Contains(src) {
				return o.group
			}
		}
		if p.Dynamic(o.group) {
			if !looked {
				mb, found = p.memberOf(src)
				looked = true
			}
			if inDynamic(mb, found, o.group) {
				return o.group
			}
		}
		if q.User != "" {
			if u, ok := p.Users[q.User]; ok {
				for _, ug := range u.Groups {
					if ug == o.group {
						return o.group
					}
				}
			}
		}
	}
	return ""
}

func (p *Policy) compileObserve() {
	for g, o := range p.Observe {
		p.observeOrder = append(p.observeOrder, observed{g, o.Until})
	}
	sort.Slice(p.observeOrder, func(i, j int) bool { return p.observeOrder[i].group < p.observeOrder[j].group })
}
