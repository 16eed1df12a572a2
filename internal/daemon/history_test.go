package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/history"
)

// TestHistoryRecordsDNSDecisions: real DNS queries through the daemon's
// listener, and a CONNECT through its proxy, become rows of the decision history, which /v1/history serves
// and which the file keeps.
func TestHistoryRecordsDNSDecisions(t *testing.T) {
	w := newWorld(t)
	s := w.v1
	path := filepath.Join(w.dir, "history.db")
	s.extra = fmt.Sprintf("history: {path: %q, retention: 7d, max_size: 64MiB}\n", path)
	w.start(s)
	w.resolves(s.listen.dns, "old.example", netip.MustParseAddr("192.0.2.10"))
	w.resolves(s.listen.dns, "new.example", none)
	w.proxyAnswers(s.listen.proxy, "new.example") // a CONNECT the proxy refuses

	type row = history.Row
	findIn := func(rows []row, component, name, action string) *row {
		for i := range rows {
			if rows[i].Name == name && rows[i].Action == action && rows[i].Component == component {
				return &rows[i]
			}
		}
		return nil
	}
	find := func(rows []row, name, action string) *row { return findIn(rows, "dns", name, action) }
	var rows []row
	for deadline := time.Now().Add(30 * time.Second); ; {
		body, err := w.get(s.listen.admin, "/v1/history?since=1d")
		if err != nil {
			t.Fatal(err)
		}
		var resp struct{ Rows []row }
		if err := json.Unmarshal([]byte(body), &resp); err != nil {
			t.Fatalf("/v1/history: %v\n%s", err, body)
		}
		rows = resp.Rows
		if find(rows, "old.example", "allow") != nil && find(rows, "new.example", "deny") != nil && findIn(rows, "proxy", "new.example", "deny") != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/v1/history never showed both decisions: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	allow := find(rows, "old.example", "allow")
	// resolves asks over UDP and TCP: two decisions, one row.
	if allow.Hits != 2 || allow.Sources != 1 || allow.Rule != "old" || allow.QType != "A" || !slices.Equal(allow.Answers, []string{"192.0.2.10"}) {
		t.Errorf("allowed row: %+v; want 2 hits from 1 source under rule old, type A, answer 192.0.2.10", *allow)
	}
	deny := find(rows, "new.example", "deny")
	if deny.Hits != 2 || deny.Reason != "no rule allows this destination" || len(deny.Answers) != 0 {
		t.Errorf("denied row: %+v", *deny)
	}
	if p := findIn(rows, "proxy", "new.example", "deny"); p.Port != 443 || p.Hits != 1 {
		t.Errorf("proxy row: %+v; want one CONNECT to port 443", *p)
	}
	if body, _ := w.get(s.listen.admin, "/v1/history?action=maybe"); !json.Valid([]byte(body)) || !contains(body, "not one of") {
		t.Errorf("a bad filter: %s", body)
	}

	// The file holds them; another process may read it while the daemon
	// writes.
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.Query(context.Background(), history.Filter{Name: "old.example"})
	if err != nil || len(got) != 1 || got[0].Hits != 2 {
		t.Errorf("the file has %+v, %v; want the allowed row with 2 hits", got, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
