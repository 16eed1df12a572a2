package learn

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Store is the learned-address set of backend none: nothing enforces it,
// but the admin endpoint lists it and metrics count it, so an operator can
// see what nftables would hold before turning enforcement on. It is
// bounded: it never holds more than its maximum, however many names and
// addresses a client makes the firewall learn.
type Store struct {
	max, perName int
	now          func() time.Time

	mu        sync.Mutex // guards following
	names     map[dnsname.Name]map[storeKey]time.Time
	n         int // entries across names, expired ones included until swept
	lastSweep time.Time
	evicted   uint64 // entries pushed out by either bound
	capHits   uint64 // of those, pushed out by the per-name bound
}

type storeKey struct {
	rule, group string
	addr        netip.Addr
}

// StoreConfig bounds a Store. Zero fields take the defaults noted.
type StoreConfig struct {
	// MaxEntries bounds the whole store; default 1,000,000.
	MaxEntries int
	// MaxPerName bounds the entries of one name, so a name whose answers
	// rotate through a large pool cannot crowd out the others; default 1000
	// (policy dns.max_learned_per_name).
	MaxPerName int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// sweepEvery is how often Publish drops expired entries. Sweeping is
// O(entries) under the lock, so it is rate limited rather than done on
// every call; List never shows expired entries regardless.
const sweepEvery = 10 * time.Second

// NewStore returns an empty store.
func NewStore(c StoreConfig) *Store {
	if c.MaxEntries <= 0 {
		c.MaxEntries = 1_000_000
	}
	if c.MaxPerName <= 0 {
		c.MaxPerName = 1000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Store{
		max:     c.MaxEntries,
		perName: c.MaxPerName,
		now:     c.Now,
		names:   make(map[dnsname.Name]map[storeKey]time.Time),
	}
}

// Publish adds or refreshes the entries of batch. An entry's expiry only
// ever moves later: a shorter TTL in a later answer does not cut short a
// connection made on the strength of an earlier one. When a bound is
// reached the entry expiring soonest (of the name, or a random one of the
// store) makes room, so Publish never fails.
func (s *Store) Publish(_ context.Context, batch []Entry) error {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSweep) >= sweepEvery {
		s.sweepLocked(now)
	}
	for i := range batch {
		e := &batch[i]
		if !e.Expires.After(now) {
			continue
		}
		set := s.names[e.Name]
		k := storeKey{e.Rule, e.Group, e.Addr}
		if old, ok := set[k]; ok {
			if e.Expires.After(old) {
				set[k] = e.Expires
			}
			continue
		}
		if len(set) >= s.perName {
			s.evictSoonestLocked(set)
			s.capHits++
		}
		if s.n >= s.max {
			s.sweepLocked(now)
			if s.n >= s.max {
				s.evictAnyLocked(e.Name)
			}
			set = s.names[e.Name] // the sweep drops emptied sets
		}
		if set == nil {
			set = make(map[storeKey]time.Time, 1)
			s.names[e.Name] = set
		}
		set[k] = e.Expires
		s.n++
	}
	return nil
}

// evictSoonestLocked removes the entry of set that expires first.
func (s *Store) evictSoonestLocked(set map[storeKey]time.Time) {
	var (
		victim storeKey
		when   time.Time
		found  bool
	)
	for k, t := range set {
		if !found || t.Before(when) {
			victim, when, found = k, t, true
		}
	}
	if found {
		delete(set, victim)
		s.n--
		s.evicted++
	}
}

// evictAnyLocked removes one entry of some name other than keep (map order
// is random, so a flood cannot aim at a particular name), or of keep if it
// is the only one.
func (s *Store) evictAnyLocked(keep dnsname.Name) {
	for _, pass := range [2]bool{false, true} {
		for name, set := range s.names {
			if name == keep && !pass || len(set) == 0 {
				continue
			}
			s.evictSoonestLocked(set)
			if len(set) == 0 && name != keep {
				delete(s.names, name)
			}
			return
		}
	}
}

func (s *Store) sweepLocked(now time.Time) {
	s.lastSweep = now
	for name, set := range s.names {
		for k, t := range set {
			if !t.After(now) {
				delete(set, k)
				s.n--
			}
		}
		if len(set) == 0 {
			delete(s.names, name)
		}
	}
}

// List returns the entries that have not expired, in no particular order.
func (s *Store) List() []Entry {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Entry, 0, s.n)
	for name, set := range s.names {
		for k, t := range set {
			if t.After(now) {
				out = append(out, Entry{Name: name, Rule: k.rule, Group: k.group, Addr: k.addr, Expires: t})
			}
		}
	}
	return out
}

// Len returns the number of entries that have not expired.
func (s *Store) Len() int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	return s.n
}

// Evictions returns how many unexpired entries were pushed out to respect
// a bound: in total, and of those by the per-name bound.
func (s *Store) Evictions() (total, perName uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.evicted, s.capHits
}
