package peek

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

type hostCase struct {
	name     string
	in       string
	limit    int
	wantHost string
	wantPort string
	err      error // matched with errors.Is; nil means success
}

var hostCases = []hostCase{
	{name: "origin form", in: "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},
	{name: "curl", in: "GET /x?y=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n", wantHost: "www.example.com"},
	{name: "HTTP/1.0", in: "GET / HTTP/1.0\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},
	{name: "case folded, port", in: "GET / HTTP/1.1\r\nhOsT: A.Example:8080\r\n\r\n", wantHost: "a.example", wantPort: "8080"},
	{name: "optional whitespace", in: "GET / HTTP/1.1\r\nHost:  \ta.example \t\r\n\r\n", wantHost: "a.example"},
	{name: "trailing dot", in: "GET / HTTP/1.1\r\nHost: a.example.:80\r\n\r\n", wantHost: "a.example", wantPort: "80"},
	{name: "leading zeros in port", in: "GET / HTTP/1.1\r\nHost: a.example:0080\r\n\r\n", wantHost: "a.example", wantPort: "80"},
	{name: "IPv4", in: "GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", wantHost: "192.0.2.1", wantPort: "80"},
	{name: "bracketed IPv6", in: "GET / HTTP/1.1\r\nHost: [2001:DB8::1]\r\n\r\n", wantHost: "2001:db8::1"},
	{name: "bracketed IPv6 and port", in: "GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", wantHost: "2001:db8::1", wantPort: "8080"},
	{name: "body follows", in: "POST /f HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello", wantHost: "a.example"},
	{name: "absolute form", in: "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},
	{name: "absolute form, default port", in: "GET HTTP://A.example:80?q HTTP/1.1\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},
	{name: "absolute form, https port", in: "GET https://a.example/ HTTP/1.1\r\nHost: a.example:443\r\n\r\n", wantHost: "a.example", wantPort: "443"},
	{name: "percent-escapes", in: "GET /a%2F%c3%bc HTTP/1.1\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},
	{name: "asterisk form", in: "OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n", wantHost: "a.example"},

	{name: "no Host", in: "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", err: ErrNoHost},
	{name: "two Hosts", in: "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", err: ErrManyHosts},
	{name: "two identical Hosts", in: "GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", err: ErrManyHosts},
	{name: "Host list", in: "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n", err: ErrBadName},
	{name: "empty Host", in: "GET / HTTP/1.1\r\nHost: \r\n\r\n", err: ErrBadName},
	{name: "unbracketed IPv6", in: "GET / HTTP/1.1\r\nHost: 2001:db8::1\r\n\r\n", err: ErrBadName},
	{name: "zone in IPv6", in: "GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n", err: ErrBadName},
	{name: "IPv4 in brackets", in: "GET / HTTP/1.1\r\nHost: [192.0.2.1]\r\n\r\n", err: ErrBadName},
	{name: "unclosed bracket", in: "GET / HTTP/1.1\r\nHost: [2001:db8::1\r\n\r\n", err: ErrBadName},
	{name: "IPv4 shorthand", in: "GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n", err: ErrBadName},
	{name: "IPv4 with leading zero", in: "GET / HTTP/1.1\r\nHost: 192.0.2.01\r\n\r\n", err: ErrBadName},
	{name: "port 0", in: "GET / HTTP/1.1\r\nHost: a.example:0\r\n\r\n", err: ErrBadName},
	{name: "port too big", in: "GET / HTTP/1.1\r\nHost: a.example:65536\r\n\r\n", err: ErrBadName},
	{name: "signed port", in: "GET / HTTP/1.1\r\nHost: a.example:+80\r\n\r\n", err: ErrBadName},
	{name: "empty port", in: "GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n", err: ErrBadName},
	{name: "junk after bracket", in: "GET / HTTP/1.1\r\nHost: [2001:db8::1]x\r\n\r\n", err: ErrBadName},
	{name: "UTF-8 Host", in: "GET / HTTP/1.1\r\nHost: bücher.example\r\n\r\n", err: ErrBadName},
	{name: "absolute form, other host", in: "GET http://b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrHostMismatch},
	{name: "absolute form, other port", in: "GET http://a.example:8080/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrHostMismatch},
	{name: "absolute form, userinfo", in: "GET http://a.example@b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", err: ErrMalformed},
	{name: "absolute form, bad host", in: "GET http://a..example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrBadName},
	{name: "absolute form, other scheme", in: "GET ftp://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "fragment", in: "GET http://a.example#@b.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "bad percent-escape", in: "GET /a%2 HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "asterisk with GET", in: "GET * HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "CONNECT", in: "CONNECT b.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n", err: ErrConnect},
	{name: "space before colon", in: "GET / HTTP/1.1\r\nHost : b.example\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "folded header", in: "GET / HTTP/1.1\r\nHost: a.example\r\n b.example\r\n\r\n", err: ErrMalformed},
	{name: "bare LF", in: "GET / HTTP/1.1\nHost: b.example\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "bare CR", in: "GET / HTTP/1.1\r\nX: y\rHost: b.example\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "NUL in header", in: "GET / HTTP/1.1\r\nHost: a.example\r\nX: \x00\r\n\r\n", err: ErrMalformed},
	{name: "no colon", in: "GET / HTTP/1.1\r\nHost a.example\r\n\r\n", err: ErrMalformed},
	{name: "space in target", in: "GET /a b HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrNotHTTP},
	{name: "control byte in target", in: "GET /\x01 HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrMalformed},
	{name: "HTTP/2 preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", err: ErrNotHTTP},
	{name: "HTTP/0.9", in: "GET /\r\n\r\n", err: ErrNotHTTP},
	{name: "lower-case version", in: "GET / http/1.1\r\nHost: a.example\r\n\r\n", err: ErrNotHTTP},
	{name: "TLS", in: "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", err: ErrNotHTTP},
	{name: "leading CRLF", in: "\r\nGET / HTTP/1.1\r\nHost: a.example\r\n\r\n", err: ErrNotHTTP},
	{name: "SSH, refused on its first line", in: "SSH-2.0-OpenSSH_9.6\r\n", err: ErrNotHTTP},
	{name: "bad request line, rest never sent", in: "GET / HTTP/1.1 x\r\nHost: a.example\r\n", err: ErrNotHTTP},
	{name: "bare LF in the request line, rest never sent", in: "GET /\n HTTP/1.1\r\nHost: a.example\r\n", err: ErrMalformed},
	{name: "bad request line and a later bare CR", in: "GET / x\r\nX: y\rz\r\n\r\n", err: ErrNotHTTP},
	{name: "empty", in: "", err: ErrTruncated},
	{name: "truncated", in: "GET / HTTP/1.1\r\nHost: a.example\r\n", err: ErrTruncated},
	{name: "too large", in: "GET / HTTP/1.1\r\nHost: a.example\r\nCookie: " + strings.Repeat("x", 100) + "\r\n\r\n", limit: 64, err: ErrTooLarge},
	{name: "ends exactly at limit", in: "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", limit: 35, wantHost: "a.example"},
	{name: "one byte over limit", in: "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", limit: 34, err: ErrTooLarge},
}

func TestHTTPHost(t *testing.T) {
	for _, tc := range hostCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tc.in), iotest.OneByteReader(strings.NewReader(tc.in))} {
				host, port, buf, err := HTTPHost(r, tc.limit)
				if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
					t.Fatalf("got error %v, want %v", err, tc.err)
				}
				if !strings.HasPrefix(tc.in, string(buf)) {
					t.Errorf("returned bytes are not a prefix of the input")
				}
				if err != nil {
					t.Logf("error: %v", err)
					continue
				}
				if host != tc.wantHost || port != tc.wantPort {
					t.Errorf("got %q, %q, want %q, %q", host, port, tc.wantHost, tc.wantPort)
				}
				if rest, _ := io.ReadAll(r); string(buf)+string(rest) != tc.in {
					t.Errorf("returned and unread bytes do not add up to the input")
				}
			}
		})
	}
}

func TestSniff(t *testing.T) {
	for _, tc := range []struct {
		b    byte
		want Protocol
	}{{0x16, TLS}, {'G', HTTP}, {'P', HTTP}, {'g', Unknown}, {0x80, Unknown}, {0, Unknown}} {
		if got := Sniff(tc.b); got != tc.want {
			t.Errorf("Sniff(%#02x): got %v, want %v", tc.b, got, tc.want)
		}
	}
}

// TestConnSplice replays a peeked request through Conn over real loopback
// TCP, the way the proxy splices: io.Copy into the upstream connection.
func TestConnSplice(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()

	const req = "PUT /f HTTP/1.1\r\nHost: a.example\r\nContent-Length: 11\r\n\r\nhello world"
	got := make(chan string, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, buf, err := HTTPHost(c, 0)
		if err != nil {
			t.Errorf("peek: %v", err)
			return
		}
		c.SetReadDeadline(time.Time{})
		u, err := net.Dial("tcp", up.Addr().String())
		if err != nil {
			t.Errorf("dial upstream: %v", err)
			return
		}
		defer u.Close()
		pc := NewConn(c, buf)
		if _, err := io.Copy(u, pc); err != nil {
			t.Errorf("copy: %v", err)
		}
		u.(*net.TCPConn).CloseWrite()
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// Head and body in separate segments, so the peek sees only part of
	// what the upstream must receive.
	c.Write([]byte(req[:20]))
	time.Sleep(10 * time.Millisecond)
	c.Write([]byte(req[20 : len(req)-11]))
	time.Sleep(10 * time.Millisecond)
	c.Write([]byte(req[len(req)-11:]))
	c.(*net.TCPConn).CloseWrite()
	defer c.Close()
	if s := <-got; s != req {
		t.Errorf("upstream got %q, want %q", s, req)
	}
}

func TestConnRead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		b.Write([]byte("world"))
		b.Close()
	}()
	c := NewConn(a, []byte("hello "))
	got, err := io.ReadAll(iotest.OneByteReader(c))
	if err != nil || string(got) != "hello world" {
		t.Errorf("got %q, %v, want %q, nil", got, err, "hello world")
	}
	if err := c.CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite on a pipe: got %v, want %v", err, errors.ErrUnsupported)
	}
	// The peer has gone, so WriteTo has only the peeked byte to give.
	var w bytes.Buffer
	if n, err := NewConn(a, []byte("x")).WriteTo(&w); n != 1 || err != nil || w.String() != "x" {
		t.Errorf("WriteTo: got %d, %v, %q, want 1, nil, \"x\"", n, err, w.String())
	}
}
