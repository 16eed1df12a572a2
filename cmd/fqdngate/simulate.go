package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/simulate"
)

const simulateHelp = `NAME
    fqdngate simulate - replay the decision history against a proposed policy

SYNOPSIS
    fqdngate simulate -c PROPOSED [--since 7d] [--group G] [--examples N] [--json]
                      [--history PATH | --admin URL [--admin-token-file FILE]]
                      [--shared SHARED]

DESCRIPTION
    Decides every recorded decision since --since again under the proposed
    policy, through the same decision the daemon makes (the rules, the
    source groups, the ports, and for DNS the forward zones and dns.qtypes),
    one source address at a time, and prints per source group (as the
    proposal places the sources):

      newly denied   recorded as allowed; the proposal would deny it
      newly allowed  recorded as denied; the proposal allows it
      still denied   recorded as would-deny (audit mode, or a group that
                     observes): the proposal does not allow it either, so
                     it is blocked once enforced

    each destination with its hits, distinct sources, first and last day,
    and the decision before and after (--examples of each, most hits first;
    --json prints every one, for a pipeline to keep).

    What the history cannot replay faithfully is counted apart, never
    guessed: kernel decisions (the kernel saw an address, not the name it
    was learned from), sources in groups that select pods (membership is
    not recorded), proxy decisions a user's groups may have made (users are
    not recorded), and refusals made on top of an allowing rule
    (rebinding, private addresses, certificates, rate limits, ...).

    The history is read from the file (--history PATH; without it, the
    proposed policy's history.path or the default location) or from a
    running daemon (--admin URL, /v1/history; at most 100000 rows per
    source, more is an error: read the file instead; --admin-token-file
    FILE when the daemon's admin.token_file protects it).

EXIT STATUS
    0  nothing recorded as allowed would be denied
    1  something recorded as allowed would be denied
    2  the proposed policy has errors (printed as file:line:col), the
       history cannot be read, or the options are wrong

EXAMPLES
    fqdngate simulate -c proposed.yaml --since 7d
    fqdngate simulate -c proposed.yaml --group payments --history /var/lib/fqdngate/history.db
    fqdngate simulate -c proposed.yaml --admin http://127.0.0.1:15380 || echo "would break traffic"
`

// adminRowLimit is the most rows /v1/history serves.
const adminRowLimit = 100_000

func cmdSimulate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("simulate", simulateHelp, stdout, stderr)
	cfg := configFlag(fs)
	since := fs.String("since", "7d", "since `WHEN`: days (7d), a duration (36h) or a UTC day (2026-12-01)")
	group := fs.String("group", "", "only sources the proposal places in source group `G`")
	examples := fs.Int("examples", 5, "show at most `N` destinations of each kind per group")
	asJSON := fs.Bool("json", false, "print the whole report as JSON (every destination), same exit status")
	file := fs.String("history", "", "read the history file at `PATH`")
	admin := adminFlags(fs)
	shared := fs.String("shared", "", "a fleet gateway's shared policy `SHARED`, composed with PROPOSED")
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "fqdngate simulate: "+format+"\n", a...)
		return 2
	}
	switch {
	case *cfg == "":
		return fail("give the proposed policy with -c PROPOSED")
	case *file != "" && admin.URL != "":
		return fail("give --history or --admin, not both")
	case *examples < 1:
		return fail("--examples must be 1 or more")
	}
	data, err := os.ReadFile(*cfg)
	if err != nil {
		return fail("reading the proposed policy: %v", err)
	}
	p, err := loadPolicyData(ctx, *cfg, data, *shared)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	start, err := history.ParseSince(*since, time.Now())
	if err != nil {
		return fail("%v", err)
	}
	x := simulate.NewReplayer(p, simulate.Options{Group: *group})
	if err := replay(ctx, x, start, *since, *file, *admin, *cfg); err != nil {
		return fail("%v", err)
	}
	rep := x.Report()
	if *asJSON {
		if err := rep.WriteJSON(stdout); err != nil {
			return fail("writing the report: %v", err)
		}
	} else {
		fmt.Fprintf(stdout, "%s against the history since %s\n", *cfg, history.Day(start))
		rep.WriteText(stdout, *examples)
	}
	if rep.Breaks() {
		return 1
	}
	return 0
}

// replay hands x every recorded decision since start: from the daemon
// at admin, one row per source, or streamed from the history file as
// stored, one row per day and source.
func replay(ctx context.Context, x *simulate.Replayer, start time.Time, since, file string, admin adminRef, cfg string) error {
	if admin.URL != "" {
		q := url.Values{"since": {since}, "per_source": {"true"}, "limit": {strconv.Itoa(adminRowLimit)}}
		rows, err := fetchHistory(ctx, admin, q)
		if err != nil {
			return err
		}
		if len(rows) >= adminRowLimit {
			return fmt.Errorf("the daemon served %d rows, its limit, so the history is larger: a replay of part of it could pass what breaks; read the file with --history PATH", len(rows))
		}
		for i := range rows {
			x.Add(&rows[i])
		}
		return nil
	}
	if file == "" {
		var err error
		if file, err = historyFile(cfg); err != nil {
			return err
		}
	}
	st, _, err := history.Open(file, history.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("%w; give the file with --history PATH or a daemon with --admin URL", err)
	}
	defer st.Close()
	return st.Each(ctx, history.Filter{Since: start}, func(r *history.Row) error {
		x.Add(r)
		return nil
	})
}
