package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// check says when answers are validated and with which anchors, and
// reports every DNSSEC mistake the daemon would refuse, positioned.
func TestCheckDNSSEC(t *testing.T) {
	dir := t.TempDir()
	anchors := filepath.Join(dir, "anchors")
	if err := os.WriteFile(anchors, []byte(". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := writePolicy(t, dir, "dns:\n  upstreams: [192.0.2.53]\n  dnssec: validate\n  trust_anchors: "+anchors+"\nrules:\n  - name: bank\n    to: [api.bank.example]\n    dnssec: required\n")
	out, errOut, code := runCLI(t, "check", "-c", p, "--host=false")
	if want := "dnssec validate (trust anchors " + anchors + ")"; code != 0 || !strings.Contains(out, want) {
		t.Errorf("got exit %d, %q, stderr %q; want exit 0 and %q", code, out, errOut, want)
	}
	p = writePolicy(t, dir, "dns:\n  upstreams: [192.0.2.53]\n  dnssec: validat\n  trust_anchors: "+filepath.Join(dir, "none")+"\nrules:\n  - name: bank\n    to: [api.bank.example]\n    dnssec: required\n")
	_, errOut, code = runCLI(t, "check", "-c", p, "--host=false")
	for _, want := range []string{
		p + `:3:11: dns.dnssec must be validate or off, not "validat"`,
		p + ":4:18: dns.trust_anchors is only used with dns.dnssec: validate",
		p + `:8:13: rule "bank": dnssec: required needs answers validated`,
	} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("got exit %d, stderr %q; want exit 1 and %q", code, errOut, want)
		}
	}
}
