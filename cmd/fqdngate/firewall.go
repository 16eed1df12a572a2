package main

import (
	"context"
	"fmt"
	"io"
)

const firewallHelp = `NAME
    fqdngate firewall - inspect or remove the nftables table fqdngate manages

SYNOPSIS
    fqdngate firewall show   [-c POLICY | --table NAME]
    fqdngate firewall remove [-c POLICY | --table NAME]

DESCRIPTION
    show prints the table (family inet) with its chains, rules, sets and
    element counts. remove deletes the table, for uninstalling; traffic is
    then no longer filtered by fqdngate. The table name comes from
    firewall.table in POLICY, or --table, or defaults to fqdngate.
    Both need CAP_NET_ADMIN.
`

func cmdFirewall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "show" && args[0] != "remove") {
		if len(args) > 0 && (args[0] == "--help" || args[0] == "-h") {
			fmt.Fprint(stdout, firewallHelp)
			return 0
		}
		fmt.Fprint(stderr, firewallHelp)
		return 2
	}
	return usageErr(stderr, "firewall", "the nftables backend is not built into this version yet")
}

func dryRunRuleset(cfg string, stdout, stderr io.Writer) int {
	return usageErr(stderr, "run --dry-run", "the nftables backend is not built into this version yet")
}
