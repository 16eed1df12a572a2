package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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

// startFleet starts a three-member etcd, pushes the shared policy and
// starts fqdngate on both gateways with hold, waiting until both are
// ready.
func startFleet(t *testing.T, hold string) *fleet {
	t.Helper()
	n := newFleetNet(t)
	f := &fleet{net: n, etcd: startEtcd(t, n.etcd, 3)}
	f.a = newGate(t, n.a)
	f.b = newGate(t, n.b)
	f.a.writePolicy(f.local(f.a, "gw-a", fleetA4, hold))
	f.b.writePolicy(f.local(f.b, "gw-b", fleetB4, hold))
	shared := filepath.Join(t.TempDir(), "shared.yaml")
	if err := os.WriteFile(shared, []byte(fmt.Sprintf(fleetShared, authorityAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.cli(f.a, "policy", "push", "-c", f.a.policy, shared)
	f.a.start()
	f.b.start()
	for _, g := range []*gate{f.a, f.b} {
		waitReadyz(t, g, "ready", func(s string) bool { return s == "ready\n" })
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

// fleetAddr is the address of name n<i>.fleet.example.com.
func fleetAddr(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:100::f:%x", i))
}

// local is gateway g's local half: its listener, its own table and state
// file, and how it reaches etcd.
func (f *fleet) local(g *gate, node, dnsAddr, hold string) string {
	cert, key := f.etcd.CA.LeafFiles(f.etcd.t, node)
	return fmt.Sprintf(`listen: {dns: %q, admin: "127.0.0.1:0"}
firewall:
  backend: nftables
  hook: forward
  table: %s
  state_file: %s
cluster:
  etcd:
    endpoints: [%s]
    tls: {ca_file: %s, cert_file: %s, key_file: %s}
  node: %s
  hold: %s
`, dnsAddr+":53", g.table, g.stateFile(), strings.Join(f.etcd.Endpoints(), ", "), f.etcd.CAFile, cert, key, node, hold)
}

// cli runs an fqdngate command in g's namespace and returns its output.
func (f *fleet) cli(g *gate, args ...string) string {
	f.etcd.t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", g.ns.Name, binary}, args...)...).CombinedOutput()
	if err != nil {
		f.etcd.t.Fatalf("fqdngate %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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
	f := startFleet(t, "peers")
	if failures := f.cycles(0, 1000, 1000); len(failures) > 0 {
		t.Errorf("%d of 1000 cycles failed with hold: peers; first: %s", len(failures), strings.Join(failures[:min(5, len(failures))], "; "))
	}
	// B was never asked: what it enforces came from A's answers.
	if learned, err := f.b.get("/v1/learned"); err != nil || !strings.Contains(learned, fleetAddr(999).String()) {
		t.Errorf("gateway B's /v1/learned lacks %s (%v)", fleetAddr(999), err)
	}
}

// TestFleetHoldLocalDrops is the same run with hold: local, where A
// releases its answers before B has them: the connections that race the
// replication are dropped, which proves the run above can fail. B still
// gets every address, a moment later.
func TestFleetHoldLocalDrops(t *testing.T) {
	f := startFleet(t, "local")
	failures := f.cycles(0, 300, 5)
	if len(failures) == 0 {
		t.Fatal("300 cycles with hold: local all succeeded; the race the hold closes did not show, so the hold: peers test proves nothing")
	}
	t.Logf("%d cycles failed with hold: local, as expected; first: %s", len(failures), failures[0])
	deadline := time.Now().Add(10 * time.Second)
	for {
		learned, err := f.b.get("/v1/learned")
		if err == nil && strings.Contains(learned, fleetAddr(0).String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway B never learned %s (%v)", fleetAddr(0), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
