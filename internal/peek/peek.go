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
	"slices"
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
	ErrUnknown      = errors.New("neither TLS nor HTTP")
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

// First is what the first message of a client connection asks for, as
// ReadFirst reads it.
type First struct {
	Protocol Protocol // TLS or HTTP
	Hello    Hello    // TLS: the ClientHello
	// Host and Port are, for HTTP, what HTTPHost returns.
	Host, Port string
}

// ReadFirst reads the first message a client sends on a connection: a TLS
// ClientHello (as ClientHello reads it) or an HTTP/1.x request head (as
// HTTPHost reads it), chosen by its first byte. Anything else is an error
// wrapping ErrUnknown, decided on that first byte.
//
// buf holds the bytes of the connection already read, if any, and its
// spare capacity is where ReadFirst reads more, so a caller can lend it a
// pooled buffer. Every read fills as much of that capacity as r gives:
// the message usually arrives in one read, and bytes past its end are
// kept. The buffer grows (into new memory) only when the message does not
// fit. ReadFirst returns buf extended by every byte read, also on error,
// to replay upstream. At most limit bytes are read; limit <= 0 means
// DefaultMax. The First returned holds no reference to buf.
func ReadFirst(r io.Reader, buf []byte, limit int) (First, []byte, error) {
	if limit <= 0 {
		limit = DefaultMax
	}
	if cap(buf) == 0 {
		buf = make([]byte, 0, min(limit, 4096))
	}
	for len(buf) == 0 {
		n, err := r.Read(buf[:min(cap(buf), limit)])
		buf = buf[:n]
		if n == 0 && err != nil {
			return First{}, buf, readError(err, 0, "the first byte")
		}
	}
	switch Sniff(buf[0]) {
	case TLS:
		b := &budget{r: r, limit: limit, raw: buf, greedy: true}
		h, err := readHello(b)
		return First{Protocol: TLS, Hello: h}, b.raw, err
	case HTTP:
		host, port, buf, err := httpHead(r, buf, limit)
		return First{Protocol: HTTP, Host: host, Port: port}, buf, err
	}
	return First{}, buf, fmt.Errorf("%w: first byte %#02x", ErrUnknown, buf[0])
}

// budget reads from r, keeping every byte, and refuses to go past limit.
type budget struct {
	r     io.Reader
	limit int
	raw   []byte // every byte read
	off   int    // raw[:off] has been handed to the parser
	// greedy reads as far as raw's capacity goes (up to limit) instead of
	// just what next needs: one read for a whole ClientHello, at the cost
	// of keeping bytes past its end, which a caller replays anyway.
	greedy bool
}

// next returns the next n bytes, reading what raw does not hold yet. Unless
// greedy, it never reads ahead, so for TLS the kept bytes end on a record
// boundary. The slice returned has no spare capacity: appending to it
// copies, and never writes over the bytes that follow.
func (b *budget) next(n int, what string) ([]byte, error) {
	need := b.off + n
	if need > b.limit {
		return nil, fmt.Errorf("%w: %s would pass %d bytes", ErrTooLarge, what, b.limit)
	}
	for len(b.raw) < need {
		if cap(b.raw) < need {
			b.raw = slices.Grow(b.raw, need-len(b.raw))
		}
		end := need
		if b.greedy {
			end = min(cap(b.raw), b.limit)
		}
		m, err := b.r.Read(b.raw[len(b.raw):end])
		b.raw = b.raw[:len(b.raw)+m]
		if err != nil && len(b.raw) < need {
			return nil, readError(err, len(b.raw), what)
		}
	}
	s := b.raw[b.off:need:need]
	b.off = need
	return s, nil
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
	_, ok := parseAddr(s)
	return ok
}

// parseAddr is netip.ParseAddr for text that is usually a name: it asks
// ParseAddr, which allocates the error it returns for a name, only about
// text with a colon (no name has one) or made of digits and dots.
func parseAddr(s string) (netip.Addr, bool) {
	if strings.IndexByte(s, ':') < 0 {
		for i := 0; i < len(s); i++ {
			if c := s[i]; (c < '0' || c > '9') && c != '.' {
				return netip.Addr{}, false
			}
		}
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}
