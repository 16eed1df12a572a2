package policy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Load reads and compiles the policy file at path. Validation problems come
// back together as an ErrorList, each positioned file:line:col.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	return Parse(path, data)
}

// ResolvConf is where omitted dns.upstreams come from.
const ResolvConf = "/etc/resolv.conf"

// resolvConf is ResolvConf, replaced by tests so results do not depend on
// the machine running them.
var resolvConf = ResolvConf

// Defaults, documented in docs/policy.md.
func defaults(file string) *Policy {
	return &Policy{
		File: file,
		Listen: Listen{
			DNS:   "127.0.0.1:15353",
			Proxy: "127.0.0.1:3128",
			Admin: "127.0.0.1:15380",
		},
		DNS: DNS{
			QTypes:              []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeHTTPS, dns.TypeSVCB},
			MinTTL:              30 * time.Second,
			MaxTTL:              time.Hour,
			Grace:               10 * time.Minute,
			RebindingProtection: true,
			Cache:               true,
			CacheSize:           100_000,
			InspectCNAME:        true,
			StripECH:            true,
			Timeout:             2 * time.Second,
			RateLimit:           1000,
			RateBurst:           2000,
			MaxInFlight:         4096,
			MaxLearnedPerName:   1000,
			WildcardBudget:      300,
		},
		Firewall: Firewall{Table: "fqdngate", StateFile: "/var/lib/fqdngate/state.json"},
		Proxy: Proxy{
			DenyPrivate:    true,
			ConnectTimeout: 10 * time.Second,
			IdleTimeout:    5 * time.Minute,
			MaxConns:       10_000,
		},
		Log:              Log{Format: "json"},
		History:          defaultHistory(),
		Sources:          map[string][]netip.Prefix{},
		Observe:          map[string]Observe{},
		Pods:             map[string]*PodSelector{},
		SourceInterfaces: map[string][]string{},
		Users:            map[string]User{},
	}
}

// wireRule is a rule as written, with positions kept for late checks.
type wireRule struct {
	node                     *yaml.Node
	name                     positioned
	from, to, ports          []positioned
	fromSet, toSet, portsSet bool
	refresh                  time.Duration
	refreshNode              *yaml.Node
	tls                      *wireTLS
	allowPublicSuffix        bool
	inspectTunnels           bool
	inspectNode              *yaml.Node
	dnssec                   positioned
}

type wireTLS struct {
	verify     bool
	pins       []positioned
	pinsSet    bool
	caFile     string
	minVersion string
	node       *yaml.Node
}

type wireUser struct {
	hash    string
	groups  []positioned
	set     bool
	keyNode *yaml.Node
}

// Parse compiles the standalone policy in data; file names it in
// messages. A file with a cluster section is one half of a fleet gateway's
// policy: Compose compiles it with the shared half.
func Parse(file string, data []byte) (*Policy, error) {
	return parse(Source{Name: file, Data: data}, nil, false)
}

// compile decodes, validates and compiles top, the policy's top-level
// mapping (one file's, or the two halves' of a fleet gateway's).
func (d *decoder) compile(file string, top *yaml.Node) (*Policy, error) {
	p := defaults(file)
	var (
		mode, denyWith, backend, hook       string
		upstreams, qtypes, tports           []positioned
		upSet, qtSet, tpSet                 bool
		upNode, qtNode                      *yaml.Node
		rulesNode                           *yaml.Node
		users                               = map[string]*wireUser{}
		groupNodes                          = map[string]*yaml.Node{}
		modeNode, dwNode, beNode, hkNode    *yaml.Node
		tableNode, fmtNode, ttlNode, toNode *yaml.Node
		minTTLNode                          *yaml.Node
		reversePath                         string
		rpNode                              *yaml.Node
		inside                              *wireInside
		listenNodes                         = map[string]*yaml.Node{}
		ifNodes                             = map[string]*yaml.Node{}
		fw                                  wireFirewall
		forward                             []*wireForward
		kube                                *wireKube
		dnssecMode, anchors                 positioned
	)
	d.mapping(top, "",
		field{"cluster", func(n *yaml.Node) { p.Cluster = d.cluster(d.clusterKey, n) }},
		field{"mode", func(n *yaml.Node) { modeNode = n; d.str(&mode, "mode")(n) }},
		field{"listen", func(n *yaml.Node) {
			d.mapping(n, "listen",
				field{"dns", func(n *yaml.Node) { listenNodes["dns"] = n; d.addr(&p.Listen.DNS, "listen.dns")(n) }},
				field{"proxy", func(n *yaml.Node) { listenNodes["proxy"] = n; d.addr(&p.Listen.Proxy, "listen.proxy")(n) }},
				field{"transparent", func(n *yaml.Node) {
					listenNodes["transparent"], fw.listenNode = n, n
					d.addr(&p.Listen.Transparent, "listen.transparent")(n)
				}},
				field{"admin", func(n *yaml.Node) {
					if a := listenNodes["admin"]; a != nil {
						d.errorf(n, "listen.admin and admin.listen (line %d) are the same setting; keep one", a.Line)
						return
					}
					listenNodes["admin"] = n
					d.addr(&p.Listen.Admin, "listen.admin")(n)
				}},
			)
		}},
		field{"dns", func(n *yaml.Node) {
			d.mapping(n, "dns",
				field{"upstreams", func(n *yaml.Node) { upNode = n; d.positionedList(&upstreams, &upSet, "dns.upstreams")(n) }},
				field{"deny_with", func(n *yaml.Node) { dwNode = n; d.str(&denyWith, "dns.deny_with")(n) }},
				field{"qtypes", func(n *yaml.Node) { qtNode = n; d.positionedList(&qtypes, &qtSet, "dns.qtypes")(n) }},
				field{"min_ttl", func(n *yaml.Node) { minTTLNode = n; d.duration(&p.DNS.MinTTL, "dns.min_ttl")(n) }},
				field{"max_ttl", func(n *yaml.Node) { ttlNode = n; d.duration(&p.DNS.MaxTTL, "dns.max_ttl")(n) }},
				field{"grace", d.duration(&p.DNS.Grace, "dns.grace")},
				field{"rebinding_protection", d.boolean(&p.DNS.RebindingProtection, "dns.rebinding_protection")},
				field{"cache", d.boolean(&p.DNS.Cache, "dns.cache")},
				field{"cache_size", d.integer(&p.DNS.CacheSize, "dns.cache_size", 1, 10_000_000)},
				field{"inspect_cname", d.boolean(&p.DNS.InspectCNAME, "dns.inspect_cname")},
				field{"strip_ech", d.boolean(&p.DNS.StripECH, "dns.strip_ech")},
				field{"timeout", func(n *yaml.Node) { toNode = n; d.duration(&p.DNS.Timeout, "dns.timeout")(n) }},
				field{"rate_limit", d.float(&p.DNS.RateLimit, "dns.rate_limit")},
				field{"rate_burst", d.integer(&p.DNS.RateBurst, "dns.rate_burst", 1, 1_000_000)},
				field{"max_inflight", d.integer(&p.DNS.MaxInFlight, "dns.max_inflight", 1, 1_000_000)},
				field{"max_learned_per_name", d.integer(&p.DNS.MaxLearnedPerName, "dns.max_learned_per_name", 1, 1_000_000)},
				field{"wildcard_budget", d.integer(&p.DNS.WildcardBudget, "dns.wildcard_budget", 0, 1_000_000)},
				field{"forward", func(n *yaml.Node) {
					d.list(n, "dns.forward", func(it *yaml.Node) { forward = append(forward, d.forwardItem(it)) })
				}},
				field{"dnssec", d.positionedStr(&dnssecMode, "dns.dnssec")},
				field{"trust_anchors", d.positionedStr(&anchors, "dns.trust_anchors")},
			)
		}},
		field{"firewall", func(n *yaml.Node) {
			d.mapping(n, "firewall",
				field{"backend", func(n *yaml.Node) { beNode = n; d.str(&backend, "firewall.backend")(n) }},
				field{"hook", func(n *yaml.Node) { hkNode = n; d.str(&hook, "firewall.hook")(n) }},
				field{"table", func(n *yaml.Node) { tableNode = n; d.str(&p.Firewall.Table, "firewall.table")(n) }},
				field{"transparent_ports", func(n *yaml.Node) {
					fw.portsNode = n
					d.positionedList(&tports, &tpSet, "firewall.transparent_ports")(n)
				}},
				field{"state_file", func(n *yaml.Node) {
					p.Firewall.StateFileAt = Pos{n.Line, n.Column}
					d.str(&p.Firewall.StateFile, "firewall.state_file")(n)
				}},
				field{"reverse_path", func(n *yaml.Node) { rpNode = n; d.str(&reversePath, "firewall.reverse_path")(n) }},
				field{"deny_with", func(n *yaml.Node) { fw.denyNode = n; d.str(&fw.denyWith, "firewall.deny_with")(n) }},
				field{"log_allowed", func(n *yaml.Node) { fw.logNode = n; d.str(&fw.logAllowed, "firewall.log_allowed")(n) }},
				field{"intercept_dns", func(n *yaml.Node) {
					fw.interceptNode = d.deref(n)
					d.positionedList(&fw.intercept, &fw.interceptSet, "firewall.intercept_dns")(n)
				}},
				field{"unfiltered", func(n *yaml.Node) {
					fw.unfilteredNode = d.deref(n)
					d.positionedList(&fw.unfiltered, &fw.unfilteredSet, "firewall.unfiltered")(n)
				}},
			)
		}},
		field{"proxy", func(n *yaml.Node) {
			d.mapping(n, "proxy",
				field{"deny_private", d.boolean(&p.Proxy.DenyPrivate, "proxy.deny_private")},
				field{"connect_timeout", d.duration(&p.Proxy.ConnectTimeout, "proxy.connect_timeout")},
				field{"idle_timeout", d.duration(&p.Proxy.IdleTimeout, "proxy.idle_timeout")},
				field{"max_conns", d.integer(&p.Proxy.MaxConns, "proxy.max_conns", 1, 10_000_000)},
				field{"allow_no_sni", d.boolean(&p.Proxy.AllowNoSNI, "proxy.allow_no_sni")},
			)
		}},
		field{"log", func(n *yaml.Node) {
			d.mapping(n, "log",
				field{"format", func(n *yaml.Node) { fmtNode = n; d.str(&p.Log.Format, "log.format")(n) }},
				field{"file", d.str(&p.Log.File, "log.file")},
			)
		}},
		field{"kubernetes", func(n *yaml.Node) { kube = d.kubernetes(d.keyOf(top, "kubernetes"), n) }},
		field{"history", func(n *yaml.Node) { d.history(n, p) }},
		field{"admin", func(n *yaml.Node) { d.admin(n, p, listenNodes) }},
		field{"sources", func(n *yaml.Node) { d.sources(n, p, groupNodes, ifNodes) }},
		field{"inside", func(n *yaml.Node) { inside = d.inside(n) }},
		field{"users", func(n *yaml.Node) { d.users(n, users) }},
		// Decoded below, each rule compiled as soon as it is decoded.
		field{"rules", func(n *yaml.Node) { rulesNode = n }},
	)

	switch mode {
	case "", "enforce":
	case "audit":
		p.Mode = Audit
	default:
		d.errorf(modeNode, "mode must be enforce or audit, not %q", mode)
	}
	switch denyWith {
	case "", "nxdomain":
	case "refused":
		p.DNS.DenyWith = DenyRefused
	case "drop":
		p.DNS.DenyWith = DenyDrop
	default:
		d.errorf(dwNode, "dns.deny_with must be nxdomain, refused or drop, not %q", denyWith)
	}
	d.compileDNSSEC(p, dnssecMode, anchors)
	switch backend {
	case "", "none":
	case "nftables":
		p.Firewall.Backend = BackendNftables
		// The kernel redirects clients to these listeners by port.
		for _, l := range []struct{ key, addr string }{{"listen.dns", p.Listen.DNS}, {"listen.transparent", p.Listen.Transparent}} {
			if ap, err := netip.ParseAddrPort(l.addr); err == nil && ap.Port() == 0 {
				d.errorf(beNode, "with firewall.backend: nftables, %s needs a fixed port (the kernel redirects clients to it), not %s", l.key, l.addr)
			}
		}
	default:
		d.errorf(beNode, "firewall.backend must be none or nftables, not %q", backend)
	}
	switch hook {
	case "", "output":
	case "forward":
		p.Firewall.Hook = HookForward
	default:
		d.errorf(hkNode, "firewall.hook must be output (protect this host) or forward (gateway), not %q", hook)
	}
	switch reversePath {
	case "":
		// Forwarded packets are what a forged source gets through; this
		// host's own traffic has no input interface to check.
		if p.Firewall.Backend == BackendNftables && p.Firewall.Hook == HookForward {
			p.Firewall.ReversePath = ReversePathStrict
		}
	case "off":
	case "strict", "loose":
		p.Firewall.ReversePath = ReversePathStrict
		if reversePath == "loose" {
			p.Firewall.ReversePath = ReversePathLoose
		}
		if p.Firewall.Backend != BackendNftables {
			d.errorf(rpNode, "firewall.reverse_path: %s is checked in the kernel and needs firewall.backend: nftables; remove it or set backend: nftables", reversePath)
		}
	default:
		d.errorf(rpNode, "firewall.reverse_path must be strict (the route back to the source leaves by the interface the packet came in on), loose (there is a route back at all) or off, not %q", reversePath)
	}
	d.compileKube(p, kube, groupNodes)
	d.kubeWire(p, kube, &fw, &forward)
	d.compileInside(p, insideInputs{wire: inside, hookNode: hkNode, listenNode: listenNodes, groupNodes: groupNodes, ifNodes: ifNodes})
	if !validTable.MatchString(p.Firewall.Table) {
		d.errorf(tableNode, "firewall.table %q must be 1 to 32 letters, digits, '_' or '-'", p.Firewall.Table)
	}
	if p.Log.Format != "json" && p.Log.Format != "text" {
		d.errorf(fmtNode, "log.format must be json or text, not %q", p.Log.Format)
	}
	for _, tp := range tports {
		v, err := strconv.ParseUint(tp.v, 10, 16)
		if err != nil || v == 0 {
			d.errorf(tp.n, "firewall.transparent_ports: %q is not a port from 1 to 65535", tp.v)
			continue
		}
		p.Firewall.TransparentPorts = append(p.Firewall.TransparentPorts, uint16(v))
	}
	if p.DNS.MinTTL > p.DNS.MaxTTL {
		if ttlNode == nil {
			ttlNode = minTTLNode // only min_ttl was set, above the default max_ttl
		}
		d.errorf(ttlNode, "dns.min_ttl (%v) is longer than dns.max_ttl (%v); lower min_ttl or raise max_ttl", p.DNS.MinTTL, p.DNS.MaxTTL)
	}
	if p.DNS.Timeout == 0 {
		d.errorf(toNode, "dns.timeout must be longer than 0s")
	}
	if qtSet {
		p.DNS.QTypes = nil
		if len(qtypes) == 0 {
			d.errorf(qtNode, "dns.qtypes is empty, so no query could be answered; list at least A and AAAA")
		}
		for _, q := range qtypes {
			t, ok := dns.StringToType[strings.ToUpper(q.v)]
			if !ok || t == dns.TypeANY || t == dns.TypeAXFR || t == dns.TypeIXFR {
				d.errorf(q.n, "dns.qtypes: %q is not a record type fqdngate can answer; use names like A, AAAA, HTTPS", q.v)
				continue
			}
			p.DNS.QTypes = append(p.DNS.QTypes, t)
		}
	}
	if upSet {
		for _, u := range upstreams {
			up, err := ParseUpstream(u.v)
			if err != nil {
				d.errorf(u.n, "dns.upstreams: %v", err)
				continue
			}
			p.DNS.Upstreams = append(p.DNS.Upstreams, up)
		}
		if len(upstreams) == 0 {
			d.errorf(upNode, "dns.upstreams is empty; list resolvers like 192.0.2.53:53, or omit the key to use %s", resolvConf)
		}
	} else if !d.noShared && (p.Listen.DNS != "" || p.Listen.Proxy != "" || p.Listen.Transparent != "") {
		// (A fleet gateway without its shared half yet allows nothing,
		// so it resolves nothing.)
		ups, err := upstreamsFromResolvConf(resolvConf, p.Listen.DNS)
		if err != nil {
			d.errorf(nil, "dns.upstreams is not set and %v; list upstreams explicitly", err)
		}
		p.DNS.Upstreams = ups
	}

	for name, u := range users {
		usr := User{Hash: u.hash}
		if _, err := bcrypt.Cost([]byte(u.hash)); err != nil {
			d.errorf(u.keyNode, "users.%s.hash is not a bcrypt hash; generate one with `htpasswd -nbB user password` (never put the password itself here)", name)
		}
		for _, g := range u.groups {
			if _, ok := p.Sources[g.v]; !ok {
				d.errorf(g.n, "users.%s: source group %q is not defined under sources; %s", name, g.v, defineGroupHint(g.v, p))
				continue
			}
			usr.Groups = append(usr.Groups, g.v)
		}
		p.Users[name] = usr
	}

	names := d.compileRules(rulesNode, p)
	if d.outside {
		return nil, errOutside
	}
	d.firewall(p, &fw)
	d.compileForward(p, forward)

	if errs := d.result(); errs != nil {
		return nil, errs
	}
	p.groupOrder = sortedKeys(p.Sources)
	p.compileObserve()
	p.dynOrder = sortedKeys(p.Pods)
	if len(p.Pods) > 0 {
		p.members = &membership{}
	}
	p.idx = buildIndex(p.Rules, names)
	return p, nil
}

var validTable = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// validName reports whether s can name a rule or a source group: a letter
// or digit, then at most 62 letters, digits, '_', '.' or '-'. (What the
// regexp ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ says, at a tenth of its cost,
// which shows in a reload of 100,000 rules.)
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func yamlError(file string, err error) *Error {
	// yaml.v3 says "yaml: line 7: did not find expected key"; keep the line.
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
		return &Error{File: file, Line: line, Col: 1, Msg: "not valid YAML: " + msg}
	}
	return &Error{File: file, Msg: "not valid YAML: " + msg}
}

func (d *decoder) addr(dst *string, path string) func(*yaml.Node) {
	return func(n *yaml.Node) {
		if isNull(n) {
			*dst = ""
			return
		}
		s, ok := d.scalar(n, path)
		if !ok {
			return
		}
		if s != "" {
			if _, err := netip.ParseAddrPort(s); err != nil {
				d.errorf(n, "%s: %q is not an IP:port; write it like 127.0.0.1:5353 or [::1]:5353, or \"\" to disable", path, s)
				return
			}
		}
		*dst = s
	}
}

func (d *decoder) sources(n *yaml.Node, p *Policy, nodes, ifNodes map[string]*yaml.Node) {
	n = d.deref(n)
	if n.Kind != yaml.MappingNode {
		if !isNull(n) {
			d.errorf(n, "sources must map group names to lists of addresses")
		}
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if prev, dup := nodes[k.Value]; dup {
			d.errorf(k, "source group %q is defined twice (first at line %d); merge the two lists", k.Value, prev.Line)
			continue
		}
		nodes[k.Value] = k
		if !validName(k.Value) {
			d.errorf(k, "source group name %q must start with a letter or digit and hold only letters, digits, '_', '.' or '-'", k.Value)
		}
		path := "sources." + k.Value
		w := d.sourceGroup(k, v, path)
		var pfx []netip.Prefix
		for _, c := range w.cidrs {
			if pp, err := parsePrefix(c.v); err != nil {
				d.errorf(c.n, "%s: %v", w.cidrsPath, err)
			} else {
				pfx = append(pfx, pp)
			}
		}
		if w.pods != nil {
			p.Pods[k.Value] = w.pods
		}
		if w.observeSet {
			p.Observe[k.Value] = w.observe
		}
		if w.cidrsSet && len(w.cidrs) == 0 {
			d.errorf(k, "source group %q has no addresses; list CIDRs or addresses, or remove the group", k.Value)
		}
		if w.ifacesSet {
			ifNodes[k.Value] = w.ifacesNode
			if len(w.ifaces) == 0 {
				d.errorf(w.ifacesNode, "%s.interfaces is empty; list interfaces like [eth1], or remove the key to match on any", path)
			}
			p.SourceInterfaces[k.Value] = d.interfaceNames(w.ifaces, path+".interfaces")
		}
		p.Sources[k.Value] = pfx
	}
}

// wireGroup is a source group as written: a list of addresses, or the long
// form, a mapping with the addresses under cidrs.
type wireGroup struct {
	cidrs      []positioned
	cidrsSet   bool   // false only in a long form without (valid) cidrs
	cidrsPath  string // for messages: sources.<group> or sources.<group>.cidrs
	ifaces     []positioned
	ifacesSet  bool
	ifacesNode *yaml.Node
	pods       *PodSelector // the kubernetes key, compiled; nil if absent or wrong
	podsSet    bool
	observe    Observe // observe_until, when observeSet
	observeSet bool
}

func (d *decoder) sourceGroup(k, v *yaml.Node, path string) wireGroup {
	w := wireGroup{cidrsPath: path}
	if d.deref(v).Kind != yaml.MappingNode {
		d.positionedList(&w.cidrs, &w.cidrsSet, path)(v)
		return w
	}
	w.cidrsPath = path + ".cidrs"
	d.mapping(v, path,
		field{"cidrs", d.positionedList(&w.cidrs, &w.cidrsSet, w.cidrsPath)},
		field{"interfaces", func(c *yaml.Node) {
			w.ifacesNode = d.deref(c)
			d.positionedList(&w.ifaces, &w.ifacesSet, path+".interfaces")(c)
		}},
		field{"kubernetes", func(c *yaml.Node) {
			w.podsSet = true
			w.pods = d.podSelector(c, path+".kubernetes")
		}},
		field{"observe_until", d.observeUntil(&w.observe, &w.observeSet, path+".observe_until")},
	)
	// A misspelt cidrs is reported as an unknown key already.
	if !w.cidrsSet && !w.podsSet && !hasOtherKeys(d.deref(v), "cidrs", "interfaces", "kubernetes", "observe_until") {
		d.errorf(k, "source group %q has no cidrs and selects no pods; list its addresses, like %s: {cidrs: [10.0.0.0/24], interfaces: [eth1]}, or its pods, like %s: {kubernetes: {namespaces: [payments]}}", k.Value, k.Value, k.Value)
	}
	return w
}

// hasOtherKeys reports whether the mapping n has a key not in keys.
func hasOtherKeys(n *yaml.Node, keys ...string) bool {
	for i := 0; i < len(n.Content); i += 2 {
		if !slices.Contains(keys, n.Content[i].Value) {
			return true
		}
	}
	return false
}

func (d *decoder) users(n *yaml.Node, users map[string]*wireUser) {
	n = d.deref(n)
	if n.Kind != yaml.MappingNode {
		if !isNull(n) {
			d.errorf(n, "users must map user names to {hash, groups}")
		}
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if _, dup := users[k.Value]; dup {
			d.errorf(k, "user %q is defined twice (first at line %d); keep one", k.Value, users[k.Value].keyNode.Line)
			continue
		}
		u := &wireUser{keyNode: k}
		path := "users." + k.Value
		d.mapping(v, path,
			field{"hash", d.str(&u.hash, path+".hash")},
			field{"groups", d.positionedList(&u.groups, &u.set, path+".groups")},
		)
		users[k.Value] = u
	}
}

// compileRules decodes and compiles the rules under n into p.Rules, one
// at a time: a rule's wire form is reused for the next (in a reload of
// 100,000 rules, a wire rule each was 17 MB of garbage), and its YAML
// nodes are let go once it is compiled.
func (d *decoder) compileRules(n *yaml.Node, p *Policy) map[string]ruleSeen {
	if n == nil {
		return nil
	}
	var items iter.Seq[*yaml.Node]
	count := 0 // how many items, known or estimated up front
	if lz, ok := d.lazy[n]; ok {
		items, count = d.lazyItems(lz), lz.hint
	} else {
		switch m := d.deref(n); {
		case m.Kind == yaml.SequenceNode:
			its := slices.Clone(m.Content)
			if m == n {
				// Not reached through an alias, so nothing else decodes
				// these nodes: the tree lets go of each rule, and the
				// loop below of each rule it has compiled.
				clear(m.Content)
			}
			count = len(its)
			items = func(yield func(*yaml.Node) bool) {
				for i, it := range its {
					its[i] = nil
					if !yield(it) {
						return
					}
				}
			}
		case m.Kind == yaml.ScalarNode && !isNull(m):
			items = slices.Values([]*yaml.Node{m}) // reported by rule: not a mapping
		default:
			d.list(m, "rules", func(*yaml.Node) {}) // null: no rules; else an error
			return nil
		}
	}
	if count > 0 {
		p.Rules = make([]*Rule, 0, count)
	}
	// Every rule name seen: the line that first used it, and its rule's
	// index (-1 if it did not compile); the index keeps it as its names.
	names := make(map[string]ruleSeen, count)
	var w wireRule
	for it := range items {
		if !d.rule(&w, it) {
			continue
		}
		// Checked before compiling, so a duplicate is reported even when
		// either rule has other problems.
		prev, dup := names[w.name.v]
		if dup {
			d.errorf(w.name.n, "rule name %q is already used at line %d; rule names must be unique (they appear in the audit log)", w.name.v, prev.line)
		}
		r := d.compileRule(&w, p)
		if r == nil || dup {
			if !dup {
				names[w.name.v] = ruleSeen{line: int32(w.name.n.Line), index: -1}
			}
			continue
		}
		r.Index = len(p.Rules)
		r.usage = &Usage{}
		p.Rules = append(p.Rules, r)
		names[r.Name] = ruleSeen{line: int32(w.name.n.Line), index: int32(r.Index)}
	}
	return names
}

// ruleSeen is what compileRules knows of a rule name: the line of its
// first use and the index of its compiled rule (-1 if it did not compile).
type ruleSeen struct{ line, index int32 }

// lazyItems yields the items of a rules sequence fastyaml left unread,
// each positioned in its file; if they turn out to be beyond fastyaml,
// d.outside is set.
func (d *decoder) lazyItems(lz lazyRules) iter.Seq[*yaml.Node] {
	return func(yield func(*yaml.Node) bool) {
		for it := range lz.doc.Items() {
			if d.origin != nil {
				d.mark(it, lz.file)
			}
			ok := yield(it)
			if d.origin != nil {
				d.unmark(it) // its nodes are reused for the next item
			}
			if !ok {
				return
			}
		}
		if lz.doc.Err() != nil {
			d.outside = true
		}
	}
}

// rule decodes n into w, which it resets first (keeping the room of its
// lists), and reports whether n is a rule worth compiling.
func (d *decoder) rule(w *wireRule, n *yaml.Node) bool {
	n = d.deref(n)
	from, to, ports := w.from[:0], w.to[:0], w.ports[:0]
	*w = wireRule{node: n, inspectTunnels: true, from: from, to: to, ports: ports}
	if d.ruleFields == nil {
		d.ruleFields = d.newRuleFields()
	}
	d.rw = w
	d.mapping(n, "rule", d.ruleFields...)
	d.rw = nil
	if n.Kind != yaml.MappingNode {
		if isNull(n) {
			d.errorf(n, "rules has an empty item; remove the lone '-'")
		}
		return false
	}
	if w.name.n == nil || w.name.v == "" {
		d.errorf(n, "rule has no name; give it one, like name: bank-api (names appear in the audit log)")
		return false
	}
	return true
}

// newRuleFields returns the keys of a rule, decoded into d.rw: made once
// per policy rather than once per rule, since a closure per key and rule
// was a tenth of what a reload of 100,000 rules allocated.
func (d *decoder) newRuleFields() []field {
	return []field{
		{"name", func(v *yaml.Node) {
			if s, ok := d.scalar(v, "rule name"); ok && !isNull(d.deref(v)) {
				d.rw.name = positioned{s, d.deref(v)}
			}
		}},
		{"from", func(v *yaml.Node) { d.positionedList(&d.rw.from, &d.rw.fromSet, "from")(v) }},
		{"to", func(v *yaml.Node) { d.positionedList(&d.rw.to, &d.rw.toSet, "to")(v) }},
		{"ports", func(v *yaml.Node) { d.positionedList(&d.rw.ports, &d.rw.portsSet, "ports")(v) }},
		{"refresh", func(v *yaml.Node) { d.rw.refreshNode = d.deref(v); d.duration(&d.rw.refresh, "refresh")(v) }},
		{"allow_public_suffix", func(v *yaml.Node) { d.boolean(&d.rw.allowPublicSuffix, "allow_public_suffix")(v) }},
		{"dnssec", func(v *yaml.Node) { d.positionedStr(&d.rw.dnssec, "dnssec")(v) }},
		{"inspect_tunnels", func(v *yaml.Node) {
			d.rw.inspectNode = d.deref(v)
			d.boolean(&d.rw.inspectTunnels, "inspect_tunnels")(v)
		}},
		{"tls", func(v *yaml.Node) {
			t := &wireTLS{node: d.deref(v)}
			d.mapping(v, "tls",
				field{"verify", d.boolean(&t.verify, "tls.verify")},
				field{"pins", d.positionedList(&t.pins, &t.pinsSet, "tls.pins")},
				field{"ca_file", d.str(&t.caFile, "tls.ca_file")},
				field{"min_version", d.str(&t.minVersion, "tls.min_version")},
			)
			d.rw.tls = t
		}},
	}
}

func (d *decoder) compileRule(w *wireRule, p *Policy) *Rule {
	r := &Rule{Name: w.name.v, AllowPublicSuffix: w.allowPublicSuffix, Refresh: w.refresh, UninspectedTunnels: !w.inspectTunnels}
	ok := true
	if !validName(r.Name) {
		d.errorf(w.name.n, "rule name %q must start with a letter or digit and hold at most 63 letters, digits, '_', '.' or '-'", r.Name)
		ok = false
	}
	if w.fromSet {
		r.From = make([]string, 0, len(w.from))
		if len(w.from) == 0 {
			d.errorf(w.node, "rule %q: from is empty, so it would allow nothing; omit from to apply to every source", r.Name)
			ok = false
		}
		for _, g := range w.from {
			pfx, defined := p.Sources[g.v]
			if !defined {
				d.errorf(g.n, "rule %q: source group %q is not defined under sources; %s", r.Name, g.v, defineGroupHint(g.v, p))
				ok = false
				continue
			}
			if r.fromGroups == nil {
				r.fromGroups = make([]groupRef, 0, len(w.from))
			}
			r.From = append(r.From, g.v)
			r.fromGroups = append(r.fromGroups, groupRef{g.v, pfx, p.Dynamic(g.v)})
		}
	}
	if len(w.to) == 0 {
		d.errorf(w.node, "rule %q has no targets; list names or CIDRs under to", r.Name)
		ok = false
	}
	for _, t := range w.to {
		if hint := targetHint(t.v); hint != "" {
			d.errorf(t.n, "rule %q: %q %s", r.Name, t.v, hint)
			ok = false
			continue
		}
		if !mayBeAddress(t.v) {
			// A name: skip parsePrefix, whose error would be built and
			// dropped for every name of a large policy.
		} else if pfx, err := parsePrefix(t.v); err == nil {
			r.Prefixes = append(r.Prefixes, pfx)
			continue
		} else if strings.Contains(t.v, "/") || looksNumeric(t.v) {
			d.errorf(t.n, "rule %q: %v", r.Name, err)
			ok = false
			continue
		}
		pat, err := ParsePattern(t.v)
		if err != nil {
			d.errorf(t.n, "rule %q: %v", r.Name, err)
			ok = false
			continue
		}
		if kind, wide := PublicSuffixWildcard(pat); wide && !w.allowPublicSuffix {
			d.errorf(t.n, "rule %q: %q opens every tenant of %s, %s; name the subdomain you need, or add allow_public_suffix: true if you mean it", r.Name, t.v, pat.Base, kind)
			ok = false
			continue
		}
		r.Names = append(r.Names, pat)
	}
	if !w.portsSet {
		r.Ports = defaultPorts[:1:1] // shared: nothing writes a rule's ports
	} else {
		r.Ports = make([]PortRange, 0, len(w.ports))
	}
	if w.portsSet && len(w.ports) == 0 {
		d.errorf(w.node, "rule %q: ports is empty; omit it for 443/tcp or list ports", r.Name)
		ok = false
	}
	for _, ps := range w.ports {
		pr, err := ParsePortRange(ps.v)
		if err != nil {
			d.errorf(ps.n, "rule %q: %v", r.Name, err)
			ok = false
			continue
		}
		r.Ports = append(r.Ports, pr)
	}
	if r.UninspectedTunnels && !r.allowsTCP() {
		d.errorf(w.inspectNode, "rule %q: inspect_tunnels is about CONNECT tunnels, which are TCP, and the rule allows no TCP port; remove inspect_tunnels", r.Name)
		ok = false
	}
	if w.refreshNode != nil && r.Refresh > 0 && len(r.ExactNames()) == 0 {
		d.errorf(w.refreshNode, "rule %q: refresh needs at least one exact name to re-resolve (wildcards and CIDRs cannot be resolved); remove refresh or add a name", r.Name)
		ok = false
	}
	if w.refreshNode != nil && r.Refresh > 0 && r.Refresh < time.Second {
		d.errorf(w.refreshNode, "rule %q: refresh %v is too short; use 1s or more", r.Name, r.Refresh)
		ok = false
	}
	if !d.compileRuleDNSSEC(w, r, p) {
		ok = false
	}
	if t := w.tls; t != nil {
		r.TLS = &TLS{Verify: t.verify, CAFile: t.caFile, MinVersion: tls.VersionTLS12}
		for _, pin := range t.pins {
			h, err := parsePin(pin.v)
			if err != nil {
				d.errorf(pin.n, "rule %q: %v", r.Name, err)
				ok = false
				continue
			}
			r.TLS.Pins = append(r.TLS.Pins, h)
		}
		switch t.minVersion {
		case "", "1.2":
		case "1.3":
			r.TLS.MinVersion = tls.VersionTLS13
		default:
			d.errorf(t.node, "rule %q: tls.min_version must be 1.2 or 1.3, not %q", r.Name, t.minVersion)
			ok = false
		}
		if len(r.TLS.Pins) > 0 && !r.TLS.Verify {
			d.errorf(t.node, "rule %q: tls.pins are only checked with verify: true; add it", r.Name)
			ok = false
		}
		if t.caFile != "" {
			if _, err := os.Stat(t.caFile); err != nil {
				d.errorf(t.node, "rule %q: tls.ca_file: %v", r.Name, err)
				ok = false
			}
		}
	}
	if !ok {
		return nil
	}
	return r
}

// defaultPorts are the ports of a rule that lists none: 443/tcp. Rules
// share the one slice (most of a large policy's rules list no ports).
var defaultPorts = []PortRange{{Lo: 443, Hi: 443, Proto: TCP}}

// defineGroupHint says how to fix a reference to an undefined group.
func defineGroupHint(g string, p *Policy) string {
	if s := suggest(g, sortedKeys(p.Sources)); s != "" {
		return fmt.Sprintf("did you mean %q?", s)
	}
	return fmt.Sprintf("define it, like sources: {%s: [10.0.0.0/24]}", g)
}

// targetHint recognises targets written as URLs or host:port, which people
// paste from elsewhere, and says what to write instead.
func targetHint(s string) string {
	if strings.IndexByte(s, ':') < 0 {
		return "" // both hints need one; most targets are names
	}
	if i := strings.Index(s, "://"); i >= 0 {
		host := s[i+3:]
		if j := strings.IndexAny(host, "/:"); j >= 0 {
			host = host[:j]
		}
		return fmt.Sprintf("is a URL; write the host name only (%s) and put ports under ports", host)
	}
	// One colon followed by digits: IPv6 addresses have at least two.
	if host, port, ok := strings.Cut(s, ":"); ok && host != "" && isDigits(port) {
		return fmt.Sprintf("has a port; write the host (%s) under to and the port (%s) under ports", host, port)
	}
	return ""
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// mayBeAddress reports whether parsePrefix could accept s: an IPv6
// address holds a colon, an IPv4 address only digits and dots, and a CIDR
// a slash. Anything else is a name.
func mayBeAddress(s string) bool {
	return strings.ContainsAny(s, ":/") || looksNumeric(s)
}

func looksNumeric(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// ParsePattern parses a name pattern: example.com, *.example.com,
// **.example.com or .example.com.
func ParsePattern(s string) (Pattern, error) {
	pat := Pattern{Raw: s, Kind: Exact}
	rest := s
	switch {
	case strings.HasPrefix(s, "**."):
		pat.Kind, rest = AnyLabels, s[3:]
	case strings.HasPrefix(s, "*."):
		pat.Kind, rest = OneLabel, s[2:]
	case strings.HasPrefix(s, "."):
		pat.Kind, rest = ApexAndAny, s[1:]
	}
	if strings.Contains(rest, "*") {
		return Pattern{}, fmt.Errorf("%q: '*' may only stand as the whole first label, as in *.example.com or **.example.com", s)
	}
	n, err := dnsname.Parse(rest)
	if err != nil {
		return Pattern{}, fmt.Errorf("%q is not a valid name pattern: %v; write a host name like api.example.com, optionally with a *., **. or . prefix", s, err)
	}
	if pat.Kind != Exact && n.Labels() < 1 {
		return Pattern{}, fmt.Errorf("%q has no base name after the wildcard", s)
	}
	pat.Base = n
	return pat, nil
}

// ParsePortRange parses "443", "443/udp", "8000-8100" or "8000-8100/tcp".
func ParsePortRange(s string) (PortRange, error) {
	pr := PortRange{Proto: TCP}
	spec := s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		switch strings.ToLower(s[i+1:]) {
		case "tcp":
		case "udp":
			pr.Proto = UDP
		default:
			return pr, fmt.Errorf("port %q: protocol must be tcp or udp", s)
		}
		spec = s[:i]
	}
	lo, hi, isRange := strings.Cut(spec, "-")
	l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 32)
	h := l
	var err2 error
	if isRange {
		h, err2 = strconv.ParseUint(strings.TrimSpace(hi), 10, 32)
	}
	if err1 != nil || err2 != nil {
		return pr, fmt.Errorf("port %q is not a port, a range like 8000-8100, or either with /tcp or /udp", s)
	}
	if l < 1 || h > 65535 {
		return pr, fmt.Errorf("port %q is out of range; ports run from 1 to 65535", s)
	}
	if l > h {
		return pr, fmt.Errorf("port range %q runs backwards; write the low port first, like %d-%d", s, h, l)
	}
	pr.Lo, pr.Hi = uint16(l), uint16(h)
	return pr, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return pfx, fmt.Errorf("%q is not a CIDR; write it like 203.0.113.0/24", s)
		}
		if m := pfx.Masked(); m != pfx {
			return pfx, fmt.Errorf("%q has bits set past the prefix length; write %s", s, m)
		}
		return pfx, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	a = a.WithZone("")
	if a.Is4In6() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePin(s string) ([32]byte, error) {
	var h [32]byte
	b64, ok := strings.CutPrefix(s, "sha256/")
	if !ok {
		return h, fmt.Errorf("pin %q must look like sha256/<base64 of the SPKI SHA-256>", s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 32 {
		return h, fmt.Errorf("pin %q: not 32 bytes of base64; compute it with: openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64", s)
	}
	copy(h[:], raw)
	return h, nil
}

// ParseUpstream parses "192.0.2.53", "192.0.2.53:53", "[2001:db8::53]:53",
// "tls://dns.example@192.0.2.53:853" or
// "https://dns.example@192.0.2.53:443/dns-query" (with {?dns} at the end
// for GET).
func ParseUpstream(s string) (Upstream, error) {
	var u Upstream
	rest := s
	port := uint16(53)
	switch {
	case strings.HasPrefix(s, "tls://"):
		u.TLS, port = true, 853
		rest = s[len("tls://"):]
		name, addr, hasName := strings.Cut(rest, "@")
		if hasName {
			u.ServerName, rest = name, addr
		}
	case strings.HasPrefix(s, "https://"):
		return parseHTTPSUpstream(s)
	case strings.HasPrefix(s, "http://"):
		return u, fmt.Errorf("%q: plain http:// would send queries and answers unencrypted and unauthenticated; use DNS-over-HTTPS as https://dns.example@192.0.2.53/dns-query", s)
	case strings.Contains(s, "://"):
		return u, fmt.Errorf("%q: only plain ip:port, tls://name@ip:853 and https://name@ip:443/dns-query upstreams are supported", s)
	}
	ap, err := parseUpstreamAddr(rest, port)
	if err != nil {
		return u, fmt.Errorf("%q: %v; write it like 192.0.2.53:53 or tls://dns.example@192.0.2.53:853", s, err)
	}
	u.Addr = ap
	if u.TLS && u.ServerName == "" {
		u.ServerName = u.Addr.Addr().String()
	}
	return u, nil
}

// parseUpstreamAddr parses an upstream's ip or ip:port, port 0 refused.
func parseUpstreamAddr(s string, defaultPort uint16) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if p, err := netip.ParseAddrPort(s); err == nil {
		ap = p
	} else if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		ap = netip.AddrPortFrom(a, defaultPort)
	} else {
		return ap, errors.New("upstreams are IP addresses (a name would need a resolver to find the resolver)")
	}
	if ap.Port() == 0 {
		return ap, fmt.Errorf("port 0 is no resolver's port; write the port it listens on, or leave it out for %d", defaultPort)
	}
	return ap, nil
}

// parseHTTPSUpstream parses a DNS-over-HTTPS upstream (RFC 8484),
// https://name@ip[:port][/path][{?dns}]: the name is what the server's
// certificate must be valid for (and the HTTP :authority), the address is
// what is dialled, so no name needs a resolver to find the resolver. Without
// a name, the certificate must be valid for the IP address.
func parseHTTPSUpstream(s string) (Upstream, error) {
	u := Upstream{HTTPS: true, Path: "/dns-query"}
	const example = "https://dns.example@192.0.2.53/dns-query"
	rest := s[len("https://"):]
	if t, ok := strings.CutSuffix(rest, dohGETTemplate); ok {
		u.GET, rest = true, t
	}
	authority := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		authority, u.Path = rest[:i], rest[i:]
	}
	if err := checkDoHPath(u.Path); err != nil {
		return u, fmt.Errorf("%q: %v; write the path like /dns-query, with {?dns} at the end for GET", s, err)
	}
	name, addr, hasName := strings.Cut(authority, "@")
	if !hasName {
		addr = authority
	} else if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		u.ServerName = a.String() // a certificate for an IP address, as String writes it
	} else {
		n, err := dnsname.Parse(name)
		if err != nil {
			return u, fmt.Errorf("%q: server name %q: %v; write the name the server's certificate is for, like %s", s, name, err, example)
		}
		u.ServerName = string(n)
	}
	ap, err := parseUpstreamAddr(addr, 443)
	if err != nil {
		if !hasName {
			return u, fmt.Errorf("%q: the resolver's address is missing (a name would need a resolver to find the resolver); write the certificate's name and the address, like %s", s, example)
		}
		return u, fmt.Errorf("%q: %v; write it like %s", s, err, example)
	}
	u.Addr = ap
	if u.ServerName == "" {
		u.ServerName = u.Addr.Addr().String()
	}
	return u, nil
}

// checkDoHPath checks a DNS-over-HTTPS URL path: absolute, printable
// ASCII, without a query or fragment (the query is the client's to write).
func checkDoHPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return errors.New("the path must start with /")
	}
	for _, c := range []byte(p) {
		switch {
		case c <= ' ' || c >= 0x7f:
			return fmt.Errorf("the path has the byte %#02x, which a URL path cannot hold", c)
		case c == '?' || c == '#' || c == '{' || c == '}':
			return fmt.Errorf("the path has %q; only {?dns} at the very end is understood", c)
		}
	}
	if _, err := url.Parse("https://dns.example" + p); err != nil {
		return errors.New("the path has a % not followed by two hex digits; write a literal % as %25")
	}
	return nil
}

// upstreamsFromResolvConf reads nameservers, skipping fqdngate's own DNS
// listener so it never forwards to itself.
func upstreamsFromResolvConf(path, self string) ([]Upstream, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s cannot be read: %v", path, err)
	}
	selfAP, _ := netip.ParseAddrPort(self)
	var out []Upstream
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		ap := netip.AddrPortFrom(a.WithZone(""), 53)
		// Listening on the wildcard address on port 53, fqdngate is every
		// local resolver; a remote nameserver is still a real upstream.
		if ap == selfAP || (selfAP.Port() == 53 && selfAP.Addr().IsUnspecified() && ap.Addr().IsLoopback()) {
			continue
		}
		out = append(out, Upstream{Addr: ap})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no nameserver other than fqdngate itself", path)
	}
	return out, nil
}
