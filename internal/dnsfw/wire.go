package dnsfw

import "encoding/binary"

// wireQuery is a query read straight from its datagram, without dns.Msg,
// for the fast path: only the plainest shape is accepted (one question of
// class IN in a name of letters, digits, '-' and '_', no compression, at
// most an OPT record of version 0 in the additional section, nothing after
// it). Anything else goes the ordinary way, where miekg/dns unpacks it and
// every rule about odd queries applies.
type wireQuery struct {
	id    uint16
	rd    bool // recursion desired
	ad    bool // authenticated data
	cd    bool // checking disabled
	qtype uint16
	// question is the question section as the client sent it: its name
	// in the client's case (0x20), type and class.
	question []byte
	// name is the question name in presentation form with its trailing
	// dot, as sent; lower is the same in lower case.
	name  []byte
	lower []byte
	edns  bool
	size  uint16 // the OPT record's UDP size
	do    bool   // DNSSEC OK
	buf   [2 * maxNameLen]byte
}

// maxNameLen is the longest name in presentation form with its trailing
// dot (RFC 1035: 255 octets on the wire).
const maxNameLen = 254

// parse reads b into q and reports whether b has the shape the fast path
// serves. A false return says nothing about b's validity.
func (q *wireQuery) parse(b []byte) bool {
	if len(b) < dnsHeaderSize+5 {
		return false
	}
	bits := binary.BigEndian.Uint16(b[2:])
	// QR, opcode, AA, TC and Z must all be clear; RD, AD and CD may be
	// set; the rcode of a query is 0.
	if bits&0xFE4F != 0 || binary.BigEndian.Uint16(b[4:]) != 1 ||
		binary.BigEndian.Uint16(b[6:]) != 0 || binary.BigEndian.Uint16(b[8:]) != 0 {
		return false
	}
	arcount := binary.BigEndian.Uint16(b[10:])
	if arcount > 1 {
		return false
	}
	q.id = binary.BigEndian.Uint16(b[0:])
	q.rd = bits&(1<<8) != 0
	q.ad = bits&(1<<5) != 0
	q.cd = bits&(1<<4) != 0

	off := dnsHeaderSize
	name := q.buf[:0]
	lower := q.buf[maxNameLen:maxNameLen]
	for {
		if off >= len(b) {
			return false
		}
		n := int(b[off])
		off++
		if n == 0 {
			break
		}
		if n > 63 || off+n > len(b) || len(name)+n+1 > maxNameLen {
			return false // a pointer, a reserved label type, or too long
		}
		for _, c := range b[off : off+n] {
			l := c
			switch {
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			case 'A' <= c && c <= 'Z':
				l = c + 'a' - 'A'
			default:
				return false // needs escaping in presentation form
			}
			name = append(name, c)
			lower = append(lower, l)
		}
		name = append(name, '.')
		lower = append(lower, '.')
		off += n
	}
	if len(name) == 0 || off+4 > len(b) {
		return false // the root, or no type and class
	}
	q.qtype = binary.BigEndian.Uint16(b[off:])
	if binary.BigEndian.Uint16(b[off+2:]) != 1 { // class IN
		return false
	}
	off += 4
	q.question = b[dnsHeaderSize:off]
	q.name, q.lower = name, lower
	q.edns, q.size, q.do = false, 0, false
	if arcount == 0 {
		return off == len(b)
	}
	// The OPT record: root owner, type 41, class the UDP size, TTL the
	// extended rcode (0 in a query), version (0) and flags.
	if off+11 > len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != 41 {
		return false
	}
	if b[off+5] != 0 || b[off+6] != 0 {
		return false // an extended rcode, or EDNS version > 0 (BADVERS)
	}
	q.edns = true
	q.size = binary.BigEndian.Uint16(b[off+3:])
	q.do = b[off+7]&0x80 != 0
	rdlen := int(binary.BigEndian.Uint16(b[off+9:]))
	if off+11+rdlen != len(b) {
		return false
	}
	// Options are dropped from the reply, as the ordinary path drops them,
	// but they must be what miekg/dns would accept: whole, and of a kind
	// it takes whatever the contents (a cookie, padding). Anything else
	// (client subnet, whose address it checks, say) goes the ordinary way.
	for opts := b[off+11:]; len(opts) > 0; {
		if len(opts) < 4 {
			return false
		}
		code, n := binary.BigEndian.Uint16(opts), int(binary.BigEndian.Uint16(opts[2:]))
		if 4+n > len(opts) || code != optCookie && code != optPadding {
			return false
		}
		opts = opts[4+n:]
	}
	return true
}

// EDNS option codes the fast path accepts in a query.
const (
	optCookie  = 10 // RFC 7873
	optPadding = 12 // RFC 7830
)

// skipName returns the offset just past the (possibly compressed) name at
// off in msg, or -1.
func skipName(msg []byte, off int) int {
	for off < len(msg) {
		n := int(msg[off])
		switch {
		case n == 0:
			return off + 1
		case n&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return -1
			}
			return off + 2
		case n > 63:
			return -1
		}
		off += 1 + n
	}
	return -1
}

// ttlOffsets appends to offs the offset of every record's TTL in msg, a
// packed message, or returns false if msg does not parse.
func ttlOffsets(msg []byte, offs []uint16) ([]uint16, bool) {
	if len(msg) < dnsHeaderSize || len(msg) > 1<<16-1 {
		return offs, false
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := dnsHeaderSize
	for range qd {
		if off = skipName(msg, off); off < 0 || off+4 > len(msg) {
			return offs, false
		}
		off += 4
	}
	for range rrs {
		if off = skipName(msg, off); off < 0 || off+10 > len(msg) {
			return offs, false
		}
		offs = append(offs, uint16(off+4))
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	}
	return offs, off == len(msg)
}
