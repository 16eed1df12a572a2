package proxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/certs"
)

func pinOf(sum [32]byte) string { return "sha256/" + base64.StdEncoding.EncodeToString(sum[:]) }

func TestConnectVerify(t *testing.T) {
	ca := certs.NewCA(t)
	srv := tlsBackend(t, ca, "good.test")
	u, _ := url.Parse(srv.URL)
	leafPin := pinOf(certs.SPKIPin(srv.TLS.Certificates[0].Leaf))
	caPin := pinOf(certs.SPKIPin(ca.Cert))
	otherPin := pinOf(certs.SPKIPin(certs.NewCA(t).Cert))
	caFile := ca.WriteFile(t)
	pol := fmt.Sprintf(`
proxy: {deny_private: false, connect_timeout: 5s}
rules:
  - name: verified
    to: [good.test, poisoned.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q}
  - name: leaf-pinned
    to: [leafpin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[3]q]}
  - name: ca-pinned
    to: [capin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[4]q]}
  - name: wrong-pin
    to: [wrongpin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[5]q]}
  - name: system-roots
    to: [sysroots.test]
    ports: [%[1]s]
    tls: {verify: true}
  - name: tls13
    to: [tls13.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, min_version: "1.3"}
`, u.Port(), caFile, leafPin, caPin, otherPin)
	lo := addrs("127.0.0.1")
	// Every name "resolves" to the one server, whose certificate is for
	// good.test only: for the others this is a poisoned resolution.
	res := mapResolver{"good.test": lo, "poisoned.test": lo, "leafpin.test": lo, "capin.test": lo, "wrongpin.test": lo, "sysroots.test": lo, "tls13.test": lo}
	h := startProxy(t, pol, res)
	for _, tc := range []struct {
		name       string
		wantStatus int
	}{
		{"good.test", 200},
		{"poisoned.test", 502},
		{"sysroots.test", 502},
		// Pins narrow chain verification; they cannot rescue a wrong name.
		{"leafpin.test", 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := connectVia(t, h.addr, "", tc.name+":"+u.Port(), "")
			if r.status != tc.wantStatus {
				t.Fatalf("CONNECT %s: got %d %q, want %d", tc.name, r.status, r.reason, tc.wantStatus)
			}
			if r.status == 502 && r.reason != RefusedVerify.String() {
				t.Errorf("CONNECT %s: reason %q, want %q", tc.name, r.reason, RefusedVerify)
			}
		})
	}
	if got := h.auditLines(`"name":"poisoned.test"`); len(got) != 1 || !strings.Contains(got[0], "certificate") {
		t.Errorf("audit for poisoned.test: got %q, want one line with the certificate error", got)
	}
	checkAudit(t, h.auditLine(t, `"name":"poisoned.test"`), refusedBy(RefusedVerify, policy.ReasonVerify, "verified"))

	// Pins are checked on a server whose certificate does match the name.
	pinned := tlsBackend(t, ca, "leafpin.test", "capin.test", "wrongpin.test", "tls13.test")
	pu, _ := url.Parse(pinned.URL)
	pinnedLeaf := pinOf(certs.SPKIPin(pinned.TLS.Certificates[0].Leaf))
	pinned12 := httptest.NewUnstartedServer(http.HandlerFunc(backend))
	pinned12.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "tls13.test")}, MaxVersion: tls.VersionTLS12}
	pinned12.StartTLS()
	defer pinned12.Close()
	p12, _ := url.Parse(pinned12.URL)
	pol2 := fmt.Sprintf(`
proxy: {deny_private: false, connect_timeout: 5s}
rules:
  - name: leaf-pinned
    to: [leafpin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[3]q]}
  - name: ca-pinned
    to: [capin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[4]q]}
  - name: wrong-pin
    to: [wrongpin.test]
    ports: [%[1]s]
    tls: {verify: true, ca_file: %[2]q, pins: [%[5]q]}
  - name: tls13
    to: [tls13.test]
    ports: [%[1]s, %[6]s]
    tls: {verify: true, ca_file: %[2]q, min_version: "1.3"}
`, pu.Port(), caFile, pinnedLeaf, caPin, otherPin, p12.Port())
	h2 := startProxy(t, pol2, res)
	for _, tc := range []struct {
		target     string
		wantStatus int
	}{
		{"leafpin.test:" + pu.Port(), 200},
		{"capin.test:" + pu.Port(), 200},
		{"wrongpin.test:" + pu.Port(), 502},
		{"tls13.test:" + pu.Port(), 200},
		{"tls13.test:" + p12.Port(), 502},
	} {
		t.Run(tc.target, func(t *testing.T) {
			r := connectVia(t, h2.addr, "", tc.target, "")
			if r.status != tc.wantStatus {
				t.Fatalf("CONNECT %s: got %d %q, want %d", tc.target, r.status, r.reason, tc.wantStatus)
			}
		})
	}

	t.Run("plain HTTP to a verified rule", func(t *testing.T) {
		resp, err := proxyClient(h.addr, nil).Get("http://good.test:" + u.Port() + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("X-Fqdngate-Reason") != RefusedPlainHTTP.String() {
			t.Fatalf("plain HTTP: got %d %q, want 403 %q", resp.StatusCode, resp.Header.Get("X-Fqdngate-Reason"), RefusedPlainHTTP)
		}
		checkAudit(t, h.auditLine(t, `"refused":"`+RefusedPlainHTTP.String()), refusedBy(RefusedPlainHTTP, policy.ReasonVerify, "verified"))
	})
	t.Run("HTTPS through a verified tunnel", func(t *testing.T) {
		c := proxyClient(h.addr, &tls.Config{RootCAs: ca.Pool()})
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://good.test:" + u.Port() + "/v")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("HTTPS through verified tunnel: got %d, want 200", resp.StatusCode)
		}
	})
}

func TestVerifierCache(t *testing.T) {
	ca := certs.NewCA(t)
	var handshakes atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(backend))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "good.test")}}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			handshakes.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	ap := srv.Listener.Addr().(*net.TCPAddr).AddrPort()
	now := time.Unix(1_000_000, 0)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	v := NewVerifier(VerifierConfig{TTL: time.Minute, FailTTL: time.Second, MaxEntries: 2, Now: func() time.Time { return time.Unix(0, clock.Load()) }})
	req := &policy.TLS{Verify: true, CAFile: ca.WriteFile(t)}
	ctx := context.Background()

	verify := func(name string) error { return v.Verify(ctx, name, ap.Addr(), ap.Port(), req) }
	for i := 0; i < 3; i++ {
		if err := verify("good.test"); err != nil {
			t.Fatalf("Verify good.test: %v", err)
		}
	}
	if got := handshakes.Load(); got != 1 {
		t.Errorf("three verifications within the TTL: got %d handshakes, want 1", got)
	}
	if err := verify("bad.test"); err == nil {
		t.Fatalf("Verify bad.test against a good.test certificate: got nil, want an error")
	}
	if err := verify("bad.test"); err == nil {
		t.Fatalf("cached failure: got nil, want the error again")
	}
	if got := handshakes.Load(); got != 2 {
		t.Errorf("failure cached: got %d handshakes, want 2", got)
	}
	clock.Add(int64(2 * time.Minute))
	if err := verify("good.test"); err != nil {
		t.Fatal(err)
	}
	if got := handshakes.Load(); got != 3 {
		t.Errorf("after the TTL: got %d handshakes, want 3", got)
	}
	// The cache stays within MaxEntries.
	for _, n := range []string{"a.test", "b.test", "c.test"} {
		verify(n)
	}
	v.mu.Lock()
	size := len(v.cache)
	v.mu.Unlock()
	if size > 2 {
		t.Errorf("cache size: got %d, want at most 2", size)
	}
	// Nothing to verify passes without a handshake.
	if err := v.Verify(ctx, "x.test", netip.MustParseAddr("127.0.0.1"), 1, nil); err != nil {
		t.Errorf("Verify with nil TLS: got %v, want nil", err)
	}
}
