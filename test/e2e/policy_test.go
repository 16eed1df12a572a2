package e2e

import (
	"fmt"
	"testing"
	"time"
)

// policySettings are the parts of a test policy outside its rules.
type policySettings struct {
	hook      string // forward or output
	dnsListen string
	grace     time.Duration
	table     string
	stateFile string
	sources   string // YAML for the sources key, or ""
	// transparent is listen.transparent, or "" for none; firewall holds
	// more keys of the firewall section, one "key: value" per line.
	transparent string
	firewall    []string
	dns         string // more keys under dns:, each line indented two spaces, or ""
	proxy       string // listen.proxy; "" for none
	backend     string // firewall.backend; "" is nftables
	upstream    string // dns.upstreams' one entry; "" is the authority over UDP
}

// render returns a whole policy: the settings, then rules (YAML for the
// rules key's list, indented by two spaces).
func (s policySettings) render(rules string) string {
	backend := s.backend
	if backend == "" {
		backend = "nftables"
	}
	upstream := s.upstream
	if upstream == "" {
		upstream = authorityAddr
	}
	p := fmt.Sprintf(`listen: {dns: %q, proxy: %q, admin: "127.0.0.1:0", transparent: %q}
dns:
  upstreams: [%q]
  min_ttl: 1s
  max_ttl: 1h
  grace: %s
%sfirewall:
  backend: %s
  hook: %s
  table: %s
  state_file: %s
`, s.dnsListen, s.proxy, s.transparent, upstream, s.grace, s.dns, backend, s.hook, s.table, s.stateFile)
	for _, l := range s.firewall {
		p += "  " + l + "\n"
	}
	if s.sources != "" {
		p += "sources:\n" + s.sources
	}
	return p + "rules:\n" + rules
}

// forwardSources are the two client groups of the forward topology.
const forwardSources = `  a: [192.0.2.10/32, "2001:db8:c::10/128"]
  b: [192.0.2.20/32, "2001:db8:c::20/128"]
`

// forward is a running gateway: the topology, fqdngate in its gateway
// namespace, and a client of each group.
type forward struct {
	net      *forwardNet
	gate     *gate
	settings policySettings
	a, b     *client
}

// startForward builds the forward topology and starts fqdngate on the
// gateway with rules.
func startForward(t *testing.T, grace time.Duration, rules string) *forward {
	t.Helper()
	return startForwardWith(t, grace, rules, nil)
}

// startForwardWith is startForward with settings changed by edit first.
func startForwardWith(t *testing.T, grace time.Duration, rules string, edit func(*policySettings)) *forward {
	t.Helper()
	n := newForwardNet(t)
	g := newGate(t, n.gw)
	f := &forward{
		net:  n,
		gate: g,
		settings: policySettings{
			hook:      "forward",
			dnsListen: gatewayDNS,
			grace:     grace,
			table:     g.table,
			stateFile: g.stateFile(),
			sources:   forwardSources,
		},
		a: &client{ns: n.client, src4: srcA, src6: srcA6, dns: gatewayDNS, roots: n.inet.ca.Pool()},
		b: &client{ns: n.client, src4: srcB, src6: srcB6, dns: gatewayDNS, roots: n.inet.ca.Pool()},
	}
	if edit != nil {
		edit(&f.settings)
	}
	g.writePolicy(f.settings.render(rules))
	g.start()
	return f
}
