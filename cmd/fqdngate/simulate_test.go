package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestSimulateCommand(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "history.db")
	now := time.Now()
	src := netip.MustParseAddr("192.0.2.7")
	allow := audit.Event{Component: audit.DNS, Source: src, Name: "api.example", QType: "A", Time: now,
		Decision: policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: &policy.Rule{Name: "api"}}}
	deny := audit.Event{Component: audit.DNS, Source: src, Name: "tracker.example", QType: "A", Time: now,
		Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonNoRule}}
	writeHistoryFile(t, path, allow, allow, deny)

	write := func(name, rules string) string {
		f := filepath.Join(dir, name)
		y := "dns: {upstreams: [192.0.2.53]}\nfirewall: {backend: none}\nsources: {office: [192.0.2.0/24]}\n" + rules
		if err := os.WriteFile(f, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	same := write("same.yaml", "rules:\n  - name: api\n    to: [api.example]\n")
	more := write("more.yaml", "rules:\n  - name: api\n    to: [api.example, tracker.example]\n")
	less := write("less.yaml", "rules:\n  - name: other\n    to: [other.example]\n")
	bad := write("bad.yaml", "rules:\n  - name: api\n    to: [api.example]\n    ports: [70000]\n")

	runCmd := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"simulate"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := httptest.NewServer(admin.Handler(admin.Config{Policy: func() *policy.Policy { return nil }, History: st.Query}))
	defer srv.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		out  []string // in standard output
		err  string   // in standard error
	}{
		{"the policy in force", []string{"-c", same, "--history", path}, 0,
			[]string{"replayed 3 decisions", "0 destinations newly denied", "ok: nothing recorded as allowed would be denied"}, ""},
		{"allowing more passes", []string{"-c", more, "--history", path}, 0,
			[]string{"group office", "newly allowed: 1 destination, 1 hit", "dns tracker.example A  1 hit  1 source", "now allow by rule api"}, ""},
		{"denying what was allowed fails", []string{"-c", less, "--history", path}, 1,
			[]string{"newly denied: 1 destination, 2 hits", "dns api.example A  2 hits  1 source", "was allow by rule api", "FAIL:"}, ""},
		{"--json, same exit status", []string{"-c", less, "--history", path, "--json"}, 1,
			[]string{`"breaks": true`, `"newly_denied": [`, `"name": "api.example"`, `"was": "allow by rule api"`}, ""},
		{"the same through the admin API", []string{"-c", less, "--admin", srv.URL}, 1,
			[]string{"newly denied: 1 destination, 2 hits", "FAIL:"}, ""},
		{"--group of another group has nothing to say", []string{"-c", less, "--history", path, "--group", "lab"}, 0,
			[]string{"replayed 0 decisions"}, ""},
		{"a proposal with errors: the positioned error", []string{"-c", bad, "--history", path}, 2, nil, "bad.yaml:7:"},
		{"no proposal", []string{"--history", path}, 2, nil, "give the proposed policy with -c"},
		{"no history file", []string{"-c", same, "--history", filepath.Join(dir, "none.db")}, 2, nil, "give the file with --history PATH"},
		{"a bad since", []string{"-c", same, "--history", path, "--since", "soon"}, 2, nil, "is not a number of days"},
		{"both sources", []string{"-c", same, "--history", path, "--admin", srv.URL}, 2, nil, "not both"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			for _, s := range tc.out {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			if !strings.Contains(errs, tc.err) {
				t.Errorf("stderr %q lacks %q", errs, tc.err)
			}
		})
	}
}

// TestSimulateAdminToken: --admin-token-file sends the token a protected
// admin listener wants; without it the error says what to add.
func TestSimulateAdminToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "history.db")
	allow := audit.Event{Component: audit.DNS, Source: netip.MustParseAddr("192.0.2.7"), Name: "api.example", QType: "A", Time: time.Now(),
		Decision: policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: &policy.Rule{Name: "api"}}}
	writeHistoryFile(t, path, allow)
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const token = "0123456789abcdef0123456789abcdef"
	h := admin.Handler(admin.Config{Policy: func() *policy.Policy { return nil }, History: st.Query})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, `{"error":"unauthorized"}`, http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	proposed := filepath.Join(dir, "p.yaml")
	tokFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(proposed, []byte("dns: {upstreams: [192.0.2.53]}\nfirewall: {backend: none}\nrules: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"simulate", "-c", proposed, "--admin", srv.URL}, &out, &errb); code != 2 ||
		!strings.Contains(errb.String(), "give it with --admin-token-file") {
		t.Errorf("without a token: exit %d, %q; want 2 and what to add", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"simulate", "-c", proposed, "--admin", srv.URL, "--admin-token-file", tokFile}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), "dns api.example A") {
		t.Errorf("with the token: exit %d, %s\n%s; want 1, api.example newly denied", code, errb.String(), out.String())
	}
	if strings.Contains(out.String()+errb.String(), token) {
		t.Error("the token was printed")
	}
}
