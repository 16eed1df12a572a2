package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// fleet is the fleet topology with fqdngate on both gateways, sharing
// one policy and one learned state through etcd.
type fleet struct {
	net    *fleetNet
	etcd   *etcdCluster
	a, b   *gate
	client *client // group a, resolving through gateway A
}

// fleetShared is the shared half of the fleet's policy: clients of group
// a may reach every name under fleet.example.com on 443.
const fleetShared = `dns:
  upstreams: [%q]
  min_ttl: 1s
  max_ttl: 1h
  grace: 2s
  wildcard_budget: 100000 # 1,000 new names a run, from one client
sources:
  a: [192.0.2.10/32, "2001:db8:c::10/128"]
  b: [192.0.2.20/32, "2001:db8:c::20/128"]
rules:
  - name: fleet
    from: [a]
    to: ["**.fleet.example.com"]
    ports: [443]
`

// fleetOpts change a fleet from startFleet's defaults.
type fleetOpts struct {
	hold        string // peers or local
	holdTimeout string // cluster.hold_timeout; "" for the default
	shared      string // the first shared revision; "" for fleetShared
	// bListen and bFirewall are more keys for gateway B's listen and
	// firewall sections, ", key: value" each.
	bListen, bFirewall string
}

// startFleet starts a three-member etcd, pushes the shared policy and
// starts fqdngate on both gateways, waiting until both are ready.
func startFleet(t *testing.T, o fleetOpts) *fleet {
	t.Helper()
	n := newFleetNet(t)
	f := &fleet{net: n, etcd: startEtcd(t, n.etcd, 3)}
	f.a = newGate(t, n.a)
	f.b = newGate(t, n.b)
	f.a.writePolicy(f.local(f.a, "gw-a", fleetA4, o, "", ""))
	f.b.writePolicy(f.local(f.b, "gw-b", fleetB4, o, o.bListen, o.bFirewall))
	if o.shared == "" {
		o.shared = fleetShared
	}
	f.push(o.shared)
	f.a.start()
	f.b.start()
	for _, g := range []*gate{f.a, f.b} {
		waitReadyz(t, g, "ready", func(s string) bool { return s == "ready\n" })
		// A gateway waits only for the gateways it has seen join.
		g.waitMetric("fqdngate_fleet_live_nodes", 1)
	}
	f.client = &client{ns: n.client, src4: srcA, src6: srcA6, dns: fleetDNS, roots: n.inet.ca.Pool()}
	// Every name under fleet.example.com has one AAAA address of its own,
	// so that every cycle needs an element no gateway had before.
	n.inet.auth.SetDynamic(func(name string, qtype uint16) []dns.RR {
		label, ok := strings.CutSuffix(name, ".fleet.example.com")
		if !ok || qtype != dns.TypeAAAA {
			return nil
		}
		var i int
		if _, err := fmt.Sscanf(label, "n%d", &i); err != nil {
			return nil
		}
		return []dns.RR{dnstest.AAAA(name, 300, fleetAddr(i).String())}
	})
	return f
}

// push stores shared (with the authority's address for %q) as the
// fleet's newest shared policy revision.
func (f *fleet) push(shared string) {
	f.etcd.t.Helper()
	path := filepath.Join(f.etcd.t.TempDir(), "shared.yaml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(shared, authorityAddr)), 0o644); err != nil {
		f.etcd.t.Fatal(err)
	}
	f.cli(f.a, "policy", "push", "-c", f.a.policy, path)
}

// fleetAddr is the address of name n<i>.fleet.example.com.
func fleetAddr(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:100::f:%x", i))
}

// local is gateway g's local half: its listener, its own table and state
// file, and how it reaches etcd.
func (f *fleet) local(g *gate, node, dnsAddr string, o fleetOpts, listen, firewall string) string {
	cert, key := f.etcd.CA.LeafFiles(f.etcd.t, node)
	timeout := ""
	if o.holdTimeout != "" {
		timeout = "\n  hold_timeout: " + o.holdTimeout
	}
	return fmt.Sprintf(`listen: {dns: %q, admin: "127.0.0.1:0"%s}
firewall: {backend: nftables, hook: forward, table: %s, state_file: %s%s}
cluster:
  etcd:
    endpoints: [%s]
    tls: {ca_file: %s, cert_file: %s, key_file: %s}
  node: %s
  hold: %s%s
`, dnsAddr+":53", listen, g.table, g.stateFile(), firewall, strings.Join(f.etcd.Endpoints(), ", "), f.etcd.CAFile, cert, key, node, o.hold, timeout)
}

// cli runs an fqdngate command in g's namespace and returns its output;
// it fails the test unless the command succeeds.
func (f *fleet) cli(g *gate, args ...string) string {
	f.etcd.t.Helper()
	out, code := f.cliCode(g, args...)
	if code != 0 {
		f.etcd.t.Fatalf("fqdngate %s: exit status %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// cliCode runs an fqdngate command in g's namespace and returns its
// output and exit status.
func (f *fleet) cliCode(g *gate, args ...string) (string, int) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", g.ns.Name, binary}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		f.etcd.t.Fatalf("fqdngate %s: %v", strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// fleetStatus polls `fqdngate fleet status` (run on gateway g) until ok
// accepts its output and exit status, for up to 30 seconds.
func (f *fleet) fleetStatus(g *gate, want string, ok func(out string, code int) bool) {
	f.etcd.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code := f.cliCode(g, "fleet", "status", "-c", g.policy)
		if ok(out, code) {
			return
		}
		if time.Now().After(deadline) {
			f.etcd.t.Fatalf("fleet status: want %s; got exit status %d:\n%s", want, code, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// reaches reports the first of the addresses of names first..first+count-1
// that a connection through gateway B cannot reach, or nil.
func (f *fleet) reaches(first, count int) error {
	for i := first; i < first+count; i++ {
		dst := netip.AddrPortFrom(fleetAddr(i), allowedPort)
		conn, err := f.client.ns.Dial("tcp", srcA6, dst.String(), 700*time.Millisecond)
		if err != nil {
			return fmt.Errorf("%s: %v", dst, err)
		}
		conn.Close()
	}
	return nil
}

// learns waits until gateway g's /v1/learned holds the address of every
// name first..first+count-1.
func learns(t *testing.T, g *gate, first, count int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		learned, err := g.get("/v1/learned?limit=10000")
		missing := -1
		for i := first; err == nil && i < first+count; i++ {
			if !strings.Contains(learned, `"`+fleetAddr(i).String()+`"`) {
				missing = i
				break
			}
		}
		if err == nil && missing < 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway %s lacks %s (%v)", g.ns.Name, fleetAddr(missing), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cycles resolves count fresh names through gateway A and connects to
// each answer's address through gateway B at once, with a connect
// timeout below the first SYN retransmission (1s): a SYN that B drops
// fails the cycle. It returns the failures, stopping after maxFail.
func (f *fleet) cycles(first, count, maxFail int) []string {
	var failures []string
	for i := first; i < first+count && len(failures) < maxFail; i++ {
		name := fmt.Sprintf("n%d.fleet.example.com", i)
		addrs, _, err := f.client.lookup(name, dns.TypeAAAA)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		dst := netip.AddrPortFrom(addrs[0], allowedPort)
		conn, err := f.client.ns.Dial("tcp", srcA6, dst.String(), 700*time.Millisecond)
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s at %s: %v", name, dst, err))
			continue
		}
		conn.Close()
	}
	return failures
}

// TestFleetHoldPeers (issue 12): the client asks gateway A and connects
// through gateway B at once. With hold: peers A releases each answer only
// once B enforces it: 1,000 resolve-then-connect cycles on fresh names,
// not one dropped.
func TestFleetHoldPeers(t *testing.T) {
	f := startFleet(t, fleetOpts{hold: "peers"})
	if failures := f.cycles(0, 1000, 1000); len(failures) > 0 {
		// A hold that timed out (hold_timeout, 250ms) released its answer
		// before B had it: on a loaded machine that, not the hold, may be
		// why.
		t.Errorf("%d of 1000 cycles failed with hold: peers (holds timed out at A: %v); first: %s", len(failures),
			f.a.metric(`fqdngate_fleet_holds_total{result="timeout_release"}`), strings.Join(failures[:min(5, len(failures))], "; "))
	}
	// B was never asked: what it enforces came from A's answers.
	learns(t, f.b, 0, 1000)
}

// TestFleetHoldLocalDrops is the same run with hold: local, where A
// releases its answers before B has them: the connections that race the
// replication are dropped, which proves the run above can fail. B still
// gets every address, a moment later.
func TestFleetHoldLocalDrops(t *testing.T) {
	f := startFleet(t, fleetOpts{hold: "local"})
	failures := f.cycles(0, 300, 5)
	if len(failures) == 0 {
		t.Fatal("300 cycles with hold: local all succeeded; the race the hold closes did not show, so the hold: peers test proves nothing")
	}
	t.Logf("%d cycles failed with hold: local, as expected; first: %s", len(failures), failures[0])
	learns(t, f.b, 0, 5)
}

// TestFleetEtcdFailures (issue 12): with one etcd follower of three
// stopped nothing changes; with the leader stopped, the fleet holds again
// once a new one is elected. With all of them stopped both gateways keep enforcing
// what they have and say they are degraded; a new name is still
// answered, at once rather than after a hold timeout; once etcd is back
// they resync without dropping a live element, and what A learned
// meanwhile reaches B.
func TestFleetEtcdFailures(t *testing.T) {
	// A hold timeout no test waits out: an answer that waited for it
	// would take longer than the whole outage phase may.
	f := startFleet(t, fleetOpts{hold: "peers", holdTimeout: "5s"})
	if failures := f.cycles(0, 50, 5); len(failures) > 0 {
		t.Fatalf("before any failure: %s", strings.Join(failures, "; "))
	}

	// A follower stopped: nothing changes.
	leader := f.etcd.Leader()
	follower := (leader + 1) % 3
	f.etcd.Stop(follower)
	if failures := f.cycles(50, 50, 5); len(failures) > 0 {
		t.Errorf("one etcd follower of three stopped: %s\ngateway A:\n%s", strings.Join(failures, "; "), f.a.logs())
	}
	f.etcd.Restart(follower)
	// The leader stopped: while the others elect a new one (about a
	// second) the gateways may hold locally; then the fleet holds again.
	f.etcd.Stop(leader)
	f.etcd.waitHealthy(follower)
	for _, g := range []*gate{f.a, f.b} {
		waitReadyz(t, g, "ready (not degraded) after an election", func(s string) bool { return s == "ready\n" })
	}
	if failures := f.cycles(100, 30, 5); len(failures) > 0 {
		t.Errorf("after the etcd leader was replaced: %s", strings.Join(failures, "; "))
	}
	f.etcd.Restart(leader)

	for i := range 3 {
		f.etcd.Stop(i)
	}
	for _, g := range []*gate{f.a, f.b} {
		waitReadyz(t, g, "ready; degraded: etcd", func(s string) bool { return strings.HasPrefix(s, "ready; degraded: etcd") })
	}
	if err := f.reaches(0, 130); err != nil {
		t.Errorf("with etcd down, an address learned before is no longer enforced on B: %v", err)
	}
	start := time.Now()
	for i := 130; i < 150; i++ {
		name := fmt.Sprintf("n%d.fleet.example.com", i)
		if _, _, err := f.client.lookup(name, dns.TypeAAAA); err != nil {
			t.Errorf("with etcd down: %v", err)
		}
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("20 answers with etcd down took %v: each waited for the hold timeout (5s) instead of holding locally at once", took)
	}

	for i := range 3 {
		f.etcd.StartAgain(i)
	}
	for i := range 3 {
		f.etcd.waitHealthy(i)
	}
	for _, g := range []*gate{f.a, f.b} {
		waitReadyz(t, g, "ready (not degraded)", func(s string) bool { return s == "ready\n" })
	}
	learns(t, f.b, 130, 20)
	if err := f.reaches(0, 150); err != nil {
		t.Errorf("after etcd came back: %v", err)
	}
	if failures := f.cycles(150, 50, 5); len(failures) > 0 {
		t.Errorf("after etcd came back: %s", strings.Join(failures, "; "))
	}
}

// TestFleetKillAndRestart (issue 12): gateway A killed with SIGKILL: B
// carries every address A answered, and stops waiting for A once its
// lease expires (fleet status says A is gone and exits non-zero); A comes
// back with the fleet's whole learned set, including what B learned while
// A was away, before it reports ready.
func TestFleetKillAndRestart(t *testing.T) {
	f := startFleet(t, fleetOpts{hold: "peers"})
	if failures := f.cycles(0, 100, 5); len(failures) > 0 {
		t.Fatalf("before the kill: %s", strings.Join(failures, "; "))
	}
	f.a.kill9()
	if err := f.reaches(0, 100); err != nil {
		t.Errorf("after A was killed, B dropped what A had answered: %v", err)
	}
	f.fleetStatus(f.b, "gw-a gone, exit status 1", func(out string, code int) bool {
		return code == 1 && regexp.MustCompile(`(?m)^gw-a +gone `).MatchString(out)
	})
	// B answers alone now, without waiting for A.
	f.client.dns = fleetB4 + ":53"
	if failures := f.cycles(100, 50, 5); len(failures) > 0 {
		t.Errorf("B alone: %s", strings.Join(failures, "; "))
	}

	f.a.start()
	waitReadyz(t, f.a, "ready", func(s string) bool { return s == "ready\n" })
	learns(t, f.a, 0, 150)
	f.fleetStatus(f.a, "every gateway ok, exit status 0", func(out string, code int) bool { return code == 0 })
	f.client.dns = fleetDNS
	if failures := f.cycles(150, 50, 5); len(failures) > 0 {
		t.Errorf("after A came back: %s", strings.Join(failures, "; "))
	}
}

// fleetShared4 is fleetShared with IPv4 sources only; fleetShared6 adds
// group a's IPv6 address, which gateway B, with a transparent listener on
// an IPv4 address, cannot steer.
const (
	fleetShared4 = `dns:
  upstreams: [%q]
sources:
  a: [192.0.2.10/32]
rules:
  - name: fleet
    from: [a]
    to: ["**.fleet.example.com"]
    ports: [443]
`
	fleetShared6 = `dns:
  upstreams: [%q]
sources:
  a: [192.0.2.10/32, "2001:db8:c::10/128"]
rules:
  - name: fleet
    from: [a]
    to: ["**.fleet.example.com"]
    ports: [443]
`
)

// TestFleetBadRevision (issue 12): a revision that does not apply on one
// gateway: that gateway keeps the previous one and fleet status says so
// (exit status 1); the other applies it.
func TestFleetBadRevision(t *testing.T) {
	f := startFleet(t, fleetOpts{
		hold: "peers", shared: fleetShared4,
		bListen: `, transparent: "192.0.2.2:3129"`, bFirewall: ", transparent_ports: [8443]",
	})
	f.push(fleetShared6)
	f.fleetStatus(f.a, "gw-a ok on 2, gw-b rejected on 1, exit status 1", func(out string, code int) bool {
		return code == 1 &&
			regexp.MustCompile(`(?m)^gw-a +ok +2 `).MatchString(out) &&
			regexp.MustCompile(`(?m)^gw-b +rejected +1 .*IPv6`).MatchString(out)
	})
	for g, want := range map[*gate]string{f.a: `"shared_policy": "shared revision 2"`, f.b: `"shared_policy": "shared revision 1"`} {
		if got, err := g.get("/v1/policy"); err != nil || !strings.Contains(got, want) {
			t.Errorf("%s /v1/policy: want %s; got %v\n%s", g.ns.Name, want, err, got)
		}
	}
}

// fleetSharedExtra6 adds a rule for **.extra.example.com to fleetShared6,
// which gateway B refuses (an IPv6 source); fleetSharedExtra4 is the same
// rule with IPv4 sources only, which B applies.
const (
	extraRule = `  - name: extra
    from: [a]
    to: ["**.extra.example.com"]
    ports: [443]
`
	fleetSharedExtra6 = fleetShared6 + extraRule
	fleetSharedExtra4 = fleetShared4 + extraRule
)

// TestFleetRevisionBringsLearnedSet (issue 12): a gateway that applies a
// revision adding a rule programs, in the same reload, what the fleet
// learned for that rule while it could not apply it. Gateway B refuses
// revision 2 (rule extra, and an IPv6 source its transparent listener
// cannot steer) while A answers names of rule extra; B ignores those
// elements, and drops a connection to their address. Revision 3 has rule
// extra too, and B applies it: without any new answer, B lets the
// connection through.
func TestFleetRevisionBringsLearnedSet(t *testing.T) {
	f := startFleet(t, fleetOpts{
		hold: "peers", shared: fleetShared4,
		bListen: `, transparent: "192.0.2.2:3129"`, bFirewall: ", transparent_ports: [8443]",
	})
	const name = "www.extra.example.com"
	dst := ap("203.0.113.77", allowedPort)
	f.net.inet.auth.Set(name, dnstest.A(name, 300, dst.Addr().String()))

	f.push(fleetSharedExtra6)
	f.fleetStatus(f.a, "gw-a ok on 2, gw-b rejected on 1", func(out string, code int) bool {
		return regexp.MustCompile(`(?m)^gw-a +ok +2 `).MatchString(out) && regexp.MustCompile(`(?m)^gw-b +rejected +1 `).MatchString(out)
	})
	if _, _, err := f.client.lookup(name, dns.TypeA); err != nil {
		t.Fatalf("resolving %s through A on revision 2: %v", name, err)
	}
	learns4 := func(g *gate) bool {
		learned, err := g.get("/v1/learned?limit=10000")
		return err == nil && strings.Contains(learned, `"`+dst.Addr().String()+`"`)
	}
	if learns4(f.b) {
		t.Fatal("gateway B enforces an element of a rule it does not have")
	}
	if err := f.client.dropped(dst); err != nil {
		t.Fatalf("through B on revision 1: %v", err)
	}
	seen := f.net.inet.auth.Seen(name, dns.TypeA)

	f.push(fleetSharedExtra4)
	f.fleetStatus(f.a, "both ok on 3", func(out string, code int) bool { return code == 0 && strings.Contains(out, "revision: 3") })
	// fleet status says ok once B's reload has returned, learned set
	// included: no waiting here.
	if !learns4(f.b) {
		learned, _ := f.b.get("/v1/learned?limit=10000")
		t.Errorf("gateway B on revision 3 lacks %s, learned by A for rule extra before:\n%s", dst.Addr(), learned)
	}
	conn, err := f.client.ns.Dial("tcp", srcA, dst.String(), reachWait)
	if err != nil {
		t.Errorf("through B on revision 3, without a new answer: %v", err)
	} else {
		conn.Close()
	}
	if n := f.net.inet.auth.Seen(name, dns.TypeA); n != seen {
		t.Errorf("the authority was asked %d more times; the test wants no new answer", n-seen)
	}
}
