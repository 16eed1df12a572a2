package learn

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Listing learned addresses a page at a time: a gateway may hold a
// million, which no one wants in one response. Pages follow one order,
// by address, then rule, group and name (an entry's key), and a cursor is
// the key of the last entry a page held, so the next page starts after it
// wherever it now is: entries added or removed meanwhile shift nothing,
// and an entry present throughout is listed exactly once.

// Filter selects entries; a zero field matches every entry.
type Filter struct {
	Name  dnsname.Name // this name exactly
	Rule  string
	Group string
	// Addr holds the entry's address (a single address is a /32 or /128).
	Addr netip.Prefix
}

// Match reports whether e passes f.
func (f Filter) Match(e *Entry) bool {
	return (f.Name == "" || e.Name == f.Name) &&
		(f.Rule == "" || e.Rule == f.Rule) &&
		(f.Group == "" || e.Group == f.Group) &&
		(!f.Addr.IsValid() || f.Addr.Contains(e.Addr.Unmap()))
}

// ParseAddrFilter reads an address (192.0.2.7) or a prefix (192.0.2.0/24)
// for Filter.Addr.
func ParseAddrFilter(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or a prefix; write 192.0.2.7, 192.0.2.0/24 or 2001:db8::/32", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or a prefix; write 192.0.2.7, 192.0.2.0/24 or 2001:db8::/32", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Cursor is a position in the listing order: a page after it starts with
// the first entry whose key is greater. The zero Cursor is the start.
type Cursor struct {
	addr              netip.Addr
	rule, group, name string
	valid             bool
}

// CursorAt returns the position of e: a page after it starts after e.
func CursorAt(e *Entry) Cursor {
	return Cursor{addr: e.Addr.Unmap(), rule: e.Rule, group: e.Group, name: string(e.Name), valid: true}
}

// String encodes c for the next page's request: opaque, URL-safe; "" for
// the start.
func (c Cursor) String() string {
	if !c.valid {
		return ""
	}
	raw := strings.Join([]string{c.addr.String(), c.rule, c.group, c.name}, "\x00")
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

var errCursor = errors.New("the cursor is not one a page of learned addresses returned; start again without after=")

// ParseCursor decodes a Cursor.String; "" is the start.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, errCursor
	}
	parts := strings.Split(string(raw), "\x00")
	if len(parts) != 4 {
		return Cursor{}, errCursor
	}
	a, err := netip.ParseAddr(parts[0])
	if err != nil {
		return Cursor{}, errCursor
	}
	return Cursor{addr: a.Unmap(), rule: parts[1], group: parts[2], name: parts[3], valid: true}, nil
}

// compareKey orders entries for listing.
func compareKey(a, b *Entry) int {
	if c := a.Addr.Unmap().Compare(b.Addr.Unmap()); c != 0 {
		return c
	}
	return cmp.Or(strings.Compare(a.Rule, b.Rule), strings.Compare(a.Group, b.Group), strings.Compare(string(a.Name), string(b.Name)))
}

// after reports whether e comes after c.
func (c Cursor) after(e *Entry) bool {
	if !c.valid {
		return true
	}
	return compareKey(e, &Entry{Addr: c.addr, Rule: c.rule, Group: c.group, Name: dnsname.Name(c.name)}) > 0
}

// MaxPage is the most entries a page holds.
const MaxPage = 10_000

// Page returns the first limit entries of all (1 ≤ limit ≤ MaxPage, else
// it is brought into that range) that come after c and match f, in the
// listing order, and the cursor to pass for the next page: the start
// (zero) when there is none. It holds at most limit+1 entries at a time,
// however many all yields: a selection of the smallest keys, not a sort
// of everything.
func Page(all iter.Seq[Entry], f Filter, c Cursor, limit int) ([]Entry, Cursor) {
	limit = min(max(limit, 1), MaxPage)
	// h is a max-heap on the key of the limit+1 smallest entries seen:
	// one more than the page, to know whether another page follows.
	h := make([]Entry, 0, min(limit+1, 1024))
	for e := range all {
		if !f.Match(&e) || !c.after(&e) {
			continue
		}
		if len(h) <= limit {
			h = append(h, e)
			up(h, len(h)-1)
			continue
		}
		if compareKey(&e, &h[0]) < 0 {
			h[0] = e
			down(h, 0)
		}
	}
	slices.SortFunc(h, func(a, b Entry) int { return compareKey(&a, &b) })
	if len(h) <= limit {
		return h, Cursor{}
	}
	h = h[:limit]
	return h, CursorAt(&h[limit-1])
}

func up(h []Entry, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if compareKey(&h[p], &h[i]) >= 0 {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func down(h []Entry, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		big := l
		if r := l + 1; r < len(h) && compareKey(&h[r], &h[l]) > 0 {
			big = r
		}
		if compareKey(&h[i], &h[big]) >= 0 {
			return
		}
		h[i], h[big] = h[big], h[i]
		i = big
	}
}
