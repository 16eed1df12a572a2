package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// matrixPolicy allows open.test for everyone, bank.test for the payments
// group (source 127.0.0.2 or user alice), and the single address
// 127.0.0.3 by CIDR. deny_private is off so loopback echo servers are
// reachable by name; the SSRF tests turn it on.
func matrixPolicy(t testing.TB, port uint16) string {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
mode: enforce
proxy: {deny_private: false, connect_timeout: 5s}
sources:
  payments: [127.0.0.2/32]
users:
  alice: {hash: %q, groups: [payments]}
  bob: {hash: %q, groups: []}
rules:
  - name: open
    to: [open.test]
    ports: [%d]
  - name: bank
    from: [payments]
    to: [bank.test]
    ports: [%d]
  - name: one-address
    to: [127.0.0.3/32]
    ports: [%d]
`, hash, hash, port, port, port)
}

func TestConnectMatrix(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	port := echo.Port()
	echo3 := echoServer(t, fmt.Sprintf("127.0.0.3:%d", port))
	_ = echo3
	res := mapResolver{
		"open.test":  addrs("127.0.0.1"),
		"bank.test":  addrs("127.0.0.1"),
		"other.test": addrs("127.0.0.1"),
	}
	h := startProxy(t, matrixPolicy(t, port), res)
	p := func(host string) string { return fmt.Sprintf("%s:%d", host, port) }

	const (
		matched    = "matched"
		noRule     = "no rule allows this destination"
		noCIDR     = "no CIDR rule covers this address"
		undecided  = "refused before a policy decision"
		authFailed = "proxy credentials missing or wrong"
		malformed  = "malformed request"
	)
	cases := []struct {
		name, src, target, cred string
		wantStatus              int
		wantReason              string // X-Fqdngate-Reason
		wantAudit               string // the audit line's reason; "" for no line
	}{
		{"allowed name", "", p("open.test"), "", 200, "", matched},
		{"allowed name any case", "", p("OPEN.Test."), "", 200, "", matched},
		{"wrong port", "", fmt.Sprintf("open.test:%d", port+1), "", 403, "destination is allowed for this source, but not on this port", "destination is allowed for this source, but not on this port"},
		{"no rule", "", p("other.test"), "", 403, noRule, noRule},
		{"group by source", "127.0.0.2", p("bank.test"), "", 200, "", matched},
		{"group missing asks for credentials", "127.0.0.1", p("bank.test"), "", 407, "proxy authentication required", "destination is allowed, but not for this source"},
		{"group by user", "127.0.0.1", p("bank.test"), "alice:s3cret", 200, "", matched},
		{"user without the group", "127.0.0.1", p("bank.test"), "bob:s3cret", 403, "destination is allowed, but not for this source", "destination is allowed, but not for this source"},
		{"wrong password", "127.0.0.1", p("bank.test"), "alice:wrong", 407, "proxy authentication required", authFailed},
		{"unknown user", "127.0.0.1", p("bank.test"), "mallory:s3cret", 407, "proxy authentication required", authFailed},
		{"malformed credentials", "127.0.0.1", p("bank.test"), "no-colon", 407, "proxy authentication required", authFailed},
		{"ip literal without cidr rule", "", p("127.0.0.1"), "", 403, noCIDR, noCIDR},
		{"ip literal with cidr rule", "", p("127.0.0.3"), "", 200, "", matched},
		{"decimal spelling", "", p("2130706435"), "", 200, "", matched},
		{"octal spelling", "", p("0177.0.0.03"), "", 200, "", matched},
		{"hex spelling", "", p("0x7f.0.0.0x3"), "", 200, "", matched},
		{"short spelling", "", p("127.3"), "", 200, "", matched},
		{"trailing dot spelling", "", p("127.0.0.3."), "", 200, "", matched},
		{"mapped v6 spelling", "", p("[::ffff:127.0.0.3]"), "", 200, "", matched},
		{"decimal spelling of uncovered address", "", p("2130706433"), "", 403, noCIDR, noCIDR},
		{"octal spelling of uncovered address", "", p("0313.0.0.1"), "", 403, noCIDR, noCIDR},
		{"hex spelling of uncovered address", "", p("0xcb.0.0x71.7"), "", 403, noCIDR, noCIDR},
		{"short spelling of uncovered address", "", p("127.1"), "", 403, noCIDR, noCIDR},
		{"v6 loopback literal", "", p("[::1]"), "", 403, noCIDR, noCIDR},
		{"missing port", "", "open.test", "", 400, "bad request", malformed},
		{"unbracketed v6", "", fmt.Sprintf("::1:%d", port), "", 400, "", ""}, // net/http refuses it before the handler
		{"numeric last label", "", p("open.123"), "", 400, "bad request", malformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := connectVia(t, h.addr, tc.src, tc.target, tc.cred)
			if r.status != tc.wantStatus || r.reason != tc.wantReason {
				t.Fatalf("CONNECT %s: got %d %q, want %d %q", tc.target, r.status, r.reason, tc.wantStatus, tc.wantReason)
			}
			if r.status == http.StatusProxyAuthRequired && r.header.Get("Proxy-Authenticate") == "" {
				t.Errorf("407 without Proxy-Authenticate")
			}
			if r.status == 200 {
				r.echo(t)
				r.conn.Close()
			}
			if tc.wantAudit == "" {
				return
			}
			want := map[string]any{"action": "deny", "reason": tc.wantAudit, "rule": ""}
			if tc.wantStatus == 200 {
				want["action"] = "allow"
				delete(want, "rule")
			}
			checkAudit(t, h.auditOf(t, r.conn), want)
		})
	}
	if strings.Contains(h.audit.String(), "s3cret") {
		t.Errorf("audit log contains a password")
	}
}

func TestSSRFDenyPrivate(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	port := echo.Port()
	echoServer(t, fmt.Sprintf("127.0.0.2:%d", port))
	res := mapResolver{
		"loopback.test": addrs("127.0.0.1"),
		"rfc1918.test":  addrs("10.0.0.1"),
		"metadata.test": addrs("169.254.169.254"),
		"v6loop.test":   addrs("::1"),
		"mapped.test":   addrs("::ffff:127.0.0.1"),
		"nat64.test":    addrs("64:ff9b::a9fe:a9fe"),
		"ec2v6.test":    addrs("fd00:ec2::254"),
		"cgnat.test":    addrs("100.64.0.1"),
		"zero.test":     addrs("0.0.0.0"),
		"mixed.test":    addrs("10.0.0.1", "127.0.0.2"),
	}
	pol := fmt.Sprintf(`
proxy: {deny_private: true, connect_timeout: 5s}
rules:
  - name: names
    to: [loopback.test, rfc1918.test, metadata.test, v6loop.test, mapped.test, nat64.test, ec2v6.test, cgnat.test, zero.test, mixed.test]
    ports: [%d]
  - name: named-loopback
    to: [127.0.0.2/32]
    ports: [65535]
`, port)
	h := startProxy(t, pol, res)
	for _, name := range []string{"loopback.test", "rfc1918.test", "metadata.test", "v6loop.test", "mapped.test", "nat64.test", "ec2v6.test", "cgnat.test", "zero.test"} {
		t.Run(name, func(t *testing.T) {
			r := connectVia(t, h.addr, "", fmt.Sprintf("%s:%d", name, port), "")
			if r.status != 403 || r.reason != RefusedPrivate.String() {
				t.Fatalf("CONNECT %s: got %d %q, want 403 %q", name, r.status, r.reason, RefusedPrivate)
			}
			checkAudit(t, h.auditOf(t, r.conn), refusedBy(RefusedPrivate, policy.ReasonPrivate, "names"))
		})
	}
	t.Run("named address is the exception", func(t *testing.T) {
		// 127.0.0.2/32 is named by a rule (for another port): the operator
		// asked for it, so mixed.test may use it, and only it.
		r := connectVia(t, h.addr, "", fmt.Sprintf("mixed.test:%d", port), "")
		if r.status != 200 {
			t.Fatalf("CONNECT mixed.test: got %d %q, want 200", r.status, r.reason)
		}
		r.echo(t)
	})
	lines := h.auditLines(`"name":"metadata.test"`)
	if len(lines) != 1 || !strings.Contains(lines[0], `"action":"deny"`) || !strings.Contains(lines[0], `"refused":"destination resolves only to private addresses"`) {
		t.Errorf("audit for metadata.test: got %q, want one deny line naming the refusal", lines)
	}
}

func TestNeverConnectsToSelf(t *testing.T) {
	pol := `
proxy: {deny_private: false}
rules:
  - name: loop
    to: [self.test]
    ports: ["1-65535"]
`
	res := mapResolver{}
	h := startProxy(t, pol, res)
	res["self.test"] = addrs("127.0.0.1")
	_, port, _ := net.SplitHostPort(h.addr)
	r := connectVia(t, h.addr, "", "self.test:"+port, "")
	if r.status != 403 || r.reason != RefusedSelf.String() {
		t.Fatalf("CONNECT to the proxy itself: got %d %q, want 403 %q", r.status, r.reason, RefusedSelf)
	}
	checkAudit(t, h.auditOf(t, r.conn), refusedBy(RefusedSelf, policy.ReasonSelf, "loop"))
}

func TestUpstreamFailures(t *testing.T) {
	dead := deadPort(t)
	pol := `
proxy: {deny_private: false, connect_timeout: 2s}
rules:
  - name: any
    to: [dead.test, nxdomain.test]
    ports: ["1-65535"]
`
	h := startProxy(t, pol, mapResolver{"dead.test": addrs("127.0.0.1")})
	for _, tc := range []struct {
		target string
		want   int
		reason Refusal
	}{
		{fmt.Sprintf("dead.test:%d", dead), 502, RefusedDial},
		{"nxdomain.test:443", 502, RefusedResolve},
	} {
		r := connectVia(t, h.addr, "", tc.target, "")
		if r.status != tc.want || r.reason != tc.reason.String() {
			t.Errorf("CONNECT %s: got %d %q, want %d %q", tc.target, r.status, r.reason, tc.want, tc.reason)
		}
		checkAudit(t, h.auditOf(t, r.conn), failedBy(tc.reason, policy.ReasonUpstream, "any"))
	}
}

// TestAuditLine: an allowed tunnel is logged when it opens, with the
// decision and a connection id, and again when it closes, with the same
// id, how it ended and its totals; the opening line is there while the
// tunnel is open.
func TestAuditLine(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	for _, ps := range []paths{{}, {slow: true}} {
		h := startExplicit(t, matrixPolicy(t, echo.Port()), mapResolver{"open.test": addrs("127.0.0.1")}, ps)
		r := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
		r.echo(t)
		sel := `"client":"` + r.conn.LocalAddr().String() + `"`
		waitFor(t, "the opening line", func() bool { return len(h.auditLines(sel)) == 1 })
		open := decodeLine(t, h.auditLines(sel)[0])
		decision := map[string]any{
			"component": "proxy", "listener": "explicit", "name": "open.test", "port": float64(echo.Port()),
			"action": "allow", "rule": "open", "reason": "matched", "dialled": echo.String(),
			"sni": "open.test", "source": "127.0.0.1",
		}
		checkAudit(t, open, decision)
		checkAudit(t, open, map[string]any{"msg": "decision", "bytes_up": nil, "bytes_down": nil, "duration_ms": nil, "ended": nil})
		id, _ := open["conn"].(string)
		if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9]+$`).MatchString(id) {
			t.Errorf("slow %v: connection id %q, want 8 hex digits, '-' and a counter", ps.slow, id)
		}
		// Still open: no closing line yet.
		time.Sleep(50 * time.Millisecond)
		if n := len(h.auditLines(sel)); n != 1 {
			t.Fatalf("slow %v: %d lines while the tunnel is open, want the opening line only", ps.slow, n)
		}
		r.conn.Close()
		closed := h.auditOf(t, r.conn) // checks the pair
		checkAudit(t, closed, decision)
		n := float64(len(firstRequest(t, r.target)))
		checkAudit(t, closed, map[string]any{"msg": "closed", "conn": id, "bytes_up": n, "bytes_down": n, "ended": "eof"})
		if v, ok := closed["duration_ms"].(float64); !ok || v <= 0 {
			t.Errorf("closing line has no duration: %v", closed)
		}
	}
}

func TestSlowlorisHeadCutOff(t *testing.T) {
	h := startProxy(t, `rules: []`, mapResolver{}, func(c *Config) { c.HeaderTimeout = 300 * time.Millisecond })
	c := dialFrom(t, h.addr, "")
	head := "CONNECT open.test:443 HTTP/1.1\r\nHost: open.test:443\r\nX-Padding: " + strings.Repeat("a", 200) + "\r\n\r\n"
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, c)
		closed <- err
	}()
	for i := 0; i < len(head); i++ {
		if _, err := c.Write([]byte{head[i]}); err != nil {
			return // cut off: good
		}
		select {
		case <-closed:
			return // cut off before the head was complete
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("a client sending one byte per 50ms finished its head; want it cut off")
}

func TestHeadTooLarge(t *testing.T) {
	h := startProxy(t, `rules: []`, mapResolver{}, func(c *Config) { c.MaxHeaderBytes = 4 << 10 })
	c := dialFrom(t, h.addr, "")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(c, "GET http://open.test/ HTTP/1.1\r\nHost: open.test\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized head: got %d, want 431", resp.StatusCode)
	}
}

func TestMaxConns(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	pol := fmt.Sprintf(`
proxy: {deny_private: false, max_conns: 1}
rules:
  - name: open
    to: [open.test]
    ports: [%d]
`, echo.Port())
	h := startProxy(t, pol, mapResolver{"open.test": addrs("127.0.0.1")})
	first := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	if first.status != 200 {
		t.Fatalf("first CONNECT: got %d, want 200", first.status)
	}
	second := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	if second.status != 503 || second.reason != RefusedBusy.String() {
		t.Fatalf("second CONNECT past max_conns: got %d %q, want 503 %q", second.status, second.reason, RefusedBusy)
	}
	checkAudit(t, h.auditOf(t, second.conn), failedBy(RefusedBusy, policy.ReasonBusy, ""))
	first.echo(t)
	first.conn.Close()
	waitFor(t, "the slot to be released", func() bool { return h.p.active.Load() == 0 })
	third := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	if third.status != 200 {
		t.Fatalf("CONNECT after the first closed: got %d, want 200", third.status)
	}
}

func TestIdleTunnelClosed(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	pol := fmt.Sprintf(`
proxy: {deny_private: false, idle_timeout: 1s}
rules:
  - name: open
    to: [open.test]
    ports: [%d]
`, echo.Port())
	h := startProxy(t, pol, mapResolver{"open.test": addrs("127.0.0.1")})
	r := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	r.echo(t)
	r.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := r.br.ReadByte()
	if !isClosed(err) {
		t.Fatalf("idle tunnel: read got %v, want the proxy to close it", err)
	}
	checkAudit(t, h.auditOf(t, r.conn), map[string]any{"action": "allow", "ended": "idle_timeout"})
}

func TestDrainOnShutdown(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	h := startProxy(t, matrixPolicy(t, echo.Port()), mapResolver{"open.test": addrs("127.0.0.1")},
		// Long enough for the echo below to finish before the deadline
		// on a loaded machine.
		func(c *Config) { c.DrainTimeout = 3 * time.Second })
	r := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	h.stop()
	// In-flight tunnels keep working while draining...
	r.echo(t)
	// ...and are cut at the drain deadline, when Serve returns.
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after the drain deadline")
	}
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.br.ReadByte(); !isClosed(err) {
		t.Fatalf("tunnel after drain: got %v, want closed", err)
	}
	checkAudit(t, h.auditOf(t, r.conn), map[string]any{"action": "allow", "ended": "shutdown"})
	if _, err := net.DialTimeout("tcp", h.addr, time.Second); err == nil {
		t.Errorf("listener still accepting after Serve returned")
	}
}
