package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/fqdngate/fqdngate/internal/daemon"
	"github.com/fqdngate/fqdngate/internal/nft"
	"github.com/fqdngate/fqdngate/internal/policy"
)

const firewallHelp = `NAME
    fqdngate firewall - inspect or remove the nftables table fqdngate manages

SYNOPSIS
    fqdngate firewall show   [-c POLICY | --table NAME]
    fqdngate firewall show   --learned [-c POLICY | --admin URL]
                             [--name NAME] [--rule RULE] [--group GROUP]
                             [--addr ADDRESS|PREFIX] [--page N]
    fqdngate firewall remove [-c POLICY | --table NAME]

DESCRIPTION
    show prints the table (family inet) with its chains, rules, sets and
    their element counts. remove deletes the table, for uninstalling; traffic is
    then no longer filtered by fqdngate. The table name comes from
    firewall.table in POLICY, or --table, or defaults to fqdngate. Other
    tables are never touched. Both need CAP_NET_ADMIN.

    A running fqdngate watches its table and puts it back at once when
    anyone else deletes it, this command included: stop the daemon first
    (systemctl stop fqdngate). remove waits two seconds to see whether the
    table comes back, and if it does, says so and exits 1.

    show --learned lists the learned addresses a running daemon enforces,
    one line each (address, rule, group, name, expiry), by address, from
    its admin listener (--admin http://127.0.0.1:15380, or listen.admin of
    POLICY). It asks for them a page at a time (--page entries, at most
    10000) and prints each page as it arrives, so a million addresses
    need no more memory than one page. --name, --rule, --group and --addr
    (an address or a prefix) keep only the addresses that match them all,
    and imply --learned. An address held for several names is listed once
    per name; one restored from the state file or adopted from a previous
    process, before any answer named it, without a name ("-").
`

// restoreWait is how long firewall remove watches for a running daemon
// putting the table back; a daemon does it within milliseconds.
const restoreWait = 2 * time.Second

func cmdFirewall(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, firewallHelp)
		return 2
	}
	sub := args[0]
	if sub == "--help" || sub == "-h" || sub == "help" {
		fmt.Fprint(stdout, firewallHelp)
		return 0
	}
	if sub != "show" && sub != "remove" {
		fmt.Fprintf(stderr, "fqdngate firewall: unknown subcommand %q; use show or remove\n", sub)
		return 2
	}
	fs := flagSet("firewall "+sub, firewallHelp, stdout, stderr)
	cfg := configFlag(fs)
	table := fs.String("table", "", "table `NAME` (default: firewall.table of POLICY, else fqdngate)")
	var lf learnedFlags
	if sub == "show" {
		lf.register(fs)
	}
	if code := parse(fs, args[1:], stdout); code >= 0 {
		return code
	}
	if lf.wanted() {
		return showLearned(ctx, lf, *cfg, stdout, stderr)
	}
	name := "fqdngate"
	if *cfg != "" {
		p, err := loadLocal(*cfg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		name = p.Firewall.Table
	}
	if *table != "" {
		name = *table
	}
	b, err := nft.New(nft.Config{Table: name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate firewall %s: %v\n", sub, err)
		return 1
	}
	defer b.Close()
	switch sub {
	case "remove":
		if err := b.Remove(); err != nil {
			fmt.Fprintf(stderr, "fqdngate firewall remove: %v\n", err)
			return 1
		}
		for deadline := time.Now().Add(restoreWait); time.Now().Before(deadline); {
			select {
			case <-ctx.Done():
				return 1
			case <-time.After(50 * time.Millisecond):
			}
			if back, err := b.Installed(); err == nil && back {
				fmt.Fprintf(stderr, "fqdngate firewall remove: a running fqdngate put table inet %s back at once (it watches its table); stop it first (systemctl stop fqdngate), then run this again\n", name)
				return 1
			}
		}
		fmt.Fprintf(stdout, "removed table inet %s\n", name)
	case "show":
		if err := b.Show(stdout); err != nil {
			fmt.Fprintf(stderr, "fqdngate firewall show: %v\n", err)
			return 1
		}
	}
	return 0
}

// dryRunRuleset prints what the nftables backend would program for the
// policy, without touching the kernel.
func dryRunRuleset(ctx context.Context, cfg string, stdout, stderr io.Writer) int {
	p, err := loadPolicy(ctx, cfg, "")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if p.Firewall.Backend != policy.BackendNftables {
		fmt.Fprintf(stdout, "# firewall.backend is %s: fqdngate programs no nftables rules for this policy.\n# This is the table it would program with firewall.backend: nftables.\n", p.Firewall.Backend)
	}
	fmt.Fprint(stdout, nft.Render(daemon.NftConfig(p, nil), p))
	return 0
}

// loadLocal loads the policy at path for its node-local settings: a
// standalone policy whole, a fleet gateway's local file without its
// shared half.
func loadLocal(path string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	c, err := policy.ParseCluster(path, data)
	if err != nil {
		return nil, err
	}
	if c != nil {
		return policy.Compose(policy.Source{Name: path, Data: data}, nil)
	}
	return policy.Parse(path, data)
}
