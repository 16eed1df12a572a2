package nft

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// ports is the start of a TCP or UDP header: source port 40000, then dport.
func ports(dport uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 40000), dport)
}

func ipv4(proto byte, src, dst string, l4 []byte) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
	h[8], h[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return append(h, l4...)
}

// ipv6 builds a header whose next header is next, followed by rest
// (extension headers, chained by their own next-header bytes, then the
// transport header).
func ipv6(next byte, src, dst string, rest []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(rest)))
	h[6], h[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, rest...)
}

// ext is an 8-byte extension header (hop-by-hop, routing, destination
// options) followed by next.
func ext(next byte) []byte { return []byte{next, 0, 0, 0, 0, 0, 0, 0} }

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

var packetTests = []struct {
	name string
	pkt  []byte
	ok   bool
	want packetInfo
}{
	{"v4 tcp", ipv4(6, "198.51.100.10", "192.0.2.4", ports(443)), true,
		packetInfo{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("192.0.2.4"), policy.TCP, 443}},
	{"v4 udp", ipv4(17, "198.51.100.10", "192.0.2.4", ports(53)), true,
		packetInfo{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("192.0.2.4"), policy.UDP, 53}},
	{"v4 options", func() []byte {
		p := ipv4(6, "198.51.100.10", "192.0.2.4", nil)
		p[0] = 0x46
		return cat(p, []byte{1, 1, 1, 0}, ports(8443))
	}(), true, packetInfo{netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("192.0.2.4"), policy.TCP, 8443}},
	{"v4 icmp", ipv4(1, "198.51.100.10", "192.0.2.4", []byte{8, 0, 0, 0}), false, packetInfo{}},
	{"v4 later fragment", func() []byte {
		p := ipv4(6, "198.51.100.10", "192.0.2.4", ports(443))
		p[7] = 1
		return p
	}(), false, packetInfo{}},
	{"v4 truncated l4", ipv4(6, "198.51.100.10", "192.0.2.4", []byte{1, 2, 3}), false, packetInfo{}},
	{"v4 truncated header", ipv4(6, "198.51.100.10", "192.0.2.4", nil)[:19], false, packetInfo{}},
	{"v4 bad ihl", func() []byte {
		p := ipv4(6, "198.51.100.10", "192.0.2.4", ports(443))
		p[0] = 0x44
		return p
	}(), false, packetInfo{}},
	{"v4 ihl past end", func() []byte {
		p := ipv4(6, "198.51.100.10", "192.0.2.4", nil)
		p[0] = 0x4f
		return p
	}(), false, packetInfo{}},
	{"v6 tcp", ipv6(6, "2001:db8:1::10", "2001:db8:2::2", ports(443)), true,
		packetInfo{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::2"), policy.TCP, 443}},
	{"v6 udp after hop-by-hop and dstopts", ipv6(0, "2001:db8:1::10", "2001:db8:2::2", cat(ext(60), ext(17), ports(123))), true,
		packetInfo{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::2"), policy.UDP, 123}},
	{"v6 first fragment", ipv6(44, "2001:db8:1::10", "2001:db8:2::2", cat([]byte{6, 0, 0, 1, 0, 0, 0, 7}, ports(443))), true,
		packetInfo{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::2"), policy.TCP, 443}},
	{"v6 later fragment", ipv6(44, "2001:db8:1::10", "2001:db8:2::2", cat([]byte{6, 0, 0, 8, 0, 0, 0, 7}, ports(443))), false, packetInfo{}},
	{"v6 ah", ipv6(51, "2001:db8:1::10", "2001:db8:2::2", cat([]byte{6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ports(443))), true,
		packetInfo{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:2::2"), policy.TCP, 443}},
	{"v6 extension past end", ipv6(0, "2001:db8:1::10", "2001:db8:2::2", []byte{6, 5, 0, 0}), false, packetInfo{}},
	{"v6 too many extensions", ipv6(0, "2001:db8:1::10", "2001:db8:2::2", cat(ext(0), ext(0), ext(0), ext(0), ext(0), ext(0), ext(0), ext(0), ext(6), ports(443))), false, packetInfo{}},
	{"v6 icmpv6", ipv6(58, "2001:db8:1::10", "2001:db8:2::2", []byte{128, 0, 0, 0}), false, packetInfo{}},
	{"v6 truncated", ipv6(6, "2001:db8:1::10", "2001:db8:2::2", nil)[:39], false, packetInfo{}},
	{"empty", nil, false, packetInfo{}},
	{"version 5", []byte{0x50, 0, 0, 0}, false, packetInfo{}},
}

func TestParsePacket(t *testing.T) {
	for _, tt := range packetTests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parsePacket(tt.pkt)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok && got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// FuzzPacket: the parser takes bytes the kernel copied from any packet a
// covered source sent; it must never panic or read past them, and what it
// reports must be consistent.
func FuzzPacket(f *testing.F) {
	for _, tt := range packetTests {
		f.Add(tt.pkt)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		pi, ok := parsePacket(pkt)
		if !ok {
			return
		}
		if !pi.src.IsValid() || !pi.dst.IsValid() || pi.src.Is4() != pi.dst.Is4() {
			t.Fatalf("addresses %v, %v", pi.src, pi.dst)
		}
		if pi.src.Is4() != (pkt[0]>>4 == 4) {
			t.Fatalf("family of %v does not match version %d", pi.src, pkt[0]>>4)
		}
		if pi.proto != policy.TCP && pi.proto != policy.UDP {
			t.Fatalf("proto %v", pi.proto)
		}
		// The whole nflog message parses the same way.
		msg := nflogMessage(logPrefix, pkt)
		prefix, payload, ok2 := parseNflog(msg)
		if !ok2 || prefix != logPrefix || !bytes.Equal(payload, pkt) {
			t.Fatalf("parseNflog = %q, %x, %v; want %q, the packet", prefix, payload, ok2, logPrefix)
		}
	})
}
