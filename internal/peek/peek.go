// Package peek reads the start of a client connection — a TLS ClientHello or
// a plain HTTP/1.x request head — to learn the name it asks for, keeping every
// byte so the connection can be replayed to its destination unchanged.
//
// Nothing here sets deadlines: a client that sends half a ClientHello and
// stalls would hold a reader forever, so callers must bound the peek with
// SetReadDeadline on the connection (and clear it before splicing).
package peek

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// DefaultMax is the read budget used when a caller passes a limit <= 0. A
// ClientHello with post-quantum key shares is about 2 KiB and a browser
// request head rarely passes 8 KiB; the headroom is for session tickets and
// cookies, the bound is for clients that never stop.
const DefaultMax = 32 << 10

// Errors returned by ClientHello and HTTPHost wrap one of these, so callers
// can turn them into a decision reason with errors.Is.
var (
	ErrTruncated    = errors.New("connection closed before the message was complete")
	ErrTooLarge     = errors.New("message exceeds the read limit")
	ErrMalformed    = errors.New("malformed message")
	ErrNotTLS       = errors.New("not TLS")
	ErrNotHello     = errors.New("not a TLS ClientHello")
	ErrDuplicateSNI = errors.New("more than one server name")
	ErrIPLiteralSNI = errors.New("server name is an IP address literal")
	ErrBadName      = errors.New("invalid host name")
	ErrNotHTTP      = errors.New("not an HTTP/1.x request")
	ErrNoHost       = errors.New("request has no Host header")
	ErrManyHosts    = errors.New("request has more than one Host header")
	ErrHostMismatch = errors.New("request target and Host header disagree")
)

// Protocol is what the first byte of a connection suggests it speaks.
type Protocol uint8

const (
	Unknown Protocol = iota
	TLS              // a TLS handshake record
	HTTP             // an HTTP/1.x request line
)

func (p Protocol) String() string {
	switch p {
	case TLS:
		return "tls"
	case HTTP:
		return "http"
	}
	return "unknown"
}

// Sniff guesses the protocol from the first byte a client sent. It is only a
// hint for choosing between ClientHello and HTTPHost; both still validate.
func Sniff(first byte) Protocol {
	switch {
	case first == recordTypeHandshake:
		return TLS
	case first >= 'A' && first <= 'Z': // every registered method is upper-case
		return HTTP
	}
	return Unknown
}

// budget reads from r, keeping every byte, and refuses to go past limit.
type budget struct {
	r     io.Reader
	limit int
	raw   []byte
}

// next reads exactly n more bytes. It never reads ahead, so for TLS the kept
// bytes end on a record boundary.
func (b *budget) next(n int, what string) ([]byte, error) {
	if len(b.raw)+n > b.limit {
		return nil, fmt.Errorf("%w: %s would pass %d bytes", ErrTooLarge, what, b.limit)
	}
	start := len(b.raw)
	b.raw = append(b.raw, make([]byte, n)...)
	m, err := io.ReadFull(b.r, b.raw[start:])
	b.raw = b.raw[:start+m]
	if err != nil {
		return nil, readError(err, len(b.raw), what)
	}
	return b.raw[start:], nil
}

// readError keeps "the client hung up" (ErrTruncated) apart from deadlines
// and resets, which the caller may want to log differently.
func readError(err error, have int, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: after %d bytes, reading %s", ErrTruncated, have, what)
	}
	return fmt.Errorf("reading %s: %w", what, err)
}

// parseName validates a host name taken from the wire. Unlike dnsname.Parse
// it refuses non-ASCII: the upstream server sees these exact bytes, and a
// name we fold differently from it is a name we decided on wrongly.
func parseName(s string) (dnsname.Name, error) {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return "", fmt.Errorf("%w: byte %#02x in %q", ErrBadName, s[i], s)
		}
	}
	if looksNumeric(strings.TrimSuffix(s, ".")) {
		return "", fmt.Errorf("%w: %q looks like an IPv4 address", ErrBadName, s)
	}
	n, err := dnsname.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadName, err)
	}
	return n, nil
}

// looksNumeric reports whether the last label of s is a number, which URL
// parsers (WHATWG) read as an IPv4 address in shorthand ("127.1", "0x7f.1"),
// so no policy name could ever mean it.
func looksNumeric(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last == "" {
		return false
	}
	if h, ok := strings.CutPrefix(strings.ToLower(last), "0x"); ok {
		return strings.Trim(h, "0123456789abcdef") == ""
	}
	return strings.Trim(last, "0123456789") == ""
}

// isIPLiteral reports whether s (without brackets) is an IP address.
func isIPLiteral(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}
