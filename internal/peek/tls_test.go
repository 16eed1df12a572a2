package peek

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// captureHello returns the bytes a real crypto/tls client sends before it
// waits for the server: its ClientHello records, framed by crypto/tls, not by
// anything in this package.
func captureHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(client, cfg).Handshake() // fails once server closes
	}()
	var got []byte
	buf := make([]byte, 4096)
	for {
		// net.Pipe is synchronous: once the client blocks reading, no more
		// writes come and the deadline ends the capture.
		server.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := server.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	server.Close()
	client.Close()
	<-done
	if len(got) == 0 {
		t.Fatal("crypto/tls client sent nothing")
	}
	return got
}

type ext struct {
	typ  uint16
	data []byte
}

// handHello builds a ClientHello handshake message (header included).
func handHello(legacy uint16, exts ...ext) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(legacy)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {})
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x1301) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		if exts == nil {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	return b.BytesOrPanic()
}

// sniExt builds a server_name extension listing host names.
func sniExt(names ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddUint8(0)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
		}
	})
	return ext{extServerName, b.BytesOrPanic()}
}

func alpnExt(protos ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return ext{extALPN, b.BytesOrPanic()}
}

func versionsExt(vs ...uint16) ext {
	var b cryptobyte.Builder
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, v := range vs {
			b.AddUint16(v)
		}
	})
	return ext{extSupportedVersions, b.BytesOrPanic()}
}

// Pieces of a ClientHello body for rawHello.
var (
	v12       = []byte{3, 3}
	random    = make([]byte, 32)
	noSession = []byte{0}
	suite     = []byte{0, 2, 0x13, 0x01}
	nullComp  = []byte{1, 0}
)

// extsAt is where handHello puts the extensions length.
const extsAt = 4 + 2 + 32 + 1 + 4 + 2

// rawHello wraps body pieces in a ClientHello handshake header.
func rawHello(pieces ...[]byte) []byte {
	body := bytes.Join(pieces, nil)
	return append([]byte{typeClientHello, 0, byte(len(body) >> 8), byte(len(body))}, body...)
}

// set returns b with b[i] = v.
func set(b []byte, i int, v byte) []byte {
	b = bytes.Clone(b)
	b[i] = v
	return b
}

// echExt is an outer encrypted_client_hello extension (type 0, then a
// cipher suite, config id, enc and payload), as a GREASE or real client
// sends it.
var echExt = ext{extEncryptedHello, []byte{0, 0, 1, 0, 1, 7, 0, 2, 0xaa, 0xbb, 0, 3, 1, 2, 3}}

// frame splits a handshake message into records with bodies of the given
// sizes; the last size repeats until the message is used up.
func frame(msg []byte, sizes ...int) []byte {
	if len(sizes) == 0 {
		sizes = []int{len(msg)}
	}
	var out []byte
	for i := 0; len(msg) > 0; i++ {
		n := min(sizes[min(i, len(sizes)-1)], len(msg))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// unframe returns the handshake bytes inside well-formed records.
func unframe(t testing.TB, recs []byte) []byte {
	t.Helper()
	var msg []byte
	for len(recs) > 0 {
		n := int(recs[3])<<8 | int(recs[4])
		msg = append(msg, recs[5:5+n]...)
		recs = recs[5+n:]
	}
	return msg
}

type helloCase struct {
	name  string
	in    []byte
	limit int
	want  Hello
	err   error // matched with errors.Is; nil means success
}

func helloCases(t testing.TB) []helloCase {
	real13 := captureHello(t, &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2", "http/1.1"}})
	realUpper := captureHello(t, &tls.Config{ServerName: "API.Example.COM"})
	real12 := captureHello(t, &tls.Config{ServerName: "a.example", MaxVersion: tls.VersionTLS12})
	real13only := captureHello(t, &tls.Config{ServerName: "a.example", MinVersion: tls.VersionTLS13})
	realNoSNI := captureHello(t, &tls.Config{InsecureSkipVerify: true})
	realIP := captureHello(t, &tls.Config{ServerName: "192.0.2.1"})
	msg13 := unframe(t, real13)

	tls13 := []uint16{tls.VersionTLS13, tls.VersionTLS12}
	sni := sniExt("a.example")
	long := strings.Repeat("a", 63)

	return []helloCase{
		{name: "crypto/tls TLS 1.3 with ALPN", in: real13,
			want: Hello{ServerName: "www.example.com", LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13, ALPN: []string{"h2", "http/1.1"}}},
		{name: "crypto/tls upper-case name is folded", in: realUpper,
			want: Hello{ServerName: "api.example.com", LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13}},
		{name: "crypto/tls max TLS 1.2", in: real12,
			want: Hello{ServerName: "a.example", LegacyVersion: tls.VersionTLS12, SupportedVersions: []uint16{tls.VersionTLS12}}},
		{name: "crypto/tls min TLS 1.3", in: real13only,
			want: Hello{ServerName: "a.example", LegacyVersion: tls.VersionTLS12, SupportedVersions: []uint16{tls.VersionTLS13}}},
		{name: "crypto/tls without server name", in: realNoSNI,
			want: Hello{LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13}},
		{name: "crypto/tls leaves IP out of SNI", in: realIP,
			want: Hello{LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13}},
		{name: "one byte per record", in: frame(msg13, 1),
			want: Hello{ServerName: "www.example.com", LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13, ALPN: []string{"h2", "http/1.1"}}},
		{name: "handshake header split over records", in: frame(msg13, 3, 100, 7, 1000),
			want: Hello{ServerName: "www.example.com", LegacyVersion: tls.VersionTLS12, SupportedVersions: tls13, ALPN: []string{"h2", "http/1.1"}}},

		{name: "hand-made", in: frame(handHello(0x0303, sni, alpnExt("h2"), versionsExt(0x0a0a, 0x0304, 0x0303))),
			want: Hello{ServerName: "a.example", LegacyVersion: 0x0303, SupportedVersions: []uint16{0x0a0a, 0x0304, 0x0303}, ALPN: []string{"h2"}}},
		{name: "no extensions at all", in: frame(handHello(0x0301)),
			want: Hello{LegacyVersion: 0x0301}},
		{name: "empty extension block", in: frame(handHello(0x0303, []ext{}...)),
			want: Hello{LegacyVersion: 0x0303}},
		{name: "ECH", in: frame(handHello(0x0303, sniExt("public.example"), echExt, versionsExt(0x0304))),
			want: Hello{ServerName: "public.example", LegacyVersion: 0x0303, SupportedVersions: []uint16{0x0304}, ECH: true}},
		{name: "ESNI", in: frame(handHello(0x0303, ext{extESNI, []byte{1, 2, 3}})),
			want: Hello{LegacyVersion: 0x0303, ESNI: true}},
		{name: "trailing dot", in: frame(handHello(0x0303, sniExt("a.example."))),
			want: Hello{ServerName: "a.example", LegacyVersion: 0x0303}},
		{name: "other name types are skipped", in: frame(handHello(0x0303, ext{extServerName, []byte{0, 5, 7, 0, 2, 'x', 'y'}})),
			want: Hello{LegacyVersion: 0x0303}},
		{name: "longest name", in: frame(handHello(0x0303, sniExt(long+"."+long+"."+long+"."+long[:61]))),
			want: Hello{ServerName: dnsname.Name(long + "." + long + "." + long + "." + long[:61]), LegacyVersion: 0x0303}},

		{name: "empty input", in: nil, err: ErrTruncated},
		{name: "truncated in record header", in: real13[:3], err: ErrTruncated},
		{name: "truncated in record", in: real13[:len(real13)-1], err: ErrTruncated},
		{name: "truncated between records", in: frame(msg13, 100)[:105], err: ErrTruncated},
		{name: "HTTP", in: []byte("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"), err: ErrNotTLS},
		{name: "SSLv2 hello", in: []byte{0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15}, err: ErrNotTLS},
		{name: "handshake with bad record version", in: []byte{22, 0x7f, 0x1c, 0, 4, 1, 0, 0, 0}, err: ErrNotTLS},
		{name: "alert first", in: []byte{21, 3, 3, 0, 2, 2, 40}, err: ErrNotHello},
		{name: "ServerHello", in: frame([]byte{2, 0, 0, 1, 0}), err: ErrNotHello},
		{name: "too large for the limit", in: real13, limit: 100, err: ErrTooLarge},
		{name: "length beyond any limit", in: frame([]byte{1, 0xff, 0xff, 0xff, 3, 3}), err: ErrTooLarge},
		{name: "many tiny records pass the limit", in: frame(msg13, 1), limit: 4 * len(msg13), err: ErrTooLarge},
		{name: "record over 2^14", in: []byte{22, 3, 1, 0x40, 0x01}, err: ErrMalformed},
		{name: "empty record", in: []byte{22, 3, 1, 0, 0}, err: ErrMalformed},
		{name: "change cipher spec interleaved", in: append(frame(msg13[:10]), 20, 3, 3, 0, 1, 1), err: ErrMalformed},
		{name: "bytes after hello in its record", in: frame(append(handHello(0x0303, sni), 1, 0, 0, 0)), err: ErrMalformed},
		{name: "duplicate server_name extension", in: frame(handHello(0x0303, sni, sniExt("b.example"))), err: ErrDuplicateSNI},
		{name: "two host names", in: frame(handHello(0x0303, sniExt("a.example", "b.example"))), err: ErrDuplicateSNI},
		{name: "same host name twice", in: frame(handHello(0x0303, sniExt("a.example", "a.example"))), err: ErrDuplicateSNI},
		{name: "duplicate ALPN extension", in: frame(handHello(0x0303, alpnExt("h2"), alpnExt("h2"))), err: ErrMalformed},
		{name: "IPv4 SNI", in: frame(handHello(0x0303, sniExt("192.0.2.1"))), err: ErrIPLiteralSNI},
		{name: "IPv6 SNI", in: frame(handHello(0x0303, sniExt("2001:db8::1"))), err: ErrIPLiteralSNI},
		{name: "bracketed IPv6 SNI", in: frame(handHello(0x0303, sniExt("[2001:db8::1]"))), err: ErrIPLiteralSNI},
		{name: "IPv4 shorthand SNI", in: frame(handHello(0x0303, sniExt("127.1"))), err: ErrBadName},
		{name: "hex IPv4 SNI", in: frame(handHello(0x0303, sniExt("0x7f.0x1"))), err: ErrBadName},
		{name: "space in SNI", in: frame(handHello(0x0303, sniExt("a .example"))), err: ErrBadName},
		{name: "NUL in SNI", in: frame(handHello(0x0303, sniExt("a.example\x00.evil.example"))), err: ErrBadName},
		{name: "UTF-8 SNI", in: frame(handHello(0x0303, sniExt("bücher.example"))), err: ErrBadName},
		{name: "label too long", in: frame(handHello(0x0303, sniExt(long+"a.example"))), err: ErrBadName},
		{name: "empty host name", in: frame(handHello(0x0303, sniExt(""))), err: ErrMalformed},
		{name: "empty server_name list", in: frame(handHello(0x0303, ext{extServerName, []byte{0, 0}})), err: ErrMalformed},
		{name: "server_name list overruns", in: frame(handHello(0x0303, ext{extServerName, []byte{0, 9, 0, 0, 1, 'a'}})), err: ErrMalformed},
		{name: "extension overruns block", in: frame(set(handHello(0x0303, ext{0x1234, []byte{1, 2}}), extsAt+5, 9)), err: ErrMalformed},
		{name: "extension block overruns message", in: frame(set(handHello(0x0303, sni), extsAt+1, 0xff)), err: ErrMalformed},
		{name: "bytes after extensions", in: frame(append(handHello(0x0303, sni), 0)), err: ErrMalformed},
		{name: "empty ALPN protocol", in: frame(handHello(0x0303, alpnExt("h2", ""))), err: ErrMalformed},
		{name: "odd supported_versions", in: frame(handHello(0x0303, ext{extSupportedVersions, []byte{3, 3, 4, 3}})), err: ErrMalformed},
		{name: "session id over 32 bytes", in: frame(rawHello(v12, random, []byte{33}, make([]byte, 33), suite, nullComp)), err: ErrMalformed},
		{name: "odd cipher_suites", in: frame(rawHello(v12, random, noSession, []byte{0, 1, 0x13}, nullComp)), err: ErrMalformed},
		{name: "no compression methods", in: frame(rawHello(v12, random, noSession, suite, []byte{0})), err: ErrMalformed},
		{name: "cut in random", in: frame(rawHello(v12, random[:20])), err: ErrMalformed},
	}
}

func TestClientHello(t *testing.T) {
	for _, tc := range helloCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			// One byte per Read as well as all at once: where the reads
			// fall must not matter.
			for _, r := range []io.Reader{bytes.NewReader(tc.in), iotest.OneByteReader(bytes.NewReader(tc.in))} {
				got, raw, err := ClientHello(r, tc.limit)
				if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
					t.Fatalf("got error %v, want %v", err, tc.err)
				}
				if !bytes.Equal(raw, tc.in[:len(raw)]) {
					t.Errorf("returned bytes are not a prefix of the input")
				}
				if err != nil {
					t.Logf("error: %v", err)
					continue
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got %+v, want %+v", got, tc.want)
				}
				if !bytes.Equal(raw, tc.in) {
					t.Errorf("got %d bytes back, want all %d", len(raw), len(tc.in))
				}
			}
		})
	}
}

func TestMaxVersion(t *testing.T) {
	for _, tc := range []struct {
		h    Hello
		want uint16
	}{
		{Hello{LegacyVersion: tls.VersionTLS12}, tls.VersionTLS12},
		{Hello{LegacyVersion: tls.VersionTLS12, SupportedVersions: []uint16{0x3a3a, tls.VersionTLS13, tls.VersionTLS12}}, tls.VersionTLS13},
		{Hello{LegacyVersion: tls.VersionTLS12, SupportedVersions: []uint16{tls.VersionTLS11}}, tls.VersionTLS11},
		{Hello{LegacyVersion: tls.VersionTLS12, SupportedVersions: []uint16{0x7f1c, 0xfefd}}, 0},
	} {
		if got := tc.h.MaxVersion(); got != tc.want {
			t.Errorf("%+v: got %#04x, want %#04x", tc.h, got, tc.want)
		}
	}
}

// TestClientHelloStopsAtRecord checks nothing past the hello is consumed: a
// TLS 1.3 client may send early data right behind it.
func TestClientHelloStopsAtRecord(t *testing.T) {
	hello := frame(handHello(0x0303, sniExt("a.example")), 20)
	r := bytes.NewReader(append(append([]byte{}, hello...), 23, 3, 3, 0, 1, 0xee))
	_, raw, err := ClientHello(r, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, hello) {
		t.Errorf("got %d bytes, want the %d of the hello", len(raw), len(hello))
	}
	if rest, _ := io.ReadAll(r); len(rest) != 6 {
		t.Errorf("got %d bytes left unread, want 6", len(rest))
	}
}

// TestClientHelloTCP peeks a hello sent one byte per write over loopback
// TCP, then replays it to a real TLS server, which must complete the
// handshake as if nothing had been in between.
func TestClientHelloTCP(t *testing.T) {
	ca := certs.NewCA(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	clientCfg := &tls.Config{ServerName: "www.example.com", RootCAs: ca.Pool(), NextProtos: []string{"h2"}}
	hello := captureHello(t, clientCfg)

	type result struct {
		h   Hello
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		h, _, err := ClientHello(c, 0)
		done <- result{h, err}
	}()

	// First the captured hello, one byte per write: each byte leaves in its
	// own segment because Go sets TCP_NODELAY.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range hello {
		if _, err := c.Write(hello[i : i+1]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Microsecond)
	}
	res := <-done
	c.Close()
	if res.err != nil {
		t.Fatalf("peek over byte-wise TCP: %v", res.err)
	}
	if res.h.ServerName != "www.example.com" {
		t.Errorf("got server name %q, want www.example.com", res.h.ServerName)
	}

	// Then a live client, whose handshake must survive the peek.
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, raw, err := ClientHello(c, 0)
		if err != nil {
			return
		}
		srv := tls.Server(NewConn(c, raw), &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "www.example.com")}, NextProtos: []string{"h2"}})
		if srv.Handshake() == nil {
			srv.Write([]byte("ok"))
		}
	}()
	tc, err := tls.Dial("tcp", ln.Addr().String(), clientCfg)
	if err != nil {
		t.Fatalf("TLS handshake through the peek: %v", err)
	}
	defer tc.Close()
	got, _ := io.ReadAll(tc)
	if string(got) != "ok" || tc.ConnectionState().NegotiatedProtocol != "h2" {
		t.Errorf("got %q over %q, want \"ok\" over h2", got, tc.ConnectionState().NegotiatedProtocol)
	}
}

// readFirstWays reads in through ReadFirst in the ways a proxy does: all
// at once, one byte per Read, with the first bytes already read into the
// buffer (the early bytes of a tunnel), and into a buffer too small for
// the message, which must grow. Each must give the same answer. It
// returns the answer and the fewest bytes any way returned, so that a
// caller can check the message is in them.
func readFirstWays(t testing.TB, in []byte, limit int) (First, int, error) {
	t.Helper()
	f, raw, err := ReadFirst(bytes.NewReader(in), nil, limit)
	least := len(raw)
	split := min(len(in), 7)
	ways := []struct {
		name string
		r    io.Reader
		buf  []byte
	}{
		{"one byte per read", iotest.OneByteReader(bytes.NewReader(in)), nil},
		{"early bytes", bytes.NewReader(in[split:]), append(make([]byte, 0, 4096), in[:split]...)},
		{"small buffer", bytes.NewReader(in), make([]byte, 0, 16)},
	}
	for _, w := range ways {
		f1, raw1, err1 := ReadFirst(w.r, w.buf, limit)
		if !reflect.DeepEqual(f, f1) || fmt.Sprint(err) != fmt.Sprint(err1) {
			t.Fatalf("%s: got %+v, %v; all at once: %+v, %v", w.name, f1, err1, f, err)
		}
		if !bytes.HasPrefix(in, raw1) {
			t.Fatalf("%s: returned bytes are not a prefix of the input", w.name)
		}
		least = min(least, len(raw1))
	}
	if !bytes.HasPrefix(in, raw) {
		t.Fatalf("returned bytes are not a prefix of the input")
	}
	if max := cmpOr(limit, DefaultMax); len(raw) > max {
		t.Fatalf("read %d bytes, limit %d", len(raw), max)
	}
	return f, least, err
}

// TestReadFirst: ReadFirst reads every ClientHello as ClientHello does and
// every request head as HTTPHost does, whichever way the bytes arrive, and
// refuses what is neither on its first byte.
func TestReadFirst(t *testing.T) {
	for _, tc := range helloCases(t) {
		if len(tc.in) == 0 || Sniff(tc.in[0]) != TLS {
			continue // nothing (see below), HTTP, SSLv2, an alert: not read as TLS
		}
		t.Run("tls/"+tc.name, func(t *testing.T) {
			want, _, wantErr := ClientHello(bytes.NewReader(tc.in), tc.limit)
			got, least, err := readFirstWays(t, tc.in, tc.limit)
			if fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Fatalf("got error %v, ClientHello says %v", err, wantErr)
			}
			if err == nil && (got.Protocol != TLS || !reflect.DeepEqual(got.Hello, want) || least != len(tc.in)) {
				t.Fatalf("got %+v and %d bytes, want %+v and %d", got, least, want, len(tc.in))
			}
		})
	}
	for _, tc := range hostCases {
		if len(tc.in) == 0 || Sniff(tc.in[0]) != HTTP {
			continue
		}
		t.Run("http/"+tc.name, func(t *testing.T) {
			host, port, _, wantErr := HTTPHost(strings.NewReader(tc.in), tc.limit)
			got, least, err := readFirstWays(t, []byte(tc.in), tc.limit)
			if err == nil && least < HeadLen([]byte(tc.in)) {
				t.Fatalf("returned %d bytes, less than the head", least)
			}
			if fmt.Sprint(err) != fmt.Sprint(wantErr) {
				t.Fatalf("got error %v, HTTPHost says %v", err, wantErr)
			}
			if err == nil && (got.Protocol != HTTP || got.Host != host || got.Port != port) {
				t.Fatalf("got %+v, want host %q port %q", got, host, port)
			}
		})
	}
	hello := captureHello(t, &tls.Config{ServerName: "a.example"})
	for _, tc := range []struct {
		name string
		in   []byte
		err  error
	}{
		{"nothing", nil, ErrTruncated},
		{"lower-case", []byte("ping\n"), ErrUnknown},
		{"NUL", []byte{0, 1, 2}, ErrUnknown},
		{"SSH", []byte("SSH-2.0-OpenSSH_9.6\r\n"), ErrNotHTTP}, // 'S' reads as HTTP, the line does not
		{"SMTP client", []byte("EHLO client.example\r\n"), ErrNotHTTP},
		{"SSLv2", []byte{0x80, 0x2e, 0x01, 0x00, 0x02}, ErrUnknown},
		{"TLS alert", []byte{21, 3, 3, 0, 2, 2, 40}, ErrUnknown},
	} {
		if _, _, err := readFirstWays(t, tc.in, 0); !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.err)
		}
	}
	// Bytes after the message are kept for the replay: a client may send
	// early data right after its hello.
	in := append(append([]byte{}, hello...), 23, 3, 3, 0, 1, 'x')
	f, raw, err := ReadFirst(bytes.NewReader(in), nil, 0)
	if err != nil || f.Hello.ServerName != "a.example" || !bytes.Equal(raw, in) {
		t.Errorf("hello and early data: got %q, %d of %d bytes, %v", f.Hello.ServerName, len(raw), len(in), err)
	}
}

func TestReadFirstAllocs(t *testing.T) {
	hello := captureHello(t, &tls.Config{ServerName: "a.example", NextProtos: []string{"h2"}})
	head := []byte("GET / HTTP/1.1\r\nHost: a.example:8080\r\nUser-Agent: x\r\n\r\n")
	buf := make([]byte, 0, 4096)
	for _, tc := range []struct {
		name string
		in   []byte
		max  float64
	}{
		// The name, the versions, the ALPN list and its protocol.
		{"tls", hello, 4},
		// The head as a string, of which host and port are slices.
		{"http", head, 1},
	} {
		r := bytes.NewReader(tc.in)
		n := testing.AllocsPerRun(50, func() {
			r.Reset(tc.in)
			if _, _, err := ReadFirst(r, buf[:0], 0); err != nil {
				t.Fatal(err)
			}
		})
		if n > tc.max {
			t.Errorf("%s: ReadFirst allocates %v times, want at most %v", tc.name, n, tc.max)
		}
	}
}
