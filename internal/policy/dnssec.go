package policy

import (
	"os"

	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/dnssec"
)

// positionedStr decodes a string scalar with its node, for values checked
// after the whole file is read.
func (d *decoder) positionedStr(dst *positioned, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		n = d.deref(n)
		if isNull(n) {
			*dst = positioned{"", n}
			return
		}
		if s, ok := d.scalar(n, path); ok {
			*dst = positioned{s, n}
		}
	}
}

// compileDNSSEC checks dns.dnssec and dns.trust_anchors and reads the
// anchors, so a file the daemon could not use is a load error (and
// fqdngate check says so) rather than a failure at start.
func (d *decoder) compileDNSSEC(p *Policy, mode, anchors positioned) {
	switch mode.v {
	case "", "off":
		p.DNS.DNSSEC = DNSSECOff
	case "validate":
		p.DNS.DNSSEC = DNSSECValidate
	default:
		d.errorf(mode.n, "dns.dnssec must be validate or off, not %q", mode.v)
	}
	if anchors.n == nil || anchors.v == "" {
		if anchors.n != nil {
			d.errorf(anchors.n, "dns.trust_anchors is empty; name a file of DS or DNSKEY records, or remove the key for the built-in root anchors")
		}
		return
	}
	if p.DNS.DNSSEC != DNSSECValidate {
		d.errorf(anchors.n, "dns.trust_anchors is only used with dns.dnssec: validate; add it or remove trust_anchors")
		return
	}
	data, err := os.ReadFile(anchors.v)
	if err != nil {
		d.errorf(anchors.n, "dns.trust_anchors: %v; name a readable file of DS or DNSKEY records", err)
		return
	}
	a, err := dnssec.ParseAnchors(string(data), anchors.v)
	if err != nil {
		d.errorf(anchors.n, "dns.trust_anchors: %v", err)
		return
	}
	p.DNS.TrustAnchors, p.DNS.Anchors = anchors.v, a
}

// compileRuleDNSSEC sets r.DNSSECRequired from the rule's dnssec key; it
// reports whether the key is valid.
func (d *decoder) compileRuleDNSSEC(w *wireRule, r *Rule, p *Policy) bool {
	switch w.dnssec.v {
	case "", "optional":
		return true
	case "required":
	default:
		d.errorf(w.dnssec.n, "rule %q: dnssec must be required or optional, not %q", r.Name, w.dnssec.v)
		return false
	}
	if p.DNS.DNSSEC != DNSSECValidate {
		d.errorf(w.dnssec.n, "rule %q: dnssec: required needs answers validated; set dns.dnssec: validate, or remove dnssec from the rule", r.Name)
		return false
	}
	if len(r.Names) == 0 && len(w.to) > 0 && len(r.Prefixes) > 0 {
		d.errorf(w.dnssec.n, "rule %q: dnssec: required is about DNS answers and the rule lists only addresses; remove dnssec or name the hosts", r.Name)
		return false
	}
	r.DNSSECRequired = true
	return true
}
