package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testAnchor is a DS record in presentation format, as a trust anchor file
// holds it (the root's KSK-2017).
const testAnchor = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"

func dnssecPolicy(dnsLines, ruleLines string) string {
	return fmt.Sprintf(`dns:
  upstreams: [192.0.2.53]
%s
rules:
  - name: bank
    to: [api.bank.example]
%s`, dnsLines, ruleLines)
}

// TestDNSSECKeys: the default is off with the built-in anchors; validate,
// an anchor file and a rule's dnssec: required compile.
func TestDNSSECKeys(t *testing.T) {
	p, err := Parse("p.yaml", []byte(dnssecPolicy("", "")))
	if err != nil {
		t.Fatal(err)
	}
	if p.DNS.DNSSEC != DNSSECOff || p.DNS.Anchors != nil || p.Rules[0].DNSSECRequired {
		t.Errorf("defaults: dnssec %v, anchors %v, required %v; want off, nil (built-in), false", p.DNS.DNSSEC, p.DNS.Anchors, p.Rules[0].DNSSECRequired)
	}
	file := filepath.Join(t.TempDir(), "anchors")
	if err := os.WriteFile(file, []byte("; the test root\n"+testAnchor), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err = Parse("p.yaml", []byte(dnssecPolicy("  dnssec: validate\n  trust_anchors: "+file, "    dnssec: required")))
	if err != nil {
		t.Fatal(err)
	}
	if p.DNS.DNSSEC != DNSSECValidate || p.DNS.Anchors == nil || p.DNS.TrustAnchors != file || !p.Rules[0].DNSSECRequired {
		t.Errorf("got dnssec %v, anchors %v from %q, required %v; want validate, the file's, true", p.DNS.DNSSEC, p.DNS.Anchors, p.DNS.TrustAnchors, p.Rules[0].DNSSECRequired)
	}
	p, err = Parse("p.yaml", []byte(dnssecPolicy("  dnssec: validate", "    dnssec: optional")))
	if err != nil {
		t.Fatal(err)
	}
	if p.DNS.DNSSEC != DNSSECValidate || p.DNS.Anchors != nil || p.Rules[0].DNSSECRequired {
		t.Errorf("got dnssec %v, anchors %v, required %v; want validate, nil (built-in), false", p.DNS.DNSSEC, p.DNS.Anchors, p.Rules[0].DNSSECRequired)
	}
}

// TestDNSSECErrors: every mistake is one positioned error saying what to
// write instead.
func TestDNSSECErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("example. IN A 192.0.2.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage")
	if err := os.WriteFile(garbage, []byte(". IN DS keytag 8 2 ABCD\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dns, rule string
		line, col       int
		want            []string
	}{
		{"unknown mode", "  dnssec: yes please", "", 3, 11, []string{"dns.dnssec must be validate or off", `"yes please"`}},
		{"anchors without validate", "  trust_anchors: " + bad, "", 3, 18, []string{"only used with dns.dnssec: validate"}},
		{"missing anchors file", "  dnssec: validate\n  trust_anchors: " + filepath.Join(dir, "none"), "", 4, 18, []string{"dns.trust_anchors:", "no such file", "readable file"}},
		{"anchors of another type", "  dnssec: validate\n  trust_anchors: " + bad, "", 4, 18, []string{"record type A is not an anchor", "write DS or DNSKEY"}},
		{"anchors that do not parse", "  dnssec: validate\n  trust_anchors: " + garbage, "", 4, 18, []string{"dns.trust_anchors:", "DS or DNSKEY"}},
		{"empty anchors", "  dnssec: validate\n  trust_anchors: \"\"", "", 4, 18, []string{"dns.trust_anchors is empty"}},
		{"required without validate", "", "    dnssec: required", 7, 13, []string{`rule "bank": dnssec: required needs answers validated`, "dns.dnssec: validate"}},
		{"unknown rule value", "  dnssec: validate", "    dnssec: yes", 7, 13, []string{`rule "bank": dnssec must be required or optional`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(dnssecPolicy(tt.dns, tt.rule)))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse: got %v, want an ErrorList", err)
			}
			if len(list) != 1 {
				t.Fatalf("got %d errors, want 1:\n%v", len(list), err)
			}
			e := list[0]
			if e.Line != tt.line || e.Col != tt.col {
				t.Errorf("error at %d:%d, want %d:%d: %s", e.Line, e.Col, tt.line, tt.col, e.Msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(e.Msg, w) {
					t.Errorf("message %q does not contain %q", e.Msg, w)
				}
			}
		})
	}
}

// TestDNSSECRequiredOnAddresses: a rule of addresses only has no answer to
// require anything of.
func TestDNSSECRequiredOnAddresses(t *testing.T) {
	_, err := Parse("p.yaml", []byte("dns:\n  upstreams: [192.0.2.53]\n  dnssec: validate\nrules:\n  - name: net\n    to: [192.0.2.0/24]\n    dnssec: required\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yaml:7:13: rule \"net\": dnssec: required is about DNS answers") {
		t.Errorf("got %v, want the rule's dnssec refused at 7:13", err)
	}
}
