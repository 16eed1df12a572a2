package learn

import (
	"bytes"
	"context"
	"hash/maphash"
	"iter"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Store is the learned-address set of backend none: nothing enforces it,
// but the admin endpoint lists it and metrics count it, so an operator can
// see what nftables would hold before turning enforcement on. It is
// bounded: it never holds more than its maximum, however many names and
// addresses a client makes the firewall learn.
//
// The firewall publishes every answer it gives, mostly addresses the store
// holds already, so that case is cheap: names are spread over shards, each
// with its own read-write lock, and a Publish whose entries are all held
// with an expiry at least as late takes one shard's read lock, allocates
// nothing and changes nothing. One that only extends expiries does so under
// the read lock too (expiries are updated atomically, and at most once a
// second, see [ExpiryGranularity]); adding, evicting and sweeping take the
// shard's write lock.
//
// An entry of a name with two costs about 80 bytes of heap, its share of
// the name's string and map slot included (see BenchmarkStoreMemory): a
// name's entries are one small slice, sorted by address, of 32-byte
// records without pointers whose rule and group are one interned number.
type Store struct {
	max, perName int
	now          func() time.Time
	seed         maphash.Seed

	// n counts entries held, expired ones included until swept, and those
	// about to be added (see reserve): it never exceeds max.
	n         atomic.Int64
	lastSweep atomic.Int64  // Unix nanoseconds
	evicted   atomic.Uint64 // unexpired entries pushed out by either bound
	capHits   atomic.Uint64 // of those, pushed out by the per-name bound

	shards [numShards]shard
}

// numShards is how many shards the names are spread over: enough that
// cores publishing different names rarely share a lock.
const numShards = 64

type shard struct {
	shardState
	// Padding: shards written by different cores share no cache line.
	_ [128 - unsafe.Sizeof(shardState{})%128]byte
}

type shardState struct {
	mu sync.RWMutex
	// names holds each name's entries, sorted by address. The slices are
	// replaced only under mu's write lock; their records' exp fields
	// change under the read lock too, atomically.
	names map[dnsname.Name][]record
	peak  int // the most names held since names was made
}

// record is one entry of a name: 32 bytes on 64-bit platforms, without
// a pointer, so that the collector does not scan a name's records (a
// fleet gateway without nftables holds every address of the fleet here).
type record struct {
	// exp is when the entry expires, in Unix seconds: the entry's Expires
	// rounded up to a whole second. It only ever grows; under a read lock
	// it is read and written atomically. First, so that it is 64-bit
	// aligned on 32-bit platforms too.
	exp  int64
	addr addr
	rg   rgID
}

// addr is an entry's address without a pointer (netip.Addr's zone is
// one): its 16-byte form and its length in bits, which tells IPv4 from
// IPv4-mapped IPv6 as netip.Addr does. A zone is not kept: learned
// addresses come from DNS answers, which have none.
type addr struct {
	a    [16]byte
	bits uint8 // netip.Addr.BitLen: 0 (the zero Addr), 32 or 128
}

func addrOf(a netip.Addr) addr { return addr{a.As16(), uint8(a.BitLen())} }

// Addr is a as a netip.Addr.
func (a addr) Addr() netip.Addr {
	switch a.bits {
	case 32:
		return netip.AddrFrom4([4]byte(a.a[12:]))
	case 128:
		return netip.AddrFrom16(a.a)
	}
	return netip.Addr{}
}

// Less orders addresses as netip.Addr.Less does.
func (a addr) Less(b addr) bool {
	if a.bits != b.bits {
		return a.bits < b.bits
	}
	return bytes.Compare(a.a[:], b.a[:]) < 0
}

func (a addr) String() string { return a.Addr().String() }

// ruleGroup is an entry's rule and group, interned (rgID): a store holds
// few distinct pairs, each for many entries. dnssec is the entry's DNSSEC
// verdict, kept with them at no cost per entry; it is not part of what
// identifies an entry (search), so the verdict listed is that of the
// answer that added the entry.
type ruleGroup struct{ rule, group, dnssec string }

// rgID is a ruleGroup as a small number: see internRuleGroup.
type rgID uint32

// ruleGroups interns ruleGroups for the whole process: ids maps one to
// its rgID (under mu: a read lock, which unlike a sync.Map's interface
// key allocates nothing), vals is indexed by it, read without a lock.
//
// What bounds it: the pairs of rule and source group the DNS firewall
// learns for (and the fleet accepts from etcd) are those of the policies
// the process applied, each with one of three DNSSEC verdicts. One no
// longer used (a rule renamed or removed by a reload) stays, a few dozen
// bytes; a process that applies many different policies holds the union
// of their pairs.
var ruleGroups struct {
	mu   sync.RWMutex
	ids  map[ruleGroup]rgID
	vals atomic.Pointer[[]ruleGroup]
}

// internRuleGroup returns rg's rgID, giving it one if it has none.
func internRuleGroup(rg ruleGroup) rgID {
	ruleGroups.mu.RLock()
	id, ok := ruleGroups.ids[rg]
	ruleGroups.mu.RUnlock()
	if ok {
		return id
	}
	ruleGroups.mu.Lock()
	defer ruleGroups.mu.Unlock()
	if id, ok := ruleGroups.ids[rg]; ok {
		return id
	}
	if ruleGroups.ids == nil {
		ruleGroups.ids = map[ruleGroup]rgID{}
	}
	var vals []ruleGroup
	if p := ruleGroups.vals.Load(); p != nil {
		vals = *p
	}
	id = rgID(len(vals))
	// Readers hold the old slice, shorter than the value appended (or a
	// copy): they never read what this writes.
	vals = append(vals, ruleGroup{strings.Clone(rg.rule), strings.Clone(rg.group), strings.Clone(rg.dnssec)})
	ruleGroups.vals.Store(&vals)
	ruleGroups.ids[vals[id]] = id
	return id
}

// Value is the ruleGroup id stands for.
func (id rgID) Value() ruleGroup { return (*ruleGroups.vals.Load())[id] }

// ExpiryGranularity is the precision of the expiries a Store holds: it
// rounds each Expires up to a whole second. An entry is therefore held,
// and listed as expiring, up to a second later than its answer requires,
// never earlier; in return, the same addresses republished within the
// same second with a few microseconds' later expiry (as answers for a
// popular name are) find their expiry late enough already and change
// nothing. The nftables backend holds elements up to a second longer too.
const ExpiryGranularity = time.Second

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

const (
	// sweepEvery is how often Publish drops expired entries, when it adds
	// one (a Publish that adds nothing does not read the clock). Sweeping
	// is O(entries), one shard's write lock at a time, so it is rate
	// limited rather than done on every call; List never shows expired
	// entries regardless, and Len sweeps.
	sweepEvery = 10 * time.Second
	// fullSweepEvery: a Publish that finds the store full sweeps it first,
	// to make room without evicting, unless the last sweep was less than
	// this long ago. Otherwise a flood at the bound would sweep the whole
	// store for every entry it adds.
	fullSweepEvery = time.Second
	// shrinkNames: a shard whose map held at least this many names and
	// now holds less than a quarter of that is rebuilt by the sweep, since
	// a Go map does not shrink when entries are deleted.
	shrinkNames = 1024
)

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
	s := &Store{
		max:     c.MaxEntries,
		perName: c.MaxPerName,
		now:     c.Now,
		seed:    maphash.MakeSeed(),
	}
	for i := range s.shards {
		s.shards[i].names = make(map[dnsname.Name][]record)
	}
	return s
}

func (s *Store) shard(name dnsname.Name) *shard {
	return &s.shards[maphash.String(s.seed, string(name))%numShards]
}

// clock returns *now, reading the clock into it first if it is still
// zero: Publish reads it only if it has to.
func (s *Store) clock(now *time.Time) time.Time {
	if now.IsZero() {
		*now = s.now()
	}
	return *now
}

// Publish adds or refreshes the entries of batch. An entry's expiry only
// ever moves later: a shorter TTL in a later answer does not cut short a
// connection made on the strength of an earlier one. Expiries are rounded
// up to whole seconds (see [ExpiryGranularity]). Entries that expired
// already are ignored. When a bound is reached the entry expiring soonest
// (of the name, or of a random other name of the store) makes room, so
// Publish never fails.
//
// Publish does not allocate, lock exclusively or read the clock when the
// store holds every entry of batch already, until its Expires or later.
func (s *Store) Publish(_ context.Context, batch []Entry) error {
	var now time.Time // read on first need
	for len(batch) > 0 {
		// A batch is usually one name's; consecutive entries of a name
		// share a shard lock.
		n := 1
		for n < len(batch) && batch[n].Name == batch[0].Name {
			n++
		}
		run := batch[:n]
		batch = batch[n:]
		sh := s.shard(run[0].Name)
		if !s.refresh(sh, run, &now) {
			s.add(sh, run, s.clock(&now))
		}
	}
	return nil
}

// refresh extends the expiries of run's entries (all of one name, in sh)
// that sh holds, under sh's read lock. It reports whether that was all
// there was to do: false if an unexpired entry of run is not held.
func (s *Store) refresh(sh *shard, run []Entry, now *time.Time) bool {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	recs := sh.names[run[0].Name]
	for i := range run {
		e := &run[i]
		want := ceilUnix(e.Expires)
		j, held := search(recs, e)
		if held {
			if p := &recs[j].exp; atomic.LoadInt64(p) < want && e.Expires.After(s.clock(now)) {
				raise(p, want)
			}
			continue
		}
		if e.Expires.After(s.clock(now)) {
			return false
		}
	}
	return true
}

// add publishes run (all of one name, in sh) under sh's write lock.
func (s *Store) add(sh *shard, run []Entry, now time.Time) {
	name := run[0].Name
	var (
		rg     rgID
		last   ruleGroup
		haveRG bool
	)
	sh.mu.Lock()
	for i := range run {
		e := &run[i]
		if !e.Expires.After(now) {
			continue
		}
		want := ceilUnix(e.Expires)
		for {
			recs := sh.names[name]
			j, held := search(recs, e)
			if held {
				raise(&recs[j].exp, want)
				break
			}
			if len(recs) >= s.perName {
				recs = s.evictSoonestLocked(sh, name, recs, now, true)
				j, _ = search(recs, e)
			}
			if !s.reserve() {
				// Full: make room elsewhere without holding sh, whose
				// names may have changed by the time it is back.
				sh.mu.Unlock()
				s.makeRoom(name, now)
				sh.mu.Lock()
				continue
			}
			if k := (ruleGroup{e.Rule, e.Group, e.DNSSEC}); !haveRG || k != last {
				rg, last, haveRG = internRuleGroup(k), k, true
			}
			if recs == nil {
				// A new name: room for the rest of run (an answer's
				// addresses come together) in one allocation.
				recs = make([]record, 0, min(len(run)-i, s.perName))
			}
			sh.names[name] = slices.Insert(recs, j, record{exp: want, addr: addrOf(e.Addr), rg: rg})
			sh.peak = max(sh.peak, len(sh.names))
			break
		}
	}
	sh.mu.Unlock()
	if last := s.lastSweep.Load(); now.UnixNano()-last >= int64(sweepEvery) && s.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		s.sweep(now)
	}
}

// search returns the index of e's record in recs, sorted by address, and
// true; or, if recs does not hold e, the index to insert it at and false.
func search(recs []record, e *Entry) (int, bool) {
	a := addrOf(e.Addr)
	lo, hi := 0, len(recs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if recs[m].addr.Less(a) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	// An address may be held for several rules and groups.
	for j := lo; j < len(recs) && recs[j].addr == a; j++ {
		if rg := recs[j].rg.Value(); rg.rule == e.Rule && rg.group == e.Group {
			return j, true
		}
	}
	return lo, false
}

// raise moves *p up to want, if it is earlier.
func raise(p *int64, want int64) {
	for {
		old := atomic.LoadInt64(p)
		if old >= want || atomic.CompareAndSwapInt64(p, old, want) {
			return
		}
	}
}

// ceilUnix returns t in Unix seconds, rounded up.
func ceilUnix(t time.Time) int64 {
	sec := t.Unix()
	if t.Nanosecond() != 0 {
		sec++
	}
	return sec
}

// reserve counts an entry about to be added, unless the store is full.
func (s *Store) reserve() bool {
	for {
		n := s.n.Load()
		if n >= int64(s.max) {
			return false
		}
		if s.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// makeRoom frees room for an entry of keep, with no shard locked: by
// sweeping, if that was not done lately, else by evicting the entry that
// expires soonest of a random name other than keep (or of keep, if it is
// the only one).
func (s *Store) makeRoom(keep dnsname.Name, now time.Time) {
	if last := s.lastSweep.Load(); now.UnixNano()-last >= int64(fullSweepEvery) && s.lastSweep.CompareAndSwap(last, now.UnixNano()) {
		s.sweep(now)
		if s.n.Load() < int64(s.max) {
			return
		}
	}
	start := rand.IntN(numShards)
	for _, others := range [2]bool{true, false} {
		for k := range numShards {
			sh := &s.shards[(start+k)%numShards]
			sh.mu.Lock()
			// Map order is random, so a flood cannot aim at a name.
			for name, recs := range sh.names {
				if others && name == keep {
					continue
				}
				s.evictSoonestLocked(sh, name, recs, now, false)
				sh.mu.Unlock()
				return
			}
			sh.mu.Unlock()
		}
	}
	// Nothing held: the entries counted are being added by others, about
	// to unlock; add will retry.
}

// evictSoonestLocked removes the entry of name, whose records are recs (not
// empty), that expires first, and returns the records left. perName says
// the per-name bound pushed it out.
func (s *Store) evictSoonestLocked(sh *shard, name dnsname.Name, recs []record, now time.Time, perName bool) []record {
	j := 0
	for k := range recs {
		if recs[k].exp < recs[j].exp { // the write lock excludes atomic writers
			j = k
		}
	}
	if recs[j].exp > now.Unix() {
		s.evicted.Add(1)
		if perName {
			s.capHits.Add(1)
		}
	}
	recs = slices.Delete(recs, j, j+1)
	s.n.Add(-1)
	if len(recs) == 0 {
		delete(sh.names, name)
	} else {
		sh.names[name] = recs
	}
	return recs
}

// sweep drops the entries expired at now, one shard at a time.
func (s *Store) sweep(now time.Time) {
	cut := now.Unix() // expired: exp <= cut, since exp is whole seconds
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for name, recs := range sh.names {
			kept := slices.DeleteFunc(recs, func(r record) bool { return r.exp <= cut })
			if d := len(recs) - len(kept); d > 0 {
				s.n.Add(-int64(d))
			}
			switch {
			case len(kept) == 0:
				delete(sh.names, name)
			case cap(kept) > 4 && 4*len(kept) <= cap(kept):
				// A name whose pool shrank: let go of the big array.
				sh.names[name] = slices.Clone(kept)
			case len(kept) != len(recs):
				sh.names[name] = kept
			}
		}
		if sh.peak >= shrinkNames && 4*len(sh.names) < sh.peak {
			m := make(map[dnsname.Name][]record, len(sh.names))
			for name, recs := range sh.names {
				m[name] = recs
			}
			sh.names, sh.peak = m, len(m)
		}
		sh.mu.Unlock()
	}
}

// List returns the entries that have not expired, in no particular order.
// Their Expires are whole seconds, in UTC. It is a snapshot: it holds every
// shard's read lock while it copies, so Publish calls that only refresh
// held entries go on meanwhile, and those that add wait.
func (s *Store) List() []Entry {
	cut := s.now().Unix()
	for i := range s.shards {
		s.shards[i].mu.RLock()
	}
	out := make([]Entry, 0, max(s.n.Load(), 0))
	for i := range s.shards {
		for name, recs := range s.shards[i].names {
			for j := range recs {
				r := &recs[j]
				if exp := atomic.LoadInt64(&r.exp); exp > cut {
					rg := r.rg.Value()
					out = append(out, Entry{Name: name, Rule: rg.rule, Group: rg.group, Addr: r.addr.Addr(), Expires: time.Unix(exp, 0).UTC(), DNSSEC: rg.dnssec})
				}
			}
		}
	}
	for i := range s.shards {
		s.shards[i].mu.RUnlock()
	}
	return out
}

// Len returns the number of entries that have not expired. It sweeps the
// store to count them.
func (s *Store) Len() int {
	now := s.now()
	s.lastSweep.Store(now.UnixNano())
	s.sweep(now)
	return int(s.n.Load())
}

// Evictions returns how many unexpired entries were pushed out to respect
// a bound: in total, and of those by the per-name bound.
func (s *Store) Evictions() (total, perName uint64) {
	return s.evicted.Load(), s.capHits.Load()
}

// All yields the entries that have not expired, those of name only
// unless it is empty, in no particular order, as List does but a shard at
// a time: it holds one shard's read lock while it copies that shard's
// entries, none while it yields, so a caller that pages through a million
// entries (see [Page]) holds up no Publish for long and never holds them
// all. A name's entries are one lookup away, not a walk of the store.
func (s *Store) All(name dnsname.Name) iter.Seq[Entry] {
	return func(yield func(Entry) bool) {
		var buf []Entry
		for i := range s.shards {
			sh := &s.shards[i]
			if name != "" {
				sh = s.shard(name)
			}
			cut := s.now().Unix()
			buf = buf[:0]
			sh.mu.RLock()
			for n, recs := range sh.names {
				if name != "" {
					if n, recs = name, sh.names[name]; recs == nil {
						break
					}
				}
				for j := range recs {
					r := &recs[j]
					if exp := atomic.LoadInt64(&r.exp); exp > cut {
						rg := r.rg.Value()
						buf = append(buf, Entry{Name: n, Rule: rg.rule, Group: rg.group, Addr: r.addr.Addr(), Expires: time.Unix(exp, 0).UTC()})
					}
				}
				if name != "" {
					break
				}
			}
			sh.mu.RUnlock()
			for _, e := range buf {
				if !yield(e) {
					return
				}
			}
			if name != "" {
				return
			}
		}
	}
}
