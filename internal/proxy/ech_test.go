package proxy

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

// echKeys makes an ECH configuration whose outer (public) name is
// publicName: the ECHConfigList a client is given, and the key a server
// decrypts inner ClientHellos with. Clients built with it send real ECH,
// which on the wire is what browsers' GREASE ECH looks like too.
func echKeys(t testing.TB, publicName string) (configList []byte, key tls.EncryptedClientHelloKey) {
	t.Helper()
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddUint16(0xfe0d) // version: draft-ietf-tls-esni-18 / RFC 9849
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(7)       // config_id
		b.AddUint16(0x0020) // DHKEM(X25519, HKDF-SHA256)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(priv.PublicKey().Bytes()) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			b.AddUint16(0x0001) // HKDF-SHA256
			b.AddUint16(0x0001) // AES-128-GCM
		})
		b.AddUint8(0) // maximum_name_length
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(publicName)) })
		b.AddUint16(0) // no extensions
	})
	config := b.BytesOrPanic()
	var l cryptobyte.Builder
	l.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(config) })
	return l.BytesOrPanic(), tls.EncryptedClientHelloKey{Config: config, PrivateKey: priv.Bytes(), SendAsRetry: true}
}

// echServer is a TLS server at addr that accepts ECH with key and answers
// each completed handshake with the name the client really asked for.
func echServer(t testing.TB, ca *certs.CA, addr string, key tls.EncryptedClientHelloKey, hosts ...string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{
		Certificates:             []tls.Certificate{ca.Leaf(t, hosts...)},
		EncryptedClientHelloKeys: []tls.EncryptedClientHelloKey{key},
		MinVersion:               tls.VersionTLS13,
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() != nil {
					return
				}
				io.WriteString(tc, tc.ConnectionState().ServerName+"\n")
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestTransparentECH: with dns.strip_ech on (the default) a ClientHello
// with ECH is decided by its outer name, and the original destination must
// still be an address of that name; with strip_ech off, ECH is refused as
// "no server name" unless allow_no_sni, which decides it by address. A
// ClientHello without SNI is refused unless allow_no_sni either way.
func TestTransparentECH(t *testing.T) {
	ca := certs.NewCA(t)
	configList, key := echKeys(t, "front.test")
	srv := echServer(t, ca, "127.0.0.1:0", key, "front.test", "hidden.test", "127.0.0.1")
	// Same port on 127.0.0.2: where a spoofing client would really go.
	spoof := echServer(t, ca, fmt.Sprintf("127.0.0.2:%d", srv.Port()), key, "front.test", "hidden.test")
	res := mapResolver{"front.test": addrs("127.0.0.1"), "hidden.test": addrs("127.0.0.1")}

	// Clients: real ECH whose inner name is hidden.test, and plain TLS
	// without SNI (an IP address as ServerName sends none).
	ech := &tls.Config{ServerName: "hidden.test", RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13, EncryptedClientHelloConfigList: configList}
	noSNI := &tls.Config{ServerName: "127.0.0.1", RootCAs: ca.Pool()}

	rules := func(to string) string {
		return fmt.Sprintf("rules:\n  - name: r\n    to: [%s]\n    ports: [%d]\n", to, srv.Port())
	}
	settings := func(strip, noSNI bool) string {
		return fmt.Sprintf("dns: {strip_ech: %v}\nproxy: {deny_private: false, allow_no_sni: %v}\n", strip, noSNI)
	}
	allowed := map[string]any{"action": "allow", "rule": "r", "reason": policy.ReasonMatched.String(), "refused": nil}
	noSNIDeny := refusedBy(RefusedNoSNI, policy.ReasonNoSNI, "")
	for _, tc := range []struct {
		name   string
		policy string
		client *tls.Config
		orig   netip.AddrPort
		want   map[string]any // fields of the audit line
	}{
		{"strip_ech: outer name allowed", settings(true, false) + rules("front.test"), ech, srv, allowed},
		{"strip_ech: outer name allowed, other destination", settings(true, false) + rules("front.test"), ech, spoof,
			refusedBy(RefusedSpoofed, policy.ReasonSpoofed, "r")},
		{"strip_ech: only the inner name allowed", settings(true, false) + rules("hidden.test"), ech, srv,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonNoRule.String(), "refused": RefusedPolicy.String()}},
		{"strip_ech: allow_no_sni changes nothing", settings(true, true) + rules("front.test"), ech, srv, allowed},
		{"no strip_ech: refused", settings(false, false) + rules("front.test"), ech, srv, noSNIDeny},
		{"no strip_ech, allow_no_sni: the address is allowed", settings(false, true) + rules("127.0.0.1/32"), ech, srv, allowed},
		{"no strip_ech, allow_no_sni: the address is not allowed", settings(false, true) + rules("front.test"), ech, srv,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonNotAllowedIP.String(), "refused": RefusedPolicy.String()}},
		{"no SNI, strip_ech: refused", settings(true, false) + rules("127.0.0.1/32"), noSNI, srv, noSNIDeny},
		{"no SNI, no strip_ech: refused", settings(false, false) + rules("127.0.0.1/32"), noSNI, srv, noSNIDeny},
		{"no SNI, allow_no_sni: the address is allowed", settings(true, true) + rules("127.0.0.1/32"), noSNI, srv, allowed},
		{"no SNI, allow_no_sni: the address is not allowed", settings(true, true) + rules("front.test"), noSNI, srv,
			map[string]any{"action": "deny", "rule": "", "reason": policy.ReasonNotAllowedIP.String(), "refused": RefusedPolicy.String()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := startTransparent(t, tc.policy, res)
			c := th.dial(t, tc.orig)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			tc2 := tls.Client(c, tc.client)
			herr := tc2.Handshake()
			var got string
			if herr == nil {
				b, _ := io.ReadAll(tc2)
				got = string(b)
			}
			c.Close() // the tunnel's audit line is written when it ends
			if tc.want["action"] == "allow" {
				want := "hidden.test\n" // what the server saw: the inner name
				if tc.client == noSNI {
					want = "\n"
				}
				if herr != nil || got != want {
					t.Fatalf("handshake through the proxy: got %q, %v; want %q", got, herr, want)
				}
				if tc.client == ech && !tc2.ConnectionState().ECHAccepted {
					t.Errorf("handshake completed without ECH; the test means to carry real ECH")
				}
			} else if herr == nil {
				t.Fatalf("handshake through the proxy: got %q, want the connection refused", got)
			}
			line := th.auditOf(t, c)
			checkAudit(t, line, tc.want)
			if wantECH := tc.client == ech; (line["ech"] == true) != wantECH {
				t.Errorf("audit ech: got %v, want %v", line["ech"], wantECH)
			}
			if tc.client == ech && line["sni"] != "front.test" {
				t.Errorf("audit sni: got %v, want the outer name front.test", line["sni"])
			}
		})
	}
}
