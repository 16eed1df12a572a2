package fastyaml

import (
	"strconv"
	"strings"
	"time"
)

const timestampTag = "!!timestamp"

// plainTag is the tag yaml.v3's resolve gives a plain scalar, or "" for
// "<<" (a merge key, which is out). It calls strconv and time.Parse as
// resolve does, but only once a value has the syntax they accept, so a
// value that is not a number costs no error allocations.
func plainTag(v string) string {
	switch v {
	case "~", "null", "Null", "NULL":
		return nullTag
	case "true", "True", "TRUE", "false", "False", "FALSE":
		return boolTag
	case ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF":
		return floatTag
	case "<<":
		return ""
	case "":
		return nullTag
	}
	switch c := v[0]; {
	case c == '.':
		// resolve asks ParseFloat, which takes "_" between digits.
		if strings.Trim(v, "0123456789_eE+-.") == "" {
			if _, err := strconv.ParseFloat(v, 64); err == nil {
				return floatTag
			}
		}
		return strTag
	case c == '+' || c == '-' || c >= '0' && c <= '9':
		return numberTag(v)
	}
	return strTag
}

// numberTag is resolve's answer for a value that starts with a sign or a
// digit: a timestamp, an integer, a float, or a string.
func numberTag(v string) string {
	if mayBeTimestamp(v) {
		for _, format := range timestampFormats {
			if _, err := time.Parse(format, v); err == nil {
				return timestampTag
			}
		}
	}
	plain := v
	if strings.IndexByte(v, '_') >= 0 {
		plain = strings.ReplaceAll(v, "_", "")
	}
	if mayBeInt(plain) {
		if _, err := strconv.ParseInt(plain, 0, 64); err == nil {
			return intTag
		}
		if _, err := strconv.ParseUint(plain, 0, 64); err == nil {
			return intTag
		}
	}
	if isFloat(plain) {
		if _, err := strconv.ParseFloat(plain, 64); err == nil {
			return floatTag
		}
	}
	// resolve's own binary and octal forms, which take a sign after the
	// prefix ("0b-1").
	for _, f := range []struct {
		prefix string
		base   int
	}{{"0b", 2}, {"0o", 8}} {
		if rest, ok := strings.CutPrefix(plain, f.prefix); ok {
			if digits(strings.TrimLeft(rest, "+-"), f.base) && len(rest)-len(strings.TrimLeft(rest, "+-")) <= 1 {
				if _, err := strconv.ParseInt(rest, f.base, 64); err == nil {
					return intTag
				}
				if _, err := strconv.ParseUint(rest, f.base, 64); err == nil {
					return intTag
				}
			}
		} else if rest, ok := strings.CutPrefix(plain, "-"+f.prefix); ok && digits(rest, f.base) {
			if _, err := strconv.ParseInt("-"+rest, f.base, 64); err == nil {
				return intTag
			}
		}
	}
	return strTag
}

// timestampFormats are yaml.v3's allowedTimestampFormats.
var timestampFormats = []string{
	"2006-1-2T15:4:5.999999999Z07:00",
	"2006-1-2t15:4:5.999999999Z07:00",
	"2006-1-2 15:4:5.999999999",
	"2006-1-2",
}

// mayBeTimestamp is whether v starts as every timestamp format does:
// YYYY-M-D with one or two digits to the month and the day, then the end
// or a time.
func mayBeTimestamp(v string) bool {
	if len(v) < 8 || !digits(v[:4], 10) || v[4] != '-' {
		return false
	}
	i := 5
	for _, sep := range []byte{'-', 0} {
		n := 0
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i, n = i+1, n+1
		}
		if n < 1 || n > 2 {
			return false
		}
		if sep != 0 {
			if i >= len(v) || v[i] != sep {
				return false
			}
			i++
		}
	}
	return i == len(v) || v[i] == 'T' || v[i] == 't' || v[i] == ' '
}

// mayBeInt is whether strconv.ParseInt or ParseUint with base 0 may read
// s (s has no underscores).
func mayBeInt(s string) bool {
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	if len(s) >= 2 && s[0] == '0' {
		switch s[1] {
		case 'x', 'X':
			return digits(s[2:], 16)
		case 'b', 'B':
			return digits(s[2:], 2)
		case 'o', 'O':
			return digits(s[2:], 8)
		}
		return digits(s[1:], 8)
	}
	return digits(s, 10)
}

// digits is whether s is one or more digits of base.
func digits(s string, base int) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		var d int
		switch {
		case c >= '0' && c <= '9':
			d = int(c - '0')
		case c >= 'a' && c <= 'f':
			d = int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = int(c-'A') + 10
		default:
			return false
		}
		if d >= base {
			return false
		}
	}
	return true
}

// isFloat is yaml.v3's yamlStyleFloat,
// ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$, without regexp.
func isFloat(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		i++
	}
	decimals := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	if i < len(s) && s[i] == '.' {
		i++
		if decimals() == 0 {
			return false
		}
	} else {
		if decimals() == 0 {
			return false
		}
		if i < len(s) && s[i] == '.' {
			i++
			decimals()
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '-' || s[i] == '+') {
			i++
		}
		if decimals() == 0 {
			return false
		}
	}
	return i == len(s)
}
