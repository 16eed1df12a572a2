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

// The learned elements are an append-only log of batches: each flush of a
// gateway is one etcd key under <prefix>learned/, never rewritten:
//
//	<prefix>learned/<node>/<id>  =  fqdngate-learned 1\n
//	                                <name>/<address>/<rule>/<group> <expiry>\n ...
//
// id is 32 lower-case hex digits: the writing process's start (Unix
// nanoseconds) then its flush counter, so that a restarted gateway never
// writes a key its previous life wrote. Each line is one element: name is
// canonical (dnsname), address is netip's canonical text (IPv4 plain,
// never IPv4-mapped; no zone), group is empty for rules without from;
// none of them can hold a '/'. The family is the address's. expiry is in
// Unix seconds, exactly expiryDigits decimal digits. An element's expiry
// is the latest of the batches that hold it: since a batch is never
// rewritten, no gateway can shorten another's element, and a write needs
// no comparison per element (see flush.go). A batch holds between 1 and
// maxBatch elements, in at most maxBatchBytes bytes.
//
// Inside this package an element on its way to etcd is named by its
// line's first part, <name>/<address>/<rule>/<group> (appendKey,
// parseElement); the mirror names it by an elemKey (mirror.go).
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

	// batchHeader starts every batch: the format and its version.
	batchHeader = "fqdngate-learned 1\n"
	// batchIDDigits: a batch's id, hex.
	batchIDDigits = 32
	// maxBatch bounds the elements of one batch. With maxLineLen bytes at
	// most a line, a batch stays under maxBatchBytes, well under etcd's
	// default request limit (--max-request-bytes, 1.5 MiB).
	maxBatch = 1024
	// maxLineLen is the longest line of a batch: an element's key, a
	// space, its expiry, a newline.
	maxLineLen = maxKeyLen + 1 + expiryDigits + 1
	// maxBatchBytes bounds a batch's value.
	maxBatchBytes = len(batchHeader) + maxBatch*maxLineLen
)

// batchKey returns the key, below <prefix>learned/, of node's batch seq
// of the process started at boot.
func batchKey(node string, boot, seq uint64) string {
	return fmt.Sprintf("%s/%016x%016x", node, boot, seq)
}

// parseBatchKey returns the node of a key below <prefix>learned/ that
// batchKey writes, and false for any other key.
func parseBatchKey(key string) (string, bool) {
	node, id, ok := strings.Cut(key, "/")
	if !ok || node == "" || strings.ContainsRune(node, 0) || len(id) != batchIDDigits {
		return "", false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return node, true
}

// appendBatchLine appends the line of the element named key (appendKey)
// expiring at exp (Unix seconds) to b; b starts with batchHeader.
func appendBatchLine(b []byte, key string, exp int64) []byte {
	b = append(b, key...)
	b = append(b, ' ')
	b = append(b, encodeExpiry(exp)...)
	return append(b, '\n')
}

// batchElement is one element of a batch: its key (appendKey) and entry.
type batchElement struct {
	key string
	e   learn.Entry
}

// parseBatch parses a batch's value. It accepts exactly what batchHeader
// and appendBatchLine write, from 1 to maxBatch elements in at most
// maxBatchBytes: anything else, a single bad line included, makes the
// whole batch malformed, and none of it is used.
func parseBatch(value []byte) ([]batchElement, error) {
	bad := func(what string) ([]batchElement, error) {
		return nil, fmt.Errorf("%w: batch %s", errMalformed, what)
	}
	if len(value) > maxBatchBytes {
		return bad("is longer than " + strconv.Itoa(maxBatchBytes) + " bytes")
	}
	rest, ok := strings.CutPrefix(string(value), batchHeader)
	if !ok {
		return bad("does not start with " + strconv.Quote(batchHeader) + " (another format or version)")
	}
	if rest == "" {
		return bad("holds no element")
	}
	if rest[len(rest)-1] != '\n' {
		return bad("does not end with a newline")
	}
	n := strings.Count(rest, "\n")
	if n > maxBatch {
		return bad("holds more than " + strconv.Itoa(maxBatch) + " elements")
	}
	out := make([]batchElement, 0, n)
	for line := range strings.SplitSeq(rest[:len(rest)-1], "\n") {
		sp := strings.IndexByte(line, ' ')
		if sp < 0 || sp != len(line)-expiryDigits-1 {
			return bad("line is not <name>/<address>/<rule>/<group> <expiry>")
		}
		key := line[:sp]
		e, err := parseElement(key, []byte(line[sp+1:]))
		if err != nil {
			return nil, fmt.Errorf("batch line %d: %w", len(out)+1, err)
		}
		out = append(out, batchElement{key, e})
	}
	return out, nil
}

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

// encodeExpiry returns expiry sec (Unix seconds) as a batch line writes it.
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

// parseElement parses an element's key and expiry, the two parts of a
// batch's line, into an entry. It accepts exactly what appendKey and
// encodeExpiry write: every other spelling of the same element (upper
// case, a mapped address, a shorter expiry) is malformed, so that one
// element has one key.
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

// parseExpiry parses an expiry written by encodeExpiry.
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
