package console

import (
	"bytes"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/explain"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/suggest"
)

func parseAddr(s string) (netip.Addr, error) { return netip.ParseAddr(s) }

// since reads the since parameter (default 7d) as history does.
func (h *handler) since(r *http.Request) (string, time.Time, error) {
	s := r.URL.Query().Get("since")
	if s == "" {
		s = "7d"
	}
	t, err := history.ParseSince(s, h.c.Now())
	return s, t, err
}

const historyOff = "The decision history is off (history.enabled: false, or its file could not be opened: see the log)."

// topName is one denied name of a group, over its components and ports.
type topName struct {
	Name       string
	Action     string
	Hits       int64
	Sources    int64
	Components []string
	LastSeen   time.Time
}

type topGroup struct {
	Group string
	Names []topName
}

// TopPerGroup is how many denied names the top page lists per group.
const TopPerGroup = 10

func (h *handler) top(w http.ResponseWriter, r *http.Request) {
	s, t, err := h.since(r)
	data := struct {
		Since  string
		Groups []topGroup
	}{Since: s}
	if err != nil {
		h.render(w, r, "top", "Top denied names", data, err.Error())
		return
	}
	if h.c.History == nil {
		h.render(w, r, "top", "Top denied names", data, historyOff)
		return
	}
	type key struct{ group, name, action string }
	agg := map[key]*topName{}
	for _, action := range []string{"deny", "would-deny"} {
		rows, err := h.c.History(r.Context(), history.Filter{Since: t, Action: action, Limit: 10000})
		if err != nil {
			h.render(w, r, "top", "Top denied names", data, err.Error())
			return
		}
		for _, row := range rows {
			for _, g := range strings.Split(row.Group, ",") {
				k := key{g, row.Name, row.Action}
				n := agg[k]
				if n == nil {
					n = &topName{Name: row.Name, Action: row.Action}
					agg[k] = n
				}
				n.Hits += row.Hits
				n.Sources = max(n.Sources, row.Sources)
				if !contains(n.Components, row.Component) {
					n.Components = append(n.Components, row.Component)
				}
				if row.LastSeen.After(n.LastSeen) {
					n.LastSeen = row.LastSeen
				}
			}
		}
	}
	by := map[string][]topName{}
	for k, n := range agg {
		by[k.group] = append(by[k.group], *n)
	}
	for g, names := range by {
		sort.Slice(names, func(i, j int) bool {
			if names[i].Hits != names[j].Hits {
				return names[i].Hits > names[j].Hits
			}
			return names[i].Name < names[j].Name
		})
		if len(names) > TopPerGroup {
			names = names[:TopPerGroup]
		}
		data.Groups = append(data.Groups, topGroup{Group: g, Names: names})
	}
	sort.Slice(data.Groups, func(i, j int) bool { return data.Groups[i].Group < data.Groups[j].Group })
	h.render(w, r, "top", "Top denied names", data, "")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func (h *handler) domains(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s, t, err := h.since(r)
	data := struct {
		Since, Group, Action string
		Rows                 []history.Row
	}{Since: s, Group: q.Get("group"), Action: q.Get("action")}
	switch {
	case err != nil:
	case h.c.History == nil:
		err = errString(historyOff)
	case data.Action != "" && !contains([]string{"allow", "deny", "would-deny", "fail"}, data.Action):
		err = errString("action must be allow, deny, would-deny or fail")
	default:
		data.Rows, err = h.c.History(r.Context(), history.Filter{Since: t, Group: data.Group, Action: data.Action, Limit: 500})
	}
	h.render(w, r, "domains", "Domains by group", data, errText(err))
}

type errString string

func (e errString) Error() string { return string(e) }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type learnedRow struct {
	Name, Address, Rule, Group string
	Expires                    time.Time
	In                         string
}

// learnedPageSize is how many learned addresses one console page shows;
// a gateway may hold a million, so the page is one slice of the listing
// with a link to the next, as /v1/learned pages.
const learnedPageSize = 500

type learnedPage struct {
	Rows []learnedRow
	Name string // the name filter, "" for all
	Next string // the next page's cursor, "" on the last
	Err  string
}

func (h *handler) learned(w http.ResponseWriter, r *http.Request) {
	var pg learnedPage
	if h.c.Learned != nil {
		var f learn.Filter
		q := r.URL.Query()
		after, err := learn.ParseCursor(q.Get("after"))
		if s := q.Get("name"); s != "" && err == nil {
			f.Name, err = dnsname.Parse(s)
			pg.Name = s
		}
		if err != nil {
			pg.Err = err.Error()
			h.render(w, r, "learned", "Learned addresses", pg, "")
			return
		}
		now := h.c.Now()
		page, next := learn.Page(h.c.Learned(f.Name), f, after, learnedPageSize)
		for _, e := range page {
			pg.Rows = append(pg.Rows, learnedRow{Name: string(e.Name), Address: e.Addr.String(), Rule: e.Rule, Group: e.Group, Expires: e.Expires, In: e.Expires.Sub(now).Round(time.Second).String()})
		}
		pg.Next = next.String()
	}
	h.render(w, r, "learned", "Learned addresses", pg, "")
}

func (h *handler) rules(w http.ResponseWriter, r *http.Request) {
	h.render(w, r, "rules", "Rules", h.c.Policy().RulesUsage(), "")
}

type groupRow struct {
	Name    string
	Sources []string
	// Observing is the group's observe_until when it observes now; nil
	// when it is enforced.
	Observing *policy.ObservedGroup
}

func (h *handler) groups(w http.ResponseWriter, r *http.Request) {
	p := h.c.Policy()
	obs := map[string]policy.ObservedGroup{}
	for _, o := range p.Observed(p.Now()) {
		if o.Observing {
			obs[o.Group] = o
		}
	}
	var rows []groupRow
	for g, pfx := range p.Sources {
		row := groupRow{Name: g}
		for _, x := range pfx {
			row.Sources = append(row.Sources, x.String())
		}
		if sel, ok := p.Pods[g]; ok {
			row.Sources = append(row.Sources, "pods: "+sel.String())
		}
		if o, ok := obs[g]; ok {
			row.Observing = &o
		}
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	h.render(w, r, "groups", "Groups", struct {
		Rows []groupRow
		Mode string
	}{rows, p.Mode.String()}, "")
}

func (h *handler) explain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := struct {
		From, To, Text string
		Action         string
	}{From: q.Get("from"), To: q.Get("to")}
	var msg string
	if data.From != "" || data.To != "" {
		if data.From == "" || data.To == "" {
			msg = "give both: a source address and a destination (name:port, ip:port or a URL)"
		} else if res, err := explain.Explain(h.c.Policy(), data.From, data.To, h.c.Local); err != nil {
			msg = err.Error()
		} else {
			data.Text, data.Action = res.Text(), res.Action
		}
	}
	h.render(w, r, "explain", "Explain", data, msg)
}

// diffLine is one line of the suggestion shown against the policy.
type diffLine struct {
	Added bool
	Text  string
}

func (h *handler) suggest(w http.ResponseWriter, r *http.Request) {
	s, t, err := h.since(r)
	data := struct {
		Since, Group string
		YAML         string
		Diff         []diffLine
		File         string
	}{Since: s, Group: r.URL.Query().Get("group"), File: h.c.Policy().File}
	if err == nil && h.c.History == nil {
		err = errString(historyOff)
	}
	if err != nil {
		h.render(w, r, "suggest", "Suggestions", data, err.Error())
		return
	}
	rows, err := h.c.History(r.Context(), history.Filter{Since: t, Group: data.Group, Limit: 100000})
	if err != nil {
		h.render(w, r, "suggest", "Suggestions", data, err.Error())
		return
	}
	var buf bytes.Buffer
	suggest.WriteYAML(&buf, suggest.Suggest(rows), s)
	data.YAML = buf.String()
	// Against the policy in force: its rules as context, the suggested
	// ones added after them.
	data.Diff = append(data.Diff, diffLine{Text: "rules:"})
	for _, rs := range admin.Summarize(h.c.Policy(), 0).Rules {
		line := "  - name: " + rs.Name + "   # in force: to " + strings.Join(rs.To, ", ")
		if len(rs.From) > 0 {
			line += "; from " + strings.Join(rs.From, ", ")
		}
		data.Diff = append(data.Diff, diffLine{Text: line})
	}
	for _, l := range strings.Split(strings.TrimRight(data.YAML, "\n"), "\n") {
		if l == "rules:" {
			continue
		}
		data.Diff = append(data.Diff, diffLine{Added: true, Text: l})
	}
	h.render(w, r, "suggest", "Suggestions", data, "")
}

func (h *handler) login(w http.ResponseWriter, r *http.Request) {
	if !h.c.Login {
		http.Redirect(w, r, "/ui/", http.StatusSeeOther)
		return
	}
	h.render(w, r, "login", "Log in", struct{ Failed bool }{r.URL.Query().Get("failed") != ""}, "")
}
