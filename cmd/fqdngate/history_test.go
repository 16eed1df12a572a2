package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/admin"
	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// writeHistory records decisions into a new history file at path the
// way the daemon does: through the audit logger's sink.
func writeHistoryFile(t *testing.T, path string, evs ...audit.Event) {
	t.Helper()
	st, _, err := history.Open(path, history.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec, err := history.NewRecorder(history.RecorderConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- rec.Run(ctx) }()
	l := audit.New(nil, "json", nil)
	l.SetSink(rec)
	for _, e := range evs {
		l.Record(context.Background(), e)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHistoryCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.db")
	src := netip.MustParseAddr("192.0.2.7")
	now := time.Now()
	deny := audit.Event{Component: audit.DNS, Source: src, Name: "tracker.example", QType: "A", Time: now,
		Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonNoRule}}
	allow := audit.Event{Component: audit.DNS, Source: src, Name: "api.example", QType: "A", Time: now,
		Decision: policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: &policy.Rule{Name: "api"}},
		Attrs:    []slog.Attr{slog.String("answers", "203.0.113.4")}}
	writeHistoryFile(t, path, deny, deny, deny, allow)

	runCmd := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"history"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := runCmd("--history", path, "--action", "deny")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "GROUP") {
		t.Fatalf("want a header and one line, got:\n%s", out)
	}
	if !regexp.MustCompile(`^-\s+dns\s+tracker\.example\s+-\s+A\s+deny\s+-\s+no rule allows this destination\s+3\s+1\s`).MatchString(lines[1]) {
		t.Errorf("got line %q; want tracker.example denied, 3 hits", lines[1])
	}

	// The same through a daemon's admin API.
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := httptest.NewServer(admin.Handler(admin.Config{Policy: func() *policy.Policy { return nil }, History: st.Query}))
	defer srv.Close()
	code, out2, errs := runCmd("--admin", srv.URL, "--action", "deny")
	if code != 0 || out2 != out {
		t.Errorf("from --admin: exit %d, %s\n%s\nwant the file's table:\n%s", code, errs, out2, out)
	}
	code, out, _ = runCmd("--history", path, "--json", "--name", "api.example")
	if code != 0 || !strings.Contains(out, `"answers": [`) || !strings.Contains(out, "203.0.113.4") {
		t.Errorf("--json: exit %d\n%s", code, out)
	}

	// suggest reads the same file: tracker.example, denied three times.
	var sb, se bytes.Buffer
	if code := run(context.Background(), []string{"suggest", "--history", path, "--since", "1d"}, &sb, &se); code != 0 ||
		!strings.Contains(sb.String(), `- "tracker.example" # 3 hits, 1 source`) || strings.Contains(sb.String(), "api.example") {
		t.Errorf("suggest: exit %d, %s\n%s", code, se.String(), sb.String())
	}

	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--history", path, "--action", "maybe"}, 1, "not one of allow, deny"},
		{[]string{"--history", path, "--since", "soon"}, 1, "is not a number of days"},
		{[]string{"--history", filepath.Join(t.TempDir(), "none.db")}, 1, "give the file with --history PATH"},
		{[]string{"--history", path, "--admin", srv.URL}, 2, "not both"},
		{[]string{"--admin", "ftp://x"}, 1, "is not a URL like"},
	} {
		code, _, errs := runCmd(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) {
			t.Errorf("%v: exit %d, %q; want exit %d with %q", tc.args, code, errs, tc.code, tc.msg)
		}
	}
}
