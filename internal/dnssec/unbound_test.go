package dnssec

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnssec/dnssectest"
)

// TestUnboundOracle runs the same hierarchy and trust anchor through
// Unbound as a validating resolver and requires it to agree with the
// Validator on every case that does not need a faulty upstream.
func TestUnboundOracle(t *testing.T) {
	bin, err := exec.LookPath("unbound")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("unbound is not installed; .ci/run installs the Debian package unbound")
		}
		t.Skip("unbound is not installed (Debian package unbound; .ci/run installs it): the oracle comparison did not run")
	}
	dir := t.TempDir()
	anchor := filepath.Join(dir, "anchor")
	if err := os.WriteFile(anchor, []byte(testH.Zones["."].Keys[0].Pub.ToDS(dns.SHA256).String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	var conf strings.Builder
	fmt.Fprintf(&conf, `server:
	interface: 127.0.0.1
	port: %d
	do-ip6: no
	username: ""
	chroot: ""
	pidfile: ""
	directory: %q
	logfile: ""
	use-syslog: no
	verbosity: 1
	do-not-query-localhost: no
	access-control: 127.0.0.0/8 allow
	module-config: "validator iterator"
	trust-anchor-file: %q
	qname-minimisation: no
	aggressive-nsec: no
	target-fetch-policy: "0 0 0 0 0"
	harden-dnssec-stripped: yes
	val-log-level: 2
`, port, dir, anchor)
	for name := range testH.Zones {
		ns := "ns." + name
		if name == "." {
			ns = "ns.root."
		}
		_, p, _ := net.SplitHostPort(testH.Addrs[ns])
		fmt.Fprintf(&conf, "stub-zone:\n\tname: %q\n\tstub-addr: 127.0.0.1@%s\n", name, p)
	}
	cfg := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(cfg, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-d", "-c", cfg)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("unbound log:\n%s", log.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := &dns.Client{Net: "udp", UDPSize: 65535, Timeout: 5 * time.Second}
	ready := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		m := new(dns.Msg)
		m.SetQuestion(".", dns.TypeSOA)
		if _, _, err := c.Exchange(m, addr); err == nil {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatalf("unbound did not answer on %s within 30s", addr)
	}
	for _, tc := range validateCases {
		if tc.filter != nil {
			continue // needs a faulty upstream
		}
		want := tc.want
		if w, ok := stricterThanUnbound[tc.name]; ok {
			want = w
		}
		t.Run(tc.name, func(t *testing.T) {
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			m.SetEdns0(4096, true)
			resp, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			got := Insecure
			switch {
			case resp.Rcode == dns.RcodeServerFailure:
				got = Bogus
			case resp.AuthenticatedData:
				got = Secure
			}
			if got != want {
				t.Fatalf("unbound: %s %s: %v, want %v (validator's verdict %v)\n%v", tc.qname, dns.TypeToString[tc.qtype], got, want, tc.want, resp)
			}
		})
	}
}

// stricterThanUnbound are the cases where the validator is deliberately
// stricter than Unbound 1.17 with its default settings, and what Unbound
// says. The oracle still checks Unbound's verdict, so a change on either
// side shows up.
//   - A DS that names a key with the REVOKE bit: RFC 5011 2.1 says a revoked
//     key MUST NOT be used for any purpose but validating its own
//     revocation; Unbound applies that to trust anchors only.
//   - A SHA-1 DS beside a SHA-256 DS that matches no key: RFC 4509 3 says
//     validators SHOULD ignore SHA-1 DS records when SHA-256 ones are
//     present, which stops a downgrade to the weaker digest; Unbound uses
//     whichever DS works.
var stricterThanUnbound = map[string]State{
	"the key the DS names is revoked":              Secure,
	"SHA-1 DS ignored beside a failing SHA-256 DS": Secure,
}

// freePort returns a loopback port free for UDP and TCP just now.
func freePort(t *testing.T) int {
	t.Helper()
	pc, ln, err := dnssectest.ListenPair()
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	ln.Close()
	return port
}
