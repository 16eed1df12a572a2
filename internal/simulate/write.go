package simulate

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText writes r for a reader: per group, the newly denied, newly
// allowed and still denied destinations (at most examples of each,
// most hits first), then what was not replayed, then the verdict.
func (r *Report) WriteText(w io.Writer, examples int) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintf(tw, "replayed %s (%s)\n", plural(r.Hits, "decision"), plural(r.Rows, "history row"))
	for _, g := range r.Groups {
		name := g.Name
		if name == "" {
			name = "(sources in no group)"
		}
		fmt.Fprintf(tw, "\ngroup %s\n", name)
		for _, o := range []Outcome{NewlyDenied, NewlyAllowed, StillDenied} {
			cs := g.Changes[o]
			if len(cs) == 0 {
				continue
			}
			var hits int64
			for _, c := range cs {
				hits += c.Hits
			}
			head := o.String()
			if o == StillDenied {
				head += " (recorded would-deny: blocked once enforced)"
			}
			fmt.Fprintf(tw, "  %s: %s, %s\n", head, plural(int64(len(cs)), "destination"), plural(hits, "hit"))
			for i, c := range cs {
				if i == examples {
					fmt.Fprintf(tw, "    ... and %d more\n", len(cs)-examples)
					break
				}
				fmt.Fprintf(tw, "    %s\t%s\t%s\t%s .. %s\twas %s\tnow %s\n", dest2(c), plural(c.Hits, "hit"), plural(int64(c.Sources), "source"),
					c.FirstSeen.UTC().Format(time.DateOnly), c.LastSeen.UTC().Format(time.DateOnly), c.Was, c.Now)
			}
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(tw, "\nnot replayed (the history cannot say what the proposal would decide):")
		for _, s := range r.Skipped {
			fmt.Fprintf(tw, "  %s\t%s\t%s\te.g. %s\n", s.Why, plural(int64(s.Rows), "row"), plural(s.Hits, "hit"), strings.Join(s.Examples, ", "))
		}
	}
	nd, ndh := r.Count(NewlyDenied)
	na, nah := r.Count(NewlyAllowed)
	fmt.Fprintf(tw, "\n%s newly denied (%s), %s newly allowed (%s)\n",
		plural(int64(nd), "destination"), plural(ndh, "hit"), plural(int64(na), "destination"), plural(nah, "hit"))
	if r.Breaks() {
		fmt.Fprintln(tw, "FAIL: the proposal denies traffic the history recorded as allowed")
	} else {
		fmt.Fprintln(tw, "ok: nothing recorded as allowed would be denied")
	}
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// jsonChange is a Change as WriteJSON writes it.
type jsonChange struct {
	Component string    `json:"component"`
	Name      string    `json:"name"`
	Port      uint16    `json:"port,omitempty"`
	QType     string    `json:"qtype,omitempty"`
	Hits      int64     `json:"hits"`
	Sources   int       `json:"sources"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Was       string    `json:"was"`
	Now       string    `json:"now"`
}

type jsonGroup struct {
	Group        string       `json:"group"`
	NewlyDenied  []jsonChange `json:"newly_denied"`
	NewlyAllowed []jsonChange `json:"newly_allowed"`
	StillDenied  []jsonChange `json:"still_denied"`
}

type jsonSkip struct {
	Why      string   `json:"why"`
	Rows     int      `json:"rows"`
	Hits     int64    `json:"hits"`
	Examples []string `json:"examples"`
}

// WriteJSON writes r whole (every change, not a few examples) for a
// pipeline to keep or comment with: the replayed rows and hits, breaks
// (the exit status 1 condition), the groups' changes, what was not
// replayed.
func (r *Report) WriteJSON(w io.Writer) error {
	out := struct {
		Rows        int64       `json:"rows"`
		Hits        int64       `json:"hits"`
		Breaks      bool        `json:"breaks"`
		Groups      []jsonGroup `json:"groups"`
		NotReplayed []jsonSkip  `json:"not_replayed"`
	}{Rows: r.Rows, Hits: r.Hits, Breaks: r.Breaks(), Groups: []jsonGroup{}, NotReplayed: []jsonSkip{}}
	conv := func(cs []Change) []jsonChange {
		js := make([]jsonChange, 0, len(cs))
		for _, c := range cs {
			js = append(js, jsonChange{c.Component, c.Name, c.Port, c.QType, c.Hits, c.Sources, c.FirstSeen, c.LastSeen, c.Was, c.Now})
		}
		return js
	}
	for _, g := range r.Groups {
		out.Groups = append(out.Groups, jsonGroup{Group: g.Name, NewlyDenied: conv(g.Changes[NewlyDenied]),
			NewlyAllowed: conv(g.Changes[NewlyAllowed]), StillDenied: conv(g.Changes[StillDenied])})
	}
	for _, s := range r.Skipped {
		out.NotReplayed = append(out.NotReplayed, jsonSkip(s))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
