package nft

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
)

// elemKey is a learned element: its set and its address, in 20 bytes
// without a pointer (the set's name interned as a setID, the address in
// its 16-byte form). The backend keeps one per learned address in the
// map known and in the names' slices; memory without pointers is memory
// the collector does not scan, and at a million addresses a key with a
// pointer costs it tens of megabytes of marking every cycle.
type elemKey struct {
	a [16]byte
	s setID
}

func keyOf(set string, a netip.Addr) elemKey { return elemKey{a.As16(), internSet(set)} }

// set is the name of k's set.
func (k elemKey) set() string { return k.s.name() }

// addr is k's address, IPv4 as IPv4.
func (k elemKey) addr() netip.Addr { return netip.AddrFrom16(k.a).Unmap() }

// setID is a learned set's name as a small number: see internSet.
type setID uint32

// setNames interns the names of learned sets for the whole process: ids
// maps a name to its setID, names is indexed by it. Both are read without
// a lock; mu serializes additions.
//
// What bounds it: a name is interned only when an element of that set is
// keyed (keyOf), and the sets elements are keyed in are the learned sets
// of the policies this process applied (one per rule, source group and
// family that learn), the learned sets of the table it adopted at start,
// and the sets the state file named and the kernel held. A name no
// longer used (a rule renamed or removed by a reload) stays, a few dozen
// bytes; a process that applies many different policies holds the union
// of their learned sets' names. (Memory runs out long before the 2^32
// names a setID counts.)
var setNames struct {
	ids   sync.Map // string → setID
	mu    sync.Mutex
	names atomic.Pointer[[]string]
}

// internSet returns name's setID, giving it one if it has none.
func internSet(name string) setID {
	if id, ok := setNames.ids.Load(name); ok {
		return id.(setID)
	}
	setNames.mu.Lock()
	defer setNames.mu.Unlock()
	if id, ok := setNames.ids.Load(name); ok {
		return id.(setID)
	}
	var names []string
	if p := setNames.names.Load(); p != nil {
		names = *p
	}
	id := setID(len(names))
	// Readers hold the old slice, shorter than the element appended
	// (or a copy): they never read what this writes.
	names = append(names, strings.Clone(name))
	setNames.names.Store(&names)
	setNames.ids.Store(names[id], id) // after names: an id found is an index names has
	return id
}

// lookupSet returns name's setID, if it has one: no element of a set
// without one was ever keyed.
func lookupSet(name string) (setID, bool) {
	id, ok := setNames.ids.Load(name)
	if !ok {
		return 0, false
	}
	return id.(setID), true
}

// name is the set name id stands for.
func (id setID) name() string { return (*setNames.names.Load())[id] }
