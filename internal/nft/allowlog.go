package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// The allow log (firewall.log_allowed): each accept rule of the enforce
// chain hands the packet it accepts to an nflog group of its own, under a
// prefix that names the policy rule and source group the kernel rule
// belongs to. Only a connection's first packets reach these rules (the
// base chain accepts established flows before them), so the log holds new
// connections. The rule is read from the kernel rule that accepted, never
// decided again by address, which could name another rule whose set holds
// the same address.
//
// A prefix is a function of the names alone, so it means the same rule and
// group in every ruleset: a packet logged just before a reload is read
// correctly after it.

// Allowed is a new connection an accept rule let through, as the allow log
// reports it.
type Allowed struct {
	Src, Dst netip.Addr
	Proto    policy.Proto
	Port     uint16 // destination port
	// Rule and Group are the policy rule and source group of the kernel
	// rule that accepted; Group is "" for rules without from.
	Rule, Group string
	// Sampled: firewall.log_allowed was sampled, so other connections of
	// the rule went unlogged.
	Sampled bool
}

// DefaultAllowLogGroup is the nflog group of the allow log when
// Config.AllowLogGroup is 0: the one after the drop sample's.
const DefaultAllowLogGroup = DefaultLogGroup + 1

func (c *Config) allowLogGroup() uint16 {
	if c.AllowLogGroup == 0 {
		return DefaultAllowLogGroup
	}
	return c.AllowLogGroup
}

// allowKey is what an allow log prefix stands for.
type allowKey struct {
	rule, group string
	sampled     bool
}

const (
	allowPrefixAll     = "fqdngate allow "
	allowPrefixSampled = "fqdngate allow-sample "
	// maxLogPrefix is the longest prefix the kernel takes
	// (NF_LOG_PREFIXLEN less the terminating NUL).
	maxLogPrefix = 127
)

// allowPrefix is the log prefix for k: the head, the rule name and the
// group name. Names are at most 63 bytes and hold no spaces; when both
// are long, the group is written as a hash, which still fits.
func allowPrefix(k allowKey) string {
	head := allowPrefixAll
	if k.sampled {
		head = allowPrefixSampled
	}
	s := head + k.rule
	if k.group != "" {
		s += " " + k.group
	}
	if len(s) > maxLogPrefix {
		h := sha256.Sum256([]byte(k.group))
		s = head + k.rule + " #" + hex.EncodeToString(h[:8])
	}
	return s
}

// acceptRules accept what ms matches for rule and group, and with
// firewall.log_allowed log it too: every packet, or (sampled) at most the
// drop sample's rate per second, in a rule of its own before the accept,
// since a limit that is exceeded ends its rule.
func (d *desired) acceptRules(cfg *Config, p *policy.Policy, ms []match, rule, group, comment string) []ruleSpec {
	acc := ruleSpec{matches: ms, stmts: []stmt{{kind: accept}}, comment: comment}
	if p.Firewall.LogAllowed == policy.LogAllowedOff {
		return []ruleSpec{acc}
	}
	k := allowKey{rule: rule, group: group, sampled: p.Firewall.LogAllowed == policy.LogAllowedSampled}
	prefix := allowPrefix(k)
	d.allowLog[prefix] = k
	l := stmt{kind: logAllow, prefix: prefix, group: cfg.allowLogGroup()}
	if !k.sampled {
		acc.stmts = []stmt{l, {kind: accept}}
		return []ruleSpec{acc}
	}
	l.rate = cfg.logRate()
	return []ruleSpec{{matches: ms, stmts: []stmt{l}, comment: comment}, acc}
}

// allowNames resolves allow log prefixes: those of the applied ruleset,
// then those of the one before, for packets logged just before a reload.
type allowNames struct {
	cur, prev map[string]allowKey
}

func (n *allowNames) lookup(prefix string) (allowKey, bool) {
	if n == nil {
		return allowKey{}, false
	}
	if k, ok := n.cur[prefix]; ok {
		return k, true
	}
	k, ok := n.prev[prefix]
	return k, ok
}

// setAllowNames makes m the applied ruleset's prefixes.
func (b *Backend) setAllowNames(m map[string]allowKey) {
	var prev map[string]allowKey
	if old := b.allowNames.Load(); old != nil {
		prev = old.cur
	}
	b.allowNames.Store(&allowNames{cur: m, prev: prev})
}

// handleAllow hands one allow log packet to Config.OnAllow.
func (b *Backend) handleAllow(prefix string, payload []byte) {
	k, ok := b.allowNames.Load().lookup(prefix)
	if !ok {
		if strings.HasPrefix(prefix, allowPrefixAll[:len(allowPrefixAll)-1]) {
			// Ours, but from a ruleset two reloads back: unattributable.
			b.allowLogsLost.Add(1)
		}
		return
	}
	pi, ok := parsePacket(payload)
	if !ok {
		b.allowLogsLost.Add(1)
		return
	}
	b.allowLogs.Add(1)
	b.cfg.OnAllow(Allowed{Src: pi.src, Dst: pi.dst, Proto: pi.proto, Port: pi.port, Rule: k.rule, Group: k.group, Sampled: k.sampled})
}
