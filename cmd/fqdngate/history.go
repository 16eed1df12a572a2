package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/review"
)

const historyHelp = `NAME
    fqdngate history - show the decision history: what was asked, decided, how often

SYNOPSIS
    fqdngate history [--since 7d] [--group G] [--action deny] [--component dns]
                     [--name NAME] [--source IP] [--per-day] [--limit N] [--json]
                     [--history PATH | --admin URL [--admin-token-file FILE] | -c POLICY]

DESCRIPTION
    Prints one line per source group, component, name, port, record type,
    action, rule and reason seen since --since, most hits first: hits,
    distinct sources, first and last seen, and what the names resolved to
    or dialled. --per-day splits the lines by UTC day.

    The history is read from the file (--history PATH; -c POLICY reads the
    policy's history.path; with neither, the default location the daemon
    uses when the policy names none) or from a running daemon's admin
    listener (--admin http://127.0.0.1:9090), which serves /v1/history;
    when its admin.token_file protects it, --admin-token-file names a
    file holding the same token (sent as a bearer token, never printed).
    Reading the file needs no daemon and works while one writes it.

EXAMPLES
    fqdngate history --since 1d --action deny
    fqdngate history --group office --name example.com --per-day
    fqdngate history --admin http://127.0.0.1:9090 --json
`

func cmdHistory(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("history", historyHelp, stdout, stderr)
	cfg := configFlag(fs)
	var (
		since     = fs.String("since", "7d", "since `WHEN`: days (7d), a duration (36h) or a UTC day (2026-12-01)")
		group     = fs.String("group", "", "only sources in source group `G`")
		action    = fs.String("action", "", "only `ACTION`: allow, deny, would-deny or fail")
		component = fs.String("component", "", "only `COMPONENT`: dns, proxy or firewall")
		name      = fs.String("name", "", "only `NAME` and the names below it")
		source    = fs.String("source", "", "only source address `IP`")
		perDay    = fs.Bool("per-day", false, "a line per UTC day")
		limit     = fs.Int("limit", 100, "at most `N` lines")
		asJSON    = fs.Bool("json", false, "print JSON (what /v1/history serves)")
		file      = fs.String("history", "", "read the history file at `PATH`")
		admin     = adminFlags(fs)
	)
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	if *file != "" && admin.URL != "" {
		fmt.Fprintln(stderr, "fqdngate history: give --history or --admin, not both")
		return 2
	}
	q := url.Values{}
	for k, v := range map[string]string{"since": *since, "group": *group, "action": *action, "component": *component, "name": *name, "source": *source} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *perDay {
		q.Set("per_day", "true")
	}
	q.Set("limit", strconv.Itoa(*limit))
	rows, err := readHistory(ctx, q, *file, *admin, *cfg)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate history: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(map[string]any{"rows": rows})
		return 0
	}
	printHistory(stdout, rows, *perDay)
	return 0
}

// readHistory returns the rows q selects, from the admin API at admin or
// from the file (file, the policy cfg's history.path, or the default).
func readHistory(ctx context.Context, q url.Values, file string, admin adminRef, cfg string) ([]history.Row, error) {
	if admin.URL != "" {
		return fetchHistory(ctx, admin, q)
	}
	f, err := history.ParseFilter(q, time.Now())
	if err != nil {
		return nil, err
	}
	if file == "" {
		if file, err = historyFile(cfg); err != nil {
			return nil, err
		}
	}
	st, _, err := history.Open(file, history.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("%w; give the file with --history PATH or a daemon with --admin URL", err)
	}
	defer st.Close()
	return st.Query(ctx, f)
}

// historyFile is the file the daemon on policy cfg writes (cfg empty: on
// a policy that names no history.path).
func historyFile(cfg string) (string, error) {
	stateFile := "/var/lib/fqdngate/state.json"
	if cfg != "" {
		data, err := os.ReadFile(cfg)
		if err != nil {
			return "", err
		}
		p, err := policy.Parse(cfg, data)
		if err != nil {
			return "", fmt.Errorf("loading policy:\n%w", err)
		}
		if !p.History.Enabled {
			return "", fmt.Errorf("%s turns the history off (history.enabled: false)", cfg)
		}
		if p.History.Path != "" {
			return p.History.Path, nil
		}
		stateFile = p.Firewall.StateFile
	}
	path := history.DefaultPath(history.ProcessEnv(), stateFile)
	if path == "" {
		return "", fmt.Errorf("no default history location (no HOME); give --history PATH")
	}
	return path, nil
}

// adminRef is a daemon's admin listener that a command reads: its URL
// and, when admin.token_file protects it, the file holding the token.
type adminRef struct{ URL, TokenFile string }

// adminFlags adds --admin and --admin-token-file to fs.
func adminFlags(fs *flag.FlagSet) *adminRef {
	a := &adminRef{}
	fs.StringVar(&a.URL, "admin", "", "read from the admin listener at `URL`")
	fs.StringVar(&a.TokenFile, "admin-token-file", "", "send the bearer token in `FILE` to --admin (a copy of the daemon's admin.token_file)")
	return a
}

func fetchHistory(ctx context.Context, admin adminRef, q url.Values) ([]history.Row, error) {
	u, err := url.Parse(strings.TrimSuffix(admin.URL, "/") + "/v1/history")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("--admin %q is not a URL like http://127.0.0.1:9090", admin.URL)
	}
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if admin.TokenFile != "" {
		b, err := os.ReadFile(admin.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading --admin-token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
			return nil, fmt.Errorf("--admin-token-file %s does not hold one token (printable characters, no spaces)", admin.TokenFile)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the daemon: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Rows  []history.Row `json:"rows"`
		Error string        `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("reading %s: %s: %w", u.Redacted(), resp.Status, err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("%s: %s: the admin listener wants its token; give it with --admin-token-file FILE", resp.Status, body.Error)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, body.Error)
	}
	return body.Rows, nil
}

// printHistory writes rows as a table.
func printHistory(w io.Writer, rows []history.Row, perDay bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "GROUP\tCOMPONENT\tNAME\tPORT\tTYPE\tACTION\tRULE\tREASON\tHITS\tSOURCES\tFIRST SEEN\tLAST SEEN\tANSWERS / SNI"
	if perDay {
		head = "DAY\t" + head
	}
	fmt.Fprintln(tw, head)
	for _, r := range rows {
		if perDay {
			fmt.Fprintf(tw, "%s\t", r.Day)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n",
			dash(r.Group), r.Component, r.Name, port(r.Port), dash(r.QType), r.Action, dash(r.Rule), r.Reason,
			r.Hits, r.Sources, r.FirstSeen.Format(time.RFC3339), r.LastSeen.Format(time.RFC3339), dash(strings.Join(append(r.Answers, r.SNI...), ",")))
	}
	tw.Flush()
	if len(rows) == 0 {
		fmt.Fprintln(w, "(no decisions recorded for this selection)")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func port(p uint16) string {
	if p == 0 {
		return "-"
	}
	return strconv.Itoa(int(p))
}

// neverHit warns about p's rules that allowed nothing in the history
// file at path; the rules are positioned in data (the file named file).
func neverHit(ctx context.Context, p *policy.Policy, file string, data []byte, path string) ([]review.Warning, error) {
	st, _, err := history.Open(path, history.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("reading the history %s: %w", path, err)
	}
	defer st.Close()
	h, err := st.RuleHits(ctx, time.Time{})
	if err != nil {
		return nil, err
	}
	return review.NeverHit(p, file, data, h, path), nil
}
