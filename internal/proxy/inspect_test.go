package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// cdn is a shared address that serves every name, as a CDN's edge does:
// TLS on one port (one certificate for all the test's names, ECH
// accepted) and plain HTTP on another. Each answers with the name it was
// asked for, and remembers it: what reached the CDN, not what the client
// claims.
type cdn struct {
	tlsPort, httpPort uint16

	mu   sync.Mutex // guards seen
	seen []string   // "tls <SNI>" or "http <Host>", in arrival order
}

func startCDN(t *testing.T, ca *certs.CA, echKey tls.EncryptedClientHelloKey, names ...string) *cdn {
	t.Helper()
	c := &cdn{}
	cfg := &tls.Config{
		Certificates:             []tls.Certificate{ca.Leaf(t, names...)},
		EncryptedClientHelloKeys: []tls.EncryptedClientHelloKey{echKey},
		MinVersion:               tls.VersionTLS12,
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tln.Close() })
	c.tlsPort = tln.Addr().(*net.TCPAddr).AddrPort().Port()
	go func() {
		for {
			conn, err := tln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				tc := tls.Server(conn, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				name := tc.ConnectionState().ServerName
				c.saw("tls " + name)
				io.WriteString(tc, "served "+name+"\n")
			}()
		}
	}()
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.httpPort = hln.Addr().(*net.TCPAddr).AddrPort().Port()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.saw("http " + r.Host)
		io.WriteString(w, "served "+r.Host+"\n")
	})}
	go srv.Serve(hln)
	t.Cleanup(func() { srv.Close() })
	return c
}

func (c *cdn) saw(s string) {
	c.mu.Lock()
	c.seen = append(c.seen, s)
	c.mu.Unlock()
}

// served returns how many requests the CDN has answered.
func (c *cdn) served() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// tunnelConn reads a tunnel's bytes through the reader that read the
// CONNECT response.
type tunnelConn struct {
	net.Conn
	br *bufio.Reader
}

func (c tunnelConn) Read(b []byte) (int, error) { return c.br.Read(b) }

// TestTunnelInspection plays, through both CONNECT paths, the ways a
// client can ask for another name inside a tunnel to an allowed one (the
// domain fronting of a shared CDN address), with real TLS handshakes and
// HTTP requests to a server that answers any name: only the CONNECT name,
// or another name of the same rule at the same address, gets through;
// hellos without a name follow allow_no_sni and strip_ech; anything else,
// and silence, is refused; inspect_tunnels: false carries bytes unread.
func TestTunnelInspection(t *testing.T) {
	ca := certs.NewCA(t)
	echConfig, echKey := echKeys(t, "api.test")
	c := startCDN(t, ca, echKey, "api.test", "alt.test", "far.test", "evil.test", "raw.test", "addr.test", "hidden.test", "new.test", "127.0.0.1")
	res := mapResolver{
		"api.test": addrs("127.0.0.1"), "alt.test": addrs("127.0.0.1"), "evil.test": addrs("127.0.0.1"),
		"raw.test": addrs("127.0.0.1"), "addr.test": addrs("127.0.0.1"), "new.test": addrs("127.0.0.1"),
		"far.test": addrs("127.0.0.2"), // a name of the rule, at another address
	}
	ports := fmt.Sprintf("[%d, %d]", c.tlsPort, c.httpPort)
	policyWith := func(stripECH, allowNoSNI bool) string {
		return fmt.Sprintf(`
dns: {strip_ech: %v}
proxy: {deny_private: false, allow_no_sni: %v}
rules:
  - name: cdn
    to: [api.test, alt.test, far.test]
    ports: %s
  - name: by-address
    to: [addr.test, 127.0.0.1/32]
    ports: %s
  - name: evil
    to: [evil.test]
    ports: %s
  - name: raw
    to: [raw.test]
    ports: %s
    inspect_tunnels: false
  - name: modern
    to: [new.test]
    ports: %s
    tls: {min_version: "1.3"}
`, stripECH, allowNoSNI, ports, ports, ports, ports, ports)
	}
	defaults := policyWith(true, false)

	tlsTo := func(name string) string { return fmt.Sprintf("%s:%d", name, c.tlsPort) }
	httpTo := func(name string) string { return fmt.Sprintf("%s:%d", name, c.httpPort) }
	// Clients: what each sends into the tunnel, and what it got back.
	hello := func(cfg *tls.Config) func(connectResult) (string, error) {
		return func(r connectResult) (string, error) {
			tc := tls.Client(tunnelConn{r.conn, r.br}, cfg)
			if err := tc.Handshake(); err != nil {
				return "", err
			}
			b, err := io.ReadAll(tc)
			return string(b), err
		}
	}
	sni := func(name string) *tls.Config { return &tls.Config{ServerName: name, RootCAs: ca.Pool()} }
	noSNI := &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()} // an address: no SNI sent
	ech := &tls.Config{ServerName: "hidden.test", RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13, EncryptedClientHelloConfigList: echConfig}
	tls12 := &tls.Config{ServerName: "new.test", RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS12}
	request := func(host string) func(connectResult) (string, error) {
		return func(r connectResult) (string, error) {
			fmt.Fprintf(r.conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
			resp, err := http.ReadResponse(r.br, nil)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return "", fmt.Errorf("%s (%s): %s", resp.Status, resp.Header.Get("X-Fqdngate-Reason"), b)
			}
			return string(b), nil
		}
	}
	raw := func(b string) func(connectResult) (string, error) {
		return func(r connectResult) (string, error) {
			io.WriteString(r.conn, b)
			got, err := io.ReadAll(r.br)
			if len(got) == 0 {
				return "", fmt.Errorf("closed with nothing sent back: %v", err)
			}
			return string(got), nil
		}
	}

	// sniOf is the audit line's sni: absent when the client sent none.
	sniOf := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	allowed := func(rule, sni string) map[string]any {
		return map[string]any{"action": "allow", "rule": rule, "reason": policy.ReasonMatched.String(), "sni": sniOf(sni), "refused": nil}
	}
	fronted := func(sni string) map[string]any {
		m := refusedBy(RefusedFronted, policy.ReasonFronted, "cdn")
		m["sni"] = sniOf(sni)
		return m
	}
	cases := []struct {
		name    string
		policy  string
		target  string
		client  func(connectResult) (string, error)
		want    string         // the answer, "" for a refusal
		wantErr string         // in the client's error, when refused
		audit   map[string]any // fields of the connection's last audit line
	}{
		{"SNI of the CONNECT name", defaults, tlsTo("api.test"), hello(sni("api.test")), "served api.test\n", "", allowed("cdn", "api.test")},
		{"SNI of another name", defaults, tlsTo("api.test"), hello(sni("evil.test")), "", "", fronted("evil.test")},
		{"SNI of another name of the rule at the address", defaults, tlsTo("api.test"), hello(sni("alt.test")), "served alt.test\n", "", allowed("cdn", "alt.test")},
		{"SNI of a name of the rule at another address", defaults, tlsTo("api.test"), hello(sni("far.test")), "", "", fronted("far.test")},
		{"Host of the CONNECT name", defaults, httpTo("api.test"), request(httpTo("api.test")), "served " + httpTo("api.test") + "\n", "", allowed("cdn", "api.test")},
		{"Host of another name", defaults, httpTo("api.test"), request(httpTo("evil.test")), "", "403 Forbidden (tunnel carries another name)", fronted("evil.test")},
		{"Host of another name of the rule at the address", defaults, httpTo("api.test"), request(httpTo("alt.test")), "served " + httpTo("alt.test") + "\n", "", allowed("cdn", "alt.test")},
		{"Host of another port", defaults, httpTo("api.test"), request(tlsTo("api.test")), "", "403 Forbidden (tunnel carries another name)", fronted("api.test")},
		{"no SNI", defaults, tlsTo("api.test"), hello(noSNI), "", "", refusedBy(RefusedNoSNI, policy.ReasonNoSNI, "cdn")},
		{"no SNI, allow_no_sni, no CIDR in the rule", policyWith(true, true), tlsTo("api.test"), hello(noSNI), "", "", fronted("")},
		{"no SNI, allow_no_sni, the rule's CIDR", policyWith(true, true), tlsTo("addr.test"), hello(noSNI), "served \n", "", allowed("by-address", "")},
		{"ECH, strip_ech: the outer name decides", defaults, tlsTo("api.test"), hello(ech), "served hidden.test\n", "", allowed("cdn", "api.test")},
		{"ECH, outer name not the CONNECT name", defaults, tlsTo("alt.test"), hello(ech), "served hidden.test\n", "", allowed("cdn", "api.test")},
		{"ECH, outer name of no rule of the CONNECT", defaults, tlsTo("evil.test"), hello(ech), "", "", map[string]any{"action": "deny", "refused": RefusedFronted.String(), "sni": "api.test", "near_rule": "evil"}},
		{"ECH without strip_ech", policyWith(false, false), tlsTo("api.test"), hello(ech), "", "", refusedBy(RefusedNoSNI, policy.ReasonNoSNI, "cdn")},
		{"ECH without strip_ech, allow_no_sni, the rule's CIDR", policyWith(false, true), tlsTo("addr.test"), hello(ech), "served hidden.test\n", "", allowed("by-address", "api.test")},
		{"neither TLS nor HTTP", defaults, tlsTo("api.test"), raw("ping\n"), "", "closed with nothing", refusedBy(RefusedProtocol, policy.ReasonBadRequest, "cdn")},
		{"SSH banner", defaults, tlsTo("api.test"), raw("SSH-2.0-OpenSSH_9.6\r\n"), "", "closed with nothing", refusedBy(RefusedBadRequest, policy.ReasonBadRequest, "cdn")},
		{"TLS below the rule's min_version", defaults, tlsTo("new.test"), hello(tls12), "", "", map[string]any{"action": "deny", "refused": RefusedTLSVersion.String(), "sni": "new.test", "near_rule": "modern"}},
		{"CONNECT to an address, no SNI", defaults, tlsTo("127.0.0.1"), hello(noSNI), "served \n", "", allowed("by-address", "")},
		{"CONNECT to an address, SNI of a name of its rule", defaults, tlsTo("127.0.0.1"), hello(sni("addr.test")), "served addr.test\n", "", allowed("by-address", "addr.test")},
		{"CONNECT to an address, SNI of a name of another rule", defaults, tlsTo("127.0.0.1"), hello(sni("api.test")), "", "", map[string]any{"action": "deny", "refused": RefusedFronted.String(), "sni": "api.test", "near_rule": "by-address"}},
		{"CONNECT to an address, Host of it", defaults, httpTo("127.0.0.1"), request(httpTo("127.0.0.1")), "served " + httpTo("127.0.0.1") + "\n", "", allowed("by-address", "127.0.0.1")},
		{"inspect_tunnels: false, another name", defaults, tlsTo("raw.test"), hello(sni("evil.test")), "served evil.test\n", "", map[string]any{"action": "allow", "rule": "raw", "sni": nil}},
		{"inspect_tunnels: false, neither TLS nor HTTP", defaults, httpTo("raw.test"), raw("ping\r\n\r\n"), "HTTP/1.1 400 Bad Request", "", map[string]any{"action": "allow", "rule": "raw", "sni": nil}},
	}
	for _, ps := range []paths{{}, {slow: true}} {
		hs := map[string]*harness{}
		for _, tc := range cases {
			h := hs[tc.policy]
			if h == nil {
				h = startExplicit(t, tc.policy, res, ps)
				hs[tc.policy] = h
			}
			name := fmt.Sprintf("%s (slow %v)", tc.name, ps.slow)
			served := c.served()
			r := connectVia(t, h.addr, "", tc.target, "")
			if r.status != 200 {
				t.Errorf("%s: CONNECT %s: got %d %s, want 200", name, tc.target, r.status, r.reason)
				continue
			}
			r.conn.SetDeadline(time.Now().Add(15 * time.Second))
			got, err := tc.client(r)
			r.conn.Close()
			switch {
			case tc.want != "" && !strings.HasPrefix(got, tc.want):
				t.Errorf("%s: got %q, %v; want %q", name, got, err, tc.want)
			case tc.want == "" && err == nil:
				t.Errorf("%s: got %q, want the tunnel refused", name, got)
			case tc.want == "" && tc.wantErr != "" && !strings.Contains(fmt.Sprint(err), tc.wantErr):
				t.Errorf("%s: got %v, want an error with %q", name, err, tc.wantErr)
			}
			checkAudit(t, h.auditOf(t, r.conn), tc.audit)
			if n := c.served() - served; tc.want == "" && n != 0 {
				t.Errorf("%s: the CDN answered a refused tunnel", name)
			}
		}
	}
}

// TestTunnelSilentClient: a client that sends nothing into its tunnel is
// cut off after PeekTimeout, on both paths, and the refusal is audited.
func TestTunnelSilentClient(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d]\n", echo.Port())
	for _, ps := range []paths{{}, {slow: true}} {
		h := startExplicit(t, pol, mapResolver{"open.test": addrs("127.0.0.1")}, ps,
			func(c *Config) { c.PeekTimeout = 300 * time.Millisecond })
		r := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
		if r.status != 200 {
			t.Fatalf("CONNECT: got %d", r.status)
		}
		start := time.Now()
		r.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := r.br.ReadByte(); !isClosed(err) {
			t.Fatalf("slow %v: silent tunnel: read got %v, want it closed", ps.slow, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("slow %v: closed after %v, want about 300ms", ps.slow, d)
		}
		line := h.auditOf(t, r.conn)
		checkAudit(t, line, refusedBy(RefusedBadRequest, policy.ReasonBadRequest, "open"))
		if e, _ := line["error"].(string); !strings.Contains(e, "timeout") {
			t.Errorf("slow %v: audit error %q, want it to say the client timed out", ps.slow, e)
		}
		waitFor(t, "the tunnel's slot", func() bool { return h.p.active.Load() == 0 })
	}
}

// TestTunnelInspectionAuditMode: audit mode lets a CONNECT no rule allows
// through as would-deny, but not a tunnel that carries another name: with
// no rule, only the CONNECT name passes.
func TestTunnelInspectionAuditMode(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	pol := fmt.Sprintf("mode: audit\nproxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d]\n", echo.Port())
	res := mapResolver{"open.test": addrs("127.0.0.1"), "unlisted.test": addrs("127.0.0.1")}
	for _, ps := range []paths{{}, {slow: true}} {
		h := startExplicit(t, pol, res, ps)
		target := fmt.Sprintf("unlisted.test:%d", echo.Port())
		r := connectVia(t, h.addr, "", target, "")
		r.echo(t)
		r.conn.Close()
		checkAudit(t, h.auditOf(t, r.conn), map[string]any{"action": "would-deny", "sni": "unlisted.test", "refused": nil})

		r = connectVia(t, h.addr, "", target, "")
		r.conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(r.conn, "GET / HTTP/1.1\r\nHost: open.test:%d\r\n\r\n", echo.Port())
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("slow %v: audit mode, another name in a would-deny tunnel: %v, %v; want 403", ps.slow, resp, err)
		}
		r.conn.Close()
		checkAudit(t, h.auditOf(t, r.conn), map[string]any{"action": "deny", "refused": RefusedFronted.String(), "sni": "open.test"})
	}
}
