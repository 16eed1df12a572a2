package nft

import (
	"math"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/sockmark"
)

// Byte offsets in the IPv4 and IPv6 headers.
var (
	saddrOffset = [2]uint32{12, 8}
	daddrOffset = [2]uint32{16, 24}
	addrLen     = [2]uint32{4, 16}
	nfprotoNum  = [2]byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6}
)

const arphrdLoopback = 772 // ARPHRD_LOOPBACK in linux/if_arp.h

// hopLimitOffset is the hop limit's offset in the IPv6 header.
const hopLimitOffset = 7

// metaKeyTimeNS is NFT_META_TIME_NS in linux/netfilter/nf_tables.h (the
// wall clock in nanoseconds since the Unix epoch, since Linux 5.4);
// github.com/google/nftables v0.3.0 and x/sys name no constant for it.
const metaKeyTimeNS expr.MetaKey = 30

// unixNanos is t as the kernel's clock counts it, nanoseconds since the
// Unix epoch, clamped to what the clock can hold: an instant before 1970
// never comes again, one past 2262 never comes.
func unixNanos(t time.Time) uint64 {
	switch {
	case t.Before(time.Unix(0, 0)):
		return 0
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

var icmpProtoNum = [2]byte{unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6}

// prefixMask is the network mask of p, as many bytes as its address.
func prefixMask(p netip.Prefix) []byte {
	b := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

func protoNum(p policy.Proto) byte {
	if p == policy.UDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func reg1cmp(data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data}
}

// exprs compiles m; sets resolves set names to the sets of this batch.
func (m match) exprs(sets map[string]*nftables.Set) []expr.Any {
	switch m.kind {
	case ctState:
		return []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(m.state),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		}
	case oifLoopback:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFTYPE, Register: 1}, reg1cmp(binaryutil.NativeEndian.PutUint16(arphrdLoopback))}
	case ownMark:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, reg1cmp(binaryutil.NativeEndian.PutUint32(sockmark.Mark))}
	case daddrLocal:
		return []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			reg1cmp(binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)),
		}
	case nfproto:
		return nfprotoExprs(m.fam)
	case saddrIn, daddrIn:
		off := saddrOffset[m.fam]
		if m.kind == daddrIn {
			off = daddrOffset[m.fam]
		}
		s := sets[m.set]
		return append(nfprotoExprs(m.fam),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen[m.fam]},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
		)
	case l4proto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, reg1cmp([]byte{protoNum(m.proto)})}
	case dport:
		return append([]expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}},
			rangeExpr(binaryutil.BigEndian.PutUint16(m.lo), binaryutil.BigEndian.PutUint16(m.hi)))
	case icmpv6Type:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, reg1cmp([]byte{unix.IPPROTO_ICMPV6}),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			rangeExpr([]byte{byte(m.lo)}, []byte{byte(m.hi)}),
		}
	case icmpProto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, reg1cmp([]byte{icmpProtoNum[m.fam]})}
	case hopLimit:
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: hopLimitOffset, Len: 1},
			reg1cmp([]byte{byte(m.lo)}),
		}
	case timeBefore:
		// The kernel loads its clock in host byte order, and cmp compares
		// bytes in order (memcmp): to compare numbers, the clock is
		// turned big-endian first, as nft does for "meta time <".
		return []expr.Any{
			&expr.Meta{Key: metaKeyTimeNS, Register: 1},
			&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 8, Size: 8},
			&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: binaryutil.BigEndian.PutUint64(unixNanos(m.until))},
		}
	case socketOwned:
		// The load fails, ending the rule, for packets without a process's
		// socket (the kernel's own); any uid matches the rest.
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{0, 0, 0, 0}, ToData: []byte{0xff, 0xff, 0xff, 0xff}},
		}
	}
	if e, ok := m.insideExprs(sets); ok {
		return e
	}
	panic("nft: unknown match kind")
}

func nfprotoExprs(f family) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, reg1cmp([]byte{nfprotoNum[f]})}
}

func rangeExpr(lo, hi []byte) expr.Any {
	if string(lo) == string(hi) {
		return reg1cmp(lo)
	}
	return &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: lo, ToData: hi}
}

func (s stmt) exprs() []expr.Any {
	switch s.kind {
	case counter:
		return []expr.Any{&expr.Counter{}}
	case accept:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	case drop:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	case jump:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: s.chain}}
	case ret:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	case logSample:
		return []expr.Any{
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.rate), Unit: expr.LimitTimeSecond, Burst: s.rate},
			&expr.Log{Key: 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP, Group: s.group, Data: []byte(logPrefix)},
		}
	case rejectTCP:
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
	case rejectICMP:
		return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}
	case logAllow:
		var out []expr.Any
		if s.rate > 0 {
			out = append(out, &expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(s.rate), Unit: expr.LimitTimeSecond, Burst: s.rate})
		}
		return append(out, &expr.Log{Key: 1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP, Group: s.group, Data: []byte(s.prefix)})
	case redirect:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(s.port)},
			&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		}
	case dnat:
		fam := v4
		if s.addr.Is6() {
			fam = v6
		}
		// The family test keeps the address register from being applied
		// to the other family's packets.
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: s.addr.AsSlice()},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(s.port)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(nfprotoNum[fam]), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
		}
	}
	panic("nft: unknown statement kind")
}

func (r ruleSpec) exprs(sets map[string]*nftables.Set) []expr.Any {
	var out []expr.Any
	for _, m := range r.matches {
		out = append(out, m.exprs(sets)...)
	}
	for _, s := range r.stmts {
		out = append(out, s.exprs()...)
	}
	return out
}
