// Package suggest turns what the decision history saw and the policy did
// not allow into proposed rules, collapsing names into wildcards only
// where that cannot open a public suffix, and flagging what should not
// become a rule without a second look.
package suggest

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// MinSiblings is how many distinct names below one domain it takes to
// suggest a wildcard instead of the names.
const MinSiblings = 3

// CDNNames is how many names sharing one answer address make it a CDN
// (or shared hosting) address: a rule by name there is fine, a CIDR rule
// would open every tenant.
const CDNNames = 5

// Flags say why a target needs a second look.
const (
	FlagIPLiteral = "ip-literal"  // a destination address, not a name: prefer the name clients should use
	FlagResolver  = "dns-bypass"  // a DNS-over-HTTPS/TLS endpoint: allowing it lets clients bypass the DNS firewall
	FlagSeenOnce  = "seen-once"   // one decision: maybe a typo or a one-off
	FlagCDN       = "shared-addr" // its addresses answer for many other names (CDN): allow by name, never by address
)

// knownResolvers are public DNS-over-HTTPS/TLS endpoints.
var knownResolvers = []string{
	"dns.google", "dns.google.com", "cloudflare-dns.com", "mozilla.cloudflare-dns.com", "one.one.one.one",
	"1dot1dot1dot1.cloudflare-dns.com", "dns.quad9.net", "dns9.quad9.net", "dns11.quad9.net",
	"doh.opendns.com", "dns.opendns.com", "dns.nextdns.io", "doh.cleanbrowsing.org", "dns.adguard.com",
	"dns.adguard-dns.com", "doh.dns.sb", "dns.mullvad.net",
}

// Target is one proposed entry of a rule's to: a name or a wildcard.
type Target struct {
	Pattern   string
	Names     []string // the names seen that it covers
	Ports     []uint16 // seen by the proxy or the kernel; empty: DNS only
	Hits      int64
	Sources   int64 // the largest distinct-source count of its names (a lower bound for the target)
	FirstSeen time.Time
	LastSeen  time.Time
	Flags     []string
}

// Group is the proposal for one source group ("" for sources in none).
type Group struct {
	Name    string
	Targets []Target
}

// Suggest proposes targets per source group from history rows (as
// history.Store.Query returns them over the days wanted). Only rows the
// policy did not allow count: deny and would-deny.
func Suggest(rows []history.Row) []Group {
	addrNames := map[string]map[string]bool{}
	for _, r := range rows {
		for _, a := range r.Answers {
			a = stripPort(a)
			if addrNames[a] == nil {
				addrNames[a] = map[string]bool{}
			}
			addrNames[a][r.Name] = true
		}
	}
	type seen struct {
		hits, sources int64
		first, last   time.Time
		ports         map[uint16]bool
		cdn           bool
	}
	groups := map[string]map[string]*seen{}
	for _, r := range rows {
		if r.Action != "deny" && r.Action != "would-deny" {
			continue
		}
		switch r.Reason {
		case policy.ReasonNoRule.String(), policy.ReasonSource.String(), policy.ReasonPort.String(), policy.ReasonNotAllowedIP.String():
		default:
			continue // refused for another reason (invalid name, rebinding, ...): a rule would not help
		}
		g := groups[r.Group]
		if g == nil {
			g = map[string]*seen{}
			groups[r.Group] = g
		}
		s := g[r.Name]
		if s == nil {
			s = &seen{first: r.FirstSeen, last: r.LastSeen, ports: map[uint16]bool{}}
			g[r.Name] = s
		}
		s.hits += r.Hits
		s.sources = max(s.sources, r.Sources)
		if r.FirstSeen.Before(s.first) {
			s.first = r.FirstSeen
		}
		if r.LastSeen.After(s.last) {
			s.last = r.LastSeen
		}
		if r.Port != 0 {
			s.ports[r.Port] = true
		}
		for _, a := range r.Answers {
			if len(addrNames[stripPort(a)]) >= CDNNames {
				s.cdn = true
			}
		}
	}

	var out []Group
	for gname, names := range groups {
		var targets []Target
		// Collapse: names under one parent that is at or below a
		// registrable domain.
		byParent := map[string][]string{}
		for n := range names {
			if _, err := netip.ParseAddr(n); err != nil {
				if p, ok := collapsibleParent(n); ok {
					byParent[p] = append(byParent[p], n)
				}
			}
		}
		used := map[string]bool{}
		for parent, kids := range byParent {
			if len(kids) < MinSiblings {
				continue
			}
			sort.Strings(kids)
			t := Target{Pattern: "*." + parent, Names: kids}
			for _, k := range kids {
				used[k] = true
				s := names[k]
				t.add(s.hits, s.sources, s.first, s.last, s.ports)
				if s.cdn {
					t.flag(FlagCDN)
				}
			}
			targets = append(targets, t)
		}
		for n, s := range names {
			if used[n] {
				continue
			}
			t := Target{Pattern: n, Names: []string{n}}
			t.add(s.hits, s.sources, s.first, s.last, s.ports)
			if _, err := netip.ParseAddr(n); err == nil {
				t.flag(FlagIPLiteral)
			}
			if slices.Contains(knownResolvers, n) || s.ports[853] {
				t.flag(FlagResolver)
			}
			if s.hits == 1 {
				t.flag(FlagSeenOnce)
			}
			if s.cdn {
				t.flag(FlagCDN)
			}
			targets = append(targets, t)
		}
		sort.Slice(targets, func(i, j int) bool {
			if targets[i].Hits != targets[j].Hits {
				return targets[i].Hits > targets[j].Hits
			}
			return targets[i].Pattern < targets[j].Pattern
		})
		out = append(out, Group{Name: gname, Targets: targets})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// collapsibleParent returns the parent of name when a wildcard over it
// stays below a registrable domain: the parent is the registrable
// domain itself or a name under it, and "*.parent" is not a wildcard
// over a public suffix (policy.PublicSuffixWildcard, the check the
// policy loader applies).
func collapsibleParent(name string) (string, bool) {
	reg, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil || reg == name {
		return "", false
	}
	_, parent, ok := strings.Cut(name, ".")
	if !ok || !(parent == reg || strings.HasSuffix(parent, "."+reg)) {
		return "", false
	}
	pat, err := policy.ParsePattern("*." + parent)
	if err != nil {
		return "", false
	}
	if _, wide := policy.PublicSuffixWildcard(pat); wide {
		return "", false
	}
	return parent, true
}

func (t *Target) add(hits, sources int64, first, last time.Time, ports map[uint16]bool) {
	if t.Hits == 0 || first.Before(t.FirstSeen) {
		t.FirstSeen = first
	}
	if last.After(t.LastSeen) {
		t.LastSeen = last
	}
	t.Hits += hits
	t.Sources = max(t.Sources, sources)
	for p := range ports {
		if !slices.Contains(t.Ports, p) {
			t.Ports = append(t.Ports, p)
		}
	}
	slices.Sort(t.Ports)
}

func (t *Target) flag(f string) {
	if !slices.Contains(t.Flags, f) {
		t.Flags = append(t.Flags, f)
	}
}

func stripPort(a string) string {
	if ap, err := netip.ParseAddrPort(a); err == nil {
		return ap.Addr().String()
	}
	return a
}

// WriteYAML writes groups as a rules section to review: one rule per
// group and port set, each target with a comment of its evidence and
// flags. Flagged targets are written commented out.
func WriteYAML(w io.Writer, groups []Group, since string) {
	fmt.Fprintf(w, "# Suggested by fqdngate suggest from the decision history since %s.\n", since)
	fmt.Fprintln(w, "# Review every line; targets flagged !! are commented out: read why before enabling them.")
	fmt.Fprintln(w, "rules:")
	if len(groups) == 0 {
		fmt.Fprintln(w, "  [] # nothing was denied")
		return
	}
	for _, g := range groups {
		byPorts := map[string][]Target{}
		var keys []string
		for _, t := range g.Targets {
			k := portsKey(t.Ports)
			if _, ok := byPorts[k]; !ok {
				keys = append(keys, k)
			}
			byPorts[k] = append(byPorts[k], t)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := "suggested"
			if g.Name != "" {
				name += "-" + strings.ReplaceAll(g.Name, ",", "-")
			}
			if k != "" {
				name += "-" + strings.ReplaceAll(k, ",", "-")
			}
			fmt.Fprintf(w, "  - name: %s\n", name)
			if g.Name != "" {
				fmt.Fprintf(w, "    from: [%s]\n", g.Name)
			} else {
				fmt.Fprintln(w, "    # from: sources in no group; add them to a group under sources")
			}
			fmt.Fprintln(w, "    to:")
			for _, t := range byPorts[k] {
				line := fmt.Sprintf("%q", t.Pattern)
				comment := fmt.Sprintf("%s, %s, first %s, last %s", plural(t.Hits, "hit"), plural(t.Sources, "source"),
					t.FirstSeen.UTC().Format(time.DateOnly), t.LastSeen.UTC().Format(time.DateOnly))
				if len(t.Names) > 1 {
					comment = fmt.Sprintf("%d names (%s), ", len(t.Names), strings.Join(t.Names, ", ")) + comment
				}
				if len(t.Flags) > 0 {
					fmt.Fprintf(w, "      # !! %s: %s\n", strings.Join(t.Flags, ", "), comment)
					fmt.Fprintf(w, "      # - %s\n", line)
					continue
				}
				fmt.Fprintf(w, "      - %s # %s\n", line, comment)
			}
			if k == "" {
				fmt.Fprintln(w, "    # ports: seen through DNS only; the rule allows 443/tcp unless you list others")
			} else {
				fmt.Fprintf(w, "    ports: [%s]\n", k)
			}
		}
	}
}

func portsKey(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
