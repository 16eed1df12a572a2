package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/fqdngate/fqdngate/internal/daemon"
	"github.com/fqdngate/fqdngate/internal/explain"
	"github.com/fqdngate/fqdngate/internal/gctune"
	"github.com/fqdngate/fqdngate/internal/importer"
	"github.com/fqdngate/fqdngate/internal/review"
	"github.com/fqdngate/fqdngate/internal/sdnotify"
)

// version and revision (the VCS commit) are set at build time with
// -ldflags "-X main.version=... -X main.revision=..." (see the Makefile).
var (
	version  = "dev"
	revision = ""
)

const usage = `NAME
    fqdngate - domain-name based egress control: DNS firewall, nftables
    enforcement that follows DNS, and an egress proxy, from one policy

SYNOPSIS
    fqdngate run      -c POLICY [--dry-run]
    fqdngate check    [--strict [--history PATH]] [--shared SHARED] [--host=false] POLICY|-
    fqdngate explain  -c POLICY [--shared SHARED] --from IP --to NAME[:PORT][/PROTO] [--json]
    fqdngate explain  --from-pod NAMESPACE/NAME [--admin URL] --to NAME[:PORT][/PROTO] [--json]
    fqdngate firewall show|remove [-c POLICY] [--table NAME]
    fqdngate firewall show --learned [-c POLICY | --admin URL] [--name NAME] [--addr PREFIX] ...
    fqdngate policy   push|history|show|rollback -c POLICY ...
    fqdngate fleet    status|forget -c POLICY ...
    fqdngate history  [--since 7d] [--group G] [--action A] [--history PATH | --admin URL | -c POLICY]
    fqdngate suggest  [--group G] [--since 7d] [--history PATH | --admin URL | -c POLICY]
    fqdngate simulate -c PROPOSED [--group G] [--since 7d] [--history PATH | --admin URL]
    fqdngate import   cilium|calico|npep [-n NAMESPACE] FILE...
    fqdngate man      fqdngate|fqdngate-policy
    fqdngate completion bash|zsh|fish
    fqdngate version

DESCRIPTION
    fqdngate lets hosts reach only the external names a policy lists. Clients
    resolve through its DNS firewall, which answers allowlisted names only;
    the addresses it hands out are programmed into the kernel (nftables)
    before the answer is released, and everything else is dropped. Clients
    that use a proxy, or whose traffic is redirected to it, are checked by
    name, with fqdngate resolving and dialling on their behalf.

COMMANDS
    run        Run the daemon on POLICY until SIGTERM or SIGINT. SIGHUP, or
               saving the file, reloads the policy; a policy with errors is
               rejected and the previous one stays in force.
    check      Validate POLICY. Exit 0 with a one-line summary, or exit 1
               with every error as file:line:col: message.
    explain    Say whether a source may reach a destination under POLICY,
               which rule decides and why.
    firewall   Show or remove the nftables table fqdngate manages.
    policy     Push, list and roll back the shared policy of a fleet of
               gateways (POLICY has a cluster section; see docs/fleet.md).
    fleet      Show the gateways of a fleet: revision, lag, errors.
    history    Show the decision history: names, hits, sources, per group.
    suggest    Propose rules for what the history saw denied.
    simulate   Replay the history against a proposed policy: what it would
               newly deny and newly allow; exit 1 if it denies what was
               allowed (a CI gate).
    import     Translate Cilium, Calico or NetworkPolicy API FQDN policies
               into fqdngate sources and rules.
    man        Print the manual page fqdngate(1), generated from this help,
               or fqdngate-policy(5), from docs/policy.md.
    completion Print shell completion for bash, zsh or fish.
    version    Print the version.

    Run "fqdngate COMMAND --help" for a command's options.

EXIT STATUS
    0 success; 1 the policy is invalid, the destination is denied (explain),
    the proposal denies what was allowed (simulate), or the daemon failed;
    2 wrong usage (and, for simulate, a proposal with errors).

FILES
    /etc/fqdngate/policy.yaml  the policy the systemd unit runs
    examples/quickstart.yaml   a policy that runs without root
    docs/policy.md             every policy field, with examples;
                               fqdngate-policy(5)
`

// command is one fqdngate command. The table below is the one list of
// them: run dispatches on it, and the man page and shell completions are
// generated from it, so none of them can leave a command out.
type command struct {
	name string
	help string   // man-page style, as "fqdngate NAME --help" prints it
	subs []string // subcommands, if any
	run  func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands lists the commands in the order of the usage text. It is a
// function, not a variable, as cmdMan and cmdCompletion read it.
func commands() []command {
	return []command{
		{"run", runHelp, nil, cmdRun},
		{"check", checkHelp, nil, cmdCheck},
		{"explain", explainHelp, nil, cmdExplain},
		{"firewall", firewallHelp, []string{"show", "remove"}, cmdFirewall},
		{"policy", policyHelp, []string{"push", "history", "show", "rollback"}, cmdPolicy},
		{"fleet", fleetHelp, []string{"status", "forget"}, cmdFleet},
		{"history", historyHelp, nil, cmdHistory},
		{"suggest", suggestHelp, nil, cmdSuggest},
		{"simulate", simulateHelp, nil, cmdSimulate},
		{"import", importHelp, importer.Dialects, cmdImport},
		{"man", manHelp, []string{"fqdngate", "fqdngate-policy"}, cmdMan},
		{"completion", completionHelp, []string{"bash", "zsh", "fish"}, cmdCompletion},
		{"version", versionHelp, nil, cmdVersion},
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "--version", "-version":
		return cmdVersion(ctx, nil, stdout, stderr)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "fqdngate: unknown command %q\n\n%s", args[0], usage)
	return 2
}

const versionHelp = `NAME
    fqdngate version - print the version

SYNOPSIS
    fqdngate version

DESCRIPTION
    Prints the version fqdngate was built as and the Go release that built
    it; --version does the same.
`

func cmdVersion(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("version", versionHelp, stdout, stderr)
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	fmt.Fprintln(stdout, versionString())
	return 0
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		return fmt.Sprintf("fqdngate %s (%s)", v, bi.GoVersion)
	}
	return "fqdngate " + v
}

// flagSet returns a FlagSet whose --help prints help (a man-page section)
// and the options.
func flagSet(name, help string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nOPTIONS")
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; it returns -1 to continue, or an exit code.
func parse(fs *flag.FlagSet, args []string, stdout io.Writer) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "fqdngate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

func configFlag(fs *flag.FlagSet) *string {
	p := new(string)
	fs.StringVar(p, "c", "", "policy file (`POLICY`)")
	fs.StringVar(p, "config", "", "same as -c")
	return p
}

const runHelp = `NAME
    fqdngate run - run the DNS firewall, enforcement and proxy on a policy

SYNOPSIS
    fqdngate run -c POLICY [--dry-run] [--log-format text|json]

DESCRIPTION
    Starts every component the policy configures and logs one line per
    component started, with its address. Decisions go to the audit log
    (standard output, or log.file) as one line each.

    Signals: SIGHUP reloads the policy and reopens the audit log file (for
    logrotate). Saving the policy file reloads it too. A policy with errors
    is logged and rejected; the previous policy stays in force. SIGTERM and
    SIGINT stop accepting, let in-flight work finish, and exit 0.

    Operational messages (not decisions) go to standard error.

EXAMPLES
    fqdngate run -c examples/quickstart.yaml
    fqdngate run -c /etc/fqdngate/policy.yaml --dry-run
`

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("run", runHelp, stdout, stderr)
	cfg := configFlag(fs)
	dryRun := fs.Bool("dry-run", false, "print the nftables ruleset the policy would program, then exit")
	logFormat := fs.String("log-format", "text", "format of operational messages on standard error: text or json")
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	if *cfg == "" {
		fmt.Fprintln(stderr, "fqdngate run: give the policy file with -c POLICY (try examples/quickstart.yaml)")
		return 2
	}
	if *dryRun {
		return dryRunRuleset(ctx, *cfg, stdout, stderr)
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	if *logFormat == "json" {
		h = slog.NewJSONHandler(stderr, nil)
	}
	logger := slog.New(h)
	gctune.Start(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	err := daemon.Run(ctx, daemon.Options{PolicyPath: *cfg, Logger: logger, Stdout: stdout, Reload: hup, DropCapabilities: true, Version: version, Revision: revision, Notify: sdnotify.FromEnv()})
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate: %v\n", err)
		return 1
	}
	return 0
}

const checkHelp = `NAME
    fqdngate check - validate a policy file

SYNOPSIS
    fqdngate check [--strict [--history PATH]] [--shared SHARED] [--host=false] POLICY|-
    fqdngate check -c POLICY [--strict [--history PATH]] [--shared SHARED] [--host=false]

DESCRIPTION
    Loads POLICY (the argument or -c; - reads it from standard input)
    exactly as "run" would. On success prints a one-line summary and
    exits 0. Otherwise prints every problem, one per line, as
    file:line:col: message (the message says what to write instead), and
    exits 1. Use it in CI before shipping a policy.

    Besides the policy itself, check reports what run would refuse on
    this host: with firewall.backend: nftables, a firewall.state_file
    whose directory does not exist; for a fleet gateway, etcd credentials
    that do not load. --host=false leaves that out, for a
    CI job that checks policies on another machine than the gateways.

    --strict also reports, as file:line:col: warning: message, what a
    valid policy probably did not mean, and exits 1 if there is any: a
    rule that allows nothing an earlier rule does not already allow to
    its sources (such as a from: restriction an earlier rule for every
    source makes meaningless), a target another target of the same rule
    covers, source groups no rule's from names, users in no such group,
    0.0.0.0/0 or ::/0 targets, rules open on every port, and a policy
    with no rules.

    --history PATH (with --strict) also warns about every rule that
    allowed nothing in the decision history at PATH (a gateway's
    history.path; see fqdngate history): candidates for pruning.

    A source group's observe_until that has passed is reported as a
    warning with or without --strict: the group is enforced already. So
    is a policy with firewall.backend: nftables and more than 4,000 rule
    and source group pairs, which the kernel takes many seconds to
    program at start and on every reload (and fails past about 40,000).

    A POLICY with a cluster section is a fleet gateway's local file: check
    validates it together with the shared policy, SHARED if given, else
    the current revision in the fleet's etcd. Errors name the half they
    are in (the file, or "shared revision N").

EXAMPLES
    fqdngate check /etc/fqdngate/policy.yaml
    fqdngate check --strict --host=false policy.yaml
    fqdngate check --strict --history /var/lib/fqdngate/history.db policy.yaml
    git show HEAD:policy.yaml | fqdngate check --host=false -
`

// stdin is what "check -" reads; tests replace it.
var stdin io.Reader = os.Stdin

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("check", checkHelp, stdout, stderr)
	cfg := configFlag(fs)
	host := fs.Bool("host", true, "also check what run needs of this host (the state file's directory)")
	shared := fs.String("shared", "", "a fleet gateway's shared policy `SHARED`, checked with POLICY (default: the current revision in etcd)")
	strict := fs.Bool("strict", false, "also warn about what a valid policy probably did not mean; exit 1 if anything is found")
	histFile := fs.String("history", "", "with --strict, also warn about rules that allowed nothing in the decision history at `PATH`")
	pos, code := parseArgs(fs, args, stdout, 0, 1)
	if code >= 0 {
		return code
	}
	path := *cfg
	if len(pos) == 1 {
		if path != "" {
			fmt.Fprintln(stderr, "fqdngate check: give the policy once, as -c POLICY or as the argument")
			return 2
		}
		path = pos[0]
	}
	if path == "" {
		fmt.Fprintln(stderr, "fqdngate check: give the policy file: fqdngate check POLICY (- for standard input)")
		return 2
	}
	if *histFile != "" && !*strict {
		fmt.Fprintln(stderr, "fqdngate check: --history is read by --strict; add --strict")
		return 2
	}
	var data []byte
	var err error
	name := path
	if path == "-" {
		name = "<stdin>"
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate check: reading policy: %v\n", err)
		return 1
	}
	p, err := loadPolicyData(ctx, name, data, *shared)
	if err == nil && *host {
		// What run would refuse on this host, such as a state file
		// directory that does not exist.
		err = daemon.CheckHost(p)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	names := 0
	for _, r := range p.Rules {
		names += len(r.Names) + len(r.Prefixes)
	}
	fmt.Fprintf(stdout, "%s: ok: %d rules, %d targets, %d source groups, mode %s, firewall %s",
		name, len(p.Rules), names, len(p.Sources), p.Mode, p.Firewall.Backend)
	if n := len(p.DNS.Forward); n > 0 {
		fmt.Fprintf(stdout, ", %d forward zones", n)
	}
	if len(p.DNS.Upstreams) > 0 {
		fmt.Fprintf(stdout, ", upstreams %v", p.DNS.Upstreams)
	}
	if p.DNS.DNSSEC.String() == "validate" {
		anchors := "built-in root anchors"
		if p.DNS.TrustAnchors != "" {
			anchors = "trust anchors " + p.DNS.TrustAnchors
		}
		fmt.Fprintf(stdout, ", dnssec validate (%s)", anchors)
	}
	if p.SharedName != "" {
		fmt.Fprintf(stdout, ", shared policy %s", p.SharedName)
	}
	fmt.Fprintln(stdout)
	// Rules, sources and users of a fleet gateway are in its shared half.
	reviewed, reviewedData := name, data
	if p.SharedName != "" {
		reviewed, reviewedData = p.SharedName, nil
		if *shared != "" {
			if b, err := os.ReadFile(*shared); err == nil {
				reviewedData = b
			}
		}
	}
	// Warned about with or without --strict.
	always := append(review.ObservePassed(p, reviewed, time.Now()), review.NftablesScale(p, name)...)
	if !*strict {
		for _, w := range always {
			fmt.Fprintln(stderr, w)
		}
		return 0
	}
	ws := append(review.Strict(p, reviewed, reviewedData), always...)
	if *histFile != "" {
		hw, err := neverHit(ctx, p, reviewed, reviewedData, *histFile)
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate check: %v\n", err)
			return 1
		}
		ws = append(ws, hw...)
	}
	for _, w := range ws {
		fmt.Fprintln(stderr, w)
	}
	if len(ws) > 0 {
		fmt.Fprintf(stderr, "fqdngate check --strict: %d warnings\n", len(ws))
		return 1
	}
	return 0
}

const explainHelp = `NAME
    fqdngate explain - say whether a source may reach a destination, and why

SYNOPSIS
    fqdngate explain -c POLICY [--shared SHARED] --from IP --to DESTINATION [--json]
    fqdngate explain --from-pod NAMESPACE/NAME [--admin URL] --to DESTINATION [--json]

DESCRIPTION
    DESTINATION is NAME, NAME:PORT, IP:PORT or [IPv6]:PORT, optionally
    followed by /tcp or /udp; the port defaults to 443 and the protocol to
    tcp. It may also be a URL, as copied from a log or a browser: its
    host, and its port or the scheme's (http and ws 80, https and wss
    443; another scheme needs the port); path and query do not matter. Prints ALLOW or DENY, the source groups of IP, the rule that
    decided and the pattern and group that matched; for a denial, the
    closest rule and what it lacked (the source or the port).

    With --json prints one object with action (allow | deny | would-deny),
    rule (empty when none), reason, pattern, group, near_rule,
    source_groups, from, to, port, proto and mode.

    Exits 0 when the traffic would pass, 1 when it would be denied.

    For a fleet gateway's local file (with a cluster section) the shared
    half is SHARED, or else the current revision in the fleet's etcd.

    With --from-pod the source is a Kubernetes pod, and the answer comes
    from the running node agent (or gateway) at --admin URL (default
    http://127.0.0.1:15380, the default listen.admin): it finds the pod's
    address among the pods it follows and explains it under the policy
    and pod groups in force. A pod it does not follow (on another node,
    without an address yet, on the host's network) is an error, exit 2.

EXAMPLES
    fqdngate explain -c policy.yaml --from 10.1.0.7 --to api.bank.example:443
    fqdngate explain -c policy.yaml --from 10.1.0.7 --to 203.0.113.9:5432 --json
    fqdngate explain -c policy.yaml --from 10.1.0.7 --to https://api.bank.example/v1/pay
    kubectl -n fqdngate exec ds/fqdngate -- fqdngate explain --from-pod payments/checkout-7d9f --to api.stripe.com
`

func cmdExplain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flagSet("explain", explainHelp, stdout, stderr)
	cfg := configFlag(fs)
	from := fs.String("from", "", "source `IP` address")
	to := fs.String("to", "", "`DESTINATION`: name or IP, optional :port and /proto, or a URL")
	asJSON := fs.Bool("json", false, "print one JSON object")
	shared := fs.String("shared", "", "a fleet gateway's shared policy `SHARED`, with POLICY its local file (default: the current revision in etcd)")
	fromPod := fs.String("from-pod", "", "source pod `NAMESPACE/NAME`, asked of the daemon at --admin")
	admin := fs.String("admin", defaultAdmin, "with --from-pod, the daemon's admin listener `URL`")
	if code := parse(fs, args, stdout); code >= 0 {
		return code
	}
	var res explain.Result
	switch {
	case *fromPod != "" && *to != "" && *from == "" && *cfg == "" && *shared == "":
		var code int
		if res, code = explainPod(ctx, *admin, *fromPod, *to, stderr); code >= 0 {
			return code
		}
	case *fromPod != "":
		fmt.Fprintln(stderr, "fqdngate explain: --from-pod asks the daemon at --admin URL; give it with --to DESTINATION only, without -c, --shared or --from")
		return 2
	case *cfg == "" || *from == "" || *to == "":
		fmt.Fprintln(stderr, "fqdngate explain: give -c POLICY, --from IP and --to DESTINATION (or --from-pod NAMESPACE/NAME and --to DESTINATION)")
		return 2
	default:
		p, err := loadPolicy(ctx, *cfg, *shared)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		if res, err = explain.Explain(p, *from, *to, nil); err != nil {
			fmt.Fprintf(stderr, "fqdngate explain: %v\n", err)
			return 2
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		fmt.Fprint(stdout, res.Text())
	}
	if res.Action == "deny" {
		return 1
	}
	return 0
}
