package nft

import (
	"context"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// What the backend remembers of learned elements besides the mirror: which
// names hold them, for the per-name cap, and the sweep that forgets what
// expired.

// holdLocked records that name holds k until expires, and applies the
// per-name cap. It returns evict with the elements that no name holds any
// more appended.
func (b *Backend) holdLocked(name dnsname.Name, k elemKey, expires time.Time, evict []elemKey) []elemKey {
	held := b.names[name]
	if old, ok := held[k]; ok {
		if expires.After(old) {
			held[k] = expires
		}
		return evict
	}
	for len(held) >= b.perName {
		victim := soonest(held)
		delete(held, victim)
		if b.unrefLocked(victim) {
			evict = append(evict, victim)
		}
		b.capEvictions.Add(1)
	}
	if held == nil {
		held = make(map[elemKey]time.Time, 1)
		b.names[name] = held
	}
	held[k] = expires
	b.refs[k]++
	return evict
}

// unrefLocked drops one name's hold on k, and reports whether it was the
// last.
func (b *Backend) unrefLocked(k elemKey) bool {
	n := b.refs[k] - 1
	if n > 0 {
		b.refs[k] = n
		return false
	}
	delete(b.refs, k)
	return true
}

// soonest returns the key of held that expires first; held is not empty.
func soonest(held map[elemKey]time.Time) elemKey {
	var (
		victim elemKey
		when   time.Time
		found  bool
	)
	for k, t := range held {
		if !found || t.Before(when) {
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
	for name, held := range b.names {
		for k, t := range held {
			if !t.After(now) {
				delete(held, k)
				b.unrefLocked(k)
			}
			yield()
		}
		if len(held) == 0 {
			delete(b.names, name)
		}
	}
	for k, t := range b.mirror {
		if !t.After(now) {
			delete(b.mirror, k)
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
