package peek

import (
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/cryptobyte"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

const (
	recordTypeHandshake  = 22
	recordHeaderLen      = 5
	maxPlaintext         = 1 << 14 // RFC 8446 5.1
	handshakeHeaderLen   = 4
	typeClientHello      = 1
	extServerName        = 0
	extALPN              = 16
	extSupportedVersions = 43
	extEncryptedHello    = 0xfe0d // encrypted_client_hello (ECH)
	extESNI              = 0xffce // encrypted_server_name, the ESNI drafts before ECH
)

// Hello is what the proxy needs from a ClientHello. The fields are exactly
// as offered by the client; nothing has been negotiated yet.
type Hello struct {
	// ServerName is the SNI host name, canonical, or "" when the client sent
	// none. With ECH it is the public (outer) name, not the real one.
	ServerName dnsname.Name
	// LegacyVersion is the legacy_version field, the highest version a
	// client offers when SupportedVersions is nil.
	LegacyVersion uint16
	// SupportedVersions is the supported_versions extension as sent,
	// GREASE included; nil when absent.
	SupportedVersions []uint16
	// ALPN lists the application protocols offered, in order.
	ALPN []string
	// ECH is set when the hello carries an encrypted_client_hello extension.
	// Clients send GREASE ECH that looks exactly like the real thing, so this
	// means "the name may not be the real one", not "the client hides it".
	ECH bool
	// ESNI is set for the pre-ECH encrypted_server_name extension.
	ESNI bool
}

// MaxVersion returns the highest TLS version the client offers (a
// tls.VersionTLS* value), ignoring GREASE and non-TLS versions; 0 if none.
// A server picks at most this, so MaxVersion below a policy minimum means the
// connection cannot meet it. The converse needs the ServerHello.
func (h Hello) MaxVersion() uint16 {
	if h.SupportedVersions == nil {
		return h.LegacyVersion
	}
	var best uint16
	for _, v := range h.SupportedVersions {
		if v>>8 == 3 && v > best { // 0x03xx: SSL 3.0 to TLS 1.3
			best = v
		}
	}
	return best
}

// ClientHello reads TLS records from r until one whole ClientHello handshake
// message is assembled and parses it. The message may arrive in any number of
// reads and be fragmented over several records. At most limit bytes (record
// headers included) are read; limit <= 0 means DefaultMax. ClientHello reads no
// further than the record that completes the message.
//
// The returned bytes are everything read from r, also on error, for replay to
// the upstream server or for diagnosis.
func ClientHello(r io.Reader, limit int) (Hello, []byte, error) {
	if limit <= 0 {
		limit = DefaultMax
	}
	b := &budget{r: r, limit: limit}
	h, err := readHello(b)
	return h, b.raw, err
}

func readHello(b *budget) (Hello, error) {
	var msg []byte // the handshake message, reassembled from record bodies
	want := -1     // length of the whole message once its header is in
	for records := 0; ; records++ {
		hdr, err := b.next(recordHeaderLen, "TLS record header")
		if err != nil {
			return Hello{}, err
		}
		typ, major, n := hdr[0], hdr[1], int(hdr[3])<<8|int(hdr[4])
		switch {
		case records == 0 && typ != recordTypeHandshake:
			if typ >= 20 && typ <= 23 && major == 3 {
				return Hello{}, fmt.Errorf("%w: first record has content type %d, want handshake (22)", ErrNotHello, typ)
			}
			return Hello{}, fmt.Errorf("%w: first bytes % x", ErrNotTLS, hdr)
		case records == 0 && major != 3:
			return Hello{}, fmt.Errorf("%w: record version %#04x", ErrNotTLS, uint16(hdr[1])<<8|uint16(hdr[2]))
		case typ != recordTypeHandshake:
			// RFC 8446 5.1: handshake messages are never interleaved with other
			// record types, so this is a broken or hostile client.
			return Hello{}, fmt.Errorf("%w: record of content type %d inside the ClientHello", ErrMalformed, typ)
		case n == 0:
			return Hello{}, fmt.Errorf("%w: empty handshake record", ErrMalformed)
		case n > maxPlaintext:
			return Hello{}, fmt.Errorf("%w: record of %d bytes; the limit is %d", ErrMalformed, n, maxPlaintext)
		}
		body, err := b.next(n, "TLS record body")
		if err != nil {
			return Hello{}, err
		}
		if msg == nil {
			msg = body // most hellos fit one record: no copy
		} else {
			msg = append(msg, body...) // body has no spare capacity: a copy
		}

		if msg[0] != typeClientHello {
			return Hello{}, fmt.Errorf("%w: handshake message type %d", ErrNotHello, msg[0])
		}
		if want < 0 && len(msg) >= handshakeHeaderLen {
			want = handshakeHeaderLen + (int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3]))
			// Fail now rather than after reading up to the limit: even in one
			// record the message cannot fit.
			if recordHeaderLen+want > b.limit {
				return Hello{}, fmt.Errorf("%w: ClientHello of %d bytes; the limit is %d", ErrTooLarge, want, b.limit)
			}
		}
		if want >= 0 && len(msg) >= want {
			if len(msg) > want {
				// A client sends nothing after its hello until the server
				// answers, so extra handshake bytes are an error either way.
				return Hello{}, fmt.Errorf("%w: %d bytes after the ClientHello", ErrMalformed, len(msg)-want)
			}
			return parseHello(msg[handshakeHeaderLen:])
		}
	}
}

// parseHello parses a ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2).
func parseHello(body []byte) (Hello, error) {
	var h Hello
	s := cryptobyte.String(body)
	var sessionID, suites, compression cryptobyte.String
	switch {
	case !s.ReadUint16(&h.LegacyVersion) || !s.Skip(32):
		return Hello{}, malformed("version and random")
	case !s.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) > 32:
		return Hello{}, malformed("legacy_session_id")
	case !s.ReadUint16LengthPrefixed(&suites) || len(suites) < 2 || len(suites)%2 != 0:
		return Hello{}, malformed("cipher_suites")
	case !s.ReadUint8LengthPrefixed(&compression) || len(compression) < 1:
		return Hello{}, malformed("legacy_compression_methods")
	case s.Empty():
		return h, nil // TLS 1.2 and older may omit extensions, and with them SNI
	}
	var exts cryptobyte.String
	if !s.ReadUint16LengthPrefixed(&exts) || !s.Empty() {
		return Hello{}, malformed("extensions")
	}
	var seen extSet
	for !exts.Empty() {
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return Hello{}, malformed("extensions")
		}
		// RFC 8446 4.2 forbids repeats; a duplicate SNI in particular lets
		// us and the server read different names.
		if !seen.add(typ) {
			if typ == extServerName {
				return Hello{}, fmt.Errorf("%w: server_name extension repeated", ErrDuplicateSNI)
			}
			return Hello{}, fmt.Errorf("%w: extension %#04x repeated", ErrMalformed, typ)
		}
		var err error
		switch typ {
		case extServerName:
			h.ServerName, err = parseSNI(data)
		case extALPN:
			h.ALPN, err = parseALPN(data)
		case extSupportedVersions:
			h.SupportedVersions, err = parseVersions(data)
		case extEncryptedHello:
			h.ECH = true
		case extESNI:
			h.ESNI = true
		}
		if err != nil {
			return Hello{}, err
		}
	}
	return h, nil
}

// extSet is the set of extension types a hello has shown. Browsers send
// about twenty, which a small array holds without allocating; a hello with
// more spills into a map, so a hostile one with thousands costs linear
// time, not quadratic.
type extSet struct {
	small [24]uint16
	n     int
	more  map[uint16]bool
}

// add adds typ and reports whether it was new.
func (s *extSet) add(typ uint16) bool {
	for _, t := range s.small[:s.n] {
		if t == typ {
			return false
		}
	}
	switch {
	case s.more != nil:
		if s.more[typ] {
			return false
		}
		s.more[typ] = true
	case s.n < len(s.small):
		s.small[s.n] = typ
		s.n++
	default:
		s.more = map[uint16]bool{typ: true}
	}
	return true
}

// parseSNI parses a server_name extension (RFC 6066 3).
func parseSNI(data cryptobyte.String) (dnsname.Name, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return "", malformed("server_name")
	}
	var name dnsname.Name
	for !list.Empty() {
		var typ uint8
		var host cryptobyte.String
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&host) || host.Empty() {
			return "", malformed("server_name entry")
		}
		if typ != 0 { // only host_name (0) is defined; servers skip the rest
			continue
		}
		if name != "" {
			return "", fmt.Errorf("%w: server_name lists host names %q and %q", ErrDuplicateSNI, name, host)
		}
		s := string(host)
		if isIPLiteral(strings.TrimSuffix(s, ".")) || isIPLiteral(strings.Trim(s, "[]")) {
			return "", fmt.Errorf("%w: %q", ErrIPLiteralSNI, s)
		}
		n, err := parseName(s)
		if err != nil {
			return "", fmt.Errorf("server_name: %w", err)
		}
		name = n
	}
	return name, nil
}

// parseALPN parses an application_layer_protocol_negotiation extension
// (RFC 7301 3.1).
func parseALPN(data cryptobyte.String) ([]string, error) {
	var list cryptobyte.String
	if !data.ReadUint16LengthPrefixed(&list) || !data.Empty() || list.Empty() {
		return nil, malformed("application_layer_protocol_negotiation")
	}
	var protos []string
	for !list.Empty() {
		var p cryptobyte.String
		if !list.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, malformed("application_layer_protocol_negotiation entry")
		}
		protos = append(protos, string(p))
	}
	return protos, nil
}

// parseVersions parses a ClientHello supported_versions extension (RFC 8446
// 4.2.1).
func parseVersions(data cryptobyte.String) ([]uint16, error) {
	var list cryptobyte.String
	if !data.ReadUint8LengthPrefixed(&list) || !data.Empty() || len(list) < 2 || len(list)%2 != 0 {
		return nil, malformed("supported_versions")
	}
	vs := make([]uint16, 0, len(list)/2)
	for !list.Empty() {
		var v uint16
		list.ReadUint16(&v)
		vs = append(vs, v)
	}
	return vs, nil
}

func malformed(field string) error {
	return fmt.Errorf("%w: bad %s in ClientHello", ErrMalformed, field)
}
