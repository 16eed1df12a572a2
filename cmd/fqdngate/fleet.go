package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/cluster"
	"github.com/fqdngate/fqdngate/internal/daemon"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// etcdTimeout bounds each command's work with etcd.
const etcdTimeout = 15 * time.Second

const policyHelp = `NAME
    fqdngate policy - the shared policy of a fleet of gateways, in etcd

SYNOPSIS
    fqdngate policy push     -c POLICY [-m MESSAGE] [--host=false] SHARED
    fqdngate policy history  -c POLICY [-n COUNT] [--json]
    fqdngate policy show     -c POLICY [REVISION]
    fqdngate policy rollback -c POLICY [--host=false] REVISION

DESCRIPTION
    POLICY is a gateway's local file, whose cluster section says where the
    fleet's etcd is. The fleet's shared policy (mode, dns, proxy, sources,
    inside, users, rules) lives in etcd as numbered revisions; every
    gateway applies the current one as it applies a reload, all or
    nothing, and a gateway that cannot keeps its revision and says why in
    fqdngate fleet status.

    push      Check SHARED composed with POLICY exactly as "fqdngate check
              -c POLICY --shared SHARED" does, and store it as the next
              revision. Pushing the content of the current revision again
              changes nothing. The push keeps the newest
              cluster.history_keep revisions of POLICY (default 100) and
              deletes the older ones.
    history   List the revisions kept, newest first; * marks the current
              one. A last line names the revisions pruned.
    show      Print a revision's content (default: the current one).
    rollback  Make the content of REVISION current again, as a new
              revision, after checking it as push does. A pruned
              revision cannot come back.

EXIT STATUS
    0 success; 1 the policy is invalid or etcd could not be reached; 2
    wrong usage.

EXAMPLES
    fqdngate policy push -c /etc/fqdngate/policy.yaml -m "allow the new bank API" shared.yaml
    fqdngate policy history -c /etc/fqdngate/policy.yaml
    fqdngate policy rollback -c /etc/fqdngate/policy.yaml 6
`

const fleetHelp = `NAME
    fqdngate fleet - the gateways of a fleet, as etcd sees them

SYNOPSIS
    fqdngate fleet status -c POLICY [--json]
    fqdngate fleet forget -c POLICY NODE

DESCRIPTION
    POLICY is a gateway's local file, whose cluster section says where the
    fleet's etcd is.

    status    Print the shared revision in force and one line per gateway:
              its state (ok; lagging: on an older revision; rejected: it
              refused a newer revision and stays on its own; gone: its
              status expired), revision, lag in revisions, when it last
              wrote its status, how many learned addresses it enforces,
              and its last error. --json prints what the admin endpoint's
              /v1/fleet serves.
    forget    Stop listing NODE, a gateway that is gone for good.

EXIT STATUS
    status: 0 when every gateway is ok; 1 when one lags, refused a
    revision or is gone, or etcd could not be reached; 2 wrong usage.
`

func cmdPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, args, code := subcommand("policy", policyHelp, []string{"push", "history", "show", "rollback"}, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	fs := flagSet("policy "+sub, policyHelp, stdout, stderr)
	cfg := configFlag(fs)
	msg := fs.String("m", "", "push: a `MESSAGE` kept with the revision")
	host := fs.Bool("host", true, "push, rollback: also check what run needs of this host")
	count := fs.Int64("n", 20, "history: list at most `COUNT` revisions")
	asJSON := fs.Bool("json", false, "history: print JSON")
	want := map[string][2]int{"push": {1, 1}, "history": {0, 0}, "show": {0, 1}, "rollback": {1, 1}}[sub]
	pos, code := parseArgs(fs, args, stdout, want[0], want[1])
	if code >= 0 {
		return code
	}
	fl, code := openFleet(ctx, "policy "+sub, *cfg, stderr)
	if code >= 0 {
		return code
	}
	defer fl.close()
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	store := cluster.NewStore(fl.cli, fl.cluster.Prefix).KeepLast(int64(fl.cluster.HistoryKeep))
	switch sub {
	case "push":
		data, err := os.ReadFile(pos[0])
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate policy push: %v\n", err)
			return 1
		}
		if _, err := fl.check(policy.Source{Name: pos[0], Data: data}, *host); err != nil {
			fmt.Fprintln(stderr, err)
			fmt.Fprintln(stderr, "fqdngate policy push: nothing pushed; fix the errors above")
			return 1
		}
		r, created, err := store.Push(ctx, cluster.Push{Content: data, Author: author(fl.cluster), Source: filepath.Base(pos[0]), Message: *msg})
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate policy push: %v\n", err)
			return 1
		}
		reportPush(stdout, r, created)
	case "rollback":
		n, err := strconv.ParseInt(pos[0], 10, 64)
		if err != nil || n < 1 {
			fmt.Fprintf(stderr, "fqdngate policy rollback: %q is not a revision number; fqdngate policy history lists them\n", pos[0])
			return 2
		}
		r, created, err := store.Rollback(ctx, n, author(fl.cluster), func(src policy.Source) error {
			_, err := fl.check(src, *host)
			return err
		})
		if err != nil {
			fmt.Fprintln(stderr, err)
			fmt.Fprintf(stderr, "fqdngate policy rollback: revision %d not restored\n", n)
			return 1
		}
		reportPush(stdout, r, created)
	case "show":
		var r cluster.Revision
		var err error
		if len(pos) == 0 {
			r, err = store.Current(ctx)
		} else if n, perr := strconv.ParseInt(pos[0], 10, 64); perr != nil || n < 1 {
			fmt.Fprintf(stderr, "fqdngate policy show: %q is not a revision number\n", pos[0])
			return 2
		} else {
			r, err = store.Get(ctx, n)
		}
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate policy show: %v\n", err)
			return 1
		}
		fmt.Fprint(stdout, r.Content)
	case "history":
		revs, err := store.History(ctx, max(*count, 1))
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate policy history: %v\n", err)
			return 1
		}
		var cur int64
		if r, err := store.Current(ctx); err == nil {
			cur = r.Number
		}
		oldest, err := store.Oldest(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "fqdngate policy history: %v\n", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(map[string]any{"current_revision": cur, "oldest_kept": oldest, "revisions": revs})
			return 0
		}
		writeHistory(stdout, revs, cur)
		if oldest > 1 {
			fmt.Fprintf(stdout, "revisions 1 to %d were pruned: a push keeps the newest cluster.history_keep (%d with this file)\n", oldest-1, fl.cluster.HistoryKeep)
		}
	}
	return 0
}

func reportPush(w io.Writer, r cluster.Revision, created bool) {
	if !created {
		fmt.Fprintf(w, "unchanged: revision %d already has this content (sha256 %.12s)\n", r.Number, r.SHA256)
		return
	}
	fmt.Fprintf(w, "revision %d is current (sha256 %.12s); fqdngate fleet status shows the gateways applying it\n", r.Number, r.SHA256)
}

func writeHistory(w io.Writer, revs []cluster.Revision, cur int64) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REVISION\tCREATED\tAUTHOR\tSHA256\tSOURCE\tMESSAGE")
	for _, r := range revs {
		mark := ""
		if r.Number == cur {
			mark = " *"
		}
		fmt.Fprintf(tw, "%d%s\t%s\t%s\t%.12s\t%s\t%s\n", r.Number, mark, r.Created.Format(time.RFC3339), r.Author, r.SHA256, r.Source, r.Message)
	}
	_ = tw.Flush()
}

func cmdFleet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, args, code := subcommand("fleet", fleetHelp, []string{"status", "forget"}, args, stdout, stderr)
	if code >= 0 {
		return code
	}
	fs := flagSet("fleet "+sub, fleetHelp, stdout, stderr)
	cfg := configFlag(fs)
	asJSON := fs.Bool("json", false, "status: print JSON, as /v1/fleet serves it")
	n := map[string]int{"status": 0, "forget": 1}[sub]
	pos, code := parseArgs(fs, args, stdout, n, n)
	if code >= 0 {
		return code
	}
	fl, code := openFleet(ctx, "fleet "+sub, *cfg, stderr)
	if code >= 0 {
		return code
	}
	defer fl.close()
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	if sub == "forget" {
		if err := cluster.Forget(ctx, fl.cli, fl.cluster.Prefix, pos[0]); err != nil {
			fmt.Fprintf(stderr, "fqdngate fleet forget: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "forgot %s\n", pos[0])
		return 0
	}
	rep, err := cluster.ReadFleet(ctx, fl.cli, fl.cluster.Prefix)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate fleet status: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else {
		_ = rep.WriteText(stdout)
	}
	if !rep.Healthy() {
		return 1
	}
	return 0
}

// fleetCtl is a gateway's local file and a client of its fleet's etcd.
type fleetCtl struct {
	path    string
	data    []byte
	cluster *policy.Cluster
	cli     *clientv3.Client
}

// openFleet reads the local file at path and dials its cluster's etcd. It
// returns -1 to continue, or an exit code.
func openFleet(ctx context.Context, cmd, path string, stderr io.Writer) (*fleetCtl, int) {
	if path == "" {
		fmt.Fprintf(stderr, "fqdngate %s: give a gateway's local file, whose cluster section says where etcd is, with -c POLICY\n", cmd)
		return nil, 2
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate %s: %v\n", cmd, err)
		return nil, 1
	}
	c, err := policy.ParseCluster(path, data)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, 1
	}
	if c == nil {
		fmt.Fprintf(stderr, "fqdngate %s: %s has no cluster section, so it is a standalone policy; give the local file of a fleet gateway\n", cmd, path)
		return nil, 1
	}
	cli, err := cluster.Dial(c)
	if err != nil {
		fmt.Fprintf(stderr, "fqdngate %s: %v\n", cmd, err)
		return nil, 1
	}
	return &fleetCtl{path: path, data: data, cluster: c, cli: cli}, -1
}

func (f *fleetCtl) close() { f.cli.Close() }

// check compiles shared with the local file as a gateway would, and with
// host, checks what run needs of this host: what check, push and rollback
// all do.
func (f *fleetCtl) check(shared policy.Source, host bool) (*policy.Policy, error) {
	return checkFleet(policy.Source{Name: f.path, Data: f.data}, shared, host)
}

func checkFleet(local, shared policy.Source, host bool) (*policy.Policy, error) {
	p, err := policy.Compose(local, &shared)
	if err == nil && host {
		err = daemon.CheckHost(p)
	}
	return p, err
}

// loadPolicy loads the policy run would put in force from the file at
// path: a standalone policy, or a fleet gateway's local file composed with
// its shared half, the file sharedPath if set, else the revision in force
// in the fleet's etcd. check, explain and run --dry-run all load this way.
func loadPolicy(ctx context.Context, path, sharedPath string) (*policy.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	return loadPolicyData(ctx, path, data, sharedPath)
}

// loadPolicyData is loadPolicy of the file path that holds data.
func loadPolicyData(ctx context.Context, path string, data []byte, sharedPath string) (*policy.Policy, error) {
	c, err := policy.ParseCluster(path, data)
	if err != nil {
		return nil, err
	}
	if c == nil {
		if sharedPath != "" {
			return nil, fmt.Errorf("%s has no cluster section, so it is a standalone policy; --shared is for a fleet gateway's local file", path)
		}
		return policy.Parse(path, data)
	}
	local := policy.Source{Name: path, Data: data}
	if sharedPath != "" {
		sdata, err := os.ReadFile(sharedPath)
		if err != nil {
			return nil, fmt.Errorf("reading the shared policy: %w", err)
		}
		return policy.Compose(local, &policy.Source{Name: sharedPath, Data: sdata})
	}
	cli, err := cluster.Dial(c)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	r, err := cluster.NewStore(cli, c.Prefix).Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the shared policy from etcd (or give it with --shared FILE): %w", err)
	}
	src := r.Document()
	return policy.Compose(local, &src)
}

// subcommand splits off a command's subcommand. It returns -1 to
// continue, or an exit code.
func subcommand(cmd, help string, subs []string, args []string, stdout, stderr io.Writer) (string, []string, int) {
	if len(args) == 0 {
		fmt.Fprint(stderr, help)
		return "", nil, 2
	}
	sub := args[0]
	if sub == "--help" || sub == "-h" || sub == "help" {
		fmt.Fprint(stdout, help)
		return "", nil, 0
	}
	for _, s := range subs {
		if s == sub {
			return sub, args[1:], -1
		}
	}
	fmt.Fprintf(stderr, "fqdngate %s: unknown subcommand %q; use %s\n", cmd, sub, strings.Join(subs, ", "))
	return "", nil, 2
}

// parseArgs parses flags and between lo and hi positional arguments, which
// may stand before, between or after the flags. It returns -1 to continue,
// or an exit code.
func parseArgs(fs *flag.FlagSet, args []string, stdout io.Writer, lo, hi int) ([]string, int) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(stdout)
				fs.Usage()
				return nil, 0
			}
			return nil, 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) < lo || len(pos) > hi {
		what := "no arguments"
		switch {
		case lo == hi && lo == 1:
			what = "one argument"
		case hi == 1:
			what = "at most one argument"
		}
		fmt.Fprintf(fs.Output(), "fqdngate %s: takes %s besides its options, not %d (see --help)\n", fs.Name(), what, len(pos))
		return nil, 2
	}
	return pos, -1
}

// author names who pushes a revision: the user (the one behind sudo, if
// any) at this host, and the identity etcd itself checked: the etcd user,
// or else the client certificate's common name.
func author(c *policy.Cluster) string {
	name := os.Getenv("SUDO_USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	if name == "" {
		name = "unknown"
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	switch {
	case c.Username != "":
		name += " (etcd user " + c.Username + ")"
	case c.CertFile != "":
		if cn := certName(c.CertFile); cn != "" {
			name += " (certificate " + cn + ")"
		}
	}
	return name
}

// certName returns the common name of the first certificate in the PEM
// file at path, or "".
func certName(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return ""
	}
	return cert.Subject.CommonName
}
