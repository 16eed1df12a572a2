// Package policy is fqdngate's policy language: the YAML file is decoded with
// positions, validated completely, and compiled once into an immutable
// *Policy whose Decide answers "may this source reach this name on this port,
// and by which rule?" without allocating.
package policy

import (
	"net/netip"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/dnssec"
)

// Mode says whether denials are enforced or only reported.
type Mode uint8

const (
	Enforce Mode = iota // deny what no rule allows
	Audit               // allow everything, report what Enforce would deny
)

func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// Policy is a compiled, validated policy. It is immutable after Load returns
// it and safe for concurrent use; reloads build a new one and swap pointers.
type Policy struct {
	// File is the path the policy was loaded from, for messages: for a
	// fleet gateway, its local file.
	File string
	// SharedName names the shared half of a fleet gateway's policy (a
	// revision in etcd), empty for a standalone policy and before the
	// gateway has a shared revision.
	SharedName string
	// Cluster is the local file's cluster section; nil for a standalone
	// gateway.
	Cluster  *Cluster
	Mode     Mode
	Listen   Listen
	DNS      DNS
	Firewall Firewall
	Proxy    Proxy
	Log      Log
	History  History
	Admin    Admin
	// Sources maps each source group name to its address prefixes. A
	// group that selects pods (Pods) is here too, with the prefixes it
	// also has (often none).
	Sources map[string][]netip.Prefix
	// Pods maps each source group that selects pods to its selector: its
	// members are the addresses of the pods it selects, by the policy's
	// current snapshot (Members, SetMembers).
	Pods map[string]*PodSelector
	// Kubernetes is the kubernetes section; nil without one.
	Kubernetes *Kubernetes
	// SourceInterfaces maps each source group tied to interfaces (the
	// long form's interfaces key) to their names, sorted: the kernel
	// counts a packet in the group only when it arrives on one of them.
	// Groups not here match on any interface. The DNS firewall and the
	// proxy decide groups by address alone.
	SourceInterfaces map[string][]string
	// Observe maps each source group with observe_until to it; see
	// Observed, Enforced.
	Observe map[string]Observe
	// InsideSpec is the inside: the sources fqdngate serves (Inside).
	InsideSpec Inside
	// Users maps proxy user names to their password hash and groups.
	Users map[string]User
	// Rules are in file order; Rule.Index is the position here.
	Rules []*Rule

	idx        *index
	groupOrder []string // Sources' keys, sorted
	dynOrder   []string // Pods' keys, sorted
	// members is the current pod snapshot; nil when no group selects pods.
	members *membership
	// observeOrder is Observe by group name; clock is SetClock's.
	observeOrder []observed
	clock        func() time.Time
}

// Settings returns p without its rules: a copy that shares everything
// else, for what must keep a policy's settings long after the policy is
// replaced (the daemon's boot settings), without keeping its rules alive
// (a 100,000-rule policy is about 45 MB). Deciding with it allows
// nothing.
func (p *Policy) Settings() *Policy {
	s := *p
	s.Rules = nil
	s.idx = buildIndex(nil, nil)
	return &s
}

// Pos is a position in the policy file.
type Pos struct{ Line, Col int }

// ErrorAt returns msg positioned at pos in p's file, or at the file
// itself if pos is zero: for problems found after loading, such as a
// state file's directory missing on this host.
func (p *Policy) ErrorAt(pos Pos, msg string) *Error {
	return &Error{File: p.File, Line: pos.Line, Col: pos.Col, Msg: msg}
}

// Listen holds listener addresses; an empty string disables the listener.
type Listen struct {
	DNS         string
	Proxy       string
	Transparent string
	Admin       string
}

// DenyWith is how the DNS firewall answers a denied query.
type DenyWith uint8

const (
	DenyNXDomain DenyWith = iota
	DenyRefused
	DenyDrop
)

func (d DenyWith) String() string { return [...]string{"nxdomain", "refused", "drop"}[d] }

// Upstream is a resolver fqdngate forwards to.
type Upstream struct {
	Addr       netip.AddrPort
	TLS        bool   // DNS-over-TLS
	HTTPS      bool   // DNS-over-HTTPS (RFC 8484); TLS is false
	ServerName string // certificate name for TLS and HTTPS upstreams
	CAFile     string // optional CA bundle for TLS and HTTPS upstreams; empty: system roots
	// Path is an HTTPS upstream's URL path, "/dns-query" by default.
	Path string
	// GET sends an HTTPS upstream's queries as GET ?dns=..., when its URL
	// ends in the URI template {?dns}; POST otherwise.
	GET bool
}

func (u Upstream) String() string {
	switch {
	case u.TLS:
		return "tls://" + u.ServerName + "@" + u.Addr.String()
	case u.HTTPS:
		s := "https://" + u.ServerName + "@" + u.Addr.String() + u.Path
		if u.GET {
			s += dohGETTemplate
		}
		return s
	}
	return u.Addr.String()
}

// dohGETTemplate ends the URL of a DNS-over-HTTPS upstream asked with GET:
// RFC 8484's URI template variable.
const dohGETTemplate = "{?dns}"

// DNS configures the DNS firewall and fqdngate's own resolution.
type DNS struct {
	Upstreams           []Upstream
	DenyWith            DenyWith
	QTypes              []uint16 // DNS type codes answered for allowed names
	MinTTL              time.Duration
	MaxTTL              time.Duration
	Grace               time.Duration
	RebindingProtection bool
	Cache               bool
	CacheSize           int // entries
	InspectCNAME        bool
	StripECH            bool
	Timeout             time.Duration // per upstream attempt
	RateLimit           float64       // queries per second per client; 0 disables
	RateBurst           int
	MaxInFlight         int // queries outstanding upstream
	MaxLearnedPerName   int
	// WildcardBudget is how many distinct names under one wildcard
	// pattern a client may send upstream per minute; 0 disables it.
	WildcardBudget int
	// Forward are the zones forwarded to their own servers (dns.forward),
	// longest first; see Forwarded.
	Forward []ForwardZone
	// DNSSEC is dns.dnssec: whether answers are validated.
	DNSSEC DNSSEC
	// TrustAnchors is dns.trust_anchors, the file Anchors were read from;
	// empty for the built-in root anchors.
	TrustAnchors string
	// Anchors are the trust anchors read from TrustAnchors; nil for the
	// built-in root anchors (dnssec.DefaultAnchors).
	Anchors *dnssec.Anchors

	forwardIdx map[string]int // Forward's index by zone name
}

// DNSSEC is whether the DNS firewall validates answers (dns.dnssec).
type DNSSEC uint8

const (
	// DNSSECOff relays answers as the upstreams give them.
	DNSSECOff DNSSEC = iota
	// DNSSECValidate validates every forwarded answer from the trust
	// anchors down; bogus answers are never released.
	DNSSECValidate
)

func (d DNSSEC) String() string {
	if d == DNSSECValidate {
		return "validate"
	}
	return "off"
}

// Backend is the enforcement backend.
type Backend uint8

const (
	BackendNone Backend = iota
	BackendNftables
)

func (b Backend) String() string { return [...]string{"none", "nftables"}[b] }

// Hook is where the nftables backend enforces.
type Hook uint8

const (
	HookOutput  Hook = iota // traffic this host originates
	HookForward             // traffic routed through this host
)

func (h Hook) String() string { return [...]string{"output", "forward"}[h] }

// ReversePath is how the kernel checks a packet's source address against
// the interface it arrived on, before anything else sees the packet.
type ReversePath uint8

const (
	ReversePathOff    ReversePath = iota
	ReversePathStrict             // the route back to the source leaves by the input interface
	ReversePathLoose              // there is a route back to the source at all
)

func (r ReversePath) String() string { return [...]string{"off", "strict", "loose"}[r] }

// KernelDeny is how the kernel refuses what the policy denies.
type KernelDeny uint8

const (
	KernelDrop   KernelDeny = iota // discard silently: the client waits for a timeout
	KernelReject                   // TCP reset for TCP, ICMP administratively prohibited otherwise
)

func (k KernelDeny) String() string { return [...]string{"drop", "reject"}[k] }

// LogAllowed says which new connections the kernel allows are written to
// the audit log.
type LogAllowed uint8

const (
	LogAllowedOff     LogAllowed = iota // none
	LogAllowedAll                       // every one
	LogAllowedSampled                   // a rate-limited sample
)

func (l LogAllowed) String() string { return [...]string{"off", "all", "sampled"}[l] }

// Firewall configures kernel enforcement.
type Firewall struct {
	Backend          Backend
	Hook             Hook
	Table            string
	TransparentPorts []uint16
	StateFile        string
	ReversePath      ReversePath
	// StateFileAt is where the file sets state_file (zero if it does
	// not), for problems found on the host (see Policy.ErrorAt).
	StateFileAt Pos
	DenyWith    KernelDeny
	LogAllowed  LogAllowed
	// InterceptDNS are addresses whose DNS (port 53, UDP and TCP) from
	// the inside the kernel redirects to the DNS listener before any
	// other destination NAT (firewall.intercept_dns).
	InterceptDNS []netip.Addr
	// Unfiltered are ranges between which traffic is accepted without
	// the policy: a packet whose source and destination are both in them
	// (firewall.unfiltered).
	Unfiltered []netip.Prefix
}

// Proxy configures the explicit and transparent proxy.
type Proxy struct {
	DenyPrivate    bool
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	MaxConns       int
	// AllowNoSNI lets transparent TLS through that shows no name to check:
	// no SNI, or ECH while dns.strip_ech is off (with strip_ech on, ECH is
	// decided on the outer SNI, since clients of fqdngate's DNS cannot hold
	// real ECH configs). Such connections are then decided by address.
	AllowNoSNI bool
}

// Log configures the audit log.
type Log struct {
	Format string // "json" or "text"
	File   string // empty: standard output
}

// User is a proxy user authenticated with Proxy-Authorization: Basic.
type User struct {
	Hash   string // bcrypt hash
	Groups []string
}

// Proto is a transport protocol.
type Proto uint8

const (
	TCP Proto = iota
	UDP
)

func (p Proto) String() string {
	if p == UDP {
		return "udp"
	}
	return "tcp"
}

// PortRange is an inclusive range of ports of one protocol.
type PortRange struct {
	Lo, Hi uint16
	Proto  Proto
}

func (r PortRange) Contains(port uint16, p Proto) bool {
	return p == r.Proto && port >= r.Lo && port <= r.Hi
}

// PatternKind is how a name pattern matches.
type PatternKind uint8

const (
	Exact      PatternKind = iota // example.com
	OneLabel                      // *.example.com: exactly one more label
	AnyLabels                     // **.example.com: one or more labels
	ApexAndAny                    // .example.com: the apex and every subdomain (Squid spelling)
)

func (k PatternKind) String() string {
	switch k {
	case Exact:
		return "exact"
	case OneLabel:
		return "one-label"
	case AnyLabels:
		return "any-labels"
	case ApexAndAny:
		return "apex-and-any"
	}
	return "unknown"
}

// Pattern is a compiled name pattern.
type Pattern struct {
	Kind PatternKind
	Base dnsname.Name // the name without its wildcard prefix
	Raw  string       // as written in the policy
}

// Match reports whether the canonical name n matches p.
func (p Pattern) Match(n dnsname.Name) bool {
	s, b := string(n), string(p.Base)
	switch p.Kind {
	case Exact:
		return s == b
	case ApexAndAny:
		if s == b {
			return true
		}
		fallthrough
	case AnyLabels:
		return len(s) > len(b)+1 && s[len(s)-len(b)-1] == '.' && s[len(s)-len(b):] == b
	case OneLabel:
		if !(len(s) > len(b)+1 && s[len(s)-len(b)-1] == '.' && s[len(s)-len(b):] == b) {
			return false
		}
		for i := 0; i < len(s)-len(b)-1; i++ {
			if s[i] == '.' {
				return false
			}
		}
		return true
	}
	return false
}

// TLS is a rule's upstream certificate requirement, enforced by the proxy.
type TLS struct {
	Verify     bool
	Pins       [][32]byte // SHA-256 of SubjectPublicKeyInfo
	CAFile     string
	MinVersion uint16 // crypto/tls version constant
}

// Rule allows its sources to reach its targets on its ports.
type Rule struct {
	Name  string
	Index int
	// From lists source group names; nil means every source.
	From     []string
	Names    []Pattern
	Prefixes []netip.Prefix // CIDR and single-IP targets
	Ports    []PortRange
	Refresh  time.Duration
	TLS      *TLS
	// AllowPublicSuffix permits wildcards based on a public suffix.
	AllowPublicSuffix bool
	// UninspectedTunnels is inspect_tunnels: false: the proxy carries the
	// rule's CONNECT tunnels without reading their first bytes, for
	// clients that tunnel protocols other than TLS and HTTP. The zero
	// value inspects.
	UninspectedTunnels bool
	// DNSSECRequired is dnssec: required: the rule's names are answered
	// and learned only from answers dnssec validated as secure.
	DNSSECRequired bool

	fromGroups []groupRef
	// usage counts the rule's hits; carried to the same rule of the next
	// policy by KeepUsage.
	usage *Usage
}

type groupRef struct {
	name     string
	prefixes []netip.Prefix
	dynamic  bool // the group selects pods: see Members
}

// Rule returns the rule named name, or nil if the policy has none.
func (p *Policy) Rule(name string) *Rule {
	if p.idx == nil {
		return nil
	}
	if n, ok := p.idx.names[name]; ok && n.index >= 0 {
		return p.Rules[n.index]
	}
	return nil
}

// AnySource reports whether the rule applies to every source.
func (r *Rule) AnySource() bool { return r.From == nil }

// ExactNames returns the rule's exact-name patterns, the names refresh
// re-resolves.
func (r *Rule) ExactNames() []dnsname.Name {
	var out []dnsname.Name
	for _, p := range r.Names {
		if p.Kind == Exact || p.Kind == ApexAndAny {
			out = append(out, p.Base)
		}
	}
	return out
}

// Action is the outcome of a decision.
type Action uint8

const (
	Deny      Action = iota
	Allow            // a rule allowed it
	WouldDeny        // audit mode or an observing group: allowed, but Enforce would deny
	// Fail: nothing refused it, but fqdngate could not carry it out: the
	// upstream resolver or server was unreachable or failed, the answer's
	// addresses could not be enforced in time, or a concurrency or rate
	// bound was reached. Kept apart from Deny so that an outage does not
	// read (or alert) as an attack, and audit mode leaves it a failure.
	Fail
)

func (a Action) String() string { return [...]string{"deny", "allow", "would-deny", "fail"}[a] }

// Permits reports whether traffic may proceed.
func (a Action) Permits() bool { return a == Allow || a == WouldDeny }

// Reason says why a decision came out as it did. The first six come from
// Decide; the rest are set by the component that refused something a rule
// allowed (or that it refused before asking), so the audit line always
// carries the real reason.
type Reason uint8

const (
	ReasonMatched      Reason = iota // a rule matched name/address, source and port
	ReasonNoRule                     // no rule names this destination
	ReasonSource                     // a rule names the destination, but not for this source
	ReasonPort                       // a rule names the destination and source, but not this port
	ReasonInvalidName                // the name is not a valid host name
	ReasonNotAllowedIP               // an IP literal that no CIDR rule covers

	ReasonQType      // DNS: record type not in dns.qtypes
	ReasonCNAME      // DNS: a name in the CNAME chain is not allowed (dns.inspect_cname)
	ReasonRebinding  // DNS: every answer address was private (dns.rebinding_protection)
	ReasonPrivate    // proxy: the destination address is private or internal (proxy.deny_private)
	ReasonSelf       // proxy: the destination is one of fqdngate's own listeners
	ReasonSpoofed    // transparent: the original destination is not an address of the name
	ReasonNoSNI      // proxy: no server name visible (no SNI, or ECH with dns.strip_ech off)
	ReasonTLSVersion // proxy: the client offers only TLS below the rule's min_version
	ReasonVerify     // the upstream certificate failed verification or pinning
	ReasonBadRequest // the request could not be parsed
	ReasonBusy       // over a concurrency or rate bound
	ReasonUpstream   // the upstream could not be reached or failed
	ReasonUndecided  // refused before a decision could be made (no policy, no destination)
	ReasonPublish    // DNS: the answer's addresses could not be enforced in time
	ReasonAuth       // proxy: missing or wrong Proxy-Authorization credentials
	ReasonBudget     // DNS: the client is over dns.wildcard_budget under the allowing wildcard
	ReasonLocal      // proxy: the destination is an address of this host
	ReasonFronted    // proxy: a CONNECT tunnel's first bytes ask for another name than the one allowed
	ReasonForwarded  // DNS: the name is in a forward zone (dns.forward), answered by the zone's servers without rules
	ReasonBogus      // DNS: the answer failed DNSSEC validation (bogus or indeterminate; dns.dnssec)
	ReasonInsecure   // DNS: the rule has dnssec: required and the answer is not DNSSEC-secure
)

var reasonText = [...]string{
	ReasonMatched:      "matched",
	ReasonNoRule:       "no rule allows this destination",
	ReasonSource:       "destination is allowed, but not for this source",
	ReasonPort:         "destination is allowed for this source, but not on this port",
	ReasonInvalidName:  "invalid host name",
	ReasonNotAllowedIP: "no CIDR rule covers this address",
	ReasonQType:        "record type not allowed by dns.qtypes",
	ReasonCNAME:        "a name in the CNAME chain is not allowed (dns.inspect_cname)",
	ReasonRebinding:    "answer pointed a public name at private addresses (dns.rebinding_protection)",
	ReasonPrivate:      "destination address is private or internal (proxy.deny_private)",
	ReasonSelf:         "destination is fqdngate itself",
	ReasonSpoofed:      "original destination is not an address of the requested name (spoofing)",
	ReasonNoSNI:        "no server name visible (no SNI, or encrypted client hello)",
	ReasonTLSVersion:   "client offers only TLS versions below the rule's min_version",
	ReasonVerify:       "upstream certificate failed verification",
	ReasonBadRequest:   "malformed request",
	ReasonBusy:         "over a concurrency or rate limit",
	ReasonUpstream:     "upstream unreachable or failed",
	ReasonUndecided:    "refused before a policy decision",
	ReasonPublish:      "learned addresses could not be enforced in time",
	ReasonAuth:         "proxy credentials missing or wrong",
	ReasonBudget:       "too many new names under this wildcard (dns.wildcard_budget)",
	ReasonLocal:        "destination is an address of this host",
	ReasonFronted:      "tunnel carries another name",
	ReasonForwarded:    "forwarded zone",
	ReasonBogus:        "answer failed DNSSEC validation",
	ReasonInsecure:     "answer is not DNSSEC-secure and the rule requires it (dnssec: required)",
}

func (r Reason) String() string { return reasonText[r] }

// Query is what Decide is asked.
type Query struct {
	Source netip.Addr
	// User is the authenticated proxy user, if any; its groups count as the
	// source's groups.
	User string
	// Name is the destination host name as received: any case, optional
	// trailing dot. Empty when Addr is the destination.
	Name string
	// Addr is the destination address when there is no name.
	Addr netip.Addr
	Port uint16
	// Proto is the transport protocol of Port.
	Proto Proto
	// AnyPort ignores Port and Proto: the DNS firewall asks whether a name
	// may be resolved at all.
	AnyPort bool
}

// Decision is the answer to a Query. Rule is nil when no rule allowed it.
type Decision struct {
	Action Action
	Reason Reason
	Rule   *Rule
	// Pattern is the pattern (or CIDR) that matched, as written; empty if none.
	Pattern string
	// Group is the source group that matched; empty for rules without from.
	Group string
	// NearRule is, for a denial, the rule that named the destination but
	// not this source or port; nil otherwise. It explains, never permits.
	NearRule *Rule
	// Observing is, for a WouldDeny in enforce mode, the source group
	// whose observe_until let it through; "" otherwise.
	Observing string
}

// WildcardPattern returns the pattern, as written, by which d's rule
// allowed the name when it is a wildcard (*., **. or the .example.com
// form): the pattern whose dns.wildcard_budget a query for the name is
// charged to. It returns "" when an exact name or a CIDR did, or no rule.
func (d Decision) WildcardPattern() string {
	if d.Rule == nil || d.Pattern == "" {
		return ""
	}
	for _, pat := range d.Rule.Names {
		if pat.Raw == d.Pattern {
			if pat.Kind == Exact {
				return ""
			}
			return pat.Raw
		}
	}
	return ""
}

// RuleName returns the deciding rule's name, or "".
func (d Decision) RuleName() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Name
}
