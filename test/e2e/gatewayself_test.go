package e2e

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// TestForwardGatewayAddressesRefused (issue 11, item 5): names that
// answer with the gateway's own addresses, inside (192.0.2.1) or outside
// (192.0.2.129, a public documentation address), lose them from the
// answer, and the proxy refuses them, so a web server on the gateway is
// never reached through fqdngate; an address added to the gateway after
// fqdngate started is treated the same once the kernel reports it. On
// bb9061b the answers carried the addresses and the proxy dialled them.
func TestForwardGatewayAddressesRefused(t *testing.T) {
	n := newForwardNet(t)
	g := newGate(t, n.gw)
	s := policySettings{hook: "forward", dnsListen: gatewayDNS, grace: 2 * time.Second,
		table: g.table, stateFile: g.stateFile(), sources: forwardSources}
	pol := s.render(`  - name: self
    from: [a]
    to: [inside.example.com, outside.example.com, late.example.com]
    ports: [443, 8080]
`)
	pol = strings.Replace(pol, `proxy: ""`, fmt.Sprintf("proxy: %q", gatewayProxy), 1)
	g.writePolicy(pol)
	g.start()
	a := &client{ns: n.client, src4: srcA, src6: srcA6, dns: gatewayDNS, roots: n.inet.ca.Pool()}

	// A web server on the gateway, on every address it has or will have.
	var hits atomic.Int64
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			fmt.Fprintln(w, "the gateway's own web server")
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	ln := n.gw.Listen("tcp", "[::]:8080")
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	auth := n.inet.auth
	auth.Set("inside.example.com", dnstest.A("inside.example.com", 300, gwClient4), dnstest.AAAA("inside.example.com", 300, gwClient6))
	auth.Set("outside.example.com", dnstest.A("outside.example.com", 300, gwInet4), dnstest.AAAA("outside.example.com", 300, gwInet6))
	auth.Set("late.example.com", dnstest.A("late.example.com", 300, "203.0.113.80"))

	// The answers lose the gateway's addresses: nothing is left, SERVFAIL.
	for _, name := range []string{"inside.example.com", "outside.example.com"} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			r, err := a.exchange("udp", gatewayDNS, name, qt, reachWait)
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", name, dns.TypeToString[qt], err, g.logs())
			}
			if addrs, _ := answerAddrs(r); len(addrs) != 0 || r.Rcode != dns.RcodeServerFailure {
				t.Errorf("%s %s: got %s with %v, want SERVFAIL without the gateway's address", name, dns.TypeToString[qt], dns.RcodeToString[r.Rcode], addrs)
			}
		}
	}

	// The proxy refuses them: forwarded HTTP and CONNECT alike.
	for _, req := range []string{
		"GET http://inside.example.com:8080/ HTTP/1.1\r\nHost: inside.example.com:8080\r\n\r\n",
		"GET http://outside.example.com:8080/ HTTP/1.1\r\nHost: outside.example.com:8080\r\n\r\n",
		"CONNECT inside.example.com:8080 HTTP/1.1\r\nHost: inside.example.com:8080\r\n\r\n",
		"CONNECT outside.example.com:8080 HTTP/1.1\r\nHost: outside.example.com:8080\r\n\r\n",
	} {
		status, reason := viaProxy(t, a, req)
		if status != http.StatusForbidden || reason != "destination is an address of this host" {
			t.Errorf("%q through the proxy: got %d %q, want 403 \"destination is an address of this host\"", firstLine(req), status, reason)
		}
	}

	// A name of an address the gateway does not have yet goes through.
	if status, _ := viaProxy(t, a, "CONNECT late.example.com:443 HTTP/1.1\r\nHost: late.example.com:443\r\n\r\n"); status != http.StatusOK {
		t.Fatalf("CONNECT late.example.com:443 before the address was the gateway's: got %d, want 200\n%s", status, g.logs())
	}
	// Then the gateway gets it: once fqdngate has seen the change, it is
	// stripped and refused like the others.
	n.gw.IP("addr", "add", "203.0.113.80/32", "dev", "lo")
	deadline := time.Now().Add(reachWait)
	for {
		r, err := a.exchange("udp", gatewayDNS, "late.example.com", dns.TypeA, reachWait)
		if err == nil && r.Rcode == dns.RcodeServerFailure {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("late.example.com after 203.0.113.80 was added to the gateway: still answered (%v, %v)\n%s", r, err, g.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, req := range []string{
		"GET http://late.example.com:8080/ HTTP/1.1\r\nHost: late.example.com:8080\r\n\r\n",
		"CONNECT late.example.com:443 HTTP/1.1\r\nHost: late.example.com:443\r\n\r\n",
	} {
		status, reason := viaProxy(t, a, req)
		if status != http.StatusForbidden || reason != "destination is an address of this host" {
			t.Errorf("%q after the address was added to the gateway: got %d %q, want 403", firstLine(req), status, reason)
		}
	}

	if n := hits.Load(); n != 0 {
		t.Errorf("the gateway's web server answered %d requests through fqdngate, want 0", n)
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}

// viaProxy sends one request head to the gateway's explicit proxy from c
// and returns the response's status and X-Fqdngate-Reason.
func viaProxy(t *testing.T, c *client, req string) (int, string) {
	t.Helper()
	conn, err := c.ns.Dial("tcp", c.src4, gatewayProxy, reachWait)
	if err != nil {
		t.Fatalf("dialling the proxy: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * reachWait))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%q: reading the proxy's response: %v", firstLine(req), err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Fqdngate-Reason")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}
