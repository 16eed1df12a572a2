package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// The explicit proxy on the gateway, for the tunnel tests.
const gatewayProxy = gwClient4 + ":3128"

// cdnAddr is the shared address of the tunnel tests: an allowed name and
// a forbidden one both resolve to it, as two customers of one CDN edge.
const cdnAddr = "203.0.113.10"

// proxyRules: group a may reach api.example.com on 80 and 443.
const proxyRules = `  - name: api
    from: [a]
    to: [api.example.com]
    ports: [80, 443]
`

// startProxyGateway starts the forward topology with fqdngate's explicit
// proxy on the gateway, an HTTP server beside the HTTPS one on every
// internet address, and api.example.com and evil.example.com both at
// cdnAddr. It returns the gate and a client of group a.
func startProxyGateway(t *testing.T) (*gate, *client) {
	t.Helper()
	n := newForwardNet(t)
	serveHTTP(t, n.inet)
	g := newGate(t, n.gw)
	s := policySettings{hook: "forward", dnsListen: gatewayDNS, proxy: gatewayProxy, grace: 2 * time.Second,
		table: g.table, stateFile: g.stateFile(), sources: forwardSources}
	g.writePolicy(s.render(proxyRules))
	g.start()
	n.inet.auth.Set("api.example.com", dnstest.A("api.example.com", 300, cdnAddr))
	n.inet.auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, cdnAddr))
	return g, &client{ns: n.client, src4: srcA, src6: srcA6, dns: gatewayDNS, roots: n.inet.ca.Pool()}
}

// TestTunnelFronting is issue 11's domain fronting through the explicit
// proxy: after CONNECT api.example.com, a ClientHello for
// evil.example.com (or, on port 80, a request with Host:
// evil.example.com) reached the CDN address both names share, and was
// served, while the audit log named only api.example.com. Both are
// refused now, and audited with the name the client asked for; the
// allowed name is still carried.
func TestTunnelFronting(t *testing.T) {
	g, a := startProxyGateway(t)

	// A fronted ClientHello: the tunnel is closed before the CDN sees it,
	// whether the proxy answers the CONNECT itself (HTTP/1.1) or through
	// net/http (HTTP/1.0).
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		tun, err := a.connectProto("api.example.com:443", proto)
		if err != nil {
			t.Fatalf("CONNECT api.example.com:443 %s: %v\n%s", proto, err, g.logs())
		}
		if s, err := tun.tls("evil.example.com"); err == nil {
			body, gerr := s.get(reachWait)
			s.Close()
			t.Errorf("%s: SNI evil.example.com inside a tunnel to api.example.com: the CDN answered %q (%v); want the tunnel refused", proto, body, gerr)
		}
		if l := g.waitAudit(func(l auditLine) bool { return l["client"] == tun.local }); l == nil ||
			l["action"] != "deny" || l["reason"] != "tunnel carries another name" || l["name"] != "api.example.com" || l["sni"] != "evil.example.com" {
			t.Errorf("%s: audit line of the fronted hello: %v; want a deny naming api.example.com, sni evil.example.com, reason tunnel carries another name", proto, l)
		}
	}

	// A fronted Host on port 80: refused with a 403 that says why.
	tun, err := a.connect("api.example.com:80")
	if err != nil {
		t.Fatalf("CONNECT api.example.com:80: %v", err)
	}
	resp, body, err := tun.get("evil.example.com")
	if err != nil || resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Fqdngate-Reason") != "tunnel carries another name" {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Errorf("Host evil.example.com inside a tunnel to api.example.com:80: got %s %q, %v; want 403, tunnel carries another name", status, body, err)
	}
	if l := g.waitAudit(func(l auditLine) bool { return l["client"] == tun.local }); l == nil ||
		l["action"] != "deny" || l["reason"] != "tunnel carries another name" || l["port"] != float64(80) || l["sni"] != "evil.example.com" {
		t.Errorf("audit line of the fronted Host: %v; want a deny on port 80 with sni evil.example.com", l)
	}

	// The allowed name is carried, by TLS and by Host.
	tun, err = a.connect("api.example.com:443")
	if err != nil {
		t.Fatalf("CONNECT api.example.com:443: %v", err)
	}
	s, err := tun.tls("api.example.com")
	if err != nil {
		t.Fatalf("TLS for api.example.com through its tunnel: %v\n%s", err, g.logs())
	}
	if body, err := s.get(reachWait); err != nil || body != "served "+cdnAddr+":443" {
		t.Errorf("GET https://api.example.com/ through the proxy: %q, %v", body, err)
	}
	s.Close()
	tun, err = a.connect("api.example.com:80")
	if err != nil {
		t.Fatalf("CONNECT api.example.com:80: %v", err)
	}
	resp, body, err = tun.get("api.example.com")
	if want := "served api.example.com at " + cdnAddr + ":80"; err != nil || resp.StatusCode != 200 || body != want {
		t.Errorf("Host api.example.com through its tunnel: %v %q, %v; want %q", resp, body, err, want)
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}

// TestTunnelAuditedWhileOpen: an allowed tunnel is in the audit log as
// soon as it is carried, with a connection id, not only when it ends; its
// closing line has the same id, how it ended and its totals.
func TestTunnelAuditedWhileOpen(t *testing.T) {
	g, a := startProxyGateway(t)
	tun, err := a.connect("api.example.com:443")
	if err != nil {
		t.Fatalf("CONNECT api.example.com:443: %v\n%s", err, g.logs())
	}
	s, err := tun.tls("api.example.com")
	if err != nil {
		t.Fatalf("TLS for api.example.com through its tunnel: %v\n%s", err, g.logs())
	}
	t.Cleanup(s.Close)
	if body, err := s.get(reachWait); err != nil || body != "served "+cdnAddr+":443" {
		t.Fatalf("GET https://api.example.com/ through the proxy: %q, %v", body, err)
	}
	opened := g.waitAudit(func(l auditLine) bool { return l["client"] == tun.local })
	if opened == nil || opened["msg"] != "decision" || opened["action"] != "allow" || opened["rule"] != "api" || opened["sni"] != "api.example.com" || opened["conn"] == nil {
		t.Fatalf("audit line while the tunnel is open: %v; want the allow decision with a conn id\n%s", opened, g.logs())
	}
	time.Sleep(200 * time.Millisecond) // past a flush of the audit log
	if l := g.findAudit(func(l auditLine) bool { return l["msg"] == "closed" && l["client"] == tun.local }); l != nil {
		t.Errorf("the tunnel is open, yet its closing line is written: %v", l)
	}
	s.Close()
	closed := g.waitAudit(func(l auditLine) bool { return l["msg"] == "closed" && l["client"] == tun.local })
	if closed == nil || closed["conn"] != opened["conn"] || closed["action"] != "allow" || closed["ended"] == nil || closed["bytes_down"] == nil || closed["sni"] != "api.example.com" {
		t.Errorf("closing line %v: want the decision again under conn %v, how it ended and its bytes", closed, opened["conn"])
	}
	if t.Failed() {
		t.Log(g.logs())
	}
}

// serveHTTP serves plain HTTP on port 80 of every address of the internet
// namespace, answering with the Host asked for and the address reached.
func serveHTTP(t *testing.T, in *internet) {
	t.Helper()
	ln := in.ns.Listen("tcp", "[::]:80")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			fmt.Fprintf(w, "served %s at %s", r.Host, strings.TrimPrefix(local.String(), "[::ffff:"))
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// tunnel is a CONNECT tunnel through the gateway's explicit proxy.
type tunnel struct {
	c     *client
	conn  net.Conn
	br    *bufio.Reader
	local string // the client's address, as the audit line's client
}

// connect opens a tunnel to target through the gateway's proxy.
func (c *client) connect(target string) (*tunnel, error) { return c.connectProto(target, "HTTP/1.1") }

// connectProto is connect with the CONNECT request's HTTP version.
func (c *client) connectProto(target, proto string) (*tunnel, error) {
	conn, err := c.ns.Dial("tcp", c.src4, gatewayProxy, reachWait)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(reachWait))
	fmt.Fprintf(conn, "CONNECT %s %s\r\nHost: %s\r\n\r\n", target, proto, target)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("CONNECT %s: %s (%s)", target, resp.Status, resp.Header.Get("X-Fqdngate-Reason"))
	}
	conn.SetDeadline(time.Time{})
	return &tunnel{c: c, conn: conn, br: br, local: conn.LocalAddr().String()}, nil
}

// tls completes a TLS handshake for name inside the tunnel.
func (tu *tunnel) tls(name string) (*session, error) {
	conn := tls.Client(bufferedConn{tu.conn, tu.br}, &tls.Config{ServerName: name, RootCAs: tu.c.roots, MinVersion: tls.VersionTLS12})
	conn.SetDeadline(time.Now().Add(reachWait))
	if err := conn.Handshake(); err != nil {
		tu.conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return &session{name: name, conn: conn, br: bufio.NewReader(conn)}, nil
}

// get sends a plain GET / with Host: host inside the tunnel and returns
// the response and its body; the tunnel is closed.
func (tu *tunnel) get(host string) (*http.Response, string, error) {
	defer tu.conn.Close()
	tu.conn.SetDeadline(time.Now().Add(reachWait))
	fmt.Fprintf(tu.conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(tu.br, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, strings.TrimSpace(string(b)), err
}

// bufferedConn reads through the reader that read the CONNECT response.
type bufferedConn struct {
	net.Conn
	br *bufio.Reader
}

func (c bufferedConn) Read(b []byte) (int, error) { return c.br.Read(b) }

// auditLine is one decoded audit line.
type auditLine map[string]any

// auditLog decodes every audit line on standard output so far.
func (g *gate) auditLog() []auditLine {
	var out []auditLine
	for _, s := range strings.Split(g.stdout.String(), "\n") {
		var l auditLine
		if json.Unmarshal([]byte(s), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// has reports whether l's fields include every one of want.
func (l auditLine) has(want map[string]any) bool {
	for k, v := range want {
		if fmt.Sprint(l[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// findAudit returns the first audit line (standard output) that match
// accepts, or nil.
func (g *gate) findAudit(match func(auditLine) bool) auditLine {
	for _, l := range g.auditLog() {
		if match(l) {
			return l
		}
	}
	return nil
}

// waitAudit waits up to 10s for an audit line that match accepts, and
// returns it, or nil.
func (g *gate) waitAudit(match func(auditLine) bool) auditLine {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if l := g.findAudit(match); l != nil || time.Now().After(deadline) {
			return l
		}
		time.Sleep(20 * time.Millisecond)
	}
}
