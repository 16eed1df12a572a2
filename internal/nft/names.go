package nft

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// What the backend remembers of learned elements besides the mirror: which
// names hold them, for the per-name cap, and the sweep that forgets what
// expired.

// held is what one name's answers brought: its elements, each with its
// expiry in Unix nanoseconds. Most names hold a few, kept in a slice
// (28 bytes an element without a pointer, about a fifth of what a map of
// them costs); a name that holds more than manyHeld switches to a map, so
// that one with thousands (dns.max_learned_per_name may allow a million)
// stays O(1) a lookup.
type held struct {
	few  []hold
	many map[elemKey]wall4
	// dnssec is the DNSSEC verdict of the newest answer that named these
	// addresses (learn.Entry.DNSSEC), kept per name rather than per
	// address: an answer's verdict covers all of its addresses.
	dnssec verdict
}

// verdict is a learn.Entry.DNSSEC value in a byte.
type verdict uint8

const (
	verdictNone verdict = iota
	verdictSecure
	verdictInsecure
	verdictOther // a value this backend does not know: listed as "unknown"
)

func verdictOf(s string) verdict {
	switch s {
	case "":
		return verdictNone
	case "secure":
		return verdictSecure
	case "insecure":
		return verdictInsecure
	}
	return verdictOther
}

func (v verdict) String() string {
	return [...]string{verdictNone: "", verdictSecure: "secure", verdictInsecure: "insecure", verdictOther: "unknown"}[v]
}

// hold is one element of a name and its expiry: 28 bytes, no pointer
// (see elemKey).
type hold struct {
	k   elemKey
	exp wall4
}

// manyHeld is the most elements a name keeps in a slice.
const manyHeld = 32

func (h *held) len() int { return len(h.few) + len(h.many) }

func (h *held) get(k elemKey) (int64, bool) {
	if h.many != nil {
		exp, ok := h.many[k]
		return int64(exp.wall()), ok
	}
	for i := range h.few {
		if h.few[i].k == k {
			return int64(h.few[i].exp.wall()), true
		}
	}
	return 0, false
}

// put sets k's expiry, adding k if h does not hold it.
func (h *held) put(k elemKey, exp int64) {
	e := wall(exp).pack()
	if h.many != nil {
		h.many[k] = e
		return
	}
	for i := range h.few {
		if h.few[i].k == k {
			h.few[i].exp = e
			return
		}
	}
	if len(h.few) < manyHeld {
		h.few = append(h.few, hold{k, e})
		return
	}
	h.many = make(map[elemKey]wall4, 2*manyHeld)
	for _, x := range h.few {
		h.many[x.k] = x.exp
	}
	h.many[k] = e
	h.few = nil
}

// deleteFunc removes the elements for which del returns true.
func (h *held) deleteFunc(del func(k elemKey, exp int64) bool) {
	if h.many != nil {
		maps.DeleteFunc(h.many, func(k elemKey, exp wall4) bool { return del(k, int64(exp.wall())) })
		return
	}
	n := len(h.few)
	h.few = slices.DeleteFunc(h.few, func(x hold) bool { return del(x.k, int64(x.exp.wall())) })
	if len(h.few) < n && cap(h.few) > 8 && 4*len(h.few) <= cap(h.few) {
		h.few = slices.Clip(slices.Clone(h.few)) // a name whose pool shrank: let go of the big array
	}
}

// all yields h's elements and their expiries.
func (h *held) all(yield func(elemKey, int64) bool) {
	if h.many != nil {
		for k, exp := range h.many {
			if !yield(k, int64(exp.wall())) {
				return
			}
		}
		return
	}
	for _, x := range h.few {
		if !yield(x.k, int64(x.exp.wall())) {
			return
		}
	}
}

// holdLocked records that name holds k until expires, and applies the
// per-name cap. It returns evict with the elements that no name holds any
// more appended. hint is how many elements name is about to be given
// (this one included), to size a new name's slice.
func (b *Backend) holdLocked(name dnsname.Name, k elemKey, expires time.Time, evict []elemKey, hint int) []elemKey {
	exp := expires.UnixNano()
	h := b.names[name]
	if h != nil {
		if old, ok := h.get(k); ok {
			if exp > old {
				h.put(k, exp)
			}
			return evict
		}
	}
	for h != nil && h.len() >= b.perName {
		victim := h.soonest()
		h.deleteFunc(func(x elemKey, _ int64) bool { return x == victim })
		if b.unrefLocked(victim) {
			evict = append(evict, victim)
		}
		b.capEvictions.Add(1)
	}
	if h == nil {
		h = &held{few: make([]hold, 0, min(max(hint, 1), manyHeld))}
		b.names[name] = h
	}
	h.put(k, exp)
	st := b.known[k]
	st.addHolder()
	b.known[k] = st
	return evict
}

// unrefLocked drops one name's hold on k, and reports whether it was the
// last.
func (b *Backend) unrefLocked(k elemKey) bool {
	st, ok := b.known[k]
	if !ok {
		return true
	}
	if st.dropHolder(); st.holders() > 0 {
		b.known[k] = st
		return false
	}
	if !st.programmed() {
		delete(b.known, k)
	} else {
		b.known[k] = st
	}
	return true
}

// elemState is what the backend knows of one learned element: until when
// the kernel holds it as far as the backend knows (0: not programmed, or
// no longer), and how many names hold it; unverified if that came from
// the state file and was not checked against the kernel yet (see
// verify). 12 bytes without a pointer, 4-byte aligned: with its 20-byte
// key, a map slot of 32 bytes.
type elemState struct {
	exp wall4
	// refs is how many names hold the element, in the low 31 bits,
	// and unverifiedBit: one word rather than two.
	refs uint32
}

const unverifiedBit = 1 << 31

func (st elemState) expiry() wall     { return st.exp.wall() }
func (st elemState) programmed() bool { return st.exp != wall4{} }
func (st elemState) unverified() bool { return st.refs&unverifiedBit != 0 }
func (st elemState) holders() int32   { return int32(st.refs &^ unverifiedBit) }

// setExpiry records until when the kernel holds the element (0: no
// longer), and whether that is unverified.
func (st *elemState) setExpiry(exp wall, unverified bool) {
	st.exp = exp.pack()
	st.refs &^= unverifiedBit
	if unverified {
		st.refs |= unverifiedBit
	}
}

// addHolder counts one more name holding the element; dropHolder one
// fewer (none left stays none).
func (st *elemState) addHolder() { st.refs++ }
func (st *elemState) dropHolder() {
	if st.holders() > 0 {
		st.refs--
	}
}

// mirrorGet returns until when the kernel holds k, and whether it does.
func (b *Backend) mirrorGet(k elemKey) (wall, bool) {
	st := b.known[k]
	return st.expiry(), st.programmed()
}

// mirrorSet records that the kernel holds k until exp (not 0).
func (b *Backend) mirrorSet(k elemKey, exp wall) {
	st := b.known[k]
	if !st.programmed() {
		b.programmed++
	}
	st.setExpiry(exp, false)
	b.known[k] = st
	b.noteLocked(k, exp)
}

// mirrorUnverified records that the state file says the kernel holds k
// until exp (not 0), and reports whether the mirror did not hold k:
// verify checks it.
func (b *Backend) mirrorUnverified(k elemKey, exp wall) bool {
	st := b.known[k]
	added := !st.programmed()
	if added {
		b.programmed++
	}
	st.setExpiry(exp, true)
	b.known[k] = st
	b.noteLocked(k, exp)
	return added
}

// mirrorDel records that the kernel no longer holds k.
func (b *Backend) mirrorDel(k elemKey) {
	st, ok := b.known[k]
	if !ok || !st.programmed() {
		return
	}
	b.programmed--
	b.noteLocked(k, 0)
	if st.holders() == 0 {
		delete(b.known, k)
		return
	}
	st.setExpiry(0, false)
	b.known[k] = st
}

// mirrorAll yields the elements the kernel holds and until when; the
// caller may mirrorDel the one yielded.
func (b *Backend) mirrorAll(yield func(elemKey, wall) bool) {
	for k, st := range b.known {
		if st.programmed() && !yield(k, st.expiry()) {
			return
		}
	}
}

// refsOf returns how many names hold k.
func (b *Backend) refsOf(k elemKey) int32 { return b.known[k].holders() }

// soonest returns the key of h that expires first; h is not empty.
func (h *held) soonest() elemKey {
	var (
		victim elemKey
		when   int64
		found  bool
	)
	for k, t := range h.all {
		if !found || t < when {
			victim, when, found = k, t, true
		}
	}
	return victim
}

// sweepLoop drops expired entries from memory every sweepEvery.
func (b *Backend) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.sweep()
		}
	}
}

// sweep forgets expired holds and mirror entries.
func (b *Backend) sweep() {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	yield := b.yielderLocked()
	cut := now.UnixNano()
	for name, h := range b.names {
		h.deleteFunc(func(k elemKey, exp int64) bool {
			if exp <= cut {
				b.unrefLocked(k)
				return true
			}
			return false
		})
		if h.len() == 0 {
			delete(b.names, name)
		}
		yield()
	}
	for k, t := range b.mirrorAll {
		if !t.After(now) {
			b.mirrorDel(k)
		}
		yield()
	}
}

// yielderLocked returns a function to call once per entry while ranging
// over the backend's maps under memMu: every sweepChunk calls it lets
// go of the lock for a moment, so that a walk over millions of entries
// (a sweep, the state file, the admin API) never stalls Publish for long.
// Ranging over a map that others change between iterations is allowed:
// entries they add may or may not be visited.
func (b *Backend) yielderLocked() func() {
	n := 0
	return func() {
		if n++; n%sweepChunk == 0 {
			b.memMu.Unlock()
			b.memMu.Lock()
		}
	}
}

// wall is a time in Unix nanoseconds: 8 bytes where a time.Time takes 24,
// for the expiry the mirror keeps of every learned element.
type wall int64

func wallOf(t time.Time) wall { return wall(t.UnixNano()) }

// wall4 is a wall in two 4-byte halves, low first: 4-byte aligned, so
// that next to a 20-byte elemKey it takes 8 bytes, not 12 with padding.
type wall4 [2]uint32

func (w wall) pack() wall4 { return wall4{uint32(w), uint32(uint64(w) >> 32)} }
func (p wall4) wall() wall { return wall(uint64(p[0]) | uint64(p[1])<<32) }

func (w wall) Time() time.Time               { return time.Unix(0, int64(w)) }
func (w wall) After(t time.Time) bool        { return int64(w) > t.UnixNano() }
func (w wall) Before(t time.Time) bool       { return int64(w) < t.UnixNano() }
func (w wall) Sub(t time.Time) time.Duration { return time.Duration(int64(w) - t.UnixNano()) }
