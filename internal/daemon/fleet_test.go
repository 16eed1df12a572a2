package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/cluster"
	"github.com/fqdngate/fqdngate/internal/resolver"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// The fleet tests run gateways in-process against an embedded three-member
// etcd cluster: backend none and only the admin listener, so they need no
// namespace; what they check is the shared policy's path into the daemon.

const fleetPrefix = "/fqdngate-daemon-test/"

// fleetWait bounds every wait on the fleet: generous, for -race on a
// loaded machine.
const fleetWait = 45 * time.Second

// Shared revisions. sharedBad fails to compose on every gateway.
const (
	sharedOne = "dns: {upstreams: [192.0.2.53]}\nrules:\n  - name: one\n    to: [one.example]\n"
	sharedTwo = "dns: {upstreams: [192.0.2.54]}\nrules:\n  - name: one\n    to: [one.example]\n  - name: two\n    to: [two.example]\n"
	sharedBad = "dns: {upstreams: [192.0.2.54]}\nrules:\n  - name: bad\n    to: [\"https://bad.example/\"]\n"
)

type gateway struct {
	t     *testing.T
	node  string
	d     *Daemon
	admin string
	log   syncBuffer
	stop  func()
}

// startGateway starts a fleet gateway called node on c.
func startGateway(t *testing.T, c *etcdtest.Cluster, node string) *gateway {
	t.Helper()
	return startGatewayDNS(t, c, node, "")
}

// startGatewayDNS starts a fleet gateway called node on c, with its DNS
// firewall on dnsAddr ("" for none).
func startGatewayDNS(t *testing.T, c *etcdtest.Cluster, node, dnsAddr string) *gateway {
	t.Helper()
	g := &gateway{t: t, node: node, admin: freeAddr(t)}
	dir := t.TempDir()
	local := fmt.Sprintf(`listen: {dns: %q, proxy: "", admin: %q}
log: {file: %q}
cluster:
  etcd: {endpoints: [%s]}
  prefix: %s
  node: %s
`, dnsAddr, g.admin, filepath.Join(dir, "audit.log"), quoteAll(c.Endpoints()), fleetPrefix, node)
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	g.d = newDaemon(Options{PolicyPath: path, Logger: slog.New(slog.NewTextHandler(&g.log, nil)), Version: "v0.0.0-test"})
	g.d.statusInterval, g.d.statusTTL = 200*time.Millisecond, 2*time.Second
	ctx, cancel := context.WithCancel(context.Background())
	if err := g.d.start(ctx); err != nil {
		cancel()
		t.Fatalf("starting gateway %s: %v\n%s", node, err, g.log.String())
	}
	stopped := false
	g.stop = func() {
		if stopped {
			return
		}
		stopped = true
		g.d.shutdown(cancel)
	}
	t.Cleanup(g.stop)
	// The fleet's learned set loads in the background; readiness waits
	// for it, and the tests read readiness for the policy.
	select {
	case <-g.d.fl.learned.Loaded():
	case <-time.After(20 * time.Second):
		t.Fatalf("gateway %s never loaded the fleet's learned set\n%s", node, g.log.String())
	}
	return g
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// freeAddr returns a loopback address whose port was free for TCP and UDP
// a moment ago, below the ephemeral range (32768-60999) so that no
// outgoing connection takes it meanwhile.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return addr
	}
	t.Fatal("no free loopback port below the ephemeral range")
	return ""
}

// hasRule reports whether the policy in force has a rule called name.
func (g *gateway) hasRule(name string) bool { return g.d.Policy().Rule(name) != nil }

// eventually waits until cond holds.
func (g *gateway) eventually(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.Now().Add(fleetWait)
	for !cond() {
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: never %s\n%s", g.node, what, g.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *gateway) get(path string) (int, string) {
	g.t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get("http://" + g.admin + path)
	if err != nil {
		g.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (g *gateway) fleet() cluster.Report {
	g.t.Helper()
	code, body := g.get("/v1/fleet")
	var rep cluster.Report
	if code != http.StatusOK {
		g.t.Fatalf("/v1/fleet: %d %s", code, body)
	}
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		g.t.Fatalf("/v1/fleet: %v\n%s", err, body)
	}
	return rep
}

func push(t *testing.T, cli *clientv3.Client, content string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
	defer cancel()
	r, _, err := cluster.NewStore(cli, fleetPrefix).Push(ctx, cluster.Push{Content: []byte(content), Author: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return r.Number
}

func stateOf(rep cluster.Report, node string) cluster.NodeReport {
	for _, n := range rep.Nodes {
		if n.Node == node {
			return n
		}
	}
	return cluster.NodeReport{}
}

// TestFleetAppliesPushedRevision: two gateways start on the revision in
// force, and both apply the next one pushed; /v1/fleet, /readyz and the
// metrics say so.
func TestFleetAppliesPushedRevision(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a, b := startGateway(t, c, "gw-a"), startGateway(t, c, "gw-b")
	for _, g := range []*gateway{a, b} {
		if !g.hasRule("one") || g.d.Policy().SharedName != "shared revision 1" {
			t.Errorf("%s: started on %q, want shared revision 1", g.node, g.d.Policy().SharedName)
		}
		if code, body := g.get("/readyz"); code != http.StatusOK || body != "ready\n" {
			t.Errorf("%s /readyz: %d %q", g.node, code, body)
		}
	}
	push(t, cli, sharedTwo)
	for _, g := range []*gateway{a, b} {
		g.eventually("applied revision 2", func() bool { return g.hasRule("two") })
	}
	a.eventually("saw both gateways on revision 2", func() bool {
		rep := a.fleet()
		return rep.CurrentRevision == 2 && len(rep.Nodes) == 2 && rep.Healthy()
	})
	if got := a.metric(`fqdngate_fleet_policy_revision`); got != 2 {
		t.Errorf("fqdngate_fleet_policy_revision = %v, want 2", got)
	}
	if got := a.metric(`fqdngate_fleet_policy_applies_total{result="success"}`); got != 2 {
		t.Errorf(`fqdngate_fleet_policy_applies_total{result="success"} = %v, want 2 (start and revision 2)`, got)
	}
	if code, body := a.get("/v1/policy"); code != http.StatusOK || !strings.Contains(body, `"shared_policy": "shared revision 2"`) {
		t.Errorf("/v1/policy: %d %s", code, body)
	}
}

// TestFleetBadRevisionKeptOut: a revision one gateway cannot apply leaves
// it on its revision, says why in fleet status, and the other applies it;
// a revision no gateway can compose is kept out everywhere, positioned; a
// later good revision brings both back.
func TestFleetBadRevisionKeptOut(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a, b := startGateway(t, c, "gw-a"), startGateway(t, c, "gw-b")
	// gw-b cannot build the resolver revision 2 asks for.
	b.d.reloadMu.Lock()
	b.d.comps.ups.build = func(resolver.Config) (*resolver.Resolver, error) {
		return nil, errors.New("resolver refused by the test")
	}
	b.d.reloadMu.Unlock()

	push(t, cli, sharedTwo)
	a.eventually("applied revision 2", func() bool { return a.hasRule("two") })
	var rep cluster.Report
	a.eventually("saw gw-b refuse revision 2 and itself on it", func() bool {
		rep = a.fleet()
		return stateOf(rep, "gw-b").State == cluster.StateRejected && stateOf(rep, "gw-a").State == cluster.StateOK
	})
	nb := stateOf(rep, "gw-b")
	if nb.PolicyRevision != 1 || nb.RejectedRevision != 2 || !strings.Contains(nb.LastError, "resolver refused by the test") {
		t.Errorf("gw-b in fleet status: got %+v", nb)
	}
	if b.hasRule("two") || !b.hasRule("one") {
		t.Error("gw-b: revision 2 half-applied")
	}
	if na := stateOf(rep, "gw-a"); na.State != cluster.StateOK || na.PolicyRevision != 2 {
		t.Errorf("gw-a in fleet status: got %+v", na)
	}
	if !strings.Contains(b.log.String(), "resolver refused by the test") {
		t.Errorf("gw-b's log does not say why:\n%s", b.log.String())
	}
	// Still ready: it enforces revision 1.
	if err := b.d.ready(); err != nil {
		t.Errorf("gw-b not ready on its revision: %v", err)
	}

	push(t, cli, sharedBad)
	a.eventually("saw both refuse revision 3", func() bool {
		rep = a.fleet()
		return stateOf(rep, "gw-a").RejectedRevision == 3 && stateOf(rep, "gw-b").RejectedRevision == 3
	})
	if na := stateOf(rep, "gw-a"); na.PolicyRevision != 2 || !strings.Contains(na.LastError, `shared revision 3:4:10: rule "bad": "https://bad.example/" is a URL`) {
		t.Errorf("gw-a after revision 3: got %+v", na)
	}
	if !a.hasRule("two") || a.hasRule("bad") {
		t.Error("gw-a: revision 3 applied in part")
	}

	b.d.reloadMu.Lock()
	b.d.comps.ups.build = nil
	b.d.reloadMu.Unlock()
	push(t, cli, sharedTwo+"# fixed\n")
	a.eventually("saw both on revision 4", func() bool {
		rep = a.fleet()
		return rep.CurrentRevision == 4 && rep.Healthy() && len(rep.Nodes) == 2
	})
	if !b.hasRule("two") {
		t.Error("gw-b did not apply revision 4")
	}
}

// TestFleetStartsWithoutSharedPolicy: a gateway of a fleet without a shared
// policy allows nothing and is not ready, until one is pushed.
func TestFleetStartsWithoutSharedPolicy(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	dnsAddr := freeAddr(t)
	a := startGatewayDNS(t, c, "gw-a", dnsAddr)
	if n := len(a.d.Policy().Rules); n != 0 {
		t.Errorf("got %d rules before any shared revision, want 0", n)
	}
	// Its DNS firewall serves, without upstreams, and denies.
	cl := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	if r, _, err := cl.Exchange(new(dns.Msg).SetQuestion("one.example.", dns.TypeA), dnsAddr); err != nil || r.Rcode != dns.RcodeNameError {
		t.Errorf("one.example before any shared revision: %v %v, want NXDOMAIN", r, err)
	}
	if code, body := a.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no shared policy revision applied yet") {
		t.Errorf("/readyz before a shared revision: %d %q", code, body)
	}
	push(t, cli, sharedOne)
	a.eventually("applied revision 1", func() bool { return a.hasRule("one") })
	a.eventually("ready", func() bool { return a.d.ready() == nil })
}

// TestFleetLearnedAfterFirstGoodRevision: a gateway that starts while the
// shared revision in etcd does not apply runs on its local file alone,
// and the learned elements it loads from etcd have no rule to go to; when
// a good revision arrives, the elements it accepts are in the gateway's
// set by the time it reports ready, and those it does not accept stay
// out.
func TestFleetLearnedAfterFirstGoodRevision(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedBad)
	exp := fmt.Sprintf("%012d", time.Now().Add(5*time.Minute).Unix())
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
	defer cancel()
	// One batch of another gateway (internal/fleet/key.go's format).
	batch := "fqdngate-learned 1\n"
	for _, key := range []string{"one.example/192.0.2.80/one/", "two.example/192.0.2.81/two/"} {
		batch += key + " " + exp + "\n"
	}
	if _, err := cli.Put(ctx, fleetPrefix+"learned/gw-z/00000000000000010000000000000001", batch); err != nil {
		t.Fatal(err)
	}
	a := startGateway(t, c, "gw-a")
	holds := func(addr string) bool {
		for e := range a.d.comps.learned("") {
			if e.Addr.String() == addr {
				return true
			}
		}
		return false
	}
	if a.d.ready() == nil || len(a.d.Policy().Rules) != 0 {
		t.Fatalf("on a refused revision: ready %v, %d rules; want not ready, no rules", a.d.ready(), len(a.d.Policy().Rules))
	}
	if holds("192.0.2.80") {
		t.Fatal("an element from etcd is programmed with no rule in force")
	}

	push(t, cli, sharedOne)
	a.eventually("ready on revision 2", func() bool { return a.d.ready() == nil })
	if !holds("192.0.2.80") {
		t.Errorf("ready on the first good revision, but the element of its rule loaded at start is not programmed: %v", slices.Collect(a.d.comps.learned("")))
	}
	if holds("192.0.2.81") {
		t.Error("an element of a rule the revision does not have is programmed")
	}
}

// TestFleetStatusExpires: a gateway that dies without withdrawing its
// status (its connection to etcd gone, as with kill -9) is reported gone
// once its lease expires; one that stops cleanly, at once.
func TestFleetStatusExpires(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a, b := startGateway(t, c, "gw-a"), startGateway(t, c, "gw-b")
	a.eventually("saw both", func() bool { return len(a.fleet().Nodes) == 2 && a.fleet().Healthy() })
	b.d.fl.cli.Close() // gw-b loses etcd first: nothing revokes its lease
	b.stop()
	a.eventually("saw gw-b gone", func() bool { return stateOf(a.fleet(), "gw-b").State == cluster.StateGone })
	if stateOf(a.fleet(), "gw-a").State != cluster.StateOK {
		t.Error("gw-a is not ok")
	}
}

// TestFleetDegraded: with every etcd member down a gateway stays ready on
// what it has, /readyz says degraded and the metric shows it; when etcd
// returns it follows the shared policy again.
func TestFleetDegraded(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a := startGateway(t, c, "gw-a")
	for i := range 3 {
		c.Stop(i)
	}
	a.eventually("degraded", func() bool { return a.d.degraded() != nil })
	code, body := a.get("/readyz")
	if code != http.StatusOK || !strings.HasPrefix(body, "ready; degraded: etcd: ") {
		t.Errorf("/readyz with etcd down: %d %q", code, body)
	}
	if got := a.metric("fqdngate_fleet_status_degraded"); got != 1 {
		t.Errorf("fqdngate_fleet_status_degraded = %v, want 1", got)
	}
	if !a.hasRule("one") {
		t.Error("the policy in force was dropped with etcd down")
	}
	if code, _ := a.get("/v1/fleet"); code != http.StatusServiceUnavailable {
		t.Errorf("/v1/fleet with etcd down: %d, want 503", code)
	}
	for i := range 3 {
		c.Restart(i)
	}
	a.eventually("no longer degraded", func() bool { return a.d.degraded() == nil })
	push(t, cli, sharedTwo)
	a.eventually("applied revision 2 after etcd returned", func() bool { return a.hasRule("two") })
}

// metric returns the value of one series at the gateway's /metrics, or -1.
func (g *gateway) metric(series string) float64 {
	g.t.Helper()
	_, body := g.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// TestFleetLocalReload: a fleet gateway's local file still reloads,
// composed with the shared revision in force; a local file that takes a
// shared key is refused, positioned, and what is in force stays.
func TestFleetLocalReload(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a := startGateway(t, c, "gw-a")
	path := a.d.opts.PolicyPath
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	newLog := filepath.Join(t.TempDir(), "audit-2.log")
	changed := strings.Replace(string(orig), "log: {file: ", fmt.Sprintf("log: {file: %q}\n# was: ", newLog), 1)
	if err := os.WriteFile(path, []byte(changed), 0o644); err != nil {
		t.Fatal(err)
	}
	a.d.reload(context.Background(), "test", false)
	if p := a.d.Policy(); p.Log.File != newLog || p.SharedName != "shared revision 1" || !a.hasRule("one") {
		t.Fatalf("after a local reload: log.file %q, shared %q\n%s", p.Log.File, p.SharedName, a.log.String())
	}
	if err := os.WriteFile(path, []byte(changed+"rules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.d.reload(context.Background(), "test", false)
	if !a.hasRule("one") {
		t.Error("a refused local file dropped the shared rules")
	}
	if want := "rules is shared by the fleet"; !strings.Contains(a.log.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, a.log.String())
	}
	// Its status says why, and that it is still on the revision in force.
	a.eventually("reported the refused local file", func() bool {
		n := stateOf(a.fleet(), "gw-a")
		return strings.Contains(n.LastError, path+":") && strings.Contains(n.LastError, "rules is shared by the fleet") && n.State == cluster.StateOK
	})
}

// TestFleetStatusCountsLearned: the status key counts the addresses the
// gateway learned from the answers it gave.
func TestFleetStatusCountsLearned(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	up := dnstest.NewServer(t, dnstest.Zone(dnstest.A("one.example.", 300, "192.0.2.10"), dnstest.A("one.example.", 300, "192.0.2.11")))
	push(t, cli, fmt.Sprintf("dns: {upstreams: [%q]}\nrules:\n  - name: one\n    to: [one.example]\n", up.Addr.String()))
	dnsAddr := freeAddr(t)
	a := startGatewayDNS(t, c, "gw-a", dnsAddr)
	cl := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	r, _, err := cl.Exchange(new(dns.Msg).SetQuestion("one.example.", dns.TypeA), dnsAddr)
	if err != nil || len(r.Answer) != 2 {
		t.Fatalf("one.example: %v %v", r, err)
	}
	a.eventually("counted 2 learned addresses", func() bool { return stateOf(a.fleet(), "gw-a").Learned == 2 })
}

// TestFleetNoQuorum: with two members of three down, the one left has no
// leader: the gateway stays ready on what it has and says etcd is
// degraded, until a quorum is back.
func TestFleetNoQuorum(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a := startGateway(t, c, "gw-a")
	c.Stop(1)
	c.Stop(2)
	a.eventually("degraded", func() bool { return a.d.degraded() != nil })
	if err := a.d.ready(); err != nil {
		t.Errorf("not ready without a quorum: %v", err)
	}
	if !a.hasRule("one") {
		t.Error("the policy in force was dropped without a quorum")
	}
	c.Restart(1)
	c.Restart(2)
	a.eventually("no longer degraded", func() bool { return a.d.degraded() == nil })
	push(t, cli, sharedTwo)
	a.eventually("applied revision 2", func() bool { return a.hasRule("two") })
}

// TestFleetLeavesOnStop: a gateway that stops cleanly revokes the lease of
// its place among the fleet's live gateways before its etcd client
// closes, so the others stop waiting for it at once rather than when the
// lease expires.
func TestFleetLeavesOnStop(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	push(t, cli, sharedOne)
	a, b := startGateway(t, c, "gw-a"), startGateway(t, c, "gw-b")
	key := fleetPrefix + "nodes/gw-b"
	a.eventually("gw-b's live key", func() bool {
		resp, err := cli.Get(context.Background(), key)
		return err == nil && len(resp.Kvs) == 1
	})
	b.stop()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 0 {
		t.Errorf("%s still exists after gw-b stopped: its lease was left to expire", key)
	}
}
