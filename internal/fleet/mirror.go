package fleet

import (
	"net/netip"
	"strings"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

// The mirror holds one entry for every element etcd holds, every one of
// the fleet's learned addresses: in a fleet, what an entry costs is what
// a learned address costs every gateway. So an entry has no pointer, and
// the collector does not scan the mirror: its key is the element's
// address in its 16-byte form and its name and its rule and group as
// small numbers (interned, below), its value the expiry and revision
// (held), inline.

// elemKey names one element in the mirror: two elements share a key
// only if their names, addresses, rules and groups are the same. The
// address is unmapped first (an IPv4 address as IPv4, whose 16-byte form
// is the mapped one; no element has a mapped IPv6 address: parseElement
// refuses one, and Publish's are unmapped). Addresses are valid and
// have no zone: parseElement and enqueueLocked take no other (answers'
// addresses never are).
type elemKey struct {
	addr [16]byte
	name uint32 // mirror.names
	rg   uint32 // mirror.rgs
}

// ruleGroup is an element's rule and source group ("" for rules without
// from).
type ruleGroup struct{ rule, group string }

// held is what etcd holds for an element: its expiry, whether this
// gateway counts it against its name's cap, and the revision that wrote
// it (the revision peers must have acknowledged to have it).
type held struct {
	// x is the expiry, Unix seconds (12 digits at most: below 2^40),
	// with countedBit set when this gateway took the element from etcd
	// and counts it against its name's cap (mirror.count).
	x   int64
	rev int64
}

const countedBit = 1 << 62

// maxExpiry is the latest expiry a batch's line can hold (expiryDigits
// digits), and the mirror: later ones are taken as it.
const maxExpiry = 999_999_999_999

func (h held) exp() int64    { return h.x &^ countedBit }
func (h held) counted() bool { return h.x&countedBit != 0 }
func (h *held) setCounted(on bool) {
	if on {
		h.x |= countedBit
	} else {
		h.x &^= countedBit
	}
}

// raise records that a batch written at revision rev holds the element
// until exp: etcd holds it until the latest expiry of its batches, and a
// hold that needs exp waits for the earliest revision that has it.
func (h *held) raise(exp, rev int64) {
	exp = min(exp, maxExpiry)
	if h.rev == 0 || exp > h.exp() || (exp == h.exp() && rev < h.rev) {
		h.x, h.rev = exp|h.x&countedBit, rev
	}
}

// mirror is what etcd holds, as far as this gateway knows: see
// Fleet.mirror. Guarded by Fleet.mu.
type mirror struct {
	elems map[elemKey]held
	// names are the names of the elements, with the count of those
	// taken from etcd (held.counted) for Options.MaxPerName; rgs their
	// rules and groups. An entry lives while an element refers to it.
	names interner[dnsname.Name]
	rgs   interner[ruleGroup]
}

func newMirror() mirror {
	return mirror{
		elems: map[elemKey]held{},
		names: interner[dnsname.Name]{ids: map[dnsname.Name]uint32{}, clone: func(n dnsname.Name) dnsname.Name { return dnsname.Name(strings.Clone(string(n))) }},
		rgs:   interner[ruleGroup]{ids: map[ruleGroup]uint32{}, clone: func(rg ruleGroup) ruleGroup { return ruleGroup{strings.Clone(rg.rule), strings.Clone(rg.group)} }},
	}
}

// lookup returns e's key and what the mirror holds for it, if anything.
func (m *mirror) lookup(e *learn.Entry) (elemKey, held, bool) {
	var ids lastIDs
	return m.lookupLast(&ids, e)
}

// lastIDs remembers the numbers of the last name and rule and group
// looked up: the entries of one answer share them, and a string compared
// with the same string is compared by its pointer.
type lastIDs struct {
	name     dnsname.Name
	rg       ruleGroup
	nameID   uint32
	rgID     uint32
	nameOK   bool
	rgOK     bool
	nameSeen bool
	rgSeen   bool
}

// lookupLast is lookup, remembering in last the numbers it looked up
// (last is valid as long as the mirror does not change).
func (m *mirror) lookupLast(last *lastIDs, e *learn.Entry) (elemKey, held, bool) {
	if !last.nameSeen || last.name != e.Name {
		last.name, last.nameSeen = e.Name, true
		last.nameID, last.nameOK = m.names.ids[e.Name]
	}
	if rg := (ruleGroup{e.Rule, e.Group}); !last.rgSeen || last.rg != rg {
		last.rg, last.rgSeen = rg, true
		last.rgID, last.rgOK = m.rgs.ids[rg]
	}
	if !last.nameOK || !last.rgOK {
		return elemKey{}, held{}, false
	}
	k := elemKey{e.Addr.Unmap().As16(), last.nameID, last.rgID}
	h, ok := m.elems[k]
	return k, h, ok
}

// raise records that a batch written at revision rev holds e until exp
// (see held.raise), adding e if the mirror does not hold it yet, and
// returns its key.
func (m *mirror) raise(e *learn.Entry, exp, rev int64) elemKey {
	k, h, ok := m.lookup(e)
	if !ok {
		k = elemKey{e.Addr.Unmap().As16(), m.names.ref(e.Name), m.rgs.ref(ruleGroup{e.Rule, e.Group})}
	}
	h.raise(exp, rev)
	m.elems[k] = h
	return k
}

// entry returns the element k names, expiring at exp, as an entry.
func (m *mirror) entry(k elemKey, exp int64) learn.Entry {
	rg := m.rgs.vals[k.rg].v
	return learn.Entry{
		Name:    m.names.vals[k.name].v,
		Addr:    netip.AddrFrom16(k.addr).Unmap(),
		Rule:    rg.rule,
		Group:   rg.group,
		Expires: unixTime(exp),
	}
}

// share makes e, the element k names, use the mirror's copies of its
// name, rule and group.
func (m *mirror) share(k elemKey, e *learn.Entry) {
	rg := m.rgs.vals[k.rg].v
	e.Name, e.Rule, e.Group = m.names.vals[k.name].v, rg.rule, rg.group
}

// is reports whether k still names e's element: between two holds of
// the lock, an element may have been forgotten, and its name's number
// given to another.
func (m *mirror) is(k elemKey, e *learn.Entry) bool {
	if _, ok := m.elems[k]; !ok {
		return false
	}
	rg := m.rgs.vals[k.rg].v
	return m.names.vals[k.name].v == e.Name && rg.rule == e.Rule && rg.group == e.Group && netip.AddrFrom16(k.addr).Unmap() == e.Addr.Unmap()
}

// counted is how many elements of name count against its cap.
func (m *mirror) counted(name dnsname.Name) int {
	id, ok := m.names.ids[name]
	if !ok {
		return 0
	}
	return int(m.names.vals[id].n)
}

// count counts k's element against its name's cap, which is max (0: no
// bound), and reports whether the cap had room.
func (m *mirror) count(k elemKey, max int) bool {
	n := &m.names.vals[k.name].n
	if max > 0 && int(*n) >= max {
		return false
	}
	h := m.elems[k]
	h.setCounted(true)
	m.elems[k] = h
	*n++
	return true
}

// uncount takes k's element, counted, out of its name's count.
func (m *mirror) uncount(k elemKey) {
	h := m.elems[k]
	h.setCounted(false)
	m.elems[k] = h
	m.names.vals[k.name].n--
}

// forget removes k's element.
func (m *mirror) forget(k elemKey) {
	if m.elems[k].counted() {
		m.names.vals[k.name].n--
	}
	delete(m.elems, k)
	m.names.unref(k.name)
	m.rgs.unref(k.rg)
}

// interner gives values small numbers, for as long as something refers
// to them: ref takes a reference (giving the value a number if it has
// none), unref drops one, and the number is given again once none is
// left.
type interner[V comparable] struct {
	ids   map[V]uint32
	vals  []interned[V]
	free  []uint32
	clone func(V) V // a copy that shares no memory with the caller's
}

type interned[V comparable] struct {
	v    V
	refs uint32
	n    uint32 // for the user: names count their elements against the cap
}

func (in *interner[V]) ref(v V) uint32 {
	id, ok := in.ids[v]
	if !ok {
		// A copy: v may be a piece of a batch read from etcd, which
		// must not stay alive for the sake of a name.
		v = in.clone(v)
		if n := len(in.free); n > 0 {
			id = in.free[n-1]
			in.free = in.free[:n-1]
			in.vals[id] = interned[V]{v: v}
		} else {
			id = uint32(len(in.vals))
			in.vals = append(in.vals, interned[V]{v: v})
		}
		in.ids[v] = id
	}
	in.vals[id].refs++
	return id
}

func (in *interner[V]) unref(id uint32) {
	if in.vals[id].refs--; in.vals[id].refs > 0 {
		return
	}
	delete(in.ids, in.vals[id].v)
	in.vals[id] = interned[V]{}
	in.free = append(in.free, id)
}

// unixTime is sec, Unix seconds, as a time.
func unixTime(sec int64) time.Time { return time.Unix(sec, 0).UTC() }
