package dnsfw

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/proxy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// tlsHosts are TLS servers on several loopback addresses sharing one port,
// as a name's addresses share the rule's port.
type tlsHosts struct {
	ca         *certs.CA
	caFile     string
	port       uint16
	handshakes atomic.Int64
}

// newTLSHosts starts a TLS server on 127.0.0.x:port for each x in certFor,
// presenting a certificate for certFor[x] signed by a fresh CA.
func newTLSHosts(t testing.TB, certFor map[string]string) *tlsHosts {
	t.Helper()
	h := &tlsHosts{ca: certs.NewCA(t)}
	h.caFile = h.ca.WriteFile(t)
	var addrs []string
	for a := range certFor {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	var lns []net.Listener
	// The first address picks a free port; the others may find it taken,
	// so try a few.
	for attempt := 0; attempt < 20 && len(lns) < len(addrs); attempt++ {
		for _, l := range lns {
			l.Close()
		}
		lns = lns[:0]
		first, err := net.Listen("tcp", addrs[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, first)
		port := first.Addr().(*net.TCPAddr).Port
		for _, a := range addrs[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				break
			}
			lns = append(lns, l)
		}
		h.port = uint16(port)
	}
	if len(lns) < len(addrs) {
		t.Fatal("no port free on every test address")
	}
	for i, l := range lns {
		cfg := &tls.Config{Certificates: []tls.Certificate{h.ca.Leaf(t, certFor[addrs[i]])}}
		tl := tls.NewListener(l, cfg)
		t.Cleanup(func() { tl.Close() })
		go func() {
			for {
				c, err := tl.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					if c.(*tls.Conn).Handshake() == nil {
						h.handshakes.Add(1)
					}
				}()
			}
		}()
	}
	return h
}

// rule returns the rule verified: api.verified.example for payments, with
// tls.verify against the hosts' CA on their port, its first (8000 is
// allowed too, and nothing listens there). tlsExtra is added to its tls mapping,
// ruleExtra (indented four spaces) to the rule.
func (h *tlsHosts) rule(tlsExtra, ruleExtra string) string {
	return strings.NewReplacer("PORT", strconv.Itoa(int(h.port)), "CAFILE", h.caFile, "EXTRA", tlsExtra).Replace(`
  - name: verified
    from: [payments]
    to: [api.verified.example]
    ports: [PORT, 8000]
    tls: {verify: true, ca_file: "CAFILE" EXTRA}
`) + ruleExtra
}

// pin returns the policy spelling of a certificate's SPKI pin.
func pin(c [32]byte) string { return "sha256/" + base64.StdEncoding.EncodeToString(c[:]) }

const (
	goodHost     = "127.0.0.11" // a certificate for api.verified.example
	poisonedHost = "127.0.0.12" // a valid certificate, for another name
)

// verifyEnv is an env with TLS servers for api.verified.example and a rule
// with tls.verify; tlsExtra is added to the rule's tls mapping.
func verifyEnv(t testing.TB, mode, tlsExtra, extraRule string, addrs []string, verify bool) (*env, *tlsHosts, *countingPublisher) {
	t.Helper()
	hosts := newTLSHosts(t, map[string]string{goodHost: "api.verified.example", poisonedHost: "evil.example"})
	var rrs []dns.RR
	for _, a := range addrs {
		rrs = append(rrs, dnstest.A("api.verified.example", 300, a))
	}
	rules := hosts.rule(tlsExtra, extraRule)
	pub := &countingPublisher{}
	e := newEnv(t, dnstest.Zone(rrs...), opts{mode: mode, dns: "  rebinding_protection: false", rules: rules, cfg: func(c *Config) {
		c.Publisher = pub
		if verify {
			c.Verify = proxy.NewVerifier(proxy.VerifierConfig{}).Verify
		}
	}})
	return e, hosts, pub
}

func TestVerifyBeforeAllow(t *testing.T) {
	good, poisoned := []string{goodHost}, []string{poisonedHost}
	both := []string{goodHost, poisonedHost}
	tests := []struct {
		name      string
		mode      string
		tls       string // extra keys of the rule's tls
		addrs     []string
		verify    bool
		wantRcode int
		wantAddrs []string
		want      map[string]any // in the audit line
	}{
		{"good address kept", "", "", good, true, dns.RcodeSuccess, good,
			map[string]any{"action": "allow", "rule": "verified", "unverified": nil}},
		{"poisoned address removed, good kept", "", "", both, true, dns.RcodeSuccess, good,
			map[string]any{"action": "allow", "rule": "verified", "unverified": poisonedHost, "answers": goodHost}},
		{"only a poisoned address", "", "", poisoned, true, dns.RcodeServerFailure, nil,
			map[string]any{"action": "deny", "rule": "", "near_rule": "verified", "reason": "upstream certificate failed verification", "unverified": poisonedHost}},
		{"pin mismatch removes every address", "", ", pins: [PIN_OTHER]", both, true, dns.RcodeServerFailure, nil,
			map[string]any{"action": "deny", "reason": "upstream certificate failed verification", "unverified": goodHost + " " + poisonedHost}},
		{"pin of the CA", "", ", pins: [PIN_CA]", both, true, dns.RcodeSuccess, good,
			map[string]any{"action": "allow", "unverified": poisonedHost}},
		{"audit mode keeps, notes", "audit", "", both, true, dns.RcodeSuccess, both,
			map[string]any{"action": "allow", "unverified": poisonedHost}},
		{"no Verify hook", "", "", both, false, dns.RcodeSuccess, both,
			map[string]any{"action": "allow", "unverified": nil}},
	}
	other := certs.NewCA(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, hosts, pub := verifyEnv(t, tt.mode, "", "", tt.addrs, tt.verify)
			if tt.tls != "" {
				// The CA exists only now; reload with its pin.
				extra := strings.NewReplacer("PIN_OTHER", pin(certs.SPKIPin(other.Cert)), "PIN_CA", pin(certs.SPKIPin(hosts.ca.Cert))).Replace(tt.tls)
				e.pol.Store(e.policy(opts{mode: tt.mode, dns: "  rebinding_protection: false", rules: hosts.rule(extra, "")}))
			}
			r := e.ask(payments, "api.verified.example", dns.TypeA)
			if r.Rcode != tt.wantRcode {
				t.Errorf("rcode: got %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if got := answerAddrs(r); !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("answer: got %v, want %v", got, tt.wantAddrs)
			}
			var learned []string
			for _, en := range pub.last() {
				learned = append(learned, en.Addr.String())
			}
			if !slices.Equal(learned, tt.wantAddrs) {
				t.Errorf("published: got %v, want %v", learned, tt.wantAddrs)
			}
			lines := e.auditLines(1)
			for k, v := range tt.want {
				if got := lines[0][k]; got != v {
					t.Errorf("audit %s: got %v, want %v", k, got, v)
				}
			}
			if !tt.verify && hosts.handshakes.Load() != 0 {
				t.Errorf("handshakes without a Verify hook: %d, want 0", hosts.handshakes.Load())
			}
		})
	}
}

// TestVerifyPort checks the port verification uses: 443 when the rule has
// it, else its first TCP port.
func TestVerifyPort(t *testing.T) {
	e := newEnv(t, zone(), opts{rules: `
  - name: a
    to: [a.example]
    ports: [53/udp, 8443, 8000-9000, 443]
  - name: b
    to: [b.example]
    ports: [53/udp, 8000-9000/udp, 8443]
  - name: c
    to: [c.example]
    ports: [53/udp]`})
	p := e.pol.Load()
	for name, want := range map[string]uint16{"a": 443, "b": 8443, "c": 0} {
		for _, r := range p.Rules {
			if r.Name == name {
				if got := verifyPort(r); got != want {
					t.Errorf("rule %s: got port %d, want %d", name, got, want)
				}
			}
		}
	}
}

func TestVerifyOnceForConcurrentQueries(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int64
	e, _, _ := verifyEnv(t, "", "", "", []string{goodHost}, false)
	e.fw.verify = func(_ context.Context, _ string, _ netip.Addr, _ uint16, _ *policy.TLS) error {
		if calls.Add(1) == 1 {
			close(started)
		}
		<-release
		return errors.New("not this one")
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			errs <- e.fw.verifyOne(t.Context(), "api.verified.example", netip.MustParseAddr(goodHost), 443, nil)
		}()
	}
	<-started
	waitFor(t, "the other two queries to wait for the first", func() bool {
		e.fw.flight.mu.Lock()
		defer e.fw.flight.mu.Unlock()
		for _, c := range e.fw.flight.calls {
			return c.shared == 2
		}
		return false
	})
	close(release)
	for range 3 {
		if err := <-errs; err == nil || err.Error() != "not this one" {
			t.Errorf("got %v, want the shared result", err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("Verify calls: got %d, want 1 for three concurrent queries", n)
	}
}

func TestRefreshVerifies(t *testing.T) {
	e, _, pub := verifyEnv(t, "", "", "    refresh: 1m\n", []string{goodHost, poisonedHost}, true)
	startRefresh(t, e)
	waitFor(t, "the first refresh", func() bool { return len(pub.last()) > 0 })
	var got []string
	for _, en := range pub.last() {
		got = append(got, en.Addr.String())
	}
	if !slices.Equal(got, []string{goodHost}) {
		t.Errorf("refresh published %v, want only the verified %s", got, goodHost)
	}
}
