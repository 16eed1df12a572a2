package nft

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// Timeouts for dials: an expected drop costs dropWait, so keep it short.
const (
	dropWait  = 300 * time.Millisecond
	reachWait = 2 * time.Second
)

// Addresses of the forward topology:
//
//	client ns ── 198.51.100.0/24, 2001:db8:1::/64 ── gateway ns (fqdngate) ── 192.0.2.0/24, 2001:db8:2::/64 ── internet ns
//
// The internet ns also holds 203.0.113.5 and routes everything back via
// the gateway. Clients use .10 (group payments) and .11 (group others).
const (
	srcPayments = "198.51.100.10"
	srcOthers   = "198.51.100.11"
	srcPay6     = "2001:db8:1::10"
	srvA        = "192.0.2.2"
	srvB        = "192.0.2.3"
	srvC        = "192.0.2.4"
	srvCIDR     = "203.0.113.5"
	srvA6       = "2001:db8:2::2"
)

var serverPorts = []string{"443", "8080", "5432"}

type forwardNet struct {
	client, gw, inet *netns.NS
}

func newForwardNet(t *testing.T) *forwardNet {
	t.Helper()
	n := &forwardNet{client: netns.New(t), gw: netns.New(t), inet: netns.New(t)}
	netns.Veth(t, n.client, "c0", n.gw, "g0")
	netns.Veth(t, n.gw, "g1", n.inet, "i0")
	for _, a := range []string{srcPayments + "/24", srcOthers + "/24", srcPay6 + "/64"} {
		n.client.Addr("c0", a)
	}
	n.client.Route("default", "198.51.100.1")
	n.client.Route("default", "2001:db8:1::1")
	n.gw.Addr("g0", "198.51.100.1/24")
	n.gw.Addr("g0", "2001:db8:1::1/64")
	n.gw.Addr("g1", "192.0.2.1/24")
	n.gw.Addr("g1", "2001:db8:2::1/64")
	n.gw.Route("203.0.113.0/24", srvA)
	n.gw.Forwarding()
	for _, a := range []string{srvA + "/24", srvB + "/24", srvC + "/24", srvCIDR + "/24", srvA6 + "/64"} {
		n.inet.Addr("i0", a)
	}
	n.inet.Route("default", "192.0.2.1")
	n.inet.Route("default", "2001:db8:2::1")
	for _, port := range serverPorts {
		serve(t, n.inet.Listen("tcp", "[::]:"+port))
	}
	return n
}

// serve answers each connection with "ok" and then echoes lines, so tests
// can tell a connection still works. It stops when the test ends.
func serve(t *testing.T, ln net.Listener) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fmt.Fprintln(c, "ok")
				s := bufio.NewScanner(c)
				for s.Scan() {
					fmt.Fprintln(c, s.Text())
				}
			}()
		}
	}()
}

// dial connects from src to dst:port in ns and reads the banner.
func dial(ns *netns.NS, src, dst, port string, wait time.Duration) (net.Conn, error) {
	c, err := ns.Dial("tcp", src, net.JoinHostPort(dst, port), wait)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ok\n" {
		c.Close()
		return nil, fmt.Errorf("reading banner: %q, %v", line, err)
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// reachable reports whether src reaches dst:port. Expected successes get a
// generous timeout; drops time out after dropWait, so call it with the
// expectation.
func reachable(ns *netns.NS, src, dst, port string, want bool) bool {
	wait := dropWait
	if want {
		wait = reachWait
	}
	c, err := dial(ns, src, dst, port, wait)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

type reach struct {
	src, dst, port string
	want           bool
}

func checkReach(t *testing.T, ns *netns.NS, cases []reach) {
	t.Helper()
	var wg sync.WaitGroup
	got := make([]bool, len(cases))
	for i, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = reachable(ns, c.src, c.dst, c.port, c.want)
		}()
	}
	wg.Wait()
	for i, c := range cases {
		if got[i] != c.want {
			t.Errorf("%s → %s port %s: reachable %v, want %v", c.src, c.dst, c.port, got[i], c.want)
		}
	}
}

const forwardPolicy = `
mode: enforce
firewall: {backend: nftables, hook: forward, table: fqdngate}
sources:
  payments: [198.51.100.10/32, "2001:db8:1::10/128"]
  others: [198.51.100.11/32]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
    ports: [443]
  - name: web
    from: [others]
    to: [www.example]
    ports: [443, 8080]
  - name: partner-db
    from: [payments, others]
    to: [203.0.113.0/24]
    ports: [5432]
`

// startBackend makes a backend in ns, applies p and runs it until the test
// ends.
func startBackend(t *testing.T, ns *netns.NS, cfg Config, p *policy.Policy) *Backend {
	t.Helper()
	if cfg.Table == "" {
		cfg.Table = "fqdngate"
	}
	cfg.NetNSFd = ns.Fd()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if p != nil {
		if err := b.Apply(context.Background(), p); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		b.Close()
	})
	return b
}

func publish(t *testing.T, b *Backend, rule, group, addr string, ttl time.Duration) {
	t.Helper()
	e := learn.Entry{Name: "x.example", Rule: rule, Group: group, Addr: netip.MustParseAddr(addr), Expires: time.Now().Add(ttl)}
	if err := b.Publish(context.Background(), []learn.Entry{e}); err != nil {
		t.Fatalf("Publish %s for %s/%s: %v", addr, rule, group, err)
	}
}

// nftJSON lists the table with nft, for assertions on what the kernel holds.
func nftJSON(t *testing.T, ns *netns.NS, table string) []map[string]json.RawMessage {
	t.Helper()
	out := ns.MustExec("nft", "-j", "list", "table", "inet", table)
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("decoding nft -j output: %v\n%s", err, out)
	}
	return doc.Nftables
}

// dropCount sums the packets counted by the default-deny rule.
func dropCount(t *testing.T, ns *netns.NS) int {
	t.Helper()
	out := ns.MustExec("nft", "list", "chain", "inet", "fqdngate", enforceChain)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"default deny"`) {
			var pk, by int
			i := strings.Index(line, "counter packets ")
			if i < 0 {
				break
			}
			fmt.Sscanf(line[i:], "counter packets %d bytes %d", &pk, &by)
			return pk
		}
	}
	t.Fatalf("no default deny counter in:\n%s", out)
	return 0
}

func TestForwardEnforce(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)

	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	publish(t, b, "bank-api", "payments", srvA6, time.Minute)
	publish(t, b, "web", "others", srvB, time.Minute)

	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true},   // learned, on the rule's port
		{srcPayments, srvA, "8080", false}, // learned, other port
		{srcPay6, srvA6, "443", true},      // learned over IPv6
		{srcPay6, srvA6, "8080", false},
		{srcPayments, srvC, "443", false},    // never learned
		{srcOthers, srvA, "443", false},      // learned for payments only: group isolation
		{srcOthers, srvB, "443", true},       // learned for others
		{srcPayments, srvB, "443", false},    // ...and not for payments
		{srcOthers, srvB, "8080", true},      // others' rule has 8080
		{srcPayments, srvCIDR, "5432", true}, // CIDR target
		{srcOthers, srvCIDR, "5432", true},
		{srcPayments, srvCIDR, "443", false},
	})
	if got := dropCount(t, n.gw); got == 0 {
		t.Errorf("default deny counted %d packets, want some", got)
	}
	// The kernel holds the element with its timeout.
	for _, obj := range nftJSON(t, n.gw, "fqdngate") {
		raw, ok := obj["set"]
		if !ok {
			continue
		}
		var named struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(raw, &named); err != nil || named.Name != "learn4.bank-api.payments" {
			continue // interval sets list elements in other shapes
		}
		var set struct {
			Name string `json:"name"`
			Elem []struct {
				Elem struct {
					Val     string `json:"val"`
					Timeout int    `json:"timeout"`
				} `json:"elem"`
			} `json:"elem"`
		}
		if err := json.Unmarshal(raw, &set); err != nil {
			t.Fatal(err)
		}
		if len(set.Elem) != 1 || set.Elem[0].Elem.Val != srvA || set.Elem[0].Elem.Timeout < 55 {
			t.Errorf("set %s holds %+v, want %s with a timeout of about 60s", set.Name, set.Elem, srvA)
		}
		return
	}
	t.Error("set learn4.bank-api.payments not listed by nft")
}

// TestSourceInNoGroupDenied: when every rule has from, a source in no group
// may reach nothing, as Decide says; the kernel must not leave it open.
func TestSourceInNoGroupDenied(t *testing.T) {
	n := newForwardNet(t)
	n.client.Addr("c0", "198.51.100.50/24")
	p := mustParse(t, forwardPolicy)
	startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	if d := p.Decide(policy.Query{Source: netip.MustParseAddr("198.51.100.50"), Addr: netip.MustParseAddr(srvC), Port: 443}); d.Action != policy.Deny {
		t.Fatalf("the policy allows it (%v); the test needs a source it denies", d.Action)
	}
	checkReach(t, n.client, []reach{
		{"198.51.100.50", srvC, "443", false}, // in no group, and every rule has from
		{srcPayments, srvC, "443", false},
	})
}

func TestExpiry(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)

	publish(t, b, "bank-api", "payments", srvA, 1500*time.Millisecond)
	est, err := dial(n.client, srcPayments, srvA, "443", reachWait)
	if err != nil {
		t.Fatalf("dial while learned: %v", err)
	}
	defer est.Close()
	time.Sleep(1500*time.Millisecond + refreshSlack + 500*time.Millisecond)

	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", false}})
	// The connection opened while the address was learned lives on in
	// conntrack.
	est.SetDeadline(time.Now().Add(reachWait))
	fmt.Fprintln(est, "still there")
	line, err := bufio.NewReader(est).ReadString('\n')
	if err != nil || line != "still there\n" {
		t.Errorf("established connection after expiry: read %q, %v; want the echo", line, err)
	}

	// Re-learning extends: a second publish with a longer expiry keeps the
	// address open past the first one's end.
	publish(t, b, "bank-api", "payments", srvA, time.Second)
	publish(t, b, "bank-api", "payments", srvA, 4*time.Second)
	time.Sleep(1500 * time.Millisecond)
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})
}

func TestApplyPolicyChange(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	publish(t, b, "web", "others", srvB, time.Minute)
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true},
		{srcOthers, srvB, "443", true},
	})

	// web is gone; bank-api gains a port; partner-db moves to others only.
	changed := `
firewall: {backend: nftables, hook: forward, table: fqdngate}
sources:
  payments: [198.51.100.10/32]
  others: [198.51.100.11/32]
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
    ports: [443, 8080]
  - name: partner-db
    from: [others]
    to: [203.0.113.0/24]
    ports: [5432]
`
	dropped := b.Dropped()
	if err := b.Apply(context.Background(), mustParse(t, forwardPolicy)); err != nil {
		t.Fatalf("Apply of the same policy: %v", err)
	}
	if got := b.Dropped(); got != dropped {
		t.Errorf("Dropped() after applying the same policy: %d, want %d", got, dropped)
	}
	if err := b.Apply(context.Background(), mustParse(t, changed)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := b.Dropped(); got == dropped {
		t.Errorf("Dropped() did not move when web's learned set went")
	}
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true}, // learned element kept
		{srcPayments, srvA, "8080", true},
		{srcOthers, srvB, "443", false}, // rule removed
		{srcPayments, srvCIDR, "5432", false},
		{srcOthers, srvCIDR, "5432", true},
	})
	for _, e := range b.Learned() {
		if e.Rule == "web" {
			t.Errorf("Learned() still holds %v for the removed rule", e)
		}
	}
	if err := b.Publish(context.Background(), []learn.Entry{{Rule: "web", Group: "others", Addr: netip.MustParseAddr(srvB), Expires: time.Now().Add(time.Minute)}}); err == nil {
		t.Error("Publish for a removed rule succeeded, want an error")
	}
}

func TestAuditDropsNothing(t *testing.T) {
	n := newForwardNet(t)
	startBackend(t, n.gw, Config{Hook: policy.HookForward, LogGroup: 5}, mustParse(t, override(forwardPolicy, "mode: audit")))
	checkReach(t, n.client, []reach{
		{srcPayments, srvC, "443", true},
		{srcOthers, srvA, "8080", true},
	})
	if got := dropCount(t, n.gw); got == 0 {
		t.Errorf("audit counted %d would-be drops, want some", got)
	}
}

func TestAdoptExistingTable(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	first := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	publish(t, first, "bank-api", "payments", srvA, time.Minute)

	// A second process (the first was killed) adopts the table: before
	// and after its Apply, the learned address stays open and the rest
	// stays closed.
	second := startBackend(t, n.gw, Config{Hook: policy.HookForward}, nil)
	want := []reach{{srcPayments, srvA, "443", true}, {srcPayments, srvB, "443", false}}
	checkReach(t, n.client, want)
	if err := second.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	checkReach(t, n.client, want)
	got := second.Learned()
	if len(got) != 1 || got[0].Addr.String() != srvA || got[0].Rule != "bank-api" || time.Until(got[0].Expires) < 50*time.Second {
		t.Errorf("adopted Learned() = %v, want %s for bank-api expiring in about a minute", got, srvA)
	}
}

func TestStateFileRestore(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	state := t.TempDir() + "/learned.json"
	first := startBackend(t, n.gw, Config{Hook: policy.HookForward, StateFile: state}, p)
	publish(t, first, "bank-api", "payments", srvA, time.Minute)
	publish(t, first, "web", "others", srvB, time.Minute)
	time.Sleep(time.Second) // written within a second

	// The table is gone (a reboot): the state file brings the addresses back.
	dropped := first.Dropped()
	if err := first.Remove(); err != nil {
		t.Fatal(err)
	}
	if got := first.Dropped(); got != dropped+1 {
		t.Errorf("Dropped() after Remove = %d, want %d", got, dropped+1)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvC, "443", true}}) // no table, no enforcement
	startBackend(t, n.gw, Config{Hook: policy.HookForward, StateFile: state}, p)
	checkReach(t, n.client, []reach{
		{srcPayments, srvA, "443", true},
		{srcOthers, srvB, "443", true},
		{srcPayments, srvC, "443", false},
	})
}

func TestDNSRedirect(t *testing.T) {
	n := newForwardNet(t)
	// The "real" resolver outside, which clients must not reach directly.
	udpEcho(t, n.inet.ListenPacket("udp", srvA+":53"), "upstream")
	udpEcho(t, n.gw.ListenPacket("udp", "0.0.0.0:5353"), "fqdngate")
	tcpBanner(t, n.gw.Listen("tcp", "0.0.0.0:5353"), "fqdngate")
	tcpBanner(t, n.inet.Listen("tcp", srvA+":53"), "upstream")

	startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, override(forwardPolicy, `listen: {dns: "0.0.0.0:5353"}`)))
	if got := udpAsk(t, n.client, srcPayments, srvA+":53"); got != "fqdngate" {
		t.Errorf("udp dns to %s:53 answered by %q, want fqdngate", srvA, got)
	}
	if got := tcpRead(n.client, srcOthers, srvA+":53"); got != "fqdngate" {
		t.Errorf("tcp dns to %s:53 answered by %q, want fqdngate", srvA, got)
	}
}

func TestDNSDroppedWhenNotRedirectable(t *testing.T) {
	n := newForwardNet(t)
	udpEcho(t, n.inet.ListenPacket("udp", srvA+":53"), "upstream")
	tcpBanner(t, n.inet.Listen("tcp", srvA+":53"), "upstream")
	// A loopback listener cannot receive forwarded packets.
	p := mustParse(t, override(forwardPolicy+`
  - name: resolver
    from: [payments]
    to: [192.0.2.0/24]
    ports: [53, 53/udp]
`, `listen: {dns: "127.0.0.1:5353"}`))
	startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	if got := udpAsk(t, n.client, srcPayments, srvA+":53"); got != "" {
		t.Errorf("udp dns to %s:53 answered by %q, want a drop", srvA, got)
	}
	if got := tcpRead(n.client, srcPayments, srvA+":53"); got != "" {
		t.Errorf("tcp dns to %s:53 answered by %q, want a drop", srvA, got)
	}
}

func udpEcho(t *testing.T, pc net.PacketConn, answer string) {
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(answer), from)
		}
	}()
}

func tcpBanner(t *testing.T, ln net.Listener, banner string) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(banner))
			c.Close()
		}
	}()
}

// udpAsk sends a datagram and returns the answer, or "" after dropWait.
func udpAsk(t *testing.T, ns *netns.NS, src, dst string) string {
	t.Helper()
	c, err := ns.Dial("udp", src, dst, dropWait)
	if err != nil {
		t.Fatalf("udp dial: %v", err)
	}
	defer c.Close()
	c.Write([]byte("query"))
	c.SetReadDeadline(time.Now().Add(dropWait))
	buf := make([]byte, 64)
	k, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:k])
}

// tcpRead connects and returns what the server says, or "" on failure.
func tcpRead(ns *netns.NS, src, dst string) string {
	c, err := ns.Dial("tcp", src, dst, dropWait)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(reachWait))
	buf := make([]byte, 64)
	k, _ := c.Read(buf)
	return string(buf[:k])
}

// TestApplyFollowsPolicySettings: mode and listeners come from the policy
// Apply is given, so a reload that switches audit to enforce, or moves the
// DNS listener, reprograms the table.
func TestApplyFollowsPolicySettings(t *testing.T) {
	n := newForwardNet(t)
	udpEcho(t, n.gw.ListenPacket("udp", "0.0.0.0:5353"), "old listener")
	udpEcho(t, n.gw.ListenPacket("udp", "0.0.0.0:5354"), "new listener")
	audit := mustParse(t, override(forwardPolicy, "mode: audit", `listen: {dns: "0.0.0.0:5353"}`))
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, audit)
	checkReach(t, n.client, []reach{{srcPayments, srvC, "443", true}})
	if got := udpAsk(t, n.client, srcPayments, srvA+":53"); got != "old listener" {
		t.Errorf("audit: dns answered by %q, want the old listener", got)
	}

	enforce := mustParse(t, override(forwardPolicy, "mode: enforce", `listen: {dns: "0.0.0.0:5354"}`))
	if err := b.Apply(context.Background(), enforce); err != nil {
		t.Fatalf("Apply enforce: %v", err)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvC, "443", false}})
	if got := udpAsk(t, n.client, srcPayments, srvA+":53"); got != "new listener" {
		t.Errorf("after the reload: dns answered by %q, want the new listener", got)
	}

	// And back: enforcement can be relaxed by a reload too.
	if err := b.Apply(context.Background(), audit); err != nil {
		t.Fatalf("Apply audit: %v", err)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvC, "443", true}})
}

// TestPublishReportsKernelFailure: Publish returns only what the kernel
// confirmed. Elements are sent without acknowledgements, so a failed
// transaction must still be seen: here the table went behind the
// backend's back.
func TestPublishReportsKernelFailure(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	n.gw.MustExec("nft", "delete", "table", "inet", "fqdngate")
	e := learn.Entry{Name: "x.example", Rule: "bank-api", Group: "payments", Addr: netip.MustParseAddr(srvB), Expires: time.Now().Add(time.Minute)}
	err := b.Publish(context.Background(), []learn.Entry{e})
	if err == nil || !strings.Contains(err.Error(), "learn4.bank-api.payments") {
		t.Fatalf("Publish into a deleted table: %v, want an error naming the set", err)
	}
	// Apply programs the table again, and the socket holds no stale
	// replies: the next Publish succeeds.
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), []learn.Entry{e}); err != nil {
		t.Fatalf("Publish after Apply: %v", err)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvB, "443", true}})
}

// TestPublishConcurrent: calls that find a flush under way queue behind
// it, callers that find none lead, and Run takes over what queues while a
// caller leads; every address ends up in the kernel, and after Run
// returns Publish fails instead of waiting.
func TestPublishConcurrent(t *testing.T) {
	ns := netns.New(t)
	p := mustParse(t, benchPolicy)
	b, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()

	var addrs benchAddrs
	var wg sync.WaitGroup
	const callers, each = 16, 200
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				batch := []learn.Entry{entry(addrs.next())}
				if i%10 == 0 { // now and then a big answer
					for range 300 {
						batch = append(batch, entry(addrs.next()))
					}
				}
				if err := b.Publish(context.Background(), batch); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Publish: %v", err)
	}
	want := int(addrs.n.Load())
	if got := len(b.Learned()); got != want {
		t.Errorf("Learned() holds %d addresses, want %d", got, want)
	}
	if got := strings.Count(ns.MustExec("nft", "list", "set", "inet", "fqdngate", "learn6.web"), "2001:db8::"); got != want {
		t.Errorf("kernel holds %d addresses, want %d", got, want)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := b.Publish(context.Background(), []learn.Entry{entry(addrs.next())}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Publish after Run returned: %v, want ErrNotRunning", err)
	}
}

// TestRelearnSameTimeout: a second answer with the same TTL yields the
// same element timeout as the first; the kernel must still take the later
// expiry (on Linux 6.10 and later only an expiration makes it do so).
func TestRelearnSameTimeout(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	t0 := time.Now()
	publish(t, b, "bank-api", "payments", srvA, 2*time.Second)
	time.Sleep(time.Until(t0.Add(1200 * time.Millisecond)))
	publish(t, b, "bank-api", "payments", srvA, 2*time.Second)
	time.Sleep(time.Until(t0.Add(2500 * time.Millisecond)))
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})
}

// TestAnswerNeverOutlivesElement: an answer re-learned shortly after the
// last, and so not sent to the kernel again, still finds its address open
// until the answer's own expiry.
func TestAnswerNeverOutlivesElement(t *testing.T) {
	n := newForwardNet(t)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, mustParse(t, forwardPolicy))
	t0 := time.Now()
	publish(t, b, "bank-api", "payments", srvA, 2*time.Second)
	time.Sleep(time.Until(t0.Add(500 * time.Millisecond)))
	publish(t, b, "bank-api", "payments", srvA, 2*time.Second) // until t0+2.5s
	time.Sleep(time.Until(t0.Add(2300 * time.Millisecond)))
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}})
}

// TestTableDeletedBehindOurBack: when someone else deletes the table and
// no watcher puts it back (Config.Watch is off), the next Apply programs
// it again with every learned element, so what the DNS firewall published
// before is reachable again without a new publication, and Dropped does
// not move.
func TestTableDeletedBehindOurBack(t *testing.T) {
	n := newForwardNet(t)
	p := mustParse(t, forwardPolicy)
	b := startBackend(t, n.gw, Config{Hook: policy.HookForward}, p)
	publish(t, b, "bank-api", "payments", srvA, time.Minute)
	dropped := b.Dropped()
	n.gw.MustExec("nft", "delete", "table", "inet", b.cfg.Table)
	if err := b.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got := b.Dropped(); got != dropped {
		t.Errorf("Dropped() after the table was put back = %d, want %d", got, dropped)
	}
	if got := b.Stats().Restores; got != 1 {
		t.Errorf("Stats().Restores = %d, want 1", got)
	}
	checkReach(t, n.client, []reach{{srcPayments, srvA, "443", true}, {srcPayments, srvB, "443", false}})
}

// TestListsDNSSECVerdict: the listing (/v1/learned) carries each name's
// DNSSEC verdict, that of the newest answer that named it, as the
// backend-less store does.
func TestListsDNSSECVerdict(t *testing.T) {
	ns := netns.New(t)
	b, err := New(Config{Table: "fqdngate", Hook: policy.HookForward, NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Apply(context.Background(), mustParse(t, benchPolicy)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = b.Run(ctx) }()
	exp := time.Now().Add(time.Hour)
	publish := func(name, verdict string, addr string) {
		t.Helper()
		e := learn.Entry{Name: dnsname.Name(name), Rule: "web", Addr: netip.MustParseAddr(addr), Expires: exp, DNSSEC: verdict}
		if err := b.Publish(context.Background(), []learn.Entry{e}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	publish("signed.example", "insecure", "2001:db8::1")
	publish("signed.example", "secure", "2001:db8::2")
	publish("plain.example", "", "2001:db8::3")
	got := map[string]string{}
	for e := range b.All("") {
		got[e.Addr.String()] = string(e.Name) + " " + e.DNSSEC
	}
	want := map[string]string{"2001:db8::1": "signed.example secure", "2001:db8::2": "signed.example secure", "2001:db8::3": "plain.example "}
	if !maps.Equal(got, want) {
		t.Errorf("All lists %v, want %v", got, want)
	}
}
