package peek

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Run with: go test ./internal/peek -run '^$' -fuzz FuzzClientHello -fuzztime 60s -fuzzminimizetime 5s
// The seeds are real ClientHellos of 1-2 KB; with the default minimize time
// (60s per new input) the fuzzer spends most of its time shrinking them.

func FuzzClientHello(f *testing.F) {
	for _, tc := range helloCases(f) {
		f.Add(tc.in, uint16(tc.limit))
	}
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		h, raw, err := ClientHello(bytes.NewReader(in), int(limit))
		if !bytes.HasPrefix(in, raw) {
			t.Fatalf("returned bytes are not a prefix of the input")
		}
		if max := cmpOr(int(limit), DefaultMax); len(raw) > max {
			t.Fatalf("read %d bytes, limit %d", len(raw), max)
		}
		// Where the reads fall must not change anything.
		h1, raw1, err1 := ClientHello(iotest.OneByteReader(bytes.NewReader(in)), int(limit))
		if !reflect.DeepEqual(h, h1) || !bytes.Equal(raw, raw1) || fmt.Sprint(err) != fmt.Sprint(err1) {
			t.Fatalf("whole: %+v, %d bytes, %v; byte-wise: %+v, %d bytes, %v", h, len(raw), err, h1, len(raw1), err1)
		}
		if err != nil {
			return
		}
		if n := string(h.ServerName); n != "" {
			if err := dnsname.Check(n); err != nil || isIPLiteral(n) || looksNumeric(n) {
				t.Fatalf("accepted server name %q: %v", n, err)
			}
		}
		for _, p := range h.ALPN {
			if p == "" {
				t.Fatal("accepted an empty ALPN protocol")
			}
		}
		// When crypto/tls also accepts the hello, it must see the same
		// name and protocols we decided on.
		if info := goServerHello(raw); info != nil {
			if got := strings.ToLower(info.ServerName); got != string(h.ServerName) {
				t.Fatalf("we read server name %q, crypto/tls reads %q", h.ServerName, info.ServerName)
			}
			if !slices.Equal(info.SupportedProtos, h.ALPN) {
				t.Fatalf("we read ALPN %q, crypto/tls reads %q", h.ALPN, info.SupportedProtos)
			}
		}
	})
}

// goServerHello feeds raw to a crypto/tls server and returns what it parsed,
// or nil if it rejected the hello.
func goServerHello(raw []byte) *tls.ClientHelloInfo {
	var info *tls.ClientHelloInfo
	errStop := errors.New("stop")
	cfg := &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		info = chi
		return nil, errStop
	}}
	tls.Server(replayConn{r: bytes.NewReader(raw)}, cfg).Handshake()
	return info
}

// replayConn is a net.Conn that reads from r and swallows writes.
type replayConn struct {
	net.Conn // nil; calling anything not below panics, which a test would catch
	r        io.Reader
}

func (c replayConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c replayConn) Write(p []byte) (int, error) { return len(p), nil }
func (c replayConn) Close() error                { return nil }

// Run with: go test ./internal/peek -run '^$' -fuzz FuzzHTTPHost -fuzztime 60s -fuzzminimizetime 5s

func FuzzHTTPHost(f *testing.F) {
	for _, tc := range hostCases {
		f.Add(tc.in, uint16(tc.limit))
	}
	f.Fuzz(func(t *testing.T, in string, limit uint16) {
		host, port, buf, err := HTTPHost(strings.NewReader(in), int(limit))
		if !strings.HasPrefix(in, string(buf)) {
			t.Fatalf("returned bytes are not a prefix of the input")
		}
		if max := cmpOr(int(limit), DefaultMax); len(buf) > max {
			t.Fatalf("read %d bytes, limit %d", len(buf), max)
		}
		host1, port1, _, err1 := HTTPHost(iotest.OneByteReader(strings.NewReader(in)), int(limit))
		if host != host1 || port != port1 || fmt.Sprint(err) != fmt.Sprint(err1) {
			t.Fatalf("whole: %q %q %v; byte-wise: %q %q %v", host, port, err, host1, port1, err1)
		}
		if err != nil {
			return
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" || a.String() != host {
				t.Fatalf("accepted address %q", host)
			}
		} else if err := dnsname.Check(host); err != nil || looksNumeric(host) {
			t.Fatalf("accepted host %q: %v", host, err)
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
				t.Fatalf("accepted port %q", port)
			}
		}
		// What we accept, net/http must read as the same host: a server
		// that sees another host than we decided on is a policy bypass.
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(in)))
		if err != nil {
			// Refused for its body's framing (an empty or repeated
			// Content-Length, an unknown Transfer-Encoding), which
			// HTTPHost leaves to net/http: the transparent proxy's own
			// ReadRequest refuses it too, so no server reads a host.
			if s := err.Error(); strings.Contains(s, "Content-Length") || strings.Contains(s, "ransfer") {
				return
			}
			t.Fatalf("we accepted %q as %q, net/http rejects it: %v", in, host, err)
		}
		rhost, rport := req.Host, ""
		if h, p, err := net.SplitHostPort(rhost); err == nil {
			rhost, rport = h, p
		}
		rhost = strings.TrimSuffix(strings.ToLower(strings.Trim(rhost, "[]")), ".")
		if a, err := netip.ParseAddr(rhost); err == nil {
			rhost = a.String()
		}
		if rhost != host {
			t.Fatalf("we read host %q, net/http reads %q", host, req.Host)
		}
		if n, err := strconv.Atoi(rport); port != "" && rport != "" && (err != nil || strconv.Itoa(n) != port) {
			t.Fatalf("we read port %q, net/http reads %q", port, rport)
		}
	})
}

// Run with: go test ./internal/peek -run '^$' -fuzz FuzzReadFirst -fuzztime 60s -fuzzminimizetime 5s

// FuzzReadFirst checks ReadFirst against the parsers it chooses between:
// the same hello as ClientHello, the same host and port as HTTPHost
// (which FuzzHTTPHost holds to net/http), whether the first bytes come
// all at once, byte by byte, already read, or into a buffer that must
// grow; and anything else refused on its first byte.
func FuzzReadFirst(f *testing.F) {
	for _, tc := range helloCases(f) {
		f.Add(tc.in, uint16(tc.limit))
	}
	for _, tc := range hostCases {
		f.Add([]byte(tc.in), uint16(tc.limit))
	}
	f.Add([]byte("SSH-2.0-OpenSSH_9.6\r\n"), uint16(0))
	f.Add([]byte("ping\n"), uint16(0))
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		got, least, err := readFirstWays(t, in, int(limit))
		if len(in) == 0 {
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("no bytes: got %v, want ErrTruncated", err)
			}
			return
		}
		switch Sniff(in[0]) {
		case TLS:
			h, raw, herr := ClientHello(bytes.NewReader(in), int(limit))
			if fmt.Sprint(err) != fmt.Sprint(herr) || err == nil && (got.Protocol != TLS || !reflect.DeepEqual(got.Hello, h)) {
				t.Fatalf("ReadFirst: %+v, %v; ClientHello: %+v, %v", got, err, h, herr)
			}
			if err == nil && least < len(raw) {
				t.Fatalf("ReadFirst kept %d bytes, less than the %d of the hello", least, len(raw))
			}
		case HTTP:
			host, port, _, herr := HTTPHost(bytes.NewReader(in), int(limit))
			if fmt.Sprint(err) != fmt.Sprint(herr) || err == nil && (got.Protocol != HTTP || got.Host != host || got.Port != port) {
				t.Fatalf("ReadFirst: %+v, %v; HTTPHost: %q %q, %v", got, err, host, port, herr)
			}
			if err == nil && least < HeadLen(in) {
				t.Fatalf("ReadFirst kept %d bytes, less than the head", least)
			}
		default:
			if !errors.Is(err, ErrUnknown) {
				t.Fatalf("first byte %#02x: got %v, want ErrUnknown", in[0], err)
			}
		}
	})
}

func cmpOr(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}

// TestGoServerHelloOracle keeps the fuzz oracle honest: if crypto/tls never
// got as far as the hello, the comparison in FuzzClientHello would be empty.
func TestGoServerHelloOracle(t *testing.T) {
	raw := captureHello(t, &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2"}})
	info := goServerHello(raw)
	if info == nil || info.ServerName != "www.example.com" || !slices.Equal(info.SupportedProtos, []string{"h2"}) {
		t.Fatalf("got %+v, want server name www.example.com and ALPN [h2]", info)
	}
}

// Run with: go test ./internal/peek -run '^$' -fuzz FuzzParseRequest -fuzztime 60s -fuzzminimizetime 5s

// FuzzParseRequest checks ParseRequest against net/http: a head it
// accepts and net/http reads too must give the same method, target,
// version and header fields, in order.
func FuzzParseRequest(f *testing.F) {
	for _, tc := range hostCases {
		f.Add(tc.in)
	}
	f.Add("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nProxy-Authorization: Basic YTpi\r\n\r\n")
	f.Add("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nUser-Agent: x\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		n := HeadLen([]byte(in))
		if n < 0 {
			return
		}
		head := in[:n]
		var fields [4]Field
		r, err := ParseRequest(head, fields[:0])
		if err != nil {
			return
		}
		if r.Method == "" || r.Target == "" || r.Proto != "HTTP/1.1" && r.Proto != "HTTP/1.0" {
			t.Fatalf("accepted request line %q %q %q", r.Method, r.Target, r.Proto)
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			return // e.g. a target net/http's URL parser refuses
		}
		if req.Method != r.Method || req.RequestURI != r.Target || req.Proto != r.Proto {
			t.Fatalf("we read %q %q %q, net/http reads %q %q %q", r.Method, r.Target, r.Proto, req.Method, req.RequestURI, req.Proto)
		}
		want := http.Header{}
		for _, f := range r.Fields {
			want.Add(f.Name, f.Value)
		}
		if hosts := want["Host"]; len(hosts) == 1 && req.URL.Host == "" && req.Host != hosts[0] {
			t.Fatalf("we read Host %q, net/http reads %q", hosts[0], req.Host)
		}
		delete(want, "Host") // net/http moves it to Request.Host
		if p := want["Pragma"]; len(p) > 0 && p[0] == "no-cache" && want["Cache-Control"] == nil {
			want["Cache-Control"] = []string{"no-cache"} // net/http adds it
		}
		if !reflect.DeepEqual(map[string][]string(want), map[string][]string(req.Header)) {
			t.Fatalf("we read fields %q, net/http reads %q", want, req.Header)
		}
	})
}
