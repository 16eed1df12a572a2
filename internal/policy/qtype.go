package policy

// TypeAllowed reports whether dns.qtypes answers record type t for a
// name a rule allows: the one check the DNS firewall and simulate share.
func (p *Policy) TypeAllowed(t uint16) bool {
	for _, a := range p.DNS.QTypes {
		if a == t {
			return true
		}
	}
	return false
}
