package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// transparentHarness runs ServeTransparent with a stub OriginalDst: each
// test connection registers the destination nftables would have recorded.
type transparentHarness struct {
	*harness
	orig sync.Map // client port (uint16) -> netip.AddrPort
}

func startTransparent(t *testing.T, yaml string, res Resolver, mod ...func(*Config)) *transparentHarness {
	t.Helper()
	pol := mustParse(t, yaml)
	buf := &syncBuffer{}
	th := &transparentHarness{}
	cfg := Config{
		Policy:       func() *policy.Policy { return pol },
		Resolver:     res,
		Audit:        audit.New(buf, "json", nil),
		DrainTimeout: 2 * time.Second,
		OriginalDst: func(c *net.TCPConn) (netip.AddrPort, error) {
			// The test registers the destination once its dial returns,
			// which may be after the proxy accepted: wait for it.
			port := c.RemoteAddr().(*net.TCPAddr).AddrPort().Port()
			for i := 0; i < 500; i++ {
				if v, ok := th.orig.Load(port); ok {
					return v.(netip.AddrPort), nil
				}
				time.Sleep(10 * time.Millisecond)
			}
			return netip.AddrPort{}, fmt.Errorf("no original destination for client port %d", port)
		},
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
	th.harness = &harness{t: t, p: p, addr: ln.Addr().String(), audit: buf, pol: cfg.Policy, done: make(chan error, 1), stop: cancel}
	go func() { th.done <- p.ServeTransparent(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-th.done:
			if err != nil {
				t.Errorf("ServeTransparent: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("ServeTransparent did not return after cancel")
		}
	})
	return th
}

// dial connects to the transparent listener as if headed for orig.
func (th *transparentHarness) dial(t testing.TB, orig netip.AddrPort) net.Conn {
	t.Helper()
	c := dialFrom(t, th.addr, "")
	th.orig.Store(c.LocalAddr().(*net.TCPAddr).AddrPort().Port(), orig)
	return c
}

// httpClient is a client whose every connection is "redirected" to the
// transparent listener, destined for orig. Each connection it opens is
// also passed to the optional onDial, so a test can find its audit line.
func (th *transparentHarness) httpClient(t testing.TB, orig netip.AddrPort, tlsCfg *tls.Config, onDial ...func(net.Conn)) *http.Client {
	return &http.Client{
		Timeout: 20 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   tlsCfg,
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				c := th.dial(t, orig)
				for _, f := range onDial {
					f(c)
				}
				return c, nil
			},
		},
	}
}

func serverAddr(t testing.TB, rawURL string) netip.AddrPort {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddrPort(u.Host)
}

func TestTransparent(t *testing.T) {
	ca := certs.NewCA(t)
	tsrv := tlsBackend(t, ca, "web.test", "other.test")
	tap := serverAddr(t, tsrv.URL)
	psrv := httpServer(t)
	pap := serverAddr(t, psrv)
	// Same ports on 127.0.0.2: a server the client might try to reach while
	// claiming an allowed name.
	spoofTLS := tlsBackendAt(t, ca, fmt.Sprintf("127.0.0.2:%d", tap.Port()), "web.test")
	pol := fmt.Sprintf(`
proxy: {deny_private: false}
rules:
  - name: web
    to: [web.test]
    ports: [%d, %d]
  - name: modern
    to: [modern.test]
    ports: [%d]
    tls: {verify: true, ca_file: %q, min_version: "1.3"}
`, tap.Port(), pap.Port(), tap.Port(), ca.WriteFile(t))
	res := mapResolver{"web.test": addrs("127.0.0.1"), "other.test": addrs("127.0.0.1"), "modern.test": addrs("127.0.0.1")}
	th := startTransparent(t, pol, res)
	roots := ca.Pool()

	get := func(t *testing.T, orig netip.AddrPort, u string, cfg *tls.Config) (string, error) {
		resp, err := th.httpClient(t, orig, cfg).Get(u)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	t.Run("TLS with allowed SNI", func(t *testing.T) {
		got, err := get(t, tap, fmt.Sprintf("https://web.test:%d/t", tap.Port()), &tls.Config{RootCAs: roots})
		if err != nil || got != "GET /t " {
			t.Fatalf("HTTPS through the transparent proxy: got %q, %v; want %q", got, err, "GET /t ")
		}
	})
	t.Run("HTTP with allowed Host", func(t *testing.T) {
		got, err := get(t, pap, fmt.Sprintf("http://web.test:%d/h", pap.Port()), nil)
		if err != nil || got != "GET /h " {
			t.Fatalf("HTTP through the transparent proxy: got %q, %v; want %q", got, err, "GET /h ")
		}
	})

	noRule := map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonNoRule.String(), "refused": RefusedPolicy.String()}
	denied := []struct {
		name string
		orig netip.AddrPort
		url  string
		tls  *tls.Config
		want map[string]any // fields of the audit line
	}{
		{"SNI not allowed", tap, fmt.Sprintf("https://other.test:%d/", tap.Port()), &tls.Config{RootCAs: roots}, noRule},
		{"Host not allowed", pap, fmt.Sprintf("http://other.test:%d/", pap.Port()), nil, noRule},
		{"spoofed SNI", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), tap.Port()), fmt.Sprintf("https://web.test:%d/", tap.Port()), &tls.Config{RootCAs: roots}, refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "web")},
		{"no SNI", tap, fmt.Sprintf("https://127.0.0.1:%d/", tap.Port()), &tls.Config{InsecureSkipVerify: true}, refusedBy(RefusedNoSNI, policy.ReasonNoSNI, "")},
		{"TLS below the rule's minimum", tap, fmt.Sprintf("https://modern.test:%d/", tap.Port()), &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS12}, refusedBy(RefusedTLSVersion, policy.ReasonTLSVersion, "modern")},
	}
	for _, tc := range denied {
		t.Run(tc.name, func(t *testing.T) {
			var conn net.Conn
			resp, err := th.httpClient(t, tc.orig, tc.tls, func(c net.Conn) { conn = c }).Get(tc.url)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("%s: got %s, want the connection refused", tc.url, resp.Status)
			}
			checkAudit(t, th.auditOf(t, conn), tc.want)
		})
	}
	_ = spoofTLS
	if l := th.auditLines(`"refused":"` + RefusedSpoofed.String()); len(l) != 1 || !strings.Contains(l[0], `"sni":"web.test"`) || !strings.Contains(l[0], `"action":"deny"`) {
		t.Errorf("spoofing audit: got %q, want one deny line with the SNI", l)
	}
}

func TestTransparentNoSNIAllowed(t *testing.T) {
	ca := certs.NewCA(t)
	tsrv := tlsBackend(t, ca, "127.0.0.1")
	tap := serverAddr(t, tsrv.URL)
	pol := fmt.Sprintf(`
proxy: {deny_private: true, allow_no_sni: true}
rules:
  - name: loopback-tests
    to: [127.0.0.1/32]
    ports: [%d]
`, tap.Port())
	th := startTransparent(t, pol, mapResolver{})
	resp, err := th.httpClient(t, tap, &tls.Config{RootCAs: ca.Pool()}).Get(fmt.Sprintf("https://127.0.0.1:%d/n", tap.Port()))
	if err != nil {
		t.Fatalf("TLS without SNI under allow_no_sni and a CIDR rule: %v", err)
	}
	resp.Body.Close()
}

func TestTransparentDenyPrivate(t *testing.T) {
	psrv := httpServer(t)
	pap := serverAddr(t, psrv)
	pol := fmt.Sprintf(`
proxy: {deny_private: true}
rules:
  - name: web
    to: [web.test]
    ports: [%d]
`, pap.Port())
	th := startTransparent(t, pol, mapResolver{"web.test": addrs("127.0.0.1")})
	if _, err := th.httpClient(t, pap, nil).Get(fmt.Sprintf("http://web.test:%d/", pap.Port())); err == nil {
		t.Fatalf("transparent HTTP to a loopback original destination under deny_private: got success, want refused")
	}
	checkAudit(t, th.auditLine(t, RefusedPrivate.String()), refusedBy(RefusedPrivate, policy.ReasonPrivate, "web"))
}

// TestTransparentSlowClients: a hundred clients trickling their first bytes
// are cut off at the peek deadline, and an honest client is served while
// they hang on.
func TestTransparentSlowClients(t *testing.T) {
	psrv := httpServer(t)
	pap := serverAddr(t, psrv)
	pol := fmt.Sprintf(`
proxy: {deny_private: false}
rules:
  - name: web
    to: [web.test]
    ports: [%d]
`, pap.Port())
	th := startTransparent(t, pol, mapResolver{"web.test": addrs("127.0.0.1")}, func(c *Config) { c.PeekTimeout = time.Second })
	const slow = 100
	head := "GET / HTTP/1.1\r\nHost: web.test\r\nX-Padding: " + strings.Repeat("a", 100) + "\r\n\r\n"
	var wg sync.WaitGroup
	cutOff := make(chan bool, slow)
	for i := 0; i < slow; i++ {
		c := th.dial(t, pap)
		wg.Add(1)
		go func() {
			defer wg.Done()
			closed := make(chan struct{})
			go func() {
				io.Copy(io.Discard, c)
				close(closed)
			}()
			for j := 0; j < len(head); j++ {
				if _, err := c.Write([]byte{head[j]}); err != nil {
					cutOff <- true
					return
				}
				select {
				case <-closed:
					cutOff <- true
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
			cutOff <- false
		}()
	}
	// The honest client is served while the slow ones hang on.
	resp, err := th.httpClient(t, pap, nil).Get(fmt.Sprintf("http://web.test:%d/honest", pap.Port()))
	if err != nil {
		t.Fatalf("honest client among slow ones: %v", err)
	}
	resp.Body.Close()
	wg.Wait()
	close(cutOff)
	for c := range cutOff {
		if !c {
			t.Fatalf("a client sending a byte per 100ms finished its request head; want it cut off")
		}
	}
}

func httpServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(backend)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func tlsBackendAt(t testing.TB, ca *certs.CA, addr string, hosts ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(backend), TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, hosts...)}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return "https://" + ln.Addr().String()
}
