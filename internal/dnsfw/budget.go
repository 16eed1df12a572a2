package dnsfw

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// budgetWindow is how long a client's budget of new names under a
// wildcard lasts (dns.wildcard_budget is names per budgetWindow): a
// window starts with the first name charged and ends a minute later; the
// next name charged after it starts the next one.
const budgetWindow = time.Minute

// Bounds on what the budgets hold, in two generations as the rate limiter
// does: a flood from spoofed sources makes a bucket per source, and at
// most maxBudgetBuckets buckets and maxBudgetNames names are kept; beyond
// them the older generation is forgotten, which at worst hands an evicted
// client a fresh budget: the limit softens, memory does not grow. A name
// is kept as a 64-bit hash: 8 bytes in a small bucket, about five times
// that in a large one's set, so the names cost between 8 and 40 MiB at
// most (the latter only with budgets in the thousands).
const (
	maxBudgetBuckets = 1 << 16
	maxBudgetNames   = 1 << 20
)

// budgets count, per client and wildcard pattern, the distinct names that
// went upstream in the current window. Only a query that reaches the
// upstream can carry data out in its name, so only those are charged; a
// name already charged in the window is free.
type budgets struct {
	seed       maphash.Seed
	maxBuckets int
	maxNames   int

	mu        sync.Mutex // guards following
	cur, prev map[budgetKey]*nameBucket
	curNames  int // names held by cur's buckets
	prevNames int
}

// budgetKey is one client's budget under one pattern: the client as the
// rate limiter counts it (an IPv4 address, an IPv6 /64), the pattern as
// written in the policy.
type budgetKey struct {
	client  netip.Addr
	pattern string
}

// nameBucket holds the names charged in one window, as 64-bit hashes: in
// a slice while they are few (most clients resolve a handful of names
// under a wildcard), in a set once they are more, so that a large budget
// costs a lookup, not a scan, per name.
type nameBucket struct {
	start time.Time
	small []uint64
	large map[uint64]struct{} // when not nil, holds every name, small is unused
}

// smallBucket is how many names a bucket scans before it keeps a set.
const smallBucket = 32

func (nb *nameBucket) len() int {
	if nb.large != nil {
		return len(nb.large)
	}
	return len(nb.small)
}

func (nb *nameBucket) has(h uint64) bool {
	if nb.large != nil {
		_, ok := nb.large[h]
		return ok
	}
	for _, n := range nb.small {
		if n == h {
			return true
		}
	}
	return false
}

func (nb *nameBucket) add(h uint64) {
	switch {
	case nb.large != nil:
		nb.large[h] = struct{}{}
	case len(nb.small) < smallBucket:
		nb.small = append(nb.small, h)
	default:
		nb.large = make(map[uint64]struct{}, 2*smallBucket)
		for _, n := range nb.small {
			nb.large[n] = struct{}{}
		}
		nb.large[h] = struct{}{}
		nb.small = nil
	}
}

// reset starts a new window at now, keeping what was allocated.
func (nb *nameBucket) reset(now time.Time) {
	nb.start, nb.small = now, nb.small[:0]
	clear(nb.large)
}

func newBudgets(maxBuckets, maxNames int) *budgets {
	return &budgets{
		seed:       maphash.MakeSeed(),
		maxBuckets: maxBuckets,
		maxNames:   maxNames,
		cur:        make(map[budgetKey]*nameBucket),
	}
}

// charge reports whether client may send name (in lower case) upstream
// under pattern at now, with a budget of limit new names per window, and
// counts it if it is new. limit ≤ 0 means no budget.
func (b *budgets) charge(client netip.Addr, pattern, name string, limit int, now time.Time) bool {
	if limit <= 0 {
		return true
	}
	h := maphash.String(b.seed, name)
	key := budgetKey{clientKey(client), pattern}

	b.mu.Lock()
	defer b.mu.Unlock()
	nb := b.cur[key]
	if nb == nil {
		if nb = b.prev[key]; nb != nil {
			delete(b.prev, key)
			b.prevNames -= nb.len()
		} else {
			nb = &nameBucket{start: now}
		}
		if len(b.cur) >= b.maxBuckets/2 {
			b.rotateLocked()
		}
		b.cur[key] = nb
		b.curNames += nb.len()
	}
	// Queries are charged in the order their workers get here, not
	// quite that of their timestamps: a time a little before the window's
	// start is in it.
	if now.Sub(nb.start) >= budgetWindow {
		b.curNames -= nb.len()
		nb.reset(now)
	}
	if nb.has(h) {
		return true
	}
	if nb.len() >= limit {
		return false
	}
	nb.add(h)
	b.curNames++
	if b.curNames >= b.maxNames/2 {
		// The bucket just charged goes to prev with the rest; its
		// client's next new name brings it back.
		b.rotateLocked()
	}
	return true
}

// rotateLocked forgets the older generation and starts a new one.
func (b *budgets) rotateLocked() {
	b.prev, b.prevNames = b.cur, b.curNames
	b.cur, b.curNames = make(map[budgetKey]*nameBucket, len(b.cur)), 0
}

// size returns the buckets and names held.
func (b *budgets) size() (buckets, names int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.cur) + len(b.prev), b.curNames + b.prevNames
}
