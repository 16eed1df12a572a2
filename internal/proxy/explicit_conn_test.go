package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// funcResolver resolves with a function, for resolvers that block or fail
// in chosen ways.
type funcResolver func(ctx context.Context, host string) ([]netip.Addr, error)

func (f funcResolver) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	return f(ctx, host)
}

// paths picks the ways through the explicit proxy, and hooks into them,
// before it serves.
type paths struct {
	slow      bool // every connection to net/http, as before the fast path
	noPool    bool // every forwarded request through http.Transport
	onConnect func(net.Conn)
	onForward func(net.Conn)
}

// startExplicit is startProxy with the choice of paths.
func startExplicit(t testing.TB, yaml string, res Resolver, ps paths, mod ...func(*Config)) *harness {
	t.Helper()
	pol := mustParse(t, yaml)
	buf := &syncBuffer{}
	cfg := Config{
		Policy:       func() *policy.Policy { return pol },
		Resolver:     res,
		Audit:        audit.New(buf, "json", nil),
		DrainTimeout: 2 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.noFastPath, p.noConnPool = ps.slow, ps.noPool
	p.onFastConnect, p.onFastForward = ps.onConnect, ps.onForward
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

// exchange is one client connection of a scenario, played against both
// proxies at once.
type exchange struct {
	src       string   // client address ("" for any loopback)
	parts     []string // written in turn, each after the answer to the last went quiet
	burst     bool     // write the parts 2ms apart, reading only after the last
	hangUp    bool     // close right after the last part instead of reading
	halfClose bool     // shut the write side after the last part
}

const (
	// quiet is how long an answer must go without a byte to count as
	// complete.
	quiet = 500 * time.Millisecond
	// answerWait bounds how long the two proxies may take to send the
	// same bytes and write the same audit lines. On a loaded machine one
	// of them can be later than quiet, and the comparison waits for it;
	// a real difference fails the test after this long.
	answerWait = 10 * time.Second
)

// side is an exchange's connection to one of the proxies.
type side struct {
	c       net.Conn
	got     strings.Builder
	stopped bool // closed by the proxy, or a write failed: nothing more to do
}

// read reads until the connection has been quiet for d or closes, and
// reports whether anything came.
func (s *side) read(d time.Duration) bool {
	if s.stopped {
		return false
	}
	b := make([]byte, 64<<10)
	came := false
	for {
		s.c.SetReadDeadline(time.Now().Add(d))
		n, err := s.c.Read(b)
		s.got.Write(b[:n])
		came = came || n > 0
		if err != nil {
			if isTimeout(err) {
				return came
			}
			if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
				s.got.WriteString("<" + err.Error() + ">")
			}
			s.got.WriteString("<closed>")
			s.stopped = true
			return true
		}
	}
}

// reply is everything the proxy sent, with Date values blanked.
func (s *side) reply() string { return dateRE.ReplaceAllString(s.got.String(), "Date: DATE\r\n") }

// run plays x against the proxies at addrs and returns, for each,
// everything it sent, with Date values blanked, and the connection's local
// address. After each part both connections are read until each has been
// quiet for quiet and both have received the same, or answerWait passes:
// an answer later than quiet on one side (a loaded machine) is waited
// for, not taken as a difference, and the next part is sent only once
// both proxies have answered this one alike.
func (x exchange) run(t *testing.T, addrs [2]string) (replies, clients [2]string) {
	t.Helper()
	var sides [2]*side
	for i, addr := range addrs {
		sides[i] = &side{c: dialFrom(t, addr, x.src)}
		clients[i] = sides[i].c.LocalAddr().String()
	}
	readBoth := func() {
		for deadline := time.Now().Add(answerWait); ; {
			var wg sync.WaitGroup
			for _, s := range sides {
				wg.Go(func() { s.read(quiet) })
			}
			wg.Wait()
			if sides[0].reply() == sides[1].reply() || time.Now().After(deadline) ||
				(sides[0].stopped && sides[1].stopped) {
				return
			}
		}
	}
	for i, p := range x.parts {
		if strings.HasPrefix(p, "\x00sleep") {
			time.Sleep(300 * time.Millisecond)
			continue
		}
		for _, s := range sides {
			if s.stopped {
				continue
			}
			if _, err := io.WriteString(s.c, p); err != nil {
				s.got.WriteString("<write: " + err.Error() + ">")
				s.stopped = true
			}
		}
		last := i == len(x.parts)-1
		switch {
		case x.hangUp && last:
			for _, s := range sides {
				s.c.Close()
			}
			return [2]string{}, clients
		case x.halfClose && last:
			for _, s := range sides {
				s.c.(*net.TCPConn).CloseWrite()
			}
		case x.burst && !last:
			time.Sleep(2 * time.Millisecond)
			continue
		}
		readBoth()
	}
	for i, s := range sides {
		s.c.Close()
		replies[i] = s.reply()
	}
	return replies, clients
}

var dateRE = regexp.MustCompile(`Date: [^\r\n]*\r\n`)

// auditFor waits until the audit lines of client have settled and returns
// them without the fields that differ from run to run.
func auditFor(t *testing.T, h *harness, client string) []map[string]any {
	t.Helper()
	return auditsFor(t, []*harness{h}, []string{client})[0]
}

// auditsFor is auditFor for the client clients[i] of each proxy hs[i],
// which must write the same lines: it waits until they have settled and
// are the same, or answerWait passes. Settled: unchanged for 100ms once
// there is a line, for 500ms while there is none (a few exchanges have
// none; most have a line coming).
func auditsFor(t *testing.T, hs []*harness, clients []string) [][]map[string]any {
	t.Helper()
	out := make([][]map[string]any, len(hs))
	norm := make([]string, len(hs)) // out[i] as JSON
	counts := make([]int, len(hs))  // lines seen so far
	stable := 0                     // polls since any side changed
	settled := func() bool {
		if stable < 4 {
			return false
		}
		for i := range hs {
			if (counts[i] == 0 && stable < 20) || norm[i] != norm[0] {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(answerWait); !settled() && time.Now().Before(deadline); {
		time.Sleep(25 * time.Millisecond)
		stable++
		for i, h := range hs {
			lines := h.auditLines(`"client":"` + clients[i] + `"`)
			if len(lines) == counts[i] && norm[i] != "" {
				continue
			}
			if len(lines) != counts[i] {
				stable = 0
			}
			counts[i] = len(lines)
			out[i] = normalizeAudit(t, lines)
			b, _ := json.Marshal(out[i])
			norm[i] = string(b)
		}
	}
	return out
}

// normalizeAudit decodes lines and leaves out the fields that differ from
// run to run.
func normalizeAudit(t *testing.T, lines []string) []map[string]any {
	t.Helper()
	var out []map[string]any
	ids := map[any]string{} // connection ids, numbered in order of appearance
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		delete(m, "time")
		delete(m, "duration_ms")
		delete(m, "client")
		// Whether the client's close found the echo unread depends on
		// timing, not on the path.
		delete(m, "ended")
		if id, ok := m["conn"]; ok {
			if _, seen := ids[id]; !seen {
				ids[id] = fmt.Sprintf("conn-%d", len(ids)+1)
			}
			m["conn"] = ids[id]
		}
		out = append(out, m)
	}
	return out
}

// TestFastPathMatchesNetHTTP plays the same exchanges against the proxy
// with and without the CONNECT fast path: the bytes each client receives,
// whether the connection stays open, the audit lines and the metrics must
// all be the same.
func TestFastPathMatchesNetHTTP(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	port := echo.Port()
	echoServer(t, fmt.Sprintf("127.0.0.3:%d", port))
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "web %s %s\n", r.Method, r.URL.Path)
	}))
	defer web.Close()
	webPort := netip.MustParseAddrPort(web.Listener.Addr().String()).Port()
	dead := deadPort(t)

	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	pol := fmt.Sprintf(`
proxy: {deny_private: false, connect_timeout: 5s}
sources:
  payments: [127.0.0.2/32]
users:
  alice: {hash: %q, groups: [payments]}
rules:
  - name: open
    to: [open.test, slow.test, dead.test, nx.test, long.test]
    ports: ["1-65535"]
    inspect_tunnels: false
  - name: bank
    from: [payments]
    to: [bank.test]
    ports: [%d]
    inspect_tunnels: false
  - name: one-address
    to: [127.0.0.3/32]
    ports: [%d]
    inspect_tunnels: false
  - name: inspected
    to: [insp.test, alt.test, far.test]
    ports: [%d]
`, hash, port, port, port)
	names := map[string][]netip.Addr{
		"open.test": addrs("127.0.0.1"), "bank.test": addrs("127.0.0.1"), "dead.test": addrs("127.0.0.1"),
		"insp.test": addrs("127.0.0.1"), "alt.test": addrs("127.0.0.1"), "far.test": addrs("127.0.0.5"), "evil.test": addrs("127.0.0.1"),
	}
	res := funcResolver(func(ctx context.Context, host string) ([]netip.Addr, error) {
		switch host {
		case "slow.test":
			<-ctx.Done()
			return nil, ctx.Err()
		case "long.test":
			return nil, errors.New("no such host: " + strings.Repeat("very long reason ", 300))
		}
		if a, ok := names[host]; ok {
			return a, nil
		}
		return nil, fmt.Errorf("lookup %s: no such host", host)
	})
	regs := [2]*prometheus.Registry{prometheus.NewRegistry(), prometheus.NewRegistry()}
	var mu sync.Mutex
	answered := map[string]int{}  // client address: CONNECTs on the fast path
	forwarded := map[string]int{} // and GETs and HEADs
	count := func(m map[string]int) func(net.Conn) {
		return func(c net.Conn) {
			mu.Lock()
			m[c.RemoteAddr().String()]++
			mu.Unlock()
		}
	}
	hs := [2]*harness{}
	for i, ps := range []paths{{onConnect: count(answered), onForward: count(forwarded)}, {slow: true}} {
		hs[i] = startExplicit(t, pol, res, ps, func(c *Config) { c.Registerer = regs[i] })
	}

	connect := func(target string, fields ...string) string {
		return "CONNECT " + target + " HTTP/1.1\r\n" + strings.Join(fields, "\r\n") + map[bool]string{true: "", false: "\r\n"}[len(fields) == 0] + "\r\n"
	}
	open := fmt.Sprintf("open.test:%d", port)
	hostOpen := "Host: " + open
	cred := "Proxy-Authorization: Basic " + b64("alice:s3cret")
	get := fmt.Sprintf("GET http://open.test:%d/x HTTP/1.1\r\nHost: open.test:%d\r\n\r\n", webPort, webPort)
	bytewise := append(splitBytes(connect(open, hostOpen)), "ping\n")
	openWeb := fmt.Sprintf("open.test:%d", webPort)
	bankWeb := fmt.Sprintf("bank.test:%d", port)
	getOf := func(authority, field string) string {
		if field != "" {
			field += "\r\n"
		}
		return "GET http://" + authority + "/x HTTP/1.1\r\nHost: " + authority + "\r\n" + field + "\r\n"
	}

	insp := fmt.Sprintf("insp.test:%d", port)
	asks := func(host string) string { return "GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n" }
	cases := []struct {
		name string
		fast int // CONNECTs the fast path answers
		fwd  int // GETs and HEADs it forwards
		x    exchange
	}{
		{"inspected: the CONNECT name", 1, 0, exchange{parts: []string{connect(insp), asks(insp)}}},
		{"inspected: another name of the rule at the address", 1, 0, exchange{parts: []string{connect(insp), asks(fmt.Sprintf("alt.test:%d", port))}}},
		{"inspected: a name of the rule elsewhere", 1, 0, exchange{parts: []string{connect(insp), asks(fmt.Sprintf("far.test:%d", port))}}},
		{"inspected: a name of no rule", 1, 0, exchange{parts: []string{connect(insp), asks(fmt.Sprintf("evil.test:%d", port))}}},
		{"inspected: another port", 1, 0, exchange{parts: []string{connect(insp), asks("insp.test:1")}}},
		{"inspected: no port, not 80", 1, 0, exchange{parts: []string{connect(insp), asks("insp.test")}}},
		{"inspected: garbage", 1, 0, exchange{parts: []string{connect(insp), "ping\n"}}},
		{"inspected: early bytes", 1, 0, exchange{parts: []string{connect(insp) + asks(insp)}}},
		{"inspected: early bytes fronted", 1, 0, exchange{parts: []string{connect(insp) + asks(fmt.Sprintf("evil.test:%d", port))}}},
		{"inspected: early half, then the rest", 1, 0, exchange{parts: []string{connect(insp) + "GET / HT", "TP/1.1\r\nHost: " + insp + "\r\n\r\n"}}},
		{"inspected: denied, then allowed", 2, 0, exchange{parts: []string{connect("other.test:443"), connect(insp), asks(insp)}}},
		{"tunnel", 1, 0, exchange{parts: []string{connect(open, hostOpen), "ping\n"}}},
		{"tunnel without Host", 1, 0, exchange{parts: []string{connect(open), "ping\n"}}},
		{"tunnel like curl", 1, 0, exchange{parts: []string{connect(open, hostOpen, "User-Agent: curl/8.5.0", "Proxy-Connection: Keep-Alive"), "ping\n"}}},
		{"tunnel like firefox", 1, 0, exchange{parts: []string{connect(open, "User-Agent: Mozilla/5.0", "Proxy-Connection: keep-alive", "Connection: keep-alive", hostOpen), "ping\n"}}},
		{"early bytes", 1, 0, exchange{parts: []string{connect(open, hostOpen) + "early\n", "late\n"}}},
		{"head byte by byte", 1, 0, exchange{parts: bytewise, burst: true}},
		{"address", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("127.0.0.3:%d", port)), "ping\n"}}},
		{"denied", 1, 0, exchange{parts: []string{connect("other.test:443")}}},
		{"denied, then allowed on the same connection", 2, 0, exchange{parts: []string{connect("other.test:443"), connect(open), "ping\n"}}},
		{"denied with early bytes", 1, 0, exchange{parts: []string{connect("other.test:443") + "\x16\x03\x01\x00\x05hello"}}},
		{"Connection: close", 1, 0, exchange{parts: []string{connect("other.test:443", "Connection: close")}}},
		{"Connection: keep-alive, Close", 1, 0, exchange{parts: []string{connect("other.test:443", "Connection: keep-alive, Close")}}},
		{"Connection: closed", 2, 0, exchange{parts: []string{connect("other.test:443", "Connection: closed"), connect(open), "ping\n"}}},
		{"407, then credentials", 2, 0, exchange{src: "127.0.0.1", parts: []string{connect(fmt.Sprintf("bank.test:%d", port)), connect(fmt.Sprintf("bank.test:%d", port), cred), "ping\n"}}},
		{"wrong password", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("bank.test:%d", port), "Proxy-Authorization: Basic "+b64("alice:nope"))}}},
		{"bearer", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("bank.test:%d", port), "Proxy-Authorization: Bearer x")}}},
		{"by source", 1, 0, exchange{src: "127.0.0.2", parts: []string{connect(fmt.Sprintf("bank.test:%d", port)), "ping\n"}}},
		{"numeric last label", 1, 0, exchange{parts: []string{connect("open.123:443")}}},
		{"octal address", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("0177.0.0.03:%d", port)), "ping\n"}}},
		{"bracketed v6", 1, 0, exchange{parts: []string{connect("[::1]:443")}}},
		{"mapped v6", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("[::ffff:127.0.0.3]:%d", port)), "ping\n"}}},
		{"unbracketed v6", 0, 0, exchange{parts: []string{connect("::1:443")}}},
		{"bracketed non-address", 0, 0, exchange{parts: []string{connect("[0]:443")}}},
		{"bracketed v4", 0, 0, exchange{parts: []string{connect("[127.0.0.3]:443")}}},
		{"bracketed zone", 0, 0, exchange{parts: []string{connect("[fe80::1%25lo]:443")}}},
		{"missing port", 0, 0, exchange{parts: []string{connect("open.test")}}},
		{"empty port", 0, 0, exchange{parts: []string{connect("open.test:")}}},
		{"port 0", 1, 0, exchange{parts: []string{connect("open.test:0")}}},
		{"port too big", 1, 0, exchange{parts: []string{connect("open.test:65536")}}},
		{"userinfo", 0, 0, exchange{parts: []string{connect("user@open.test:443")}}},
		{"percent-escape", 0, 0, exchange{parts: []string{connect(fmt.Sprintf("op%%65n.test:%d", port)), "ping\n"}}},
		{"path target", 0, 0, exchange{parts: []string{connect("/open.test:443")}}},
		{"dial refused", 1, 0, exchange{parts: []string{connect(fmt.Sprintf("dead.test:%d", dead))}}},
		{"no such name", 1, 0, exchange{parts: []string{connect("nx.test:443")}}},
		{"chunked refusal", 1, 0, exchange{parts: []string{connect("long.test:443")}}},
		{"chunked bad request", 1, 0, exchange{parts: []string{connect(strings.Repeat("a", 3000) + ".test:443")}}},
		{"hang-up while resolving", 1, 0, exchange{parts: []string{connect("slow.test:443"), "\x00sleep", ""}, hangUp: true}},
		{"half-close while resolving", 1, 0, exchange{parts: []string{connect("slow.test:443")}, halfClose: true}},
		{"HTTP/1.0", 0, 0, exchange{parts: []string{"CONNECT " + open + " HTTP/1.0\r\n\r\n", "ping\n"}}},
		{"HTTP/1.0 denied", 0, 0, exchange{parts: []string{"CONNECT other.test:443 HTTP/1.0\r\n\r\n"}}},
		{"lower-case method", 0, 0, exchange{parts: []string{"connect " + open + " HTTP/1.1\r\n\r\n"}}},
		{"two Hosts", 0, 0, exchange{parts: []string{connect(open, hostOpen, hostOpen)}}},
		{"bad Host", 0, 0, exchange{parts: []string{connect(open, "Host: a b")}}},
		{"empty Host", 1, 0, exchange{parts: []string{connect(open, "Host:"), "ping\n"}}},
		{"two credentials", 0, 0, exchange{parts: []string{connect(fmt.Sprintf("bank.test:%d", port), cred, cred), "ping\n"}}},
		{"Content-Length", 0, 0, exchange{parts: []string{connect(open, "Content-Length: 5") + "hello", "ping\n"}}},
		{"Transfer-Encoding", 0, 0, exchange{parts: []string{connect(open, "Transfer-Encoding: chunked") + "0\r\n\r\n", "ping\n"}}},
		{"Expect", 0, 0, exchange{parts: []string{connect(open, "Expect: 100-continue"), "ping\n"}}},
		{"Expect other", 0, 0, exchange{parts: []string{connect(open, "Expect: magic")}}},
		{"folded field", 0, 0, exchange{parts: []string{connect(open, "X-A: b", " c"), "ping\n"}}},
		{"space before colon", 0, 0, exchange{parts: []string{connect(open, "X-A : b")}}},
		{"bad line, rest never sent", 0, 0, exchange{parts: []string{"CONNECT " + open + " HTTP/1.1\r\nno colon here\r\n"}}},
		{"bad request line, rest never sent", 0, 0, exchange{parts: []string{"CONNECT a b c\r\n"}}},
		{"two spaces", 0, 0, exchange{parts: []string{"CONNECT  " + open + " HTTP/1.1\r\n\r\n"}}},
		{"bare LF", 0, 0, exchange{parts: []string{"CONNECT " + open + " HTTP/1.1\n\n"}}},
		{"oversized", 0, 0, exchange{parts: []string{connect(open, "X-Big: "+strings.Repeat("a", 64<<10))}}},
		{"just under the first read", 1, 0, exchange{parts: []string{connect(open, "X-Big: "+strings.Repeat("a", headBufSize-len(connect(open, "X-Big: "))-8)), "ping\n"}}},
		{"just over the first read", 0, 0, exchange{parts: []string{connect(open, "X-Big: "+strings.Repeat("a", headBufSize)), "ping\n"}}},
		{"TLS", 0, 0, exchange{parts: []string{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"}}},
		{"garbage line", 0, 0, exchange{parts: []string{"hello\r\n"}}},
		{"GET", 0, 1, exchange{parts: []string{get}}},
		{"GET, then CONNECT", 1, 1, exchange{parts: []string{get, connect(open), "ping\n"}}},
		{"GET, then denied CONNECT, then GET", 1, 2, exchange{parts: []string{get, connect("other.test:443"), get}}},
		{"denied, then GET pipelined", 1, 1, exchange{parts: []string{connect("other.test:443") + get}}},
		{"GET denied", 0, 1, exchange{parts: []string{getOf("other.test", "")}}},
		{"GET denied port", 0, 1, exchange{parts: []string{getOf("bank.test:1", "")}}},
		{"GET 407, then credentials", 0, 2, exchange{src: "127.0.0.1", parts: []string{getOf(bankWeb, ""), getOf(bankWeb, cred)}}},
		{"GET wrong password", 0, 1, exchange{parts: []string{getOf(bankWeb, "Proxy-Authorization: Basic "+b64("alice:nope"))}}},
		{"GET by source", 0, 1, exchange{src: "127.0.0.2", parts: []string{getOf(bankWeb, "")}}},
		{"GET no such name", 0, 1, exchange{parts: []string{getOf("nx.test", "")}}},
		{"GET dial refused", 0, 1, exchange{parts: []string{getOf(fmt.Sprintf("dead.test:%d", dead), "")}}},
		{"GET long refusal", 0, 1, exchange{parts: []string{getOf("long.test", "")}}},
		{"GET hang-up while resolving", 0, 1, exchange{parts: []string{getOf("slow.test", ""), "\x00sleep", ""}, hangUp: true}},
		{"GET Connection: close", 0, 1, exchange{parts: []string{getOf(openWeb, "Connection: close")}}},
		{"GET denied, Connection: close", 0, 1, exchange{parts: []string{getOf("other.test", "Connection: close")}}},
		{"GET pipelined", 0, 3, exchange{parts: []string{get + getOf(openWeb, "") + strings.Replace(get, "GET", "HEAD", 1)}}},
		{"GET bytewise", 0, 1, exchange{parts: splitBytes(get), burst: true}},
		{"GET port 0", 0, 1, exchange{parts: []string{getOf("open.test:0", "")}}},
		{"GET address", 0, 1, exchange{parts: []string{getOf(fmt.Sprintf("127.0.0.3:%d", port), "")}}},
		{"GET without port", 0, 1, exchange{parts: []string{getOf("open.test", "")}}},
		{"GET without Host", 0, 0, exchange{parts: []string{fmt.Sprintf("GET http://%s/ HTTP/1.1\r\n\r\n", openWeb)}}},
		{"GET HTTP/1.0", 0, 0, exchange{parts: []string{fmt.Sprintf("GET http://%s/ HTTP/1.0\r\nHost: a\r\n\r\n", openWeb)}}},
		{"GET https URL", 0, 0, exchange{parts: []string{"GET https://open.test/ HTTP/1.1\r\nHost: a\r\n\r\n"}}},
		{"GET with body", 0, 0, exchange{parts: []string{getOf(openWeb, "Content-Length: 2") + "hi"}}},
		{"GET query with ;", 0, 0, exchange{parts: []string{fmt.Sprintf("GET http://%s/?a;b HTTP/1.1\r\nHost: a\r\n\r\n", openWeb)}}},
		{"POST", 0, 0, exchange{parts: []string{fmt.Sprintf("POST http://%s/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", openWeb)}}},
		{"origin-form GET", 0, 0, exchange{parts: []string{"GET / HTTP/1.1\r\nHost: open.test\r\n\r\n"}}},
	}
	type result struct {
		reply, client string
		audit         []map[string]any
	}
	results := make([][2]result, len(cases))
	// A few cases at a time: started all at once, under -race on a loaded
	// machine, the proxies took longer than quiet to answer many of them
	// on both sides, and a part was sent before the answer to the last.
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, tc := range cases {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			replies, clients := tc.x.run(t, [2]string{hs[0].addr, hs[1].addr})
			audits := auditsFor(t, hs[:], clients[:])
			for j := range hs {
				results[i][j] = result{replies[j], clients[j], audits[j]}
			}
		})
	}
	wg.Wait()
	for i, tc := range cases {
		fast, slow := results[i][0], results[i][1]
		mu.Lock()
		n, fwd := answered[fast.client], forwarded[fast.client]
		mu.Unlock()
		if n != tc.fast || fwd != tc.fwd {
			t.Errorf("%s: the fast path answered %d CONNECTs and forwarded %d requests, want %d and %d", tc.name, n, fwd, tc.fast, tc.fwd)
		}
		if fast.reply != slow.reply {
			t.Errorf("%s: the fast path answers\n%q\nnet/http answers\n%q", tc.name, fast.reply, slow.reply)
		}
		fa, _ := json.Marshal(fast.audit)
		sa, _ := json.Marshal(slow.audit)
		if string(fa) != string(sa) {
			t.Errorf("%s: fast path audit\n%s\nnet/http audit\n%s", tc.name, fa, sa)
		}
		if testing.Verbose() {
			t.Logf("%s: %q\n%s", tc.name, fast.reply, fa)
		}
	}
	if f, s := metricsText(t, regs[0]), metricsText(t, regs[1]); f != s {
		t.Errorf("metrics differ:\nfast path\n%s\nnet/http\n%s", f, s)
	}
}

func splitBytes(s string) []string {
	var parts []string
	for _, b := range []byte(s) {
		parts = append(parts, string(b))
	}
	return parts
}

// metricsText is reg's counters and gauges (not the dial histogram, whose
// timings differ), one per line.
func metricsText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetHistogram() != nil {
				continue
			}
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			lines = append(lines, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue()+m.GetGauge().GetValue()))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func fastPolicy(port uint16) string {
	return fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d]\n", port)
}

func TestFastPathPipelinedBytes(t *testing.T) {
	// Everything the client sends with the head, in the same segment,
	// reaches the upstream first, and is counted.
	echo := echoServer(t, "127.0.0.1:0")
	h := startProxy(t, fastPolicy(echo.Port()), mapResolver{"open.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// A request head padded to 3000 bytes: a tunnel's inspection reads it
	// from what the fast path had read with the CONNECT.
	early := fmt.Sprintf("GET / HTTP/1.1\r\nHost: open.test:%d\r\nX-Pad: ", echo.Port())
	early += strings.Repeat("x", 3000-len(early)-4) + "\r\n\r\n"
	fmt.Fprintf(c, "CONNECT open.test:%d HTTP/1.1\r\n\r\n%s", echo.Port(), early)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	got := make([]byte, len(early))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != early {
		t.Fatalf("echo of the pipelined bytes: %d bytes, %v", len(got), err)
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, br)
	checkAudit(t, h.auditOf(t, c), map[string]any{"action": "allow", "bytes_up": float64(len(early)), "bytes_down": float64(len(early))})
}

func TestFastPathHeadInManySegments(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	h := startProxy(t, fastPolicy(echo.Port()), mapResolver{"open.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	c.(*net.TCPConn).SetNoDelay(true)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	head := fmt.Sprintf("CONNECT open.test:%d HTTP/1.1\r\nHost: open.test:%d\r\nUser-Agent: test\r\n\r\n", echo.Port(), echo.Port())
	for i := 0; i < len(head); i += 3 {
		if _, err := io.WriteString(c, head[i:min(i+3, len(head))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r := connectResult{target: fmt.Sprintf("open.test:%d", echo.Port()), conn: c, br: bufio.NewReader(c)}
	resp, err := http.ReadResponse(r.br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT in 3-byte segments: %v, %v", resp, err)
	}
	r.echo(t)
}

func TestFastPathOversizedHead(t *testing.T) {
	h := startProxy(t, `rules: []`, mapResolver{}, func(c *Config) { c.MaxHeaderBytes = 4 << 10 })
	c := dialFrom(t, h.addr, "")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go io.WriteString(c, "CONNECT open.test:443 HTTP/1.1\r\nX-Big: "+strings.Repeat("a", 64<<10)+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("oversized CONNECT head: got %d, want 431", resp.StatusCode)
	}
}

func TestFastPathSlowHeadAfterHandoff(t *testing.T) {
	// A head that outgrows the fast path's buffer slowly is handed to
	// net/http with the deadline it had: handing over does not give a
	// slow client more time.
	h := startProxy(t, `rules: []`, mapResolver{}, func(c *Config) { c.HeaderTimeout = 500 * time.Millisecond })
	c := dialFrom(t, h.addr, "")
	start := time.Now()
	io.WriteString(c, "CONNECT open.test:443 HTTP/1.1\r\nX-Big: "+strings.Repeat("a", headBufSize))
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(closed)
	}()
	for {
		select {
		case <-closed:
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("cut off after %v, want about 500ms", d)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
		if _, err := io.WriteString(c, "a"); err != nil {
			return
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("a trickling head was not cut off")
		}
	}
}

func TestFastPathKeepAlive(t *testing.T) {
	// A GET kept alive by net/http, then a CONNECT on the same connection:
	// the CONNECT is net/http's to answer, and its tunnel works.
	echo := echoServer(t, "127.0.0.1:0")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer web.Close()
	webPort := netip.MustParseAddrPort(web.Listener.Addr().String()).Port()
	pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d, %d]\n", echo.Port(), webPort)
	h := startProxy(t, pol, mapResolver{"open.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for range 2 {
		fmt.Fprintf(c, "GET http://open.test:%d/ HTTP/1.1\r\nHost: open.test:%d\r\n\r\n", webPort, webPort)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != "hello" {
			t.Fatalf("GET: %d %q", resp.StatusCode, b)
		}
	}
	fmt.Fprintf(c, "CONNECT open.test:%d HTTP/1.1\r\n\r\n", echo.Port())
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT after GETs: %v, %v", resp, err)
	}
	connectResult{target: fmt.Sprintf("open.test:%d", echo.Port()), conn: c, br: br}.echo(t)
	c.Close()
	waitFor(t, "the connection's slot", func() bool { return h.p.active.Load() == 0 })
}

func TestFastPathRefusedThenRetried(t *testing.T) {
	// What curl does: CONNECT, 407, the same CONNECT with credentials on
	// the same connection.
	echo := echoServer(t, "127.0.0.1:0")
	h := startProxy(t, matrixPolicy(t, echo.Port()), mapResolver{"bank.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "127.0.0.1")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	target := fmt.Sprintf("bank.test:%d", echo.Port())
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 407 || resp.Header.Get("Proxy-Authenticate") == "" || resp.Close {
		t.Fatalf("CONNECT without credentials: %v, %v; want 407, kept alive", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, b64("alice:s3cret"))
	resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT with credentials: %v, %v", resp, err)
	}
	connectResult{target: target, conn: c, br: br}.echo(t)
	c.Close()
	// The 407's line, then the tunnel's opening and closing lines.
	waitFor(t, "three audit lines", func() bool { return len(h.auditLines(`"client":"`+c.LocalAddr().String()+`"`)) == 3 })
}

func TestFastPathDrain(t *testing.T) {
	// At shutdown, a connection still sending its head and one waiting
	// after a refusal are closed unanswered, as net/http closes its idle
	// connections; a tunnel carries on until the drain deadline.
	// The drain deadline is long, so that "at once" and "at the
	// deadline" stay apart on a loaded machine (-race, other packages'
	// tests alongside).
	const drain = 3 * time.Second
	echo := echoServer(t, "127.0.0.1:0")
	h := startProxy(t, fastPolicy(echo.Port()), mapResolver{"open.test": addrs("127.0.0.1")},
		func(c *Config) { c.DrainTimeout = drain })
	tun := connectVia(t, h.addr, "", fmt.Sprintf("open.test:%d", echo.Port()), "")
	refused := connectVia(t, h.addr, "", "other.test:443", "")
	if refused.status != 403 {
		t.Fatalf("CONNECT other.test: got %d", refused.status)
	}
	partial := dialFrom(t, h.addr, "")
	io.WriteString(partial, "CONNECT open.test:443 HTTP/1.1\r\n")
	waitFor(t, "three connections", func() bool { return h.p.active.Load() == 3 })
	start := time.Now()
	h.stop()
	for _, c := range []net.Conn{refused.conn, partial} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); !isClosed(err) {
			t.Fatalf("idle connection at shutdown: read %d, %v; want it closed", n, err)
		}
	}
	if d := time.Since(start); d > drain*2/3 {
		t.Errorf("idle connections closed after %v, want at once, not at the %v drain deadline", d, drain)
	}
	tun.echo(t)
	tun.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tun.br.ReadByte(); !isClosed(err) {
		t.Fatalf("tunnel after the drain deadline: %v, want closed", err)
	}
	if d := time.Since(start); d < drain-100*time.Millisecond {
		t.Errorf("tunnel cut after %v, want at the %v drain deadline", d, drain)
	}
}

func TestFastPathHangUpWhileDialling(t *testing.T) {
	// net/http cancels a request whose client hangs up; the fast path's
	// watch does too, so a resolution that would wait for ever ends.
	started := make(chan struct{}, 1)
	res := funcResolver(func(ctx context.Context, host string) ([]netip.Addr, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	h := startProxy(t, "proxy: {deny_private: false, connect_timeout: 1m}\nrules:\n  - name: open\n    to: [slow.test]\n    ports: [443]\n", res)
	c := dialFrom(t, h.addr, "")
	io.WriteString(c, "CONNECT slow.test:443 HTTP/1.1\r\n\r\n")
	<-started
	c.Close()
	checkAudit(t, h.auditOf(t, c), map[string]any{"action": "fail", "refused": RefusedResolve.String(), "error": "context canceled"})
	waitFor(t, "the slot", func() bool { return h.p.active.Load() == 0 })
}

func TestAppendRefusalChunks(t *testing.T) {
	// The chunked body of a long refusal decodes to the message.
	for _, n := range []int{chunkSize - 40, chunkSize, chunkSize * 2, chunkSize*2 + 1} {
		detail := strings.Repeat("d", n)
		b := appendRefusal(nil, answer{502, "upstream connection failed", detail}, false, time.Now())
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(b))), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if want := "fqdngate: upstream connection failed: " + detail + "\n"; err != nil || string(body) != want {
			t.Errorf("detail of %d bytes: body %d bytes, %v; want %d", n, len(body), err, len(want))
		}
	}
}

// BenchmarkShortTunnels runs short tunnels through the fast path as
// bench/proxy/loadgen short does: dial, CONNECT, 64 bytes each way, close.
// The client and the echo server run in the same process, so the figures
// include their work; compare them between versions of the proxy.
// BenchmarkShortTunnels is bench/proxy's short tunnel: CONNECT, a 64-byte
// request head for the CONNECT target, its echo, close; inspected (the
// default) and with inspect_tunnels: false, which tells what the peek
// costs.
func BenchmarkShortTunnels(b *testing.B) {
	b.Run("fast", func(b *testing.B) { benchmarkShortTunnels(b, true, true) })
	b.Run("fast-uninspected", func(b *testing.B) { benchmarkShortTunnels(b, true, false) })
	b.Run("net-http", func(b *testing.B) { benchmarkShortTunnels(b, false, true) })
}

func benchmarkShortTunnels(b *testing.B, fast, inspect bool) {
	echo := echoServer(b, "127.0.0.1:0")
	h := startExplicit(b, fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [127.0.0.1/32]\n    ports: [%d]\n    inspect_tunnels: %v\n", echo.Port(), inspect), mapResolver{}, paths{slow: !fast})
	head := []byte(fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", echo, echo))
	const want = "HTTP/1.1 200 Connection established\r\n\r\n"
	// A request head of 64 bytes, padded in a field of its own.
	msg := []byte(fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nX: \r\n\r\n", echo))
	msg = slices.Insert(msg, len(msg)-4, bytes.Repeat([]byte("x"), 64-len(msg))...)
	b.ReportAllocs()
	b.SetParallelism(8)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	defer func() {
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		b.ReportMetric(float64(time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()))/float64(b.N), "user-ns/op")
		b.ReportMetric(float64(time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()))/float64(b.N), "sys-ns/op")
	}()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 256)
		for pb.Next() {
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write(head)
			if _, err := io.ReadFull(c, buf[:len(want)]); err != nil || string(buf[:len(want)]) != want {
				b.Errorf("CONNECT: %q, %v", buf[:len(want)], err)
				c.Close()
				return
			}
			c.Write(msg)
			if _, err := io.ReadFull(c, buf[:len(msg)]); err != nil {
				b.Error(err)
			}
			c.Close()
		}
	})
}

// BenchmarkForwardKeepAlive sends absolute-form GETs over kept-alive
// client connections through the proxy, to a backend answering 64 bytes,
// as bench/proxy's wrk run does. The clients and the backend are raw
// sockets writing and reading fixed bytes, so what the benchmark counts
// beyond them is the proxy's work.
func BenchmarkForwardKeepAlive(b *testing.B) {
	body := strings.Repeat("x", 64)
	resp := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 64\r\nDate: Sun, 22 Nov 2026 07:00:00 GMT\r\n\r\n" + body
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					// Requests have no body: answer each head.
					for {
						l, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(l) == 2 {
							break
						}
					}
					if _, err := io.WriteString(c, resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	backend := ln.Addr().String()
	_, port, _ := net.SplitHostPort(backend)
	h := startProxy(b, fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [127.0.0.1/32]\n    ports: [%s]\n", port), mapResolver{})
	req := []byte("GET http://" + backend + "/ HTTP/1.1\r\nHost: " + backend + "\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(16)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	defer func() {
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		b.ReportMetric(float64(time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()))/float64(b.N), "user-ns/op")
		b.ReportMetric(float64(time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()))/float64(b.N), "sys-ns/op")
	}()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			c.Write(req)
			r, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode != 200 {
				b.Errorf("status %d", r.StatusCode)
				return
			}
		}
	})
}

// TestConnIDs: every audit line of an explicit client connection, from
// its first forwarded request or tunnel on, carries one connection id:
// forwarded requests kept alive on it, a refusal after them, and the
// tunnel it ends with; another connection has another id. On both paths,
// and across the fast path's handover to net/http.
func TestConnIDs(t *testing.T) {
	echo := echoServer(t, "127.0.0.1:0")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") }))
	defer web.Close()
	webPort := netip.MustParseAddrPort(web.Listener.Addr().String()).Port()
	pol := fmt.Sprintf("proxy: {deny_private: false}\nrules:\n  - name: open\n    to: [open.test]\n    ports: [%d, %d]\n", echo.Port(), webPort)
	for _, ps := range []paths{{}, {slow: true}} {
		h := startExplicit(t, pol, mapResolver{"open.test": addrs("127.0.0.1")}, ps)
		var ids []any
		for range 2 {
			c := dialFrom(t, h.addr, "")
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			// A GET, a POST (which the fast path hands to net/http), a
			// refused CONNECT, then a tunnel.
			for _, m := range []string{"GET", "POST"} {
				fmt.Fprintf(c, "%s http://open.test:%d/ HTTP/1.1\r\nHost: open.test:%d\r\nContent-Length: 0\r\n\r\n", m, webPort, webPort)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			fmt.Fprintf(c, "CONNECT other.test:443 HTTP/1.1\r\n\r\n")
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 403 {
				t.Fatalf("CONNECT other.test: %v, %v", resp, err)
			}
			io.Copy(io.Discard, resp.Body)
			target := fmt.Sprintf("open.test:%d", echo.Port())
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\n", target)
			if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT %s: %v, %v", target, resp, err)
			}
			connectResult{target: target, conn: c, br: br}.echo(t)
			c.Close()
			sel := `"client":"` + c.LocalAddr().String() + `"`
			waitFor(t, "five audit lines", func() bool { return len(h.auditLines(sel)) == 5 })
			var id any
			for i, l := range h.auditLines(sel) {
				m := decodeLine(t, l)
				if i == 0 {
					id = m["conn"]
				}
				if m["conn"] == nil || m["conn"] != id {
					t.Errorf("slow %v: line %d has conn %v, want %v like the first: %s", ps.slow, i, m["conn"], id, l)
				}
			}
			ids = append(ids, id)
		}
		if ids[0] == ids[1] {
			t.Errorf("slow %v: two connections share the id %v", ps.slow, ids[0])
		}
	}
}
