package e2e

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/certs"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// dohPort is where the internet namespace serves DNS-over-HTTPS.
const dohPort = "9443"

// TestDoHUpstream: the gateway's only upstream is DNS-over-HTTPS in the
// internet namespace, reached at its address and verified by name against
// a CA the daemon trusts through SSL_CERT_FILE (as an operator's private
// CA would be). An allowed name resolves through it, over HTTP/2, and its
// address opens; an unlisted one is never asked.
func TestDoHUpstream(t *testing.T) {
	ca := certs.NewCA(t)
	t.Setenv("SSL_CERT_FILE", ca.WriteFile(t)) // inherited by the gateway
	f := startForwardWith(t, 2*time.Second, basicRules, func(s *policySettings) {
		s.upstream = "https://doh.test@" + inet4 + ":" + dohPort + "/dns-query"
	})
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))

	var requests, h2 atomic.Int32
	doh := dnstest.DoHHandler(auth.ServeDNS)
	ln := f.net.inet.ns.Listen("tcp", inet4+":"+dohPort)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			requests.Add(1)
			if r.ProtoMajor == 2 {
				h2.Add(1)
			}
			doh.ServeHTTP(w, r)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "doh.test")}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "") // HTTP/2 and HTTP/1.1
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})

	mustDrop(t, f.a, ap("203.0.113.10", allowedPort))
	if _, err := f.a.resolveAndGet("api.example.com", dns.TypeA, allowedPort); err != nil {
		t.Fatalf("allowed name through the DoH upstream: %v\n%s", err, f.gate.logs())
	}
	if n, n2 := requests.Load(), h2.Load(); n == 0 || n2 != n {
		t.Errorf("the DoH server saw %d requests, %d over HTTP/2; want some, all over HTTP/2", n, n2)
	}

	r, err := f.a.exchange("udp", gatewayDNS, "evil.example.com", dns.TypeA, reachWait)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNameError {
		t.Errorf("unlisted name: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if n := auth.Seen("evil.example.com", 0); n != 0 {
		t.Errorf("the authority saw %d queries for the unlisted name, want 0", n)
	}
	mustDrop(t, f.a, ap("203.0.113.66", allowedPort))
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
