package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

func TestInterleave(t *testing.T) {
	for _, tc := range []struct {
		in, want []string
	}{
		{[]string{"127.0.0.1", "::1"}, []string{"::1", "127.0.0.1"}},
		{[]string{"10.0.0.1", "10.0.0.2", "2001:db8::1"}, []string{"2001:db8::1", "10.0.0.1", "10.0.0.2"}},
		{[]string{"2001:db8::1", "2001:db8::2", "10.0.0.1", "10.0.0.2"}, []string{"2001:db8::1", "10.0.0.1", "2001:db8::2", "10.0.0.2"}},
		{[]string{"10.0.0.1"}, []string{"10.0.0.1"}},
	} {
		got := interleave(addrs(tc.in...))
		if !slices.Equal(got, addrs(tc.want...)) {
			t.Errorf("interleave(%v): got %v, want %v", tc.in, got, tc.want)
		}
	}
}

func dualPolicy(port uint16) string {
	return fmt.Sprintf(`
proxy: {deny_private: false, connect_timeout: 5s}
rules:
  - name: dual
    to: [dual.test]
    ports: [%d]
`, port)
}

func TestHappyEyeballs(t *testing.T) {
	t.Run("prefers IPv6", func(t *testing.T) {
		v4 := echoServer(t, "127.0.0.1:0")
		echoServer(t, fmt.Sprintf("[::1]:%d", v4.Port()))
		h := startProxy(t, dualPolicy(v4.Port()), mapResolver{"dual.test": addrs("127.0.0.1", "::1")})
		r := connectVia(t, h.addr, "", fmt.Sprintf("dual.test:%d", v4.Port()), "")
		r.echo(t)
		r.conn.Close()
		checkAudit(t, h.auditOf(t, r.conn), map[string]any{"dialled": fmt.Sprintf("[::1]:%d", v4.Port())})
	})
	t.Run("falls back to IPv4", func(t *testing.T) {
		v4 := echoServer(t, "127.0.0.1:0") // nothing on [::1] at this port
		h := startProxy(t, dualPolicy(v4.Port()), mapResolver{"dual.test": addrs("::1", "127.0.0.1")})
		r := connectVia(t, h.addr, "", fmt.Sprintf("dual.test:%d", v4.Port()), "")
		if r.status != 200 {
			t.Fatalf("CONNECT with a dead IPv6 address: got %d %q, want 200 over IPv4", r.status, r.reason)
		}
		r.echo(t)
	})
}

func TestHalfClose(t *testing.T) {
	// The server reads to EOF, then answers: it only works if the client's
	// half-close reaches it and the way back stays open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		fmt.Fprintf(c, "got %d bytes", len(b))
	}()
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	h := startProxy(t, dualPolicy(port), mapResolver{"dual.test": addrs("127.0.0.1")})
	r := connectVia(t, h.addr, "", fmt.Sprintf("dual.test:%d", port), "")
	msg := firstRequest(t, r.target)
	io.WriteString(r.conn, msg)
	r.conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(r.br)
	if want := fmt.Sprintf("got %d bytes", len(msg)); err != nil || string(got) != want {
		t.Fatalf("after half-close: got %q, %v; want %q", got, err, want)
	}
}

func TestAuditModeAndMetrics(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	pol := fmt.Sprintf(`
mode: audit
proxy: {deny_private: false}
rules:
  - name: open
    to: [open.test]
    ports: [%d]
`, echo.Port())
	h := startProxy(t, pol, mapResolver{"open.test": addrs("127.0.0.1"), "unlisted.test": addrs("127.0.0.1")},
		func(c *Config) { c.Registerer = reg })
	for _, name := range []string{"open.test", "unlisted.test"} {
		r := connectVia(t, h.addr, "", fmt.Sprintf("%s:%d", name, echo.Port()), "")
		if r.status != 200 {
			t.Fatalf("audit mode CONNECT %s: got %d, want 200", name, r.status)
		}
		r.echo(t)
		r.conn.Close()
	}
	// Each tunnel's opening and closing lines.
	waitFor(t, "four audit lines", func() bool { return len(h.auditLines(`"component":"proxy"`)) == 4 })
	if l := h.auditLines(`"name":"unlisted.test"`); len(l) != 2 || !strings.Contains(l[0], `"action":"would-deny"`) || !strings.Contains(l[1], `"action":"would-deny"`) {
		t.Errorf("audit mode lines for unlisted.test: got %q, want action would-deny", l)
	}
	if got := value(t, h.p.metrics.conns.WithLabelValues("explicit", "would-deny", "")); got != 1 {
		t.Errorf("would-deny connections: got %v, want 1", got)
	}
	if got := value(t, h.p.metrics.conns.WithLabelValues("explicit", "allow", "open")); got != 1 {
		t.Errorf("allowed connections by rule open: got %v, want 1", got)
	}
	n := len(firstRequest(t, fmt.Sprintf("open.test:%d", echo.Port()))) + len(firstRequest(t, fmt.Sprintf("unlisted.test:%d", echo.Port())))
	if got := value(t, h.p.metrics.bytes.WithLabelValues("up")); got != float64(n) {
		t.Errorf("bytes up: got %v, want %d", got, n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var dials uint64
	for _, mf := range mfs {
		if mf.GetName() == "fqdngate_proxy_dial_seconds" {
			dials = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if dials != 2 {
		t.Errorf("dial histogram: got %d samples, want 2", dials)
	}
	if _, err := New(Config{Policy: h.pol, Resolver: mapResolver{}, Registerer: reg}); err == nil {
		t.Errorf("a second Proxy on the same registry: got nil, want an error")
	}

	// A failure stays a failure in audit mode, whether or not a rule
	// allowed the destination: it is neither a denial nor a would-deny.
	for _, name := range []string{"open.test", "unlisted.test", "nxdomain.test"} {
		r := connectVia(t, h.addr, "", fmt.Sprintf("%s:%d", name, deadPort(t)), "")
		if r.status < 500 {
			t.Fatalf("audit mode CONNECT %s to a closed port: got %d, want a 5xx", name, r.status)
		}
		checkAudit(t, h.auditOf(t, r.conn), map[string]any{"action": "fail", "rule": "", "reason": policy.ReasonUpstream.String()})
		r.conn.Close()
	}
	if got := value(t, h.p.metrics.conns.WithLabelValues("explicit", "fail", "")); got != 3 {
		t.Errorf("failed connections: got %v, want 3", got)
	}
}

// deadPort returns a port of 127.0.0.1 on which nothing listens, nor can
// until the test ends: a TCP socket bound to it, without SO_REUSEADDR and
// never listening, holds it, so no listener can bind it and no connection
// gets it as its ephemeral port. A connection to it is refused. (A port
// found by closing a listener is free for anyone to take again: another
// test's listener, or the proxy's own dial, whose source port it can be.)
func deadPort(t testing.TB) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*syscall.SockaddrInet4).Port
}

func TestNoPolicy(t *testing.T) {
	buf := &syncBuffer{}
	p, err := New(Config{Policy: func() *policy.Policy { return nil }, Resolver: mapResolver{}, Audit: audit.New(buf, "json", nil)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	r := connectVia(t, ln.Addr().String(), "", "open.test:443", "")
	if r.status != 503 || r.reason != RefusedNoPolicy.String() {
		t.Fatalf("CONNECT without a policy: got %d %q, want 503 %q", r.status, r.reason, RefusedNoPolicy)
	}
	h := &harness{audit: buf}
	checkAudit(t, h.auditOf(t, r.conn), refusedBy(RefusedNoPolicy, policy.ReasonUndecided, ""))
}

func TestAuthCache(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	pol := mustParse(t, fmt.Sprintf("users:\n  alice: {hash: %q, groups: []}\nrules: []\n", hash))
	now := time.Unix(1_000_000, 0)
	a := newAuthenticator(func() time.Time { return now })
	basic := func(s string) string { return "Basic " + b64(s) }
	for _, tc := range []struct {
		header, wantUser string
		wantErr          bool
	}{
		{"", "", false},
		{basic("alice:pw"), "alice", false},
		{basic("alice:pw"), "alice", false}, // cached
		{basic("alice:wrong"), "", true},
		{basic("nobody:pw"), "", true},
		{"Bearer xyz", "", true},
		{"Basic !!!", "", true},
		{basic("nocolon"), "", true},
	} {
		got, err := a.check(context.Background(), pol, tc.header)
		if got != tc.wantUser || (err != nil) != tc.wantErr {
			t.Errorf("check(%q): got %q, %v; want %q, error %v", tc.header, got, err, tc.wantUser, tc.wantErr)
		}
	}
	// Two distinct credentials were verified with bcrypt; nothing else.
	if got := len(a.cache); got != 2 {
		t.Errorf("auth cache entries: got %d, want 2 (alice:pw and alice:wrong)", got)
	}
	for k := range a.cache {
		if strings.Contains(string(k[:]), "pw") {
			t.Errorf("auth cache key contains the password")
		}
	}
}

func TestSelfWildcard(t *testing.T) {
	p, err := New(Config{Policy: func() *policy.Policy { return nil }, Resolver: mapResolver{},
		Self: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:9090"), netip.MustParseAddrPort("[::1]:5353")}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ap   string
		want bool
	}{
		{"127.0.0.1:9090", true},
		{"127.5.5.5:9090", true},
		{"[::ffff:127.0.0.1]:9090", true},
		{"[::1]:5353", true},
		{"127.0.0.1:5353", false},
		{"203.0.113.7:9090", false},
		{"127.0.0.1:9091", false},
	} {
		if got := p.isSelf(netip.MustParseAddrPort(tc.ap)); got != tc.want {
			t.Errorf("isSelf(%s): got %v, want %v", tc.ap, got, tc.want)
		}
	}
}

func value(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetCounter().GetValue() + pb.GetGauge().GetValue()
}

// TestRefusalLabels: every Refusal has a metric label of its own, short
// snake_case (String is the audit line's human text).
func TestRefusalLabels(t *testing.T) {
	if len(refusalLabel) != len(refusalText) {
		t.Fatalf("%d refusal labels for %d refusals: give every Refusal a label", len(refusalLabel), len(refusalText))
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := map[string]Refusal{}
	for r := NotRefused + 1; int(r) < len(refusalText); r++ {
		l := r.Label()
		if !snake.MatchString(l) {
			t.Errorf("Refusal %d (%s): label %q is not snake_case", r, r, l)
		}
		if prev, ok := seen[l]; ok {
			t.Errorf("Refusals %d (%s) and %d (%s) share the label %q", prev, prev, r, r, l)
		}
		seen[l] = r
	}
}
