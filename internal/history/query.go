package history

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Filter selects and shapes what Query returns. Zero fields select
// everything.
type Filter struct {
	// Since keeps the days from Since's UTC day on.
	Since time.Time
	// Group keeps rows of sources in this group (a source in several
	// groups counts in each).
	Group string
	// Action keeps one action: allow, deny, would-deny or fail.
	Action string
	// Component keeps one component: dns, proxy or firewall.
	Component string
	// Name keeps this name and the names below it.
	Name string
	// Source keeps one source address.
	Source string
	// PerDay returns a row per day instead of one over all days.
	PerDay bool
	// PerSource returns a row per source address (Row.Source) instead of
	// one over all sources: what simulate replays, since a decision
	// depends on the source.
	PerSource bool
	// Limit caps the rows, most hits first. If zero, 1000.
	Limit int
}

// Row is one line of the history: the decisions that share a Key but
// the source address, on one day (Filter.PerDay) or over all days since.
type Row struct {
	Day       string    `json:"day,omitempty"`
	Source    string    `json:"source,omitempty"` // Filter.PerSource only; "" when none was recorded
	Group     string    `json:"group"`
	Component string    `json:"component"`
	Name      string    `json:"name"`
	Port      uint16    `json:"port,omitempty"`
	QType     string    `json:"qtype,omitempty"`
	Action    string    `json:"action"`
	Rule      string    `json:"rule"`
	Reason    string    `json:"reason"`
	Hits      int64     `json:"hits"`
	Sources   int64     `json:"sources"` // distinct source addresses, exact
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Answers   []string  `json:"answers,omitempty"` // at most 16, the first in sort order
	SNI       []string  `json:"sni,omitempty"`
	Cert      []string  `json:"cert,omitempty"` // verified, failed
	// SourceAddrs lists up to 16 of the sources (for explain and simulate).
	SourceAddrs []string `json:"source_addrs,omitempty"`
}

// Query returns the rows f selects, most hits first.
//
// It groups in Go over the stored rows (Each) rather than with SQL's
// GROUP BY: SQLite sorts to group, and over 30 days of 1,000 sources
// the sort took several times as long as reading the rows
// (BENCHMARKS.md, Adoption).
func (s *Store) Query(ctx context.Context, f Filter) ([]Row, error) {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	type group struct {
		r    Row
		srcs map[uint32]struct{} // ids of srcNames: a map of small keys, not of strings, bounds the memory a daemon's /v1/history takes
	}
	srcIDs := map[string]uint32{}
	var srcNames []string
	type key struct {
		day, source, group, component, name string
		port                                uint16
		qtype, action, rule, reason         string
	}
	groups := map[key]*group{}
	err := s.Each(ctx, f, func(r *Row) error {
		k := key{group: r.Group, component: r.Component, name: r.Name, port: r.Port, qtype: r.QType,
			action: r.Action, rule: r.Rule, reason: r.Reason}
		if f.PerDay {
			k.day = r.Day
		}
		if f.PerSource {
			k.source = r.Source
		}
		g := groups[k]
		if g == nil {
			g = &group{r: Row{Day: k.day, Source: k.source, Group: r.Group, Component: r.Component, Name: r.Name,
				Port: r.Port, QType: r.QType, Action: r.Action, Rule: r.Rule, Reason: r.Reason}, srcs: map[uint32]struct{}{}}
			g.r.FirstSeen, g.r.LastSeen = r.FirstSeen, r.LastSeen
			groups[k] = g
		}
		g.r.Hits += r.Hits
		id, ok := srcIDs[r.Source]
		if !ok {
			id = uint32(len(srcNames))
			srcIDs[r.Source] = id
			srcNames = append(srcNames, r.Source)
		}
		g.srcs[id] = struct{}{}
		g.r.FirstSeen = minTime(g.r.FirstSeen, r.FirstSeen)
		g.r.LastSeen = maxTime(g.r.LastSeen, r.LastSeen)
		g.r.Answers = addSet(g.r.Answers, r.Answers, maxAnswers)
		g.r.SNI = addSet(g.r.SNI, r.SNI, maxSNI)
		g.r.Cert = addSet(g.r.Cert, r.Cert, maxCert)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]Row, 0, len(groups))
	for _, g := range groups {
		r := g.r
		r.Sources = int64(len(g.srcs)) // "" (no source recorded) counts as one, as it always has
		srcs := make([]string, 0, len(g.srcs))
		for id := range g.srcs {
			srcs = append(srcs, srcNames[id])
		}
		r.SourceAddrs = mergeSet(srcs, nil, 16)
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Row) int {
		if a.Hits != b.Hits {
			return cmp.Compare(b.Hits, a.Hits)
		}
		return cmp.Or(cmp.Compare(a.Day, b.Day), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Group, b.Group),
			cmp.Compare(a.Component, b.Component), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Port, b.Port),
			cmp.Compare(a.QType, b.QType), cmp.Compare(a.Action, b.Action), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Reason, b.Reason))
	})
	if len(out) > f.Limit {
		out = out[:f.Limit]
	}
	return out, nil
}

// addSet is mergeSet(a, b, max) for a sorted set a that b, a day's
// sample, most often repeats: then a is returned as it is.
func addSet(a, b []string, max int) []string {
	for _, v := range b {
		if _, found := slices.BinarySearch(a, v); !found && (len(a) < max || v < a[len(a)-1]) {
			return mergeSet(a, b, max)
		}
	}
	return a
}

// where returns the SQL conditions and arguments of f's selections.
func (f Filter) where() ([]string, []any) {
	var where []string
	var args []any
	if !f.Since.IsZero() {
		where = append(where, "day >= ?")
		args = append(args, Day(f.Since))
	}
	if f.Group != "" {
		where = append(where, "instr(',' || grp || ',', ',' || ? || ',') > 0")
		args = append(args, f.Group)
	}
	for _, c := range []struct{ col, v string }{{"action", f.Action}, {"component", f.Component}, {"source", f.Source}} {
		if c.v != "" {
			where = append(where, c.col+" = ?")
			args = append(args, c.v)
		}
	}
	if f.Name != "" {
		n := strings.ToLower(strings.TrimSuffix(f.Name, "."))
		where = append(where, "(name = ? OR substr(name, -?) = ?)")
		args = append(args, n, len(n)+1, "."+n)
	}
	return where, args
}

// FilterKeys are the query parameters ParseFilter reads, which the admin
// API's /v1/history and the fqdngate history command share.
var FilterKeys = []string{"since", "group", "action", "component", "name", "source", "per_day", "per_source", "limit"}

// ParseFilter reads a Filter from query parameters (FilterKeys): since
// is a number of days ("7d"), a duration ("36h") or a UTC day
// ("2026-12-01"); now anchors the relative forms.
func ParseFilter(v url.Values, now time.Time) (Filter, error) {
	for k := range v {
		if !slices.Contains(FilterKeys, k) {
			return Filter{}, fmt.Errorf("unknown parameter %q; use %s", k, strings.Join(FilterKeys, ", "))
		}
	}
	f := Filter{
		Group: v.Get("group"), Action: v.Get("action"), Component: v.Get("component"),
		Name: v.Get("name"), Source: v.Get("source"),
	}
	if s := v.Get("since"); s != "" {
		t, err := ParseSince(s, now)
		if err != nil {
			return Filter{}, err
		}
		f.Since = t
	}
	switch f.Action {
	case "", "allow", "deny", "would-deny", "fail":
	default:
		return Filter{}, fmt.Errorf("action %q is not one of allow, deny, would-deny, fail", f.Action)
	}
	switch f.Component {
	case "", "dns", "proxy", "firewall":
	default:
		return Filter{}, fmt.Errorf("component %q is not one of dns, proxy, firewall", f.Component)
	}
	if s := v.Get("source"); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Filter{}, fmt.Errorf("source %q is not an IP address", s)
		}
		f.Source = a.String()
	}
	switch v.Get("per_day") {
	case "", "false", "0":
	case "true", "1":
		f.PerDay = true
	default:
		return Filter{}, fmt.Errorf("per_day must be true or false, not %q", v.Get("per_day"))
	}
	switch v.Get("per_source") {
	case "", "false", "0":
	case "true", "1":
		f.PerSource = true
	default:
		return Filter{}, fmt.Errorf("per_source must be true or false, not %q", v.Get("per_source"))
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100_000 {
			return Filter{}, fmt.Errorf("limit %q is not a number from 1 to 100000", s)
		}
		f.Limit = n
	}
	return f, nil
}

// ParseSince reads a start: a number of days back ("7d", today being the
// first), a duration back ("36h"), or a UTC day ("2026-12-01").
func ParseSince(s string, now time.Time) (time.Time, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if d, err := strconv.Atoi(n); err == nil && d >= 1 && d <= 3650 {
			return now.UTC().AddDate(0, 0, -(d - 1)), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("since %q is not a number of days (7d), a duration (36h) or a day (2026-12-01)", s)
}

// Each calls fn with every stored row f selects (Since, Group, Action,
// Component, Name, Source), one per day and source as written, in no
// particular order, without grouping: a reader that aggregates by
// itself (simulate) streams the file instead of sorting it. PerDay,
// PerSource and Limit play no part. Row.Sources is 1 (0 when no source
// was recorded). fn must not keep r; an error from it stops Each.
func (s *Store) Each(ctx context.Context, f Filter, fn func(r *Row) error) error {
	where, args := f.where()
	q := `SELECT day, source, grp, component, name, port, qtype, action, rule, reason, answers, sni, cert, first_seen, last_seen, hits FROM decisions`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	rs, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("reading history: %w", err)
	}
	defer rs.Close()
	var r Row
	for rs.Next() {
		var port, first, last int64
		var answers, sni, cert string
		if err := rs.Scan(&r.Day, &r.Source, &r.Group, &r.Component, &r.Name, &port, &r.QType, &r.Action, &r.Rule, &r.Reason,
			&answers, &sni, &cert, &first, &last, &r.Hits); err != nil {
			return fmt.Errorf("reading history: %w", err)
		}
		r.Port = uint16(port)
		r.FirstSeen, r.LastSeen = time.Unix(0, first).UTC(), time.Unix(0, last).UTC()
		r.Answers, r.SNI, r.Cert = splitSet(answers), splitSet(sni), splitSet(cert)
		r.Sources, r.SourceAddrs = 0, nil
		if r.Source != "" {
			r.Sources = 1
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	if err := rs.Err(); err != nil {
		return fmt.Errorf("reading history: %w", err)
	}
	return nil
}
