package nft

import (
	"encoding/binary"
	"net/netip"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// packetInfo is what the audit log needs of a dropped packet.
type packetInfo struct {
	src, dst netip.Addr
	proto    policy.Proto
	port     uint16 // destination port
}

// IP protocol numbers the parser knows.
const (
	ipprotoHopOpts  = 0
	ipprotoTCP      = 6
	ipprotoUDP      = 17
	ipprotoRouting  = 43
	ipprotoFragment = 44
	ipprotoAH       = 51
	ipprotoDstOpts  = 60
	// maxExtHeaders bounds the IPv6 extension headers walked before the
	// transport header; a packet with more is not reported.
	maxExtHeaders = 8
)

// parsePacket reads the addresses, transport protocol and destination port
// of an IPv4 or IPv6 packet starting at its network header, as nflog
// copies it. The copy may be cut short. It reports false for anything but
// the first fragment of TCP or UDP, and for truncated or malformed
// headers; it never reads past b.
func parsePacket(b []byte) (packetInfo, bool) {
	var pi packetInfo
	if len(b) < 1 {
		return pi, false
	}
	var (
		next byte
		l4   []byte
	)
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return pi, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return pi, false
		}
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return pi, false // a later fragment: no transport header
		}
		next = b[9]
		pi.src = netip.AddrFrom4([4]byte(b[12:16]))
		pi.dst = netip.AddrFrom4([4]byte(b[16:20]))
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return pi, false
		}
		next = b[6]
		pi.src = netip.AddrFrom16([16]byte(b[8:24]))
		pi.dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
		for range maxExtHeaders {
			var hlen int
			switch next {
			case ipprotoHopOpts, ipprotoRouting, ipprotoDstOpts:
				if len(l4) < 2 {
					return pi, false
				}
				hlen = (int(l4[1]) + 1) * 8
			case ipprotoFragment:
				if len(l4) < 8 {
					return pi, false
				}
				if binary.BigEndian.Uint16(l4[2:4])&0xfff8 != 0 {
					return pi, false
				}
				hlen = 8
			case ipprotoAH:
				if len(l4) < 2 {
					return pi, false
				}
				hlen = (int(l4[1]) + 2) * 4
			default:
				hlen = -1
			}
			if hlen < 0 {
				break
			}
			if len(l4) < hlen {
				return pi, false
			}
			next, l4 = l4[0], l4[hlen:]
		}
	default:
		return pi, false
	}
	switch next {
	case ipprotoTCP:
		pi.proto = policy.TCP
	case ipprotoUDP:
		pi.proto = policy.UDP
	default:
		return pi, false
	}
	if len(l4) < 4 {
		return pi, false
	}
	pi.port = binary.BigEndian.Uint16(l4[2:4])
	return pi, true
}
