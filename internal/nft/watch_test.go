package nft

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// logBuffer collects a backend's log lines, for assertions.
type logBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openWindow breaks the table with tamper and measures, from payments,
// how long traffic to srvC (nothing allows it) passes and srvA (learned)
// does not (see netns.OpenWindow).
func openWindow(t *testing.T, n *forwardNet, tamper func()) (closed, reachable time.Duration) {
	t.Helper()
	return netns.OpenWindow(t, tamper,
		func(d time.Duration) (net.Conn, error) { return n.client.Dial("tcp", srcPayments, srvC+":443", d) },
		func(d time.Duration) (net.Conn, error) { return dial(n.client, srcPayments, srvA, "443", d) },
		100*time.Millisecond, 10*time.Second, nil)
}

// TestWatchRestoresDeletedTable: `nft delete table` under a running
// backend is undone at once, learned addresses and all, in well under a
// second; it is logged with what happened and who did it, and counted.
func TestWatchRestoresDeletedTable(t *testing.T) {
	n := newForwardNet(t)
	var logs logBuffer
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true, Logger: logs.logger()}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	publish(t, b, "web", "others", srvB, 2*time.Minute)
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}, {srcPayments, srvC, "443", false}})
	before := b.Learned()

	closed, reachable := openWindow(t, n, func() { n.gw.MustExec("nft", "delete", "table", "inet", "fqdngate") })
	t.Logf("open for at most %v; learned address reachable again %v after the delete", closed, reachable)
	if closed > time.Second || reachable > time.Second {
		t.Errorf("after nft delete table: unlisted traffic dropped again after %v, learned address reachable again after %v; want both under 1s", closed, reachable)
	}
	waitFor(t, "the restore to be counted", func() bool { return b.Stats().Restores == 1 })
	if err := b.Enforcing(); err != nil {
		t.Errorf("Enforcing() after the restore: %v", err)
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true},
		{srcOthers, srvB, "443", true},
		{srcOthers, srvA, "443", false},
		{srcPayments, srvC, "443", false},
	})
	// Every learned element is back in the kernel with the time it had
	// left, not a new one.
	assertKernelHolds(t, n.gw, b, before)
	log := logs.String()
	for _, want := range []string{`msg="another process changed the nftables table; restored it"`, `change="table deleted`, "(nft)", "learned=2"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}
	if got := b.Dropped(); got != 0 {
		t.Errorf("Dropped() = %d after a restore, want 0: nothing published was lost", got)
	}
}

// assertKernelHolds checks that the kernel's learned sets hold exactly
// want, each expiring within a second of want's expiry, and that the
// backend's mirror agrees.
func assertKernelHolds(t *testing.T, ns *netns.NS, b *Backend, want []learn.Entry) {
	t.Helper()
	kernel := kernelExpiries(t, ns, b)
	if len(kernel) != len(want) {
		t.Errorf("the kernel holds %d learned elements, want %d: %v", len(kernel), len(want), kernel)
	}
	for _, e := range want {
		got, ok := kernel[e.Addr.String()]
		if !ok {
			t.Errorf("the kernel lacks %s (rule %s)", e.Addr, e.Rule)
			continue
		}
		if d := got.Sub(e.Expires); d > time.Second || d < -time.Second {
			t.Errorf("%s expires in the kernel at %v, %v from its expiry %v", e.Addr, got.Format(time.StampMilli), d, e.Expires.Format(time.StampMilli))
		}
	}
	mirror := make(map[string]time.Time)
	for _, e := range b.Learned() {
		mirror[e.Addr.String()] = e.Expires
	}
	for _, e := range want {
		got, ok := mirror[e.Addr.String()]
		if !ok {
			t.Errorf("Learned() lacks %s", e.Addr)
			continue
		}
		if d := got.Sub(e.Expires); d > time.Second || d < -time.Second {
			t.Errorf("Learned() has %s expiring %v from its expiry", e.Addr, d)
		}
	}
	if got := len(mirror); got != len(want) {
		t.Errorf("Learned() holds %d entries, want %d", got, len(want))
	}
}

// kernelElem matches an element with a timeout in `nft list` output.
var kernelElem = regexp.MustCompile(`([0-9a-f:.]+) timeout ([0-9hms]+) expires ([0-9hms]+)`)

// kernelExpiries reads with nft when each learned element of b's table
// expires: independently of the backend, which reads them back the same
// way it adopts them.
func kernelExpiries(t *testing.T, ns *netns.NS, b *Backend) map[string]time.Time {
	t.Helper()
	now := time.Now()
	out := make(map[string]time.Time)
	for _, m := range kernelElem.FindAllStringSubmatch(ns.MustExec("nft", "list", "table", "inet", b.cfg.Table), -1) {
		left, err := time.ParseDuration(m[3])
		if err != nil {
			t.Fatalf("nft says %s expires in %q: %v", m[1], m[3], err)
		}
		if _, dup := out[m[1]]; dup {
			t.Fatalf("%s is in two learned sets", m[1])
		}
		out[m[1]] = now.Add(left)
	}
	return out
}

// TestWatchRestoresChanges: every kind of change another process makes to
// the table (not only deleting it) is undone: an accept rule slipped in
// before the policy, an address added to or deleted from a learned set,
// the table made dormant, a chain deleted, the whole ruleset flushed.
func TestWatchRestoresChanges(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	before := b.Learned()
	cases := []struct {
		name string
		nft  []string
	}{
		{"accept rule first", []string{"insert", "rule", "inet", "fqdngate", "forward", "accept"}},
		{"element added", []string{"add", "element", "inet", "fqdngate", "learn4.bank-api.payments", "{", srvC, "}"}},
		{"element deleted", []string{"delete", "element", "inet", "fqdngate", "learn4.bank-api.payments", "{", srvA, "}"}},
		{"dormant", []string{"add", "table", "inet", "fqdngate", "{", "flags", "dormant", ";", "}"}},
		{"chain deleted", []string{"delete", "chain", "inet", "fqdngate", "forward"}},
		{"ruleset flushed", []string{"flush", "ruleset"}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			closed, reachable := openWindow(t, n, func() { n.gw.MustExec("nft", c.nft...) })
			if closed > time.Second || reachable > time.Second {
				t.Errorf("dropped again after %v, learned address reachable again after %v; want both under 1s", closed, reachable)
			}
			waitFor(t, "the restore", func() bool { return b.Stats().Restores >= uint64(i+1) && b.Enforcing() == nil })
			assertKernelHolds(t, n.gw, b, before)
			if out := n.gw.MustExec("nft", "list", "table", "inet", "fqdngate"); strings.Contains(out, "dormant") || strings.Contains(out, srvC) {
				t.Errorf("the change survived the restore:\n%s", out)
			}
		})
	}
}

// TestWatchFiltersOtherTables: changes to other tables (kube-proxy's, a
// container runtime's, another gateway's) do not reach the watcher, save
// their transactions' commit messages, while a transaction that changes
// another table and then ours is still seen and undone.
func TestWatchFiltersOtherTables(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	n.gw.MustExec("nft", "add table inet other; add set inet other s { type ipv4_addr; }")
	const commits = 5
	before := b.monReads.Load()
	for i := range commits {
		var elems []string
		for j := range 200 {
			elems = append(elems, fmt.Sprintf("10.%d.%d.%d", i, j/250, j%250))
		}
		n.gw.MustExec("nft", "add element inet other s { "+strings.Join(elems, ", ")+" }")
	}
	// Each commit's NEWGEN comes after its elements: once the watcher has
	// read one datagram per commit, it has read whatever of the elements
	// got through.
	waitFor(t, "the commits' messages", func() bool { return b.monReads.Load()-before >= commits })
	time.Sleep(100 * time.Millisecond)
	if got := b.monReads.Load() - before; got != commits {
		t.Errorf("the watcher read %d datagrams for %d commits of 200 elements each to another table, want %d (their commit messages only)", got, commits, commits)
	}
	if got := b.Stats().Restores; got != 0 {
		t.Fatalf("Stats().Restores = %d after changes to another table, want 0", got)
	}
	// Another table first, then ours, in one transaction.
	n.gw.MustExec("nft", "add element inet other s { 192.0.2.99 }; add element inet fqdngate learn4.bank-api.payments { "+srvC+" }")
	waitFor(t, "the restore", func() bool { return b.Stats().Restores >= 1 && b.Enforcing() == nil })
	if out := n.gw.MustExec("nft", "list", "set", "inet", "fqdngate", "learn4.bank-api.payments"); strings.Contains(out, srvC) {
		t.Errorf("the element added alongside another table's survived the restore:\n%s", out)
	}
}

// TestWatchIgnoresOwnChangesAndExpiry: the backend's own transactions
// (publications, evictions, a reload) and the kernel's expiry of learned
// elements are not changes to undo, for the monitor or for a check.
func TestWatchIgnoresOwnChangesAndExpiry(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, override(forwardPolicy, "dns: {max_learned_per_name: 1}"))
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true}, p)
	publish(t, b, "bank-api", "payments", srvA, time.Second)
	publish(t, b, "bank-api", "payments", srvB, time.Second) // pushes srvA out
	publish(t, b, "web", "others", srvB, 1500*time.Millisecond)
	if err := b.Apply(context.Background(), mustParse(t, forwardPolicy)); err != nil {
		t.Fatal(err)
	}
	if b.Stats().CapEvictions == 0 {
		t.Fatal("the per-name cap evicted nothing; the test needs a delete of the backend's own")
	}
	// Expired in the kernel, still in the mirror until the sweep.
	time.Sleep(1500*time.Millisecond + refreshSlack + 500*time.Millisecond)
	if got := kernelExpiries(t, n.gw, b); len(got) != 0 {
		t.Fatalf("the kernel still holds %v; the test needs them expired", got)
	}
	b.check(true)
	if err := b.restore(); err != nil {
		t.Fatal(err)
	}
	if got := b.Stats().Restores; got != 0 {
		t.Errorf("Stats().Restores = %d after the backend's own changes and the kernel's expiry, want 0 (%v)", got, b.Enforcing())
	}
}

// TestWatchChecks: what the monitor cannot report is found by the checks:
// with the monitor gone, the periodic check finds a changed structure,
// and the full check, which runs after lost notifications, a learned set
// changed.
func TestWatchChecks(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	b.closeMon() // the watcher now hears nothing

	b.check(false)
	if err := b.Enforcing(); err != nil {
		t.Fatalf("a check of an intact table found: %v", err)
	}
	for _, c := range []struct {
		name  string
		nft   []string
		full  bool
		found string
	}{
		{"rule deleted", []string{"flush", "chain", "inet", "fqdngate", enforceChain}, false, "differ"},
		{"static set changed", []string{"add", "element", "inet", "fqdngate", "cidr4.partner-db", "{", "0.0.0.0/1", "}"}, false, "differ"},
		{"element added", []string{"add", "element", "inet", "fqdngate", "learn4.bank-api.payments", "{", srvC, "}"}, true, "element " + srvC + " added"},
		{"element deleted", []string{"delete", "element", "inet", "fqdngate", "learn4.bank-api.payments", "{", srvA, "}"}, true, "element " + srvA + " deleted"},
		{"table deleted", []string{"delete", "table", "inet", "fqdngate"}, false, "table deleted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			restores := b.Stats().Restores
			n.gw.MustExec("nft", c.nft...)
			if !c.full {
				b.check(false)
			}
			b.check(true)
			err := b.Enforcing()
			if err == nil || !strings.Contains(err.Error(), c.found) {
				t.Fatalf("after %s: Enforcing() = %v, want an error saying %q", c.name, err, c.found)
			}
			if err := b.restore(); err != nil {
				t.Fatal(err)
			}
			if b.Enforcing() != nil || b.Stats().Restores != restores+1 {
				t.Errorf("after the restore: Enforcing() = %v, restores %d, want nil and %d", b.Enforcing(), b.Stats().Restores, restores+1)
			}
			b.check(true)
			if err := b.Enforcing(); err != nil {
				t.Errorf("a full check after the restore found: %v", err)
			}
		})
	}
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}, {srcPayments, srvC, "443", false}})
}

// TestWatchOverrun: notifications lost to a full socket buffer (ENOBUFS)
// lead to a full check, which finds what they would have shown.
func TestWatchOverrun(t *testing.T) {
	n := newForwardNet(t)
	ns := n.gw
	b, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, Watch: true, NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Apply(context.Background(), mustParse(t, forwardPolicy)); err != nil {
		t.Fatal(err)
	}
	// The smallest buffer the kernel allows holds a few notifications,
	// and the watcher does not read while the change is made.
	if err := b.mon.c.SetReadBuffer(1); err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	var once sync.Once
	b.beforeRead = func() { once.Do(func() { <-hold }) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	publish(t, b, "bank-api", "payments", srvA, time.Minute)

	// One transaction of a thousand elements: far more notifications
	// than fit.
	var elems []string
	for i := range 1000 {
		elems = append(elems, fmt.Sprintf("10.%d.%d.1", i/250, i%250))
	}
	ns.MustExec("nft", "add", "element", "inet", "fqdngate", "learn4.web.others", "{", strings.Join(elems, ","), "}")
	close(hold)
	waitFor(t, "the restore", func() bool { return b.Stats().Restores >= 1 && b.Enforcing() == nil })
	if got := b.Stats(); got.WatchOverruns == 0 || got.Restores != 1 {
		t.Errorf("Stats() = %+v, want an overrun and one restore", got)
	}
	if out := ns.MustExec("nft", "list", "set", "inet", "fqdngate", "learn4.web.others"); strings.Contains(out, "10.0.0.1") {
		t.Errorf("the added elements survived:\n%s", out)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})
}

// TestWatchReadiness: while the table cannot be put back, Enforcing says
// so (the daemon reports not ready), and the watcher keeps trying until
// it can. Here another process replaces the table with one it owns
// (nft's owner flag: only its socket may change it), until it exits.
func TestWatchReadiness(t *testing.T) {
	n := newForwardNet(t)
	var logs logBuffer
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward, Watch: true, Logger: logs.logger()}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	before := b.Learned()

	squatter := netns.SquatTable(t, n.gw, "fqdngate")
	waitFor(t, "Enforcing to report the failed restore", func() bool {
		err := b.Enforcing()
		return err != nil && strings.Contains(err.Error(), "the last attempt failed")
	})
	err := b.Enforcing()
	for _, want := range []string{"table deleted", "another process may own"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Enforcing() = %q, want it to say %q", err, want)
		}
	}
	// The squatter's table is empty: nothing is enforced, and that is
	// what readiness says.
	checkReach(t, n.client, []reach{{srcPayments, srvC, "443", true}})
	if err := b.Enforcing(); err == nil {
		t.Fatal("Enforcing() = nil while the table is someone else's")
	}

	squatter.Close() // the kernel deletes the table it owned
	waitFor(t, "the restore", func() bool { return b.Enforcing() == nil })
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}, {srcPayments, srvC, "443", false}})
	assertKernelHolds(t, n.gw, b, before)
	s := b.Stats()
	if s.Restores != 1 || s.RestoreFailures == 0 {
		t.Errorf("Stats() = %+v, want 1 restore after at least one failure", s)
	}
	if got := strings.Count(logs.String(), "could not restore the nftables table"); got != 1 {
		t.Errorf("logged %d failures, want the same failure once:\n%s", got, logs.String())
	}
}
