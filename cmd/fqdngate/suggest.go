package main

import (
	"context"
	"fmt"
	"io"
	"net/url"

	"github.com/fqdngate/fqdngate/internal/suggest"
)

const suggestHelp = `NAME
    fqdngate suggest - propose rules for what the decision history saw denied

SYNOPSIS
    fqdngate suggest [--since 7d] [--group G]
                     [--history PATH | --admin URL [--admin-token-file FILE] | -c POLICY]

DESCRIPTION
    Reads the decision history (as fqdngate history does) and prints a rules
    section, one rule per source group and set of ports, for the names that
    were denied (or would have been, in audit mode) because no rule allowed
    them. Each target carries a comment: hits, distinct sources, first and
    last seen.

    Names are collapsed into "*.parent" only when at least three names right
    below parent were seen and parent is a registrable domain or below one:
    never "*.com", "*.co.uk" or "*.github.io" (the public suffix list, the
    check the policy loader applies).

    Targets that should not become a rule without a second look are written
    commented out, flagged "!!": ip-literal (an address, not a name),
    dns-bypass (a DNS-over-HTTPS/TLS endpoint, or port 853: allowing it lets
    clients bypass the DNS firewall), shared-addr (its addresses answer for
    many other names: a CDN), seen-once.

    The output is for review: paste it into the policy, then check it.

EXAMPLES
    fqdngate suggest --since 7d --group office
    fqdngate suggest --admin http://127.0.0.1:9090 > proposed-rules.yaml
`

func cmdSuggest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("suggest", suggestHelp, stdout, stderr)
	cfg := configFlag(fs)
	since := fs.String("since", "7d", "since `WHEN`: days (7d), a duration (36h) or a UTC day (2026-12-01)")
	group := fs.String("group", "", "only source group `G`")
	file := fs.String("history", "", "read the history file at `PATH`")
	admin := adminFlags(fs)
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	if *file != "" && admin.URL != "" {
		fmt.Fprintln(stderr, "fqdngate suggest: give --history or --admin, not both")
		return 2
	}
	q := url.Values{"since": {*since}, "limit": {"100000"}}
	if *group != "" {
		q.Set("group", *group)
	}
	rows, err := readHistory(ctx, q, *file, *admin, *cfg)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate suggest: %v\n", err)
		return 1
	}
	suggest.WriteYAML(stdout, suggest.Suggest(rows), *since)
	return 0
}
