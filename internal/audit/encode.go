package audit

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"
)

// encoder appends one line in slog's JSON or text format.
type encoder struct {
	buf  []byte
	text bool
}

// textTime is how slog's text handler writes times: milliseconds.
const textTime = "2006-01-02T15:04:05.000Z07:00"

// begin starts a line with its time, level and msg (a word that needs no
// quoting or escaping).
func (e *encoder) begin(t time.Time, st *stamp, msg string) {
	if e.text {
		e.buf = append(e.buf, "time="...)
		e.buf = st.append(e.buf, t, true)
		e.buf = append(e.buf, " level=INFO msg="...)
		e.buf = append(e.buf, msg...)
		return
	}
	e.buf = append(e.buf, `{"time":"`...)
	e.buf = st.append(e.buf, t, false)
	e.buf = append(e.buf, `","level":"INFO","msg":"`...)
	e.buf = append(e.buf, msg...)
	e.buf = append(e.buf, '"')
}

// stamp is the formatted whole second of the last line's time: lines come
// many a second, and formatting a date costs more than the rest of the
// timestamp.
type stamp struct {
	sec  int64
	loc  *time.Location
	head []byte // 2006-01-02T15:04:05
	zone []byte // Z07:00
}

// stampOf returns the stamp of t's second, or nil when t cannot have one
// (a year that is not four digits).
func (l *Logger) stampOf(t time.Time) *stamp {
	st := l.stamp.Load()
	if st != nil && st.sec == t.Unix() && st.loc == t.Location() {
		return st
	}
	if y := t.Year(); y < 0 || y > 9999 {
		return nil
	}
	b := t.AppendFormat(nil, "2006-01-02T15:04:05Z07:00")
	st = &stamp{sec: t.Unix(), loc: t.Location(), head: b[:19], zone: b[19:]}
	l.stamp.Store(st)
	return st
}

// append appends t as slog formats times: RFC 3339 with nanoseconds
// (trailing zeros trimmed) for JSON, with milliseconds for text. st is
// t's stamp; nil formats from scratch.
func (st *stamp) append(buf []byte, t time.Time, text bool) []byte {
	if st == nil {
		if text {
			return t.AppendFormat(buf, textTime)
		}
		return t.AppendFormat(buf, time.RFC3339Nano)
	}
	buf = append(buf, st.head...)
	ns := t.Nanosecond()
	if text {
		ms := ns / 1e6
		buf = append(buf, '.', byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
	} else if ns != 0 {
		var d [9]byte
		for i := 8; i >= 0; i-- {
			d[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 9
		for d[n-1] == '0' {
			n--
		}
		buf = append(buf, '.')
		buf = append(buf, d[:n]...)
	}
	return append(buf, st.zone...)
}

func (e *encoder) end() {
	if !e.text {
		e.buf = append(e.buf, '}')
	}
	e.buf = append(e.buf, '\n')
}

func (e *encoder) key(k string) {
	if e.text {
		e.buf = append(e.buf, ' ')
		e.buf = appendText(e.buf, k)
		e.buf = append(e.buf, '=')
		return
	}
	e.buf = append(e.buf, ',')
	e.buf = appendJSONString(e.buf, k)
	e.buf = append(e.buf, ':')
}

func (e *encoder) str(k, v string) {
	e.key(k)
	if e.text {
		e.buf = appendText(e.buf, v)
	} else {
		e.buf = appendJSONString(e.buf, v)
	}
}

// bytes is str for a value built in a scratch buffer, without a string.
func (e *encoder) bytes(k string, v []byte) {
	e.key(k)
	if e.text {
		e.buf = appendText(e.buf, v)
	} else {
		e.buf = appendJSONString(e.buf, v)
	}
}

// durationSuffix is appended to the key of every duration in an audit
// line, whose value is written by appendMillis: a duration never appears
// without its unit, in either format ("latency_ms":0.412, latency_ms=0.412).
const durationSuffix = "_ms"

// millis writes duration d under k + durationSuffix.
func (e *encoder) millis(k string, d time.Duration) {
	if e.text && needsQuoting(k) {
		e.key(k + durationSuffix) // keys are the code's own; never on the hot path
	} else {
		// The key with its suffix, without building the string.
		e.key(k)
		e.buf = e.buf[:len(e.buf)-1] // '=' or ':'
		if !e.text {
			e.buf = e.buf[:len(e.buf)-1] // the closing quote
		}
		e.buf = append(e.buf, durationSuffix...)
		if !e.text {
			e.buf = append(e.buf, '"', ':')
		} else {
			e.buf = append(e.buf, '=')
		}
	}
	e.buf = appendMillis(e.buf, d)
}

// appendMillis writes d in milliseconds as a decimal number, exactly (to
// the nanosecond) and without an exponent: 412µs is 0.412, 2m is 120000.
func appendMillis(buf []byte, d time.Duration) []byte {
	n := uint64(d)
	if d < 0 {
		buf = append(buf, '-')
		n = -n
	}
	buf = strconv.AppendUint(buf, n/1e6, 10)
	frac := n % 1e6
	if frac == 0 {
		return buf
	}
	var digits [7]byte
	digits[0] = '.'
	for i := 6; i >= 1; i-- {
		digits[i] = byte('0' + frac%10)
		frac /= 10
	}
	end := 7
	for digits[end-1] == '0' {
		end--
	}
	return append(buf, digits[:end]...)
}

func (e *encoder) int(k string, v int64) {
	e.key(k)
	e.buf = strconv.AppendInt(e.buf, v, 10)
}

// attr encodes a as slog's handlers would: JSON nests groups as objects,
// text flattens them to dotted keys.
func (e *encoder) attr(prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		g := v.Group()
		if len(g) == 0 {
			return
		}
		if a.Key == "" { // inline
			for _, ga := range g {
				e.attr(prefix, ga)
			}
			return
		}
		if e.text {
			k := a.Key
			if prefix != "" {
				k = prefix + "." + k
			}
			for _, ga := range g {
				e.attr(k, ga)
			}
			return
		}
		e.key(a.Key)
		e.buf = append(e.buf, '{')
		mark := len(e.buf)
		for _, ga := range g {
			e.attr("", ga)
		}
		// The members were written with leading commas; the first must go.
		if len(e.buf) > mark && e.buf[mark] == ',' {
			e.buf = append(e.buf[:mark], e.buf[mark+1:]...)
		}
		e.buf = append(e.buf, '}')
		return
	}
	if a.Key == "" && v.Any() == nil {
		return // the zero Attr, which slog drops
	}
	k := a.Key
	if e.text && prefix != "" {
		k = prefix + "." + k
	}
	switch v.Kind() {
	case slog.KindString:
		e.str(k, v.String())
	case slog.KindInt64:
		e.int(k, v.Int64())
	case slog.KindUint64:
		e.key(k)
		e.buf = strconv.AppendUint(e.buf, v.Uint64(), 10)
	case slog.KindFloat64:
		e.key(k)
		e.buf = strconv.AppendFloat(e.buf, v.Float64(), 'g', -1, 64)
	case slog.KindBool:
		e.key(k)
		e.buf = strconv.AppendBool(e.buf, v.Bool())
	case slog.KindDuration:
		e.millis(k, v.Duration())
	case slog.KindTime:
		var t [64]byte
		layout := time.RFC3339Nano
		if e.text {
			layout = textTime
		}
		e.bytes(k, v.Time().AppendFormat(t[:0], layout))
	default:
		e.any(k, v.Any())
	}
}

// any follows slog: text prints with fmt, JSON marshals (errors as text).
func (e *encoder) any(k string, v any) {
	if e.text {
		e.str(k, fmt.Sprint(v))
		return
	}
	if err, ok := v.(error); ok {
		e.str(k, err.Error())
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		e.str(k, fmt.Sprintf("!ERROR:%v", err))
		return
	}
	e.key(k)
	e.buf = append(e.buf, b...)
}

// jsonSafe reports the bytes JSON strings hold as they are: printable
// ASCII other than the quote and the backslash.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString quotes s for JSON: control characters escaped, invalid
// UTF-8 replaced, as encoding/json does (without HTML escaping, like slog).
func appendJSONString[S string | []byte](buf []byte, s S) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	// Most strings (keys, names, rule names, addresses) need no escaping:
	// find the first byte that might, and copy everything before it at
	// once.
	i := 0
	for i < len(s) && jsonSafe[s[i]] {
		i++
	}
	if i == len(s) {
		buf = append(buf, s...)
		return append(buf, '"')
	}
	start := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// appendText writes s as slog's text handler does: bare when it is safe,
// else Go-quoted.
func appendText[S string | []byte](buf []byte, s S) []byte {
	if needsQuoting(s) {
		return strconv.AppendQuote(buf, string(s))
	}
	return append(buf, s...)
}

// needsQuoting is slog's rule: quote unless every byte is printable ASCII
// other than space, '=' and '"' (DEL counts as printable there, as in
// JSON), and every other rune is printable and not a space.
func needsQuoting[S string | []byte](s S) bool {
	if len(s) == 0 {
		return true
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c == ' ' || c == '=' || c == '"' || c < 0x20 {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return true
		}
		i += size
	}
	return false
}
