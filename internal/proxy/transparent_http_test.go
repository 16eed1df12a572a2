package proxy

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/peek"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// seenServer is an HTTP server on 127.0.0.1 that records every request it
// is given and answers with what it saw.
type seenServer struct {
	ap netip.AddrPort
	mu sync.Mutex // guards following
	rs []string   // "METHOD host body" per request
}

func newSeenServer(t testing.TB) *seenServer {
	t.Helper()
	s := &seenServer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.rs = append(s.rs, fmt.Sprintf("%s %s %s", r.Method, r.Host, body))
		s.mu.Unlock()
		w.Header().Set("X-Seen-Connection", r.Header.Get("Connection"))
		w.Header().Set("X-Seen-Hop", r.Header.Get("X-Hop"))
		w.Header().Set("X-Seen-Upgrade", r.Header.Get("Upgrade"))
		w.Header().Set("X-Seen-User-Agent", fmt.Sprint(r.Header["User-Agent"]))
		fmt.Fprintf(w, "%s %s %s", r.Method, r.Host, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.ap = ln.Addr().(*net.TCPAddr).AddrPort()
	return s
}

func (s *seenServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.rs...)
}

func webTestPolicy(port uint16) string {
	return fmt.Sprintf(`
proxy: {deny_private: false}
rules:
  - name: web
    to: [web.test]
    ports: [%d]
`, port)
}

// TestTransparentHTTPHostPort: the port in Host (80 when absent) must be
// the port the client connected to.
func TestTransparentHTTPHostPort(t *testing.T) {
	srv := newSeenServer(t)
	port := srv.ap.Port()
	th := startTransparent(t, webTestPolicy(port), mapResolver{"web.test": addrs("127.0.0.1")})
	for _, tc := range []struct {
		name, host string
		want       map[string]any
	}{
		{"same port", fmt.Sprintf("web.test:%d", port), map[string]any{"action": "allow", "rule": "web", "refused": nil}},
		{"same port, leading zero", fmt.Sprintf("web.test:0%d", port), map[string]any{"action": "allow", "rule": "web", "refused": nil}},
		{"no port means 80", "web.test", refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "")},
		{"another port", fmt.Sprintf("web.test:%d", port+1), refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := th.dial(t, srv.ap)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", tc.host)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if tc.want["action"] == "allow" {
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("GET with Host %s: got %v, %v; want 200", tc.host, resp, err)
				}
			} else if err == nil {
				t.Fatalf("GET with Host %s: got %s, want the connection refused", tc.host, resp.Status)
			}
			c.Close()
			line := th.auditOf(t, c)
			checkAudit(t, line, tc.want)
			if line["name"] != "web.test" {
				t.Errorf("audit name: got %v, want web.test", line["name"])
			}
		})
	}
}

// TestTransparentHTTPOneRequest: after the first request of a transparent
// plain HTTP connection nothing more is carried, so a second request on
// the same connection cannot name another Host.
func TestTransparentHTTPOneRequest(t *testing.T) {
	srv := newSeenServer(t)
	port := srv.ap.Port()
	th := startTransparent(t, webTestPolicy(port), mapResolver{"web.test": addrs("127.0.0.1")})
	host := fmt.Sprintf("web.test:%d", port)
	other := fmt.Sprintf("other.test:%d", port)

	t.Run("pipelined", func(t *testing.T) {
		before := len(srv.requests())
		c := th.dial(t, srv.ap)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET /1 HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: %s\r\n\r\n", host, other)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if got, want := string(body), "GET "+host+" "; got != want {
			t.Errorf("first response: got %q, want %q", got, want)
		}
		if !resp.Close {
			t.Errorf("first response does not close the connection; want Connection: close")
		}
		if rest, err := io.ReadAll(br); err != nil && !isClosed(err) || len(rest) > 0 {
			t.Errorf("after the first response: got %q, %v; want the connection closed", rest, err)
		}
		if got := srv.requests()[before:]; len(got) != 1 {
			t.Errorf("requests the server was given: got %q, want only the first", got)
		}
	})
	t.Run("keep-alive client", func(t *testing.T) {
		before := len(srv.requests())
		c := th.dial(t, srv.ap)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "GET /1 HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		fmt.Fprintf(c, "GET /2 HTTP/1.1\r\nHost: %s\r\n\r\n", other)
		if resp, err := http.ReadResponse(br, nil); err == nil {
			t.Errorf("second request on the connection: got %s, want the connection closed", resp.Status)
		}
		if got := srv.requests()[before:]; len(got) != 1 {
			t.Errorf("requests the server was given: got %q, want only the first", got)
		}
	})
	t.Run("POST bodies", func(t *testing.T) {
		for _, req := range []string{
			"POST /p HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 5\r\n\r\nhello",
			"POST /p HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
		} {
			c := th.dial(t, srv.ap)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if got, want := string(body), "POST "+host+" hello"; got != want {
				t.Errorf("POST %q: got %q, want %q", req, got, want)
			}
		}
	})
	t.Run("100-continue", func(t *testing.T) {
		c := th.dial(t, srv.ap)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "POST /c HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", host)
		// The body is only sent once the server says so.
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("waiting for 100 Continue: got %q, %v", line, err)
		}
		br.ReadString('\n') // the blank line ending the interim response
		io.WriteString(c, "hello")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if got, want := string(body), "POST "+host+" hello"; got != want {
			t.Errorf("POST with 100-continue: got %q, want %q", got, want)
		}
	})
	t.Run("hop-by-hop headers", func(t *testing.T) {
		c := th.dial(t, srv.ap)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive, X-Hop, Upgrade\r\nX-Hop: secret\r\nUpgrade: websocket\r\n\r\n", host)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for hdr, want := range map[string]string{
			"X-Seen-Connection": "close",
			"X-Seen-Hop":        "",
			"X-Seen-Upgrade":    "",
			"X-Seen-User-Agent": "[]", // absent stays absent
		} {
			if got := resp.Header.Get(hdr); got != want {
				t.Errorf("%s: got %q, want %q", hdr, got, want)
			}
		}
	})
	waitFor(t, "an audit line per connection", func() bool { return len(th.auditLines(`"component":"proxy"`)) == 6 })
	if n := len(th.auditLines(`"action":"allow"`)); n != 6 {
		t.Errorf("allowed connections in the audit log: got %d, want 6", n)
	}
}

// FuzzTransparentHTTP runs request heads the way a transparent plain HTTP
// connection does (the strict peek, net/http's parser, the agreement
// check) and checks that the request written upstream names the host and
// port that were decided.
func FuzzTransparentHTTP(f *testing.F) {
	for _, tc := range targetCases {
		f.Add("GET / HTTP/1.1\r\nHost: " + tc.in + "\r\n\r\n")
		f.Add("GET http://" + tc.in + "/path HTTP/1.1\r\nHost: " + tc.in + "\r\n\r\n")
	}
	f.Add("GET /1 HTTP/1.1\r\nHost: web.test\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: other.test\r\n\r\n")
	f.Add("POST /p HTTP/1.1\r\nHost: web.test:8080\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n")
	f.Add("POST /c HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
	f.Add("GET / HTTP/1.0\r\nHost: [2001:db8::1]:80\r\nConnection: X-Hop, Upgrade\r\nX-Hop: 1\r\nUpgrade: websocket\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		host, port, raw, err := peek.HTTPHost(strings.NewReader(in), 0)
		if err != nil {
			return
		}
		want, err := parseHost(host)
		if err != nil {
			return
		}
		wantPort := uint16(80)
		if port != "" {
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				t.Fatalf("peek returned port %q", port)
			}
			wantPort = uint16(n)
		}
		req, err := readRequest(raw, strings.NewReader(""))
		if err != nil || !sameHost(req.Host, want, wantPort) {
			return
		}
		var out bytes.Buffer
		req.Write(&out) // the head is written even if the body is cut short
		h := out.String()
		gotHost, gotPort, _, err := peek.HTTPHost(strings.NewReader(h), 0)
		if err != nil {
			t.Fatalf("the request written upstream for %q does not parse: %v\n%q", in, err, h)
		}
		if gotHost != host || cmp.Or(gotPort, "80") != strconv.Itoa(int(wantPort)) {
			t.Fatalf("for %q, decided %s port %d, but wrote Host %s port %q upstream", in, host, wantPort, gotHost, gotPort)
		}
		if !strings.Contains(strings.ToLower(h[:strings.Index(h, "\r\n\r\n")]), "\r\nconnection: close") {
			t.Fatalf("the request written upstream for %q lacks Connection: close:\n%q", in, h)
		}
	})
}
