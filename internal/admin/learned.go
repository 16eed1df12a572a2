package admin

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

// DefaultLearnedPage is how many learned addresses /v1/learned returns
// when the request does not say (limit=); learn.MaxPage is the most.
const DefaultLearnedPage = 1000

// learnedQuery is a /v1/learned request: a page of the learned addresses
// that pass filter, after a cursor.
type learnedQuery struct {
	filter learn.Filter
	after  learn.Cursor
	limit  int
}

// parseLearnedQuery reads limit, after, name, rule, group and addr.
func parseLearnedQuery(v url.Values) (learnedQuery, error) {
	q := learnedQuery{limit: DefaultLearnedPage}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > learn.MaxPage {
			return q, fmt.Errorf("limit=%q: give a number of entries from 1 to %d", s, learn.MaxPage)
		}
		q.limit = n
	}
	var err error
	if q.after, err = learn.ParseCursor(v.Get("after")); err != nil {
		return q, fmt.Errorf("after=: %w", err)
	}
	if s := v.Get("name"); s != "" {
		if q.filter.Name, err = dnsname.Parse(s); err != nil {
			return q, fmt.Errorf("name=%q: %v; give a host name such as api.example.com", s, err)
		}
	}
	q.filter.Rule, q.filter.Group = v.Get("rule"), v.Get("group")
	if s := v.Get("addr"); s != "" {
		if q.filter.Addr, err = learn.ParseAddrFilter(s); err != nil {
			return q, fmt.Errorf("addr=: %w", err)
		}
	}
	return q, nil
}

// LearnedPage is what /v1/learned returns: a page of learned addresses in
// the listing order (by address, then rule, group and name) and the
// cursor of the next page, for after=; "" on the last page.
type LearnedPage struct {
	Learned []LearnedEntry `json:"learned"`
	Next    string         `json:"next"`
}

// LearnedEntry is one learned address as /v1/learned lists it.
type LearnedEntry struct {
	Name      string     `json:"name"`
	Address   netip.Addr `json:"address"`
	Rule      string     `json:"rule"`
	Group     string     `json:"group"`
	Expires   string     `json:"expires"`
	ExpiresIn string     `json:"expires_in"`
	// DNSSEC is the verdict of the answer that taught the address, when
	// answers are validated (dns.dnssec: validate).
	DNSSEC string `json:"dnssec,omitempty"`
}

func learnedEntry(e *learn.Entry, now time.Time) LearnedEntry {
	return LearnedEntry{
		Name: string(e.Name), Address: e.Addr, Rule: e.Rule, Group: e.Group,
		Expires: e.Expires.UTC().Format(time.RFC3339), ExpiresIn: e.Expires.Sub(now).Round(time.Second).String(),
		DNSSEC: e.DNSSEC,
	}
}

// writeLearned writes a LearnedPage an entry at a time, so that a page
// of ten thousand costs one entry's encoding at a time, not the page's.
func writeLearned(w http.ResponseWriter, page []learn.Entry, next learn.Cursor, now time.Time) {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	enc.SetIndent("  ", "  ")
	bw.WriteString("{\n  \"learned\": [")
	for i := range page {
		if i > 0 {
			bw.WriteString(",")
		}
		bw.WriteString("\n    ")
		_ = enc.Encode(learnedEntry(&page[i], now)) // ends in a newline
		// Encode's newline stays: valid JSON whitespace.
	}
	if len(page) > 0 {
		bw.WriteString("  ")
	}
	nb, _ := json.Marshal(next.String())
	bw.WriteString("],\n  \"next\": ")
	bw.Write(nb)
	bw.WriteString("\n}\n")
	_ = bw.Flush()
}
