package resolver

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/fqdngate/fqdngate/internal/dnsname"

	"github.com/miekg/dns"
)

// Errors from checking an upstream's answer. On UDP the exchange skips such
// datagrams and keeps reading, because an off-path attacker can send them;
// on a stream they end the attempt.
var (
	errShort    = errors.New("response shorter than a DNS header")
	errID       = errors.New("response ID does not match the query")
	errNotReply = errors.New("response does not have the QR bit set")
	errQuestion = errors.New("response answers a different question")
)

// randomID returns a query ID an off-path attacker cannot predict; with the
// source port it is all that stands between a spoofed answer and the cache.
func randomID() uint16 {
	var b [2]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return binary.BigEndian.Uint16(b[:])
}

// setID writes id into a packed message.
func setID(wire []byte, id uint16) { binary.BigEndian.PutUint16(wire, id) }

// parseResponse unpacks b, the bytes an upstream sent in reply to the query
// with id and question q, and checks that it is that reply. The question
// name may differ in case: some servers and middleboxes lower-case it.
// A response without a question is accepted only if it carries an error
// rcode and no records, as some servers answer FORMERR or NOTIMP.
func parseResponse(b []byte, id uint16, q dns.Question) (*dns.Msg, error) {
	// Check the cheap things before unpacking, so a flood of spoofed
	// datagrams costs little.
	if err := checkID(b, id); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, fmt.Errorf("unpacking response: %w", err)
	}
	switch len(m.Question) {
	case 1:
		got := m.Question[0]
		if got.Qtype != q.Qtype || got.Qclass != q.Qclass || !dnsname.EqualFold(got.Name, q.Name) {
			return nil, errQuestion
		}
	case 0:
		if m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError ||
			len(m.Answer)+len(m.Ns) > 0 {
			return nil, errQuestion
		}
	default:
		return nil, errQuestion
	}
	return m, nil
}

// checkID checks that b is a response with id.
func checkID(b []byte, id uint16) error {
	if len(b) < 12 {
		return errShort
	}
	if binary.BigEndian.Uint16(b) != id {
		return errID
	}
	if b[2]&0x80 == 0 {
		return errNotReply
	}
	return nil
}

// checkHeader checks what a reply to the query with id and question q must
// have in b, the start of a response that may be cut short: the ID, the QR
// bit and the question.
func checkHeader(b []byte, id uint16, q dns.Question) error {
	if err := checkID(b, id); err != nil {
		return err
	}
	if binary.BigEndian.Uint16(b[4:]) != 1 {
		return errQuestion
	}
	name, off, err := dns.UnpackDomainName(b, 12)
	if err != nil || off+4 > len(b) {
		return errQuestion
	}
	if binary.BigEndian.Uint16(b[off:]) != q.Qtype || binary.BigEndian.Uint16(b[off+2:]) != q.Qclass ||
		!dnsname.EqualFold(name, q.Name) {
		return errQuestion
	}
	return nil
}
