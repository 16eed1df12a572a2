package nft

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Show writes the table as the kernel holds it: sets with their element
// counts, then chains with their rules and counters. It reads over netlink,
// so it needs no nft binary.
func (b *Backend) Show(w io.Writer) error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	exists, err := b.tableExistsLocked()
	if err != nil {
		return err
	}
	if !exists {
		_, err := fmt.Fprintf(w, "table inet %s is not installed\n", b.cfg.Table)
		return err
	}
	sets, err := b.conn.GetSets(b.table)
	if err != nil {
		return netlinkErr("listing sets", err)
	}
	chains, err := b.listChains()
	if err != nil {
		return err
	}
	var out strings.Builder
	fmt.Fprintf(&out, "table inet %s\n", b.cfg.Table)
	for _, s := range sets {
		elems, err := b.conn.GetSetElements(s)
		if err != nil {
			return netlinkErr("listing set "+s.Name, err)
		}
		n := 0
		for _, e := range elems {
			if !e.IntervalEnd {
				n++
			}
		}
		flags := "timeout"
		if s.Interval {
			flags = "interval"
		} else if !s.HasTimeout {
			flags = "" // interface names
		}
		fmt.Fprintf(&out, "  set %-40s %-9s %-8s %d elements\n", s.Name, s.KeyType.Name, flags, n)
	}
	for _, ch := range chains {
		fmt.Fprintf(&out, "  chain %s", ch.Name)
		if ch.Hooknum != nil {
			pol := "accept"
			if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
				pol = "drop"
			}
			fmt.Fprintf(&out, " (type %s hook %s priority %d, policy %s)", ch.Type, hookName(*ch.Hooknum), *ch.Priority, pol)
		}
		out.WriteString("\n")
		rules, err := b.conn.GetRules(b.table, ch)
		if err != nil {
			return netlinkErr("listing rules of chain "+ch.Name, err)
		}
		for _, r := range rules {
			fmt.Fprintf(&out, "    %s", describe(r.Exprs))
			if c, ok := userdata.GetString(r.UserData, ruleComment); ok {
				fmt.Fprintf(&out, "  # %s", c)
			}
			out.WriteString("\n")
		}
	}
	_, err = io.WriteString(w, out.String())
	return err
}

func hookName(h nftables.ChainHook) string {
	for name, n := range hookNums {
		if n == h {
			return name
		}
	}
	return fmt.Sprint(uint32(h))
}

// describe renders the expressions fqdngate programs in nft-like syntax;
// anything else is shown by type, so a foreign rule is visible, not hidden.
func describe(exprs []expr.Any) string {
	var parts []string
	subject := ""   // what the last load put in register 1
	var mask []byte // the mask applied to it since, if any
	var imm [][]byte
	for i, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			subject = map[expr.MetaKey]string{
				expr.MetaKeyNFPROTO: "meta nfproto", expr.MetaKeyL4PROTO: "meta l4proto",
				expr.MetaKeyOIFTYPE: "meta oiftype", expr.MetaKeyMARK: "meta mark",
				expr.MetaKeyIIFTYPE: "meta iiftype", expr.MetaKeyIIFNAME: "iifname",
				expr.MetaKeySKUID: "meta skuid", metaKeyTimeNS: "meta time",
			}[e.Key]
			if subject == "" {
				subject = fmt.Sprintf("meta key %d", e.Key)
			}
			mask = nil
		case *expr.Payload:
			subject, mask = payloadName(e), nil
		case *expr.Ct:
			subject, mask = "ct state", nil
		case *expr.Bitwise:
			// ct state tests mask the states they want (the cmp after it
			// says "any of"); address tests mask a prefix.
			mask = e.Mask
		case *expr.Fib:
			subject, mask = fibName(e), nil
		case *expr.Cmp:
			if subject == "meta nfproto" && i+1 < len(exprs) {
				if _, ok := exprs[i+1].(*expr.Payload); ok {
					continue // implied by ip/ip6 saddr/daddr
				}
			}
			v := value(subject, e.Data)
			switch {
			case subject == "ct state" && len(mask) == 4:
				v = ctStateText(binary.NativeEndian.Uint32(mask))
			case mask != nil && isAddrSubject(subject):
				v = maskedPrefix(e.Data, mask)
			}
			if e.Op == expr.CmpOpLt {
				v = "< " + v
			}
			parts = append(parts, subject+" "+v)
		case *expr.Range:
			parts = append(parts, subject+" "+value(subject, e.FromData)+"-"+value(subject, e.ToData))
		case *expr.Lookup:
			parts = append(parts, subject+" @"+e.SetName)
		case *expr.Counter:
			parts = append(parts, fmt.Sprintf("counter packets %d bytes %d", e.Packets, e.Bytes))
		case *expr.Limit:
			parts = append(parts, fmt.Sprintf("limit rate %d/second", e.Rate))
		case *expr.Log:
			parts = append(parts, fmt.Sprintf("log prefix %q group %d", e.Data, e.Group))
		case *expr.Immediate:
			imm = append(imm, e.Data)
		case *expr.Redir:
			parts = append(parts, "redirect to :"+portOf(imm, 0))
		case *expr.NAT:
			a, _ := netip.AddrFromSlice(firstOr(imm, 0))
			parts = append(parts, "dnat to "+netip.AddrPortFrom(a, binaryPort(firstOr(imm, 1))).String())
		case *expr.Verdict:
			parts = append(parts, verdictName(e))
		case *expr.Reject:
			parts = append(parts, rejectName(e))
		default:
			parts = append(parts, fmt.Sprintf("<%T>", e))
		}
	}
	return strings.Join(parts, " ")
}

func payloadName(p *expr.Payload) string {
	if p.Base == expr.PayloadBaseNetworkHeader {
		switch {
		case p.Len == 4 && p.Offset == 12:
			return "ip saddr"
		case p.Len == 4 && p.Offset == 16:
			return "ip daddr"
		case p.Len == 16 && p.Offset == 8:
			return "ip6 saddr"
		case p.Len == 16 && p.Offset == 24:
			return "ip6 daddr"
		}
	}
	if p.Base == expr.PayloadBaseTransportHeader {
		switch {
		case p.Offset == 2 && p.Len == 2:
			return "th dport"
		case p.Offset == 0 && p.Len == 1:
			return "icmpv6 type"
		}
	}
	if p.Base == expr.PayloadBaseNetworkHeader && p.Offset == hopLimitOffset && p.Len == 1 {
		return "ip6 hoplimit"
	}
	return fmt.Sprintf("payload base %d offset %d len %d", p.Base, p.Offset, p.Len)
}

func value(subject string, b []byte) string {
	switch subject {
	case "meta nfproto":
		if len(b) == 1 && b[0] == unix.NFPROTO_IPV6 {
			return "ipv6"
		}
		return "ipv4"
	case "meta l4proto":
		if len(b) == 1 {
			switch b[0] {
			case unix.IPPROTO_TCP:
				return "tcp"
			case unix.IPPROTO_UDP:
				return "udp"
			case unix.IPPROTO_ICMPV6:
				return "ipv6-icmp"
			case unix.IPPROTO_ICMP:
				return "icmp"
			}
		}
	case "meta oiftype":
		if len(b) == 2 && binary.NativeEndian.Uint16(b) == arphrdLoopback {
			return "loopback"
		}
	case "meta mark":
		if len(b) == 4 {
			return fmt.Sprintf("%#x", binary.NativeEndian.Uint32(b))
		}
	case "meta skuid":
		if len(b) == 4 {
			return fmt.Sprint(binary.NativeEndian.Uint32(b))
		}
	case "meta time":
		// Turned big-endian for the comparison (exprs.go).
		if len(b) == 8 {
			return time.Unix(0, int64(binary.BigEndian.Uint64(b))).UTC().Format(time.RFC3339Nano)
		}
	case "ip6 hoplimit":
		if len(b) == 1 {
			return fmt.Sprint(b[0])
		}
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		if a, ok := netip.AddrFromSlice(b); ok {
			return a.String()
		}
	case "ct state":
		return "established,related"
	case "fib daddr type":
		if len(b) == 4 && binary.NativeEndian.Uint32(b) == unix.RTN_LOCAL {
			return "local"
		}
	case "th dport":
		return fmt.Sprint(binaryPort(b))
	case "icmpv6 type":
		if len(b) == 1 {
			return fmt.Sprint(b[0])
		}
	}
	if v, ok := insideValue(subject, b); ok {
		return v
	}
	return fmt.Sprintf("%x", b)
}

func binaryPort(b []byte) uint16 {
	if len(b) != 2 {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func firstOr(imm [][]byte, i int) []byte {
	if i < len(imm) {
		return imm[i]
	}
	return nil
}

func portOf(imm [][]byte, i int) string { return fmt.Sprint(binaryPort(firstOr(imm, i))) }

func isAddrSubject(s string) bool {
	switch s {
	case "ip saddr", "ip daddr", "ip6 saddr", "ip6 daddr":
		return true
	}
	return false
}

// maskedPrefix writes an address compared under mask as a prefix, when
// the mask is one (leading ones, then zeros).
func maskedPrefix(addr, mask []byte) string {
	a, ok := netip.AddrFromSlice(addr)
	if !ok || len(mask) != len(addr) {
		return fmt.Sprintf("%x/%x", addr, mask)
	}
	bits := 0
	for _, m := range mask {
		for i := 7; i >= 0; i-- {
			if m&(1<<i) == 0 {
				p := netip.PrefixFrom(a, bits)
				if string(prefixMask(p)) != string(mask) {
					return fmt.Sprintf("%s/%x", a, mask)
				}
				return p.String()
			}
			bits++
		}
	}
	return a.String()
}

func rejectName(r *expr.Reject) string {
	switch {
	case r.Type == unix.NFT_REJECT_TCP_RST:
		return "reject with tcp reset"
	case r.Type == unix.NFT_REJECT_ICMPX_UNREACH && r.Code == unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED:
		return "reject with icmpx admin-prohibited"
	}
	return fmt.Sprintf("reject type %d code %d", r.Type, r.Code)
}

func verdictName(v *expr.Verdict) string {
	switch v.Kind {
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictJump:
		return "jump " + v.Chain
	case expr.VerdictGoto:
		return "goto " + v.Chain
	case expr.VerdictReturn:
		return "return"
	}
	return fmt.Sprintf("verdict %d", v.Kind)
}
