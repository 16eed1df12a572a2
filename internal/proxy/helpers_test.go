package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/syncbuf"
)

// mapResolver is the test Resolver: names map to fixed addresses.
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, host string) ([]netip.Addr, error) {
	a, ok := m[host]
	if !ok {
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	return a, nil
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

type syncBuffer = syncbuf.Buffer

func mustParse(t testing.TB, yaml string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("policy.Parse: %v\n%s", err, yaml)
	}
	return p
}

type harness struct {
	t     testing.TB
	p     *Proxy
	addr  string // the proxy's listener
	audit *syncBuffer
	pol   func() *policy.Policy
	done  chan error
	stop  context.CancelFunc
}

// startProxy runs an explicit proxy with policy pol (YAML) on 127.0.0.1.
func startProxy(t testing.TB, yaml string, res Resolver, mod ...func(*Config)) *harness {
	t.Helper()
	pol := mustParse(t, yaml)
	buf := &syncBuffer{}
	cfg := Config{
		Policy:   func() *policy.Policy { return pol },
		Resolver: res,
		Audit:    audit.New(buf, "json", nil),
		// Clients in tests keep idle tunnels open; do not wait 30s for them.
		DrainTimeout: 2 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, p: p, addr: ln.Addr().String(), audit: buf, pol: cfg.Policy, done: make(chan error, 1), stop: cancel}
	go func() { h.done <- p.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return h
}

// echoServer accepts on addr (127.0.0.x:0) and echoes every connection.
func echoServer(t testing.TB, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// dialFrom dials the proxy from the loopback address src ("" for any).
func dialFrom(t testing.TB, proxyAddr, src string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type connectResult struct {
	target string // as sent in the CONNECT line
	status int
	reason string // X-Fqdngate-Reason
	conn   net.Conn
	br     *bufio.Reader
	header http.Header
}

// connect sends CONNECT target from src with optional Basic credentials
// ("user:pass") and reads the response head.
func connectVia(t testing.TB, proxyAddr, src, target, cred string) connectResult {
	t.Helper()
	c := dialFrom(t, proxyAddr, src)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if cred != "" {
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(cred)) + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("CONNECT %s: reading response: %v", target, err)
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
	}
	return connectResult{target: target, status: resp.StatusCode, reason: resp.Header.Get("X-Fqdngate-Reason"), conn: c, br: br, header: resp.Header}
}

// echo checks a tunnel to an echo server carries bytes both ways. It
// sends what a tunnel's inspection lets through: an HTTP request head for
// the CONNECT target.
func (r connectResult) echo(t testing.TB) {
	t.Helper()
	msg := firstRequest(t, r.target)
	if _, err := io.WriteString(r.conn, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r.br, got); err != nil || string(got) != msg {
		t.Fatalf("echo through tunnel: got %q, %v; want %q", got, err, msg)
	}
}

// firstRequest is an HTTP request head whose Host is the CONNECT target
// (an address in its canonical spelling): first bytes a tunnel's
// inspection lets through.
func firstRequest(t testing.TB, target string) string {
	t.Helper()
	tg, err := parseTarget(target, 0)
	if err != nil {
		t.Fatalf("firstRequest(%q): %v", target, err)
	}
	host := tg.Host()
	if tg.Addr.Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, tg.Port)
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// auditLines returns the audit lines mentioning s.
func (h *harness) auditLines(s string) []string {
	var out []string
	for _, l := range strings.Split(h.audit.String(), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(fmt.Sprint(err), "reset")
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// auditOf waits for the audit line of the connection whose client end is c
// (the proxy logs that address as "client") and decodes it.
func (h *harness) auditOf(t testing.TB, c net.Conn) map[string]any {
	t.Helper()
	return h.auditLine(t, `"client":"`+c.LocalAddr().String()+`"`)
}

// auditLine waits for the audit lines containing s, of one connection,
// and decodes the last: the only line of a refusal or forwarded request,
// or the closing line of a tunnel, once checkTunnelLines has checked it
// against the opening line.
func (h *harness) auditLine(t testing.TB, s string) map[string]any {
	t.Helper()
	waitFor(t, "the audit line with "+s, func() bool { return len(h.auditLines(s)) > 0 })
	first := decodeLine(t, h.auditLines(s)[0])
	want := 1
	if first["msg"] == "decision" && first["action"] != "deny" && first["conn"] != nil && first["bytes_up"] == nil {
		want = 2 // a tunnel's opening line: its closing line follows
		waitFor(t, "the closing line with "+s, func() bool { return len(h.auditLines(s)) >= 2 })
	}
	lines := h.auditLines(s)
	if len(lines) != want {
		t.Errorf("audit lines with %s: got %d, want %d:\n%s", s, len(lines), want, strings.Join(lines, "\n"))
	}
	last := decodeLine(t, lines[len(lines)-1])
	if want == 2 {
		checkTunnelLines(t, first, last)
	}
	return last
}

func decodeLine(t testing.TB, l string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(l), &m); err != nil {
		t.Fatalf("decoding audit line %q: %v", l, err)
	}
	return m
}

// checkTunnelLines checks the two lines of a tunnel: the opening line is
// the decision (no totals), the closing line repeats it with the same
// connection id and adds how the tunnel ended and its totals.
func checkTunnelLines(t testing.TB, open, closed map[string]any) {
	t.Helper()
	if open["msg"] != "decision" || closed["msg"] != "closed" {
		t.Errorf("tunnel lines: msg %v then %v, want decision then closed", open["msg"], closed["msg"])
	}
	if id, _ := open["conn"].(string); id == "" || closed["conn"] != id {
		t.Errorf("tunnel lines: conn %v then %v, want one id", open["conn"], closed["conn"])
	}
	for _, k := range []string{"component", "source", "name", "port", "action", "rule", "reason", "listener", "client", "user", "sni", "ech", "dialled"} {
		if open[k] != closed[k] {
			t.Errorf("tunnel lines: %s %v then %v, want the same", k, open[k], closed[k])
		}
	}
	for _, k := range []string{"bytes_up", "bytes_down", "duration_ms", "ended", "refused", "error"} {
		if v, ok := open[k]; ok {
			t.Errorf("tunnel opening line has %s %v, want none", k, v)
		}
	}
	for _, k := range []string{"bytes_up", "bytes_down", "duration_ms", "ended"} {
		if _, ok := closed[k]; !ok {
			t.Errorf("tunnel closing line has no %s", k)
		}
	}
}

// checkAudit compares the fields of an audit line with want; a want value
// of nil means the field must be absent.
func checkAudit(t testing.TB, got map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		switch {
		case v == nil && ok:
			t.Errorf("audit %s: got %v, want no such field", k, g)
		case v != nil && g != v:
			t.Errorf("audit %s: got %v, want %v (line %v)", k, g, v, got)
		}
	}
}

// failedBy is refusedBy for a refusal that is a failure (action fail).
func failedBy(r Refusal, reason policy.Reason, nearRule string) map[string]any {
	m := refusedBy(r, reason, nearRule)
	m["action"] = "fail"
	return m
}

// refusedBy is what the audit line of a connection the proxy itself refused
// says: a deny with reason, no rule, and the rule that had allowed it (if
// any, else "") as near_rule.
func refusedBy(r Refusal, reason policy.Reason, nearRule string) map[string]any {
	m := map[string]any{"action": "deny", "rule": "", "reason": reason.String(), "refused": r.String(), "near_rule": nil}
	if nearRule != "" {
		m["near_rule"] = nearRule
	}
	return m
}
