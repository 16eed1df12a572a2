package proxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// backend is an HTTP handler that reports what it received.
func backend(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Seen-Host", r.Host)
	w.Header().Set("X-Seen-Proxy-Auth", r.Header.Get("Proxy-Authorization"))
	w.Header().Set("X-Seen-Secret", r.Header.Get("X-Secret"))
	w.Header().Set("X-Seen-Forwarded", r.Header.Get("X-Forwarded-For"))
	fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
}

func proxyClient(proxyAddr string, roots *tls.Config) *http.Client {
	u := &url.URL{Scheme: "http", Host: proxyAddr}
	return &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: roots},
		Timeout:   20 * time.Second,
	}
}

func webPolicy(port string) string {
	return fmt.Sprintf(`
proxy: {deny_private: true}
rules:
  - name: web
    to: [web.test]
    ports: [%s]
  - name: loopback-tests
    to: [127.0.0.0/8]
    ports: [1]
`, port)
}

func TestForwardHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(backend))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	h := startProxy(t, webPolicy(u.Port()), mapResolver{"web.test": addrs("127.0.0.1")})
	c := proxyClient(h.addr, nil)

	t.Run("GET", func(t *testing.T) {
		resp, err := c.Get("http://web.test:" + u.Port() + "/path?q=1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "GET /path?q=1 " {
			t.Fatalf("GET via proxy: got %d %q, want 200 %q", resp.StatusCode, body, "GET /path?q=1 ")
		}
		if got := resp.Header.Get("X-Seen-Host"); got != "web.test:"+u.Port() {
			t.Errorf("upstream Host: got %q, want web.test:%s", got, u.Port())
		}
		if got := resp.Header.Get("X-Seen-Forwarded"); got != "" {
			t.Errorf("upstream X-Forwarded-For: got %q, want none (internal addresses stay inside)", got)
		}
	})
	t.Run("POST", func(t *testing.T) {
		resp, err := c.Post("http://web.test:"+u.Port()+"/submit", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "POST /submit payload" {
			t.Fatalf("POST via proxy: got %q, want %q", body, "POST /submit payload")
		}
	})
	t.Run("denied", func(t *testing.T) {
		resp, err := c.Get("http://other.test:" + u.Port() + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("X-Fqdngate-Reason") != "no rule allows this destination" {
			t.Fatalf("denied GET: got %d %q %q, want 403 with the reason", resp.StatusCode, resp.Header.Get("X-Fqdngate-Reason"), body)
		}
	})
	t.Run("keep-alive towards the client", func(t *testing.T) {
		reused := 0
		for i := 0; i < 3; i++ {
			trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
				if ci.Reused {
					reused++
				}
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://web.test:"+u.Port()+"/", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if reused == 0 {
			t.Errorf("three requests: got no reused client connection, want keep-alive")
		}
	})
}

func TestForwardStripsHopByHop(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(backend))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	h := startProxy(t, matrixPolicy(t, uint16(port)), mapResolver{"open.test": addrs("127.0.0.1")})
	c := dialFrom(t, h.addr, "")
	c.SetDeadline(time.Now().Add(20 * time.Second))
	cred := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	fmt.Fprintf(c, "GET http://open.test:%s/x HTTP/1.1\r\nHost: ignored.test\r\nConnection: X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic %s\r\n\r\n", u.Port(), cred)
	resp, err := http.ReadResponse(bufioReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET with hop-by-hop headers: got %d %q, want 200", resp.StatusCode, b)
	}
	for _, hdr := range []string{"X-Seen-Secret", "X-Seen-Proxy-Auth"} {
		if got := resp.Header.Get(hdr); got != "" {
			t.Errorf("%s: got %q, want the hop-by-hop header removed", hdr, got)
		}
	}
	if got := resp.Header.Get("X-Seen-Host"); got != "open.test:"+u.Port() {
		t.Errorf("upstream Host: got %q, want the absolute URL's host", got)
	}
}

func TestForwardSSRF(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(backend))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	pol := fmt.Sprintf(`
proxy: {deny_private: true}
rules:
  - name: web
    to: [evil.test]
    ports: [%s]
`, u.Port())
	h := startProxy(t, pol, mapResolver{"evil.test": addrs("127.0.0.1")})
	resp, err := proxyClient(h.addr, nil).Get("http://evil.test:" + u.Port() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Fqdngate-Reason") != RefusedPrivate.String() {
		t.Fatalf("GET of a name resolving to loopback: got %d %q, want 403 %q", resp.StatusCode, resp.Header.Get("X-Fqdngate-Reason"), RefusedPrivate)
	}
	checkAudit(t, h.auditLine(t, `"name":"evil.test"`), refusedBy(RefusedPrivate, policy.ReasonPrivate, "web"))
}

func TestForwardUpstreamDown(t *testing.T) {
	port := fmt.Sprint(deadPort(t))
	h := startProxy(t, webPolicy(port), mapResolver{"web.test": addrs("127.0.0.1")})
	resp, err := proxyClient(h.addr, nil).Get("http://web.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || resp.Header.Get("X-Fqdngate-Reason") != RefusedDial.String() {
		t.Fatalf("GET of a dead upstream: got %d %q, want 502 %q", resp.StatusCode, resp.Header.Get("X-Fqdngate-Reason"), RefusedDial)
	}
	checkAudit(t, h.auditLine(t, `"name":"web.test"`), failedBy(RefusedDial, policy.ReasonUpstream, "web"))
}

// tlsBackend starts an HTTPS server on 127.0.0.1 with a leaf for hosts.
func tlsBackend(t *testing.T, ca *certs.CA, hosts ...string) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(backend))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, hosts...)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func TestConnectHTTPSEndToEnd(t *testing.T) {
	ca := certs.NewCA(t)
	srv := tlsBackend(t, ca, "web.test")
	u, _ := url.Parse(srv.URL)
	h := startProxy(t, webPolicy(u.Port()), mapResolver{"web.test": addrs("127.0.0.1")})
	c := proxyClient(h.addr, &tls.Config{RootCAs: ca.Pool()})
	resp, err := c.Get("https://web.test:" + u.Port() + "/secure")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.CloseIdleConnections()
	if string(body) != "GET /secure " {
		t.Fatalf("HTTPS via CONNECT: got %q, want %q", body, "GET /secure ")
	}
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	ca := certs.NewCA(t)
	tsrv := tlsBackend(t, ca, "web.test")
	tu, _ := url.Parse(tsrv.URL)
	psrv := httptest.NewServer(http.HandlerFunc(backend))
	defer psrv.Close()
	pu, _ := url.Parse(psrv.URL)
	pol := fmt.Sprintf(`
proxy: {deny_private: false}
rules:
  - name: web
    to: [web.test]
    ports: [%s, %s]
`, tu.Port(), pu.Port())
	h := startProxy(t, pol, mapResolver{"web.test": addrs("127.0.0.1")})
	caFile := ca.WriteFile(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(curl, append([]string{"-sS", "--max-time", "20", "-x", "http://" + h.addr}, args...)...)
		cmd.Env = append(os.Environ(), "NO_PROXY=", "no_proxy=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if got := run("--cacert", caFile, "https://web.test:"+tu.Port()+"/tls"); got != "GET /tls " {
		t.Errorf("curl https via proxy: got %q, want %q", got, "GET /tls ")
	}
	if got := run("http://web.test:" + pu.Port() + "/plain"); got != "GET /plain " {
		t.Errorf("curl http via proxy: got %q, want %q", got, "GET /plain ")
	}
	if got := run("-o", "/dev/null", "-w", "%{http_code}", "http://denied.test:"+pu.Port()+"/"); got != "403" {
		t.Errorf("curl denied: got %q, want 403", got)
	}
}

func TestForwardIdleUpstream(t *testing.T) {
	// An upstream that accepts and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	pol := fmt.Sprintf(`
proxy: {deny_private: false, idle_timeout: 1s}
rules:
  - name: web
    to: [web.test]
    ports: [%s]
`, port)
	h := startProxy(t, pol, mapResolver{"web.test": addrs("127.0.0.1")})
	resp, err := proxyClient(h.addr, nil).Get("http://web.test:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 && resp.StatusCode != 504 {
		t.Fatalf("GET of a silent upstream: got %d, want 502 or 504 once the idle timeout passes", resp.StatusCode)
	}
}
