// Package simulate replays the decision history against a proposed
// policy, through the policy's own decision path, and reports what the
// proposal would newly deny and newly allow.
package simulate

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Outcome is what replaying one recorded decision found.
type Outcome uint8

const (
	Same         Outcome = iota // the proposal decides as the policy in force did
	NewlyDenied                 // recorded as allowed; the proposal would not allow it
	NewlyAllowed                // recorded as denied (or would-deny); the proposal allows it
	StillDenied                 // recorded as would-deny; the proposal does not allow it either: blocked once enforced
)

func (o Outcome) String() string {
	return [...]string{"same", "newly denied", "newly allowed", "still denied"}[o]
}

// Change is what one outcome covers for one destination in one group:
// the recorded decisions of every source there, summed.
type Change struct {
	Outcome   Outcome
	Group     string // the source group as the proposal sees it ("" for none)
	Component string
	Name      string
	Port      uint16
	QType     string
	// Was is the recorded decision (action, rule or reason), Now the
	// proposal's, as text; of the row with the most hits when several
	// differ.
	Was, Now  string
	Hits      int64
	Sources   int // distinct source addresses
	FirstSeen time.Time
	LastSeen  time.Time

	wasHits int64
	srcs    map[string]bool
}

// Group is the changes of one source group, most hits first.
type Group struct {
	Name    string
	Changes map[Outcome][]Change
}

// Skip counts recorded decisions that cannot be replayed faithfully, by
// why.
type Skip struct {
	Why      string
	Rows     int
	Hits     int64
	Examples []string // up to 3 destinations
}

// Report is a simulation's result.
type Report struct {
	Rows, Hits int64 // replayed
	Groups     []Group
	Skipped    []Skip
}

// Options narrow a simulation.
type Options struct {
	// Group keeps only sources the proposal places in this group (or
	// whose decision a rule for it made). Empty: every source.
	Group string
}

// Breaks reports whether something recorded as allowed would be denied:
// the CI gate.
func (r *Report) Breaks() bool {
	for _, g := range r.Groups {
		if len(g.Changes[NewlyDenied]) > 0 {
			return true
		}
	}
	return false
}

// Count returns the changes (destinations) and hits of outcome o.
func (r *Report) Count(o Outcome) (changes int, hits int64) {
	for _, g := range r.Groups {
		for _, c := range g.Changes[o] {
			changes++
			hits += c.Hits
		}
	}
	return changes, hits
}

// Why a recorded decision is not replayed.
const (
	skipFirewall = "kernel decisions: the kernel saw an address, not the name it was learned from"
	skipSource   = "no source address recorded"
	skipPods     = "source in a pod-selecting group: pod membership is not in the history"
	skipUser     = "proxy decision made through a proxy user's groups, which the history does not record"
	skipNoName   = "no destination recorded"
	skipQType    = "record type not understood"
)

// replayed are the reasons of recorded refusals that the rules (and, for
// DNS, dns.qtypes) decide, so a replay can say whether a proposal
// changes them. Every other refusal (rebinding, private addresses,
// certificates, rate limits, ...) happens on top of an allowing rule and
// is reported as not replayed.
var replayed = map[string]bool{
	policy.ReasonNoRule.String():       true,
	policy.ReasonSource.String():       true,
	policy.ReasonPort.String():         true,
	policy.ReasonNotAllowedIP.String(): true,
	policy.ReasonInvalidName.String():  true,
	policy.ReasonForwarded.String():    true,
}

// Replayer replays rows one at a time (Add) and sums what it finds
// (Report), so that a history larger than memory can stream through it.
type Replayer struct {
	p      *policy.Policy
	o      Options
	rep    Report
	groups map[string]map[string]*Change // group → change key → change
	skips  map[string]*Skip
}

// NewReplayer returns a Replayer of p.
func NewReplayer(p *policy.Policy, o Options) *Replayer {
	return &Replayer{p: p, o: o, groups: map[string]map[string]*Change{}, skips: map[string]*Skip{}}
}

// Run replays rows against p: Add for each, then Report.
func Run(p *policy.Policy, rows []history.Row, o Options) *Report {
	x := NewReplayer(p, o)
	for i := range rows {
		x.Add(&rows[i])
	}
	return x.Report()
}

// Add replays r, a row with its source address (history.Filter's
// PerSource rows, or Store.Each's per day). It does not keep r.
func (x *Replayer) Add(r *history.Row) {
	p := x.p
	out, d, src, why := replay(p, r)
	if why != "" {
		sk := x.skips[why]
		if sk == nil {
			sk = &Skip{Why: why}
			x.skips[why] = sk
		}
		sk.Rows++
		sk.Hits += r.Hits
		if dd := dest(r); len(sk.Examples) < 3 && !slices.Contains(sk.Examples, dd) {
			sk.Examples = append(sk.Examples, dd)
		}
		return
	}
	g := d.Group
	if g == "" || x.o.Group != "" {
		groups := p.GroupsOf(src)
		if x.o.Group != "" && d.Group != x.o.Group && !slices.Contains(groups, x.o.Group) {
			return
		}
		if g == "" {
			g = strings.Join(groups, ",")
		}
	}
	x.rep.Rows++
	x.rep.Hits += r.Hits
	if out == Same {
		return
	}
	key := out.String() + "\x00" + r.Component + "\x00" + r.Name + "\x00" + strconv.Itoa(int(r.Port)) + "\x00" + r.QType
	m := x.groups[g]
	if m == nil {
		m = map[string]*Change{}
		x.groups[g] = m
	}
	c := m[key]
	if c == nil {
		c = &Change{Outcome: out, Group: g, Component: r.Component, Name: r.Name, Port: r.Port, QType: r.QType,
			FirstSeen: r.FirstSeen, LastSeen: r.LastSeen, srcs: map[string]bool{}}
		m[key] = c
	}
	c.Hits += r.Hits
	c.srcs[r.Source] = true
	c.Sources = len(c.srcs)
	if r.FirstSeen.Before(c.FirstSeen) {
		c.FirstSeen = r.FirstSeen
	}
	if r.LastSeen.After(c.LastSeen) {
		c.LastSeen = r.LastSeen
	}
	if r.Hits > c.wasHits {
		c.wasHits = r.Hits
		c.Was = recorded(r)
		c.Now = describe(d)
	}
}

// Report returns what the rows added so far found.
func (x *Replayer) Report() *Report {
	rep := x.rep
	for name, m := range x.groups {
		g := Group{Name: name, Changes: map[Outcome][]Change{}}
		for _, c := range m {
			cc := *c
			cc.srcs = nil
			g.Changes[c.Outcome] = append(g.Changes[c.Outcome], cc)
		}
		for _, cs := range g.Changes {
			sort.Slice(cs, func(i, j int) bool {
				if cs[i].Hits != cs[j].Hits {
					return cs[i].Hits > cs[j].Hits
				}
				return dest2(cs[i]) < dest2(cs[j])
			})
		}
		rep.Groups = append(rep.Groups, g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool { return rep.Groups[i].Name < rep.Groups[j].Name })
	for _, s := range x.skips {
		rep.Skipped = append(rep.Skipped, *s)
	}
	sort.Slice(rep.Skipped, func(i, j int) bool {
		if rep.Skipped[i].Hits != rep.Skipped[j].Hits {
			return rep.Skipped[i].Hits > rep.Skipped[j].Hits
		}
		return rep.Skipped[i].Why < rep.Skipped[j].Why
	})
	return &rep
}

// replay decides r again under p as the component that recorded it
// would: the outcome, the proposal's decision and the source, or why r
// cannot be replayed.
func replay(p *policy.Policy, r *history.Row) (Outcome, policy.Decision, netip.Addr, string) {
	var d policy.Decision
	var wasAllowed bool
	switch r.Action {
	case "allow":
		wasAllowed = true
	case "fail":
		// A failure after a rule allowed it (upstream down, over a
		// bound) names the rule; one before any decision does not.
		if r.Rule == "" {
			return Same, d, netip.Addr{}, "failed before a policy decision: " + r.Reason
		}
		wasAllowed = true
	default: // deny, would-deny
		if !replayed[r.Reason] && !(r.Component == "dns" && r.Reason == policy.ReasonQType.String()) {
			return Same, d, netip.Addr{}, "refused for a reason beyond the rules: " + r.Reason
		}
	}
	if r.Component == "firewall" {
		return Same, d, netip.Addr{}, skipFirewall
	}
	src, err := netip.ParseAddr(r.Source)
	if err != nil {
		return Same, d, netip.Addr{}, skipSource
	}
	if r.Name == "" {
		return Same, d, src, skipNoName
	}
	for _, g := range strings.Split(r.Group, ",") {
		if g != "" && p.Dynamic(g) {
			return Same, d, src, skipPods
		}
	}
	switch r.Component {
	case "dns":
		var ok bool
		if d, ok = decideDNS(p, src, r.Name, r.QType); !ok {
			return Same, d, src, skipQType
		}
	case "proxy":
		d = p.Decide(policy.Query{Source: src, Name: r.Name, Port: r.Port, Proto: policy.TCP})
		if wasAllowed && d.Action != policy.Allow && viaUser(p, r, src) {
			return Same, d, src, skipUser
		}
	default:
		return Same, d, src, "component " + r.Component + " not known"
	}
	nowAllowed := d.Action == policy.Allow
	switch {
	case wasAllowed && !nowAllowed:
		return NewlyDenied, d, src, ""
	case !wasAllowed && nowAllowed:
		return NewlyAllowed, d, src, ""
	case !wasAllowed && r.Action == "would-deny":
		return StillDenied, d, src, ""
	}
	return Same, d, src, ""
}

// decideDNS is the DNS firewall's admission (dnsfw's admit): a forward
// zone's names are answered without rules (zone transfers refused);
// otherwise Decide, then dns.qtypes for what a rule allows.
func decideDNS(p *policy.Policy, src netip.Addr, name, qtype string) (policy.Decision, bool) {
	var t uint16
	if qtype != "" {
		var ok bool
		if t, ok = dns.StringToType[qtype]; !ok {
			n, found := strings.CutPrefix(qtype, "TYPE")
			v, err := strconv.ParseUint(n, 10, 16)
			if !found || err != nil {
				return policy.Decision{}, false
			}
			t = uint16(v)
		}
	}
	if z := p.Forwarded(name); z != nil {
		d := policy.Decision{Action: policy.Allow, Reason: policy.ReasonForwarded, Pattern: string(z.Zone)}
		if t == dns.TypeAXFR || t == dns.TypeIXFR {
			// Refused in every mode, as the DNS firewall does.
			d.Action, d.Reason = policy.Deny, policy.ReasonQType
		}
		return d, true
	}
	d := p.Decide(policy.Query{Source: src, Name: name, AnyPort: true})
	if d.Action != policy.Deny && qtype != "" && !p.TypeAllowed(t) {
		// Enforced as Decide enforces: not in audit mode, nor for a
		// source in a group that observes (observe_until), whose refusal
		// is a would-deny naming the group. A would-deny of Decide's
		// keeps its reason, as the DNS firewall keeps it.
		q := &policy.Query{Source: src}
		switch {
		case p.Enforced(q):
			d.Rule, d.Reason, d.Action = nil, policy.ReasonQType, policy.Deny
		case d.Action != policy.WouldDeny:
			d.Rule, d.Reason, d.Action = nil, policy.ReasonQType, policy.WouldDeny
		}
		if d.Action == policy.WouldDeny {
			d.Observing = p.ObservedBy(q)
		}
	}
	return d, true
}

// viaUser reports whether r, allowed through group r.Group, may have
// been allowed through a proxy user in that group rather than the
// source address: the address is not in the group and a user is.
func viaUser(p *policy.Policy, r *history.Row, src netip.Addr) bool {
	if r.Group == "" || r.Rule == "" || slices.Contains(p.GroupsOf(src), r.Group) {
		return false
	}
	for _, u := range p.Users {
		if slices.Contains(u.Groups, r.Group) {
			return true
		}
	}
	return false
}

func recorded(r *history.Row) string {
	if r.Rule != "" {
		return r.Action + " by rule " + r.Rule
	}
	return r.Action + ": " + r.Reason
}

func describe(d policy.Decision) string {
	if d.Rule != nil {
		return d.Action.String() + " by rule " + d.Rule.Name
	}
	return d.Action.String() + ": " + d.Reason.String()
}

func dest(r *history.Row) string {
	return destination(r.Component, r.Name, r.Port, r.QType)
}

func dest2(c Change) string { return destination(c.Component, c.Name, c.Port, c.QType) }

func destination(comp, name string, port uint16, qtype string) string {
	switch {
	case port != 0:
		return comp + " " + hostPort(name, port)
	case qtype != "":
		return comp + " " + name + " " + qtype
	}
	return comp + " " + name
}

func hostPort(name string, port uint16) string {
	if strings.Contains(name, ":") {
		return "[" + name + "]:" + strconv.Itoa(int(port))
	}
	return name + ":" + strconv.Itoa(int(port))
}
