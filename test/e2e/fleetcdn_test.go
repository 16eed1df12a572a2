package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// The CDN rotation scenario across the gateway pair: a few names whose
// authority rotates them through a pool of addresses on every answer,
// with a TTL of one second, as a CDN's load balancing does.
const (
	cdnNames = 4
	// cdnPool addresses per name: an address comes back after cdnPool
	// answers for its name, cdnNames*cdnPool cycles, a few seconds.
	cdnPool = 64
	cdnTTL  = 1
	// srcViaA6 is the client's second address in group a: its
	// connections leave through gateway A (srcA6's through B).
	srcViaA6 = "2001:db8:c::11"
)

// fleetSharedCDN lets group a (both the client's IPv6 addresses) reach
// the CDN names on 443. The cache is off so that every query reaches the
// authority and every answer rotates; learned addresses live min_ttl
// (1s, the TTL) plus grace (2s) past their last answer.
var fleetSharedCDN = `dns:
  upstreams: [%q]
  min_ttl: 1s
  max_ttl: 1h
  grace: 2s
  cache: false
sources:
  a: [192.0.2.10/32, "2001:db8:c::10/128", "` + srcViaA6 + `/128"]
rules:
  - name: cdn
    from: [a]
    to: [` + strings.Join(cdnNameList(), ", ") + `]
    ports: [443]
`

func cdnName(k int) string { return fmt.Sprintf("cdn%d.example.com", k) }

func cdnNameList() []string {
	var out []string
	for k := range cdnNames {
		out = append(out, cdnName(k))
	}
	return out
}

// rotatingAddr is address i (modulo the pool) of name k.
func rotatingAddr(k, i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:db8:100::cd%d:%x", k, i%cdnPool))
}

// startCDN starts the fleet for the rotation: its authority answers
// answer n for cdn<k> with addresses n and n+1 of the name's pool (so each
// answer brings one address the last did not have, and drops one), and
// the client gets a second path, through gateway A.
func startCDN(t *testing.T, hold string) *fleet {
	t.Helper()
	f := startFleet(t, fleetOpts{hold: hold, shared: fleetSharedCDN})
	var (
		mu      sync.Mutex
		answers = map[string]int{}
	)
	f.net.inet.auth.SetDynamic(func(name string, qtype uint16) []dns.RR {
		var k int
		if _, err := fmt.Sscanf(name, "cdn%d.example.com", &k); err != nil || k < 0 || k >= cdnNames || name != cdnName(k) {
			return nil
		}
		if qtype != dns.TypeAAAA {
			return []dns.RR{} // the name exists, without A records
		}
		mu.Lock()
		n := answers[name]
		answers[name]++
		mu.Unlock()
		return []dns.RR{dnstest.AAAA(name, cdnTTL, rotatingAddr(k, n).String()), dnstest.AAAA(name, cdnTTL, rotatingAddr(k, n+1).String())}
	})

	// Alternating paths: the client leaves through B from srcA6 (the
	// topology's default route) and through A from srcViaA6 (a source
	// rule). Each path must be symmetric: a gateway forwards a reply only
	// for a connection its own conntrack saw start, and B would treat the
	// SYN-ACK of a connection that left through A as a new flow from the
	// internet. So the internet routes srcViaA6 back through A; srcA6
	// keeps its way back through B.
	n := f.net
	n.client.Addr("c0", srcViaA6+"/64")
	n.client.IP("-6", "rule", "add", "from", srcViaA6, "lookup", "100", "priority", "100")
	n.client.IP("-6", "route", "add", "default", "via", fleetA6, "dev", "c0", "table", "100")
	n.inet.ns.IP("-6", "route", "add", srcViaA6+"/128", "via", fleetAWan6)
	return f
}

// cdnCycles runs count resolve-then-connect cycles from cycle first: cycle
// i asks gateway A for cdn<i mod cdnNames> and connects at once to both
// addresses of the answer, the newer one first, one through each gateway,
// switching gateways every cycle, with a connect timeout below the first
// SYN retransmission (1s). After every 50 cycles it calls between (if not
// nil), which reports a failure too. It returns the failures, stopping
// after maxFail.
func (f *fleet) cdnCycles(first, count, maxFail int, between func() error) []string {
	var failures []string
	paths := [2]struct{ via, src string }{{"B", srcA6}, {"A", srcViaA6}}
	for i := first; i < first+count && len(failures) < maxFail; i++ {
		name := cdnName(i % cdnNames)
		addrs, _, err := f.client.lookup(name, dns.TypeAAAA)
		if err != nil {
			failures = append(failures, err.Error())
			continue
		}
		if len(addrs) != 2 {
			failures = append(failures, fmt.Sprintf("%s: answer with %v, want two addresses", name, addrs))
			continue
		}
		for j, dst := range []netip.Addr{addrs[1], addrs[0]} {
			p := paths[(i+j)%2]
			conn, err := f.client.ns.Dial("tcp", p.src, netip.AddrPortFrom(dst, allowedPort).String(), 700*time.Millisecond)
			if err != nil {
				failures = append(failures, fmt.Sprintf("cycle %d: %s at %s through %s: %v", i, name, dst, p.via, err))
				continue
			}
			conn.Close()
		}
		if between != nil && (i-first+1)%50 == 0 {
			if err := between(); err != nil {
				failures = append(failures, fmt.Sprintf("after cycle %d: %v", i, err))
			}
		}
	}
	return failures
}

// waitUnlearned waits until gateway g's /v1/learned holds none of addrs.
func waitUnlearned(t *testing.T, g *gate, addrs []netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		learned, err := g.get("/v1/learned?limit=10000")
		var still netip.Addr
		for _, a := range addrs {
			if err == nil && strings.Contains(learned, `"`+a.String()+`"`) {
				still = a
				break
			}
		}
		if err == nil && !still.IsValid() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway %s still enforces %s 30s after its last answer (%v)", g.ns.Name, still, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// allCDNAddrs is every address of every CDN name.
func allCDNAddrs() []netip.Addr {
	var out []netip.Addr
	for k := range cdnNames {
		for i := range cdnPool {
			out = append(out, rotatingAddr(k, i))
		}
	}
	return out
}

// TestFleetCDNRotation (issue 12): CDN rotation across the pair with
// alternating paths. The client resolves through gateway A names whose
// addresses rotate on every answer, and connects at once to both
// addresses of each answer, one through B and one through A. With hold:
// peers not one of 600 cycles fails: 400 while addresses rotate through
// their pools (some coming back while still enforced, some after they
// expired), then, once every address has expired on both gateways, 200
// more that learn each address anew. A connection opened through B before
// the rotations keeps passing data throughout, and after its address left
// the answers and expired on both gateways, while a new connection to
// that address is dropped.
func TestFleetCDNRotation(t *testing.T) {
	f := startCDN(t, "peers")

	addrs, _, err := f.client.lookup(cdnName(0), dns.TypeAAAA)
	if err != nil {
		t.Fatal(err)
	}
	old := netip.AddrPortFrom(addrs[0], allowedPort)
	long, err := f.client.open(cdnName(0), old, reachWait) // from srcA6: through B
	if err != nil {
		t.Fatalf("opening the long-lived connection through B: %v", err)
	}
	defer long.Close()
	stillPasses := func() error {
		body, err := long.get(reachWait)
		if err != nil {
			return fmt.Errorf("the connection to %s opened through B before the rotations: %v", old, err)
		}
		if want := "served " + old.String(); body != want {
			return fmt.Errorf("the connection to %s opened through B before the rotations: got %q, want %q", old, body, want)
		}
		return nil
	}
	if err := stillPasses(); err != nil {
		t.Fatal(err)
	}

	if failures := f.cdnCycles(0, 400, 20, stillPasses); len(failures) > 0 {
		t.Errorf("%d of 400 rotating cycles failed with hold: peers; first: %s", len(failures), strings.Join(failures[:min(5, len(failures))], "; "))
	}

	// No answers now: every address expires, on both gateways.
	for _, g := range []*gate{f.a, f.b} {
		waitUnlearned(t, g, allCDNAddrs())
	}
	if err := f.client.dropped(old); err != nil {
		t.Errorf("after %s expired, a new connection to it through B: %v", old.Addr(), err)
	}
	if err := stillPasses(); err != nil {
		t.Errorf("after its address expired: %v", err)
	}

	// Every address is learned anew, after its expiry.
	if failures := f.cdnCycles(400, 200, 20, stillPasses); len(failures) > 0 {
		t.Errorf("%d of 200 cycles failed after every address had expired; first: %s", len(failures), strings.Join(failures[:min(5, len(failures))], "; "))
	}
}

// TestFleetCDNRotationHoldLocalDrops is the same rotation with hold:
// local: A releases each answer before B enforces its new address, and
// the connections through B that race the replication are dropped, which
// proves the run above can fail.
func TestFleetCDNRotationHoldLocalDrops(t *testing.T) {
	f := startCDN(t, "local")
	failures := f.cdnCycles(0, 400, 5, nil)
	if len(failures) == 0 {
		t.Fatal("400 rotating cycles with hold: local all succeeded; the race the hold closes did not show, so TestFleetCDNRotation proves nothing")
	}
	for _, fl := range failures {
		if !strings.Contains(fl, "through B") {
			t.Errorf("with hold: local only connections through B may fail; got: %s", fl)
		}
	}
	t.Logf("%d cycles failed with hold: local, as expected; first: %s", len(failures), failures[0])
}
