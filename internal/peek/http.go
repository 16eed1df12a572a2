package peek

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ErrConnect is returned for a CONNECT request: spliced to a server that
// happens to be a proxy it would open a tunnel to a target we never saw.
var ErrConnect = errors.New("CONNECT request on a transparent connection")

var headEnd = []byte("\r\n\r\n")

// HTTPHost reads an HTTP/1.x request head from r and returns the host and
// port it is addressed to. At most limit bytes are read; limit <= 0 means
// DefaultMax. Reads may run past the head into the body, so buffered, every
// byte read (also on error), is what must be replayed upstream.
//
// host is either a canonical DNS name (as dnsname.Parse returns it) or an IP
// address literal in netip.Addr form, IPv6 without brackets; callers tell
// them apart with netip.ParseAddr. port is the decimal port from the Host
// header, or "" when it has none.
//
// The parser is stricter than most servers on purpose: anything a server
// could read as a different host than we do — a missing or repeated Host, a
// header folded over two lines, bare CR or LF, whitespace before a colon, an
// absolute URI naming another host — is an error, not a guess.
func HTTPHost(r io.Reader, limit int) (host, port string, buffered []byte, err error) {
	if limit <= 0 {
		limit = DefaultMax
	}
	return httpHead(r, make([]byte, 0, min(limit, 4096)), limit)
}

// httpHead is HTTPHost reading into buf, which may hold bytes read
// already.
func httpHead(r io.Reader, buf []byte, limit int) (host, port string, buffered []byte, err error) {
	end := -1
	from := 0         // where the next search for the head's end starts
	lineDone := false // the request line is whole, and was checked
	var rerr error
	for {
		if len(buf) > 0 && Sniff(buf[0]) != HTTP {
			// Decide on the first byte so a TLS client is not kept waiting
			// for a blank line it will never send.
			return "", "", buf, fmt.Errorf("%w: first byte %#02x", ErrNotHTTP, buf[0])
		}
		if i := bytes.Index(buf[from:], headEnd); i >= 0 {
			end = from + i + len(headEnd)
			break
		}
		if !lineDone {
			// Decide on the request line as soon as it is whole, so a
			// client of another protocol that starts with a capital
			// letter (SSH, SMTP) is not kept waiting either. (A whole
			// head is checked by parseHead, in the same order.)
			if i := bytes.Index(buf, headEnd[:2]); i >= 0 {
				if _, _, _, err := checkRequestLine(string(buf[:i])); err != nil {
					return "", "", buf, err
				}
				lineDone = true
			}
		}
		from = max(0, len(buf)-len(headEnd)+1)
		if rerr != nil {
			return "", "", buf, readError(rerr, len(buf), "HTTP request head")
		}
		if len(buf) >= limit {
			return "", "", buf, fmt.Errorf("%w: no end of request head in %d bytes", ErrTooLarge, limit)
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(512, min(cap(buf), limit-len(buf))))
		}
		var n int
		n, rerr = r.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+n]
	}
	host, port, err = parseHead(string(buf[:end]))
	return host, port, buf, err
}

// Request is the request line and header fields of an HTTP/1.x request
// head, as ParseRequest reads them. Its strings are slices of the head.
type Request struct {
	Method, Target, Proto string
	// Fields are the header fields in the order sent: names as sent,
	// values without leading and trailing spaces and tabs.
	Fields []Field
}

// Field is one header field of a Request.
type Field struct{ Name, Value string }

// HeadLen returns the length of the request head at the start of b,
// through the empty line that ends it, or -1 if b holds no whole head.
func HeadLen(b []byte) int {
	if i := bytes.Index(b, headEnd); i >= 0 {
		return i + len(headEnd)
	}
	return -1
}

// ParseRequest parses an HTTP/1.x request head as HeadLen delimits it
// (ending in CRLF CRLF), appending its header fields to fields, whose
// array it may reuse. It applies HTTPHost's rules of syntax: a request line
// of method, target and HTTP/1.0 or HTTP/1.1 separated by single spaces;
// no bare CR or LF; no header folded over two lines; header names that are
// tokens; no control bytes in the target or in header values. It leaves
// the meaning of the target and the fields to the caller.
func ParseRequest(head string, fields []Field) (Request, error) {
	r := Request{Fields: fields[:0]}
	var err error
	r.Method, r.Target, r.Proto, err = scanRequest(head, func(name, value string) {
		r.Fields = append(r.Fields, Field{name, value})
	})
	if err != nil {
		return Request{}, err
	}
	return r, nil
}

// scanRequest is ParseRequest giving each header field to field instead
// of a slice, so a caller that wants one field keeps nothing on the heap.
func scanRequest(head string, field func(name, value string)) (method, target, version string, err error) {
	if !strings.HasSuffix(head, "\r\n\r\n") || strings.Index(head, "\r\n\r\n") != len(head)-len(headEnd) {
		return "", "", "", fmt.Errorf("%w: request head does not end at its first empty line", ErrMalformed)
	}
	body := head[:len(head)-len(headEnd)]
	line, rest, _ := strings.Cut(body, "\r\n")
	method, target, version, err = checkRequestLine(line)
	if err != nil {
		return "", "", "", err
	}
	if i := bareCRLF(rest); i >= 0 {
		return "", "", "", fmt.Errorf("%w: bare CR or LF in line %d", ErrMalformed, strings.Count(rest[:i], "\r\n")+2)
	}
	for rest != "" {
		line, rest, _ = strings.Cut(rest, "\r\n")
		if line[0] == ' ' || line[0] == '\t' {
			return "", "", "", fmt.Errorf("%w: folded header line %q", ErrMalformed, line)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return "", "", "", fmt.Errorf("%w: header line %q", ErrMalformed, line)
		}
		value = strings.Trim(value, " \t")
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < 0x20 && c != '\t' || c == 0x7f {
				return "", "", "", fmt.Errorf("%w: control byte %#02x in header %s", ErrMalformed, c, name)
			}
		}
		field(name, value)
	}
	return method, target, version, nil
}

// checkRequestLine parses the first line of a head (without its CRLF).
// ParseRequest checks it before the rest, so that HTTPHost, which checks it
// as soon as it is whole, reports what ParseRequest would.
func checkRequestLine(line string) (method, target, version string, err error) {
	if i := bareCRLF(line); i >= 0 {
		return "", "", "", fmt.Errorf("%w: bare CR or LF in line 1", ErrMalformed)
	}
	return parseRequestLine(line)
}

// bareCRLF returns the index in s of the first CR not followed by LF or LF
// not preceded by CR, or -1.
func bareCRLF(s string) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\r':
			if i+1 == len(s) || s[i+1] != '\n' {
				return i
			}
			i++
		case '\n':
			return i
		}
	}
	return -1
}

// parseHead parses a request head through its final CRLF CRLF (RFC 9112).
func parseHead(head string) (host, port string, err error) {
	hostField, hosts := "", 0
	method, target, version, err := scanRequest(head, func(name, value string) {
		if strings.EqualFold(name, "Host") {
			if hosts++; hosts == 1 {
				hostField = value
			}
		}
	})
	if err != nil {
		return "", "", err
	}
	switch hosts {
	case 0:
		return "", "", fmt.Errorf("%w (%s)", ErrNoHost, version)
	case 1:
	default:
		var all []string
		scanRequest(head, func(name, value string) {
			if strings.EqualFold(name, "Host") {
				all = append(all, value)
			}
		})
		return "", "", fmt.Errorf("%w: %q", ErrManyHosts, all)
	}
	host, port, err = parseAuthority(hostField)
	if err != nil {
		return "", "", fmt.Errorf("parsing Host header: %w", err)
	}

	switch {
	case method == "CONNECT":
		return "", "", fmt.Errorf("%w: target %q", ErrConnect, target)
	case target == "*" && method == "OPTIONS", target[0] == '/':
		return host, port, nil
	}
	// Absolute form: RFC 9112 3.2.2 has the server use the target's
	// authority and ignore Host, so the two must name the same place.
	scheme, rest, ok := strings.Cut(target, "://")
	scheme = strings.ToLower(scheme)
	if !ok || scheme != "http" && scheme != "https" {
		return "", "", fmt.Errorf("%w: request target %q", ErrMalformed, target)
	}
	auth := rest
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		auth = rest[:i]
	}
	if strings.Contains(auth, "@") {
		return "", "", fmt.Errorf("%w: user information in request target %q", ErrMalformed, target)
	}
	thost, tport, err := parseAuthority(auth)
	if err != nil {
		return "", "", fmt.Errorf("parsing request target: %w", err)
	}
	def := map[string]string{"http": "80", "https": "443"}[scheme]
	if thost != host || cmp.Or(tport, def) != cmp.Or(port, def) {
		return "", "", fmt.Errorf("%w: target %q, Host %q", ErrHostMismatch, auth, hostField)
	}
	return host, port, nil
}

func parseRequestLine(l string) (method, target, version string, err error) {
	method, rest, ok1 := strings.Cut(l, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || strings.IndexByte(version, ' ') >= 0 || !isToken(method) || target == "" {
		return "", "", "", fmt.Errorf("%w: request line %q", ErrNotHTTP, l)
	}
	if version != "HTTP/1.1" && version != "HTTP/1.0" {
		return "", "", "", fmt.Errorf("%w: version %q", ErrNotHTTP, version)
	}
	for i := 0; i < len(target); i++ {
		// A fragment is never sent (RFC 9112 3.2), and parsers disagree on
		// whether "#" ends an authority.
		if c := target[i]; c <= 0x20 || c >= 0x7f || c == '#' {
			return "", "", "", fmt.Errorf("%w: byte %q in request target", ErrMalformed, c)
		}
		// Servers that decode a bad escape each guess differently; every
		// one of them answers 400, so refusing loses nothing.
		if target[i] == '%' && (i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2])) {
			return "", "", "", fmt.Errorf("%w: bad percent-escape in request target", ErrMalformed)
		}
	}
	return method, target, version, nil
}

// parseAuthority parses host[:port] as found in Host and in absolute URIs.
func parseAuthority(s string) (host, port string, err error) {
	rest := ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", fmt.Errorf("%w: unclosed bracket in %q", ErrBadName, s)
		}
		a, err := netip.ParseAddr(s[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", "", fmt.Errorf("%w: %q is not an IPv6 address", ErrBadName, s[1:end])
		}
		host, rest = canonicalAddr(a, s[1:end]), s[end+1:]
	} else {
		h := s
		if i := strings.IndexByte(s, ':'); i >= 0 {
			h, rest = s[:i], s[i:]
		}
		if a, ok := parseAddr(h); ok {
			host = canonicalAddr(a, h)
		} else {
			n, err := parseName(h)
			if err != nil {
				return "", "", err
			}
			host = string(n)
		}
	}
	if rest == "" {
		return host, "", nil
	}
	p, ok := strings.CutPrefix(rest, ":")
	n, err := strconv.ParseUint(p, 10, 16)
	if !ok || err != nil || n == 0 || p[0] < '0' || p[0] > '9' {
		return "", "", fmt.Errorf("%w: bad port in %q", ErrBadName, s)
	}
	if p[0] != '0' {
		return host, p, nil // canonical already: no copy
	}
	return host, strconv.FormatUint(n, 10), nil
}

// canonicalAddr is a.String(), which is s itself when s is already
// spelled that way: no copy.
func canonicalAddr(a netip.Addr, s string) string {
	var b [64]byte
	if string(a.AppendTo(b[:0])) == s {
		return s
	}
	return a.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// isToken reports whether s is an RFC 9110 token, the syntax of methods and
// header names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}
