package fleet

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

// A learned element is one etcd key under <prefix>learned/:
//
//	<prefix>learned/<name>/<address>/<rule>/<group>  =  <expiry>
//
// name is canonical (dnsname), address is netip's canonical text (IPv4
// plain, never IPv4-mapped; no zone), group is empty for rules without
// from; none of them can hold a '/'. The family is the address's. The
// value is the expiry in Unix seconds, exactly expiryDigits decimal digits,
// zero-padded: fixed width, so that etcd's byte-wise comparison of values
// orders expiries, and a write can be made conditional on raising one (see
// flush.go).
const (
	learnedDir = "learned/"
	nodesDir   = "nodes/"
	leaderKey  = "leader/refresh"

	expiryDigits = 12
	// watermarkDigits: a watermark (an etcd revision, an int64) is
	// written zero-padded to this width, so that etcd's byte order of
	// values is their numeric order and a write can be made conditional
	// on raising it (see flush.go).
	watermarkDigits = 19
)

// appendKey appends the key of e below <prefix>learned/ to b. Its address
// must be unmapped already (publish does it).
func appendKey(b []byte, name dnsname.Name, addr netip.Addr, rule, group string) []byte {
	b = append(b, name...)
	b = append(b, '/')
	b = addr.AppendTo(b)
	b = append(b, '/')
	b = append(b, rule...)
	b = append(b, '/')
	b = append(b, group...)
	return b
}

// encodeExpiry returns the value that holds expiry sec (Unix seconds).
func encodeExpiry(sec int64) string {
	var b [expiryDigits]byte
	for i := expiryDigits - 1; i >= 0; i-- {
		b[i] = byte('0' + sec%10)
		sec /= 10
	}
	return string(b[:])
}

// encodeWatermark returns the value of a watermark key holding revision
// rev (not negative).
func encodeWatermark(rev int64) string {
	var b [watermarkDigits]byte
	for i := watermarkDigits - 1; i >= 0; i-- {
		b[i] = byte('0' + rev%10)
		rev /= 10
	}
	return string(b[:])
}

// ceilUnix returns t in Unix seconds, rounded up: an element is held up to
// a second longer than its answer needs, never shorter (the precision of
// learn.Store too, see learn.ExpiryGranularity).
func ceilUnix(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() != 0 {
		sec++
	}
	return sec
}

// errMalformed is what parseElement's errors wrap: the key or value is not
// one fqdngate writes.
var errMalformed = errors.New("malformed learned element")

// parseElement parses a key below <prefix>learned/ and its value into an
// entry. It accepts exactly what appendKey and encodeExpiry write: every
// other spelling of the same element (upper case, a mapped address, a
// shorter value) is malformed, so that one element has one key.
func parseElement(key string, value []byte) (learn.Entry, error) {
	bad := func(what string) (learn.Entry, error) {
		return learn.Entry{}, fmt.Errorf("%w: %s", errMalformed, what)
	}
	parts := strings.Split(key, "/")
	if len(parts) != 4 {
		return bad("key has not four parts (name/address/rule/group)")
	}
	name, err := dnsname.Parse(parts[0])
	if err != nil || string(name) != parts[0] {
		return bad("name is not a canonical host name")
	}
	addr, err := netip.ParseAddr(parts[1])
	if err != nil || addr.Zone() != "" || addr.Is4In6() || addr.String() != parts[1] {
		return bad("address is not a canonical IP address")
	}
	if parts[2] == "" {
		return bad("rule is empty")
	}
	sec, ok := parseExpiry(value)
	if !ok {
		return bad("value is not a " + strconv.Itoa(expiryDigits) + "-digit expiry")
	}
	return learn.Entry{
		Name:    name,
		Addr:    addr,
		Rule:    parts[2],
		Group:   parts[3],
		Expires: time.Unix(sec, 0).UTC(),
	}, nil
}

// parseExpiry parses a value written by encodeExpiry.
func parseExpiry(value []byte) (int64, bool) {
	if len(value) != expiryDigits {
		return 0, false
	}
	var sec int64
	for _, c := range value {
		if c < '0' || c > '9' {
			return 0, false
		}
		sec = sec*10 + int64(c-'0')
	}
	return sec, true
}
