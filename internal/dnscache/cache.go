// Package dnscache is a bounded, sharded cache of DNS responses that keeps
// each for its TTL, negative answers for their SOA's (RFC 2308).
//
// A response is kept packed, compressed, as the few hundred bytes it is on
// the wire, not as a dns.Msg (records as Go values, an allocation per
// record, address and name: about three times the memory); Get unpacks it.
// The bytes are the cache's own, packed by Put, but Get treats them as it
// would any message: one it cannot unpack is a miss, and is dropped.
package dnscache

import (
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// Key identifies a cached response: the question with its name lower-cased,
// and the DO and CD bits, because a DNSSEC-aware client or one that asked
// the upstream not to validate gets a different answer than others.
type Key struct {
	name   string
	qtype  uint16
	qclass uint16
	do, cd bool
}

// KeyOf returns the key of query q, or false if q does not have exactly one
// question.
func KeyOf(q *dns.Msg) (Key, bool) {
	if len(q.Question) != 1 {
		return Key{}, false
	}
	k := Key{
		name:   lowerASCII(q.Question[0].Name),
		qtype:  q.Question[0].Qtype,
		qclass: q.Question[0].Qclass,
		cd:     q.CheckingDisabled,
	}
	if opt := q.IsEdns0(); opt != nil {
		k.do = opt.Do()
	}
	return k, true
}

// MakeKey returns the key of a question for name, which must be in lower
// case, as KeyOf would make it.
func MakeKey(name string, qtype uint16, do, cd bool) Key {
	return Key{name: name, qtype: qtype, qclass: dns.ClassINET, do: do, cd: cd}
}

func (k Key) String() string {
	s := k.name + " " + dns.ClassToString[k.qclass] + " " + dns.TypeToString[k.qtype]
	if k.do {
		s += " +do"
	}
	if k.cd {
		s += " +cd"
	}
	return s
}

// numShards spreads lock contention; a power of two so a mask picks one.
const numShards = 16

// Config configures a Cache.
type Config struct {
	// MaxEntries bounds the number of responses held. If zero, 10000.
	MaxEntries int
	// MaxTTL bounds how long a response is kept, whatever its TTL. The TTLs
	// handed out are the upstream's, less the time in cache. If zero, 1h.
	MaxTTL time.Duration
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
}

// Cache holds DNS responses. It is safe for concurrent use.
type Cache struct {
	now    func() time.Time
	maxTTL time.Duration
	seed   maphash.Seed
	shards [numShards]shard
}

type shard struct {
	mu    sync.RWMutex // guards items
	items map[Key]*Entry
	max   int
}

// Entry is one cached response, packed; its wire is never modified after
// Put (Get unpacks a new message from it). Callers may keep with it a form
// derived from the response (the DNS firewall keeps its reply ready to
// send), which lives and dies with the entry: a Put for the same key, an
// expiry or an eviction drops both.
type Entry struct {
	wire     []byte // the response as Put stored it, compressed
	tag      uint8  // PutTagged's
	compress bool   // the response's Compress, which packing does not keep
	stored   time.Time
	life     time.Duration // from stored until the entry expires
	derived  atomic.Pointer[any]
}

// Stored returns when the response was cached: Get lowers its TTLs by the
// whole seconds since.
func (e *Entry) Stored() time.Time { return e.stored }

// Expires returns when the entry stops being served.
func (e *Entry) Expires() time.Time { return e.stored.Add(e.life) }

// Tag returns the tag the response was stored with (PutTagged); 0 for
// Put and PutEntry.
func (e *Entry) Tag() uint8 { return e.tag }

// Derived returns what SetDerived last stored, or nil.
func (e *Entry) Derived() any {
	if p := e.derived.Load(); p != nil {
		return *p
	}
	return nil
}

// SetDerived keeps v with the entry, replacing what was kept before.
func (e *Entry) SetDerived(v any) { e.derived.Store(&v) }

// New returns an empty cache.
func New(cfg Config) *Cache {
	c := &Cache{now: cfg.Now, maxTTL: cfg.MaxTTL, seed: maphash.MakeSeed()}
	if c.now == nil {
		c.now = time.Now
	}
	if c.maxTTL <= 0 {
		c.maxTTL = time.Hour
	}
	maxEntries := cfg.MaxEntries
	if maxEntries <= 0 {
		maxEntries = 10000
	}
	perShard := max(1, (maxEntries+numShards-1)/numShards)
	for i := range c.shards {
		c.shards[i] = shard{items: make(map[Key]*Entry), max: perShard}
	}
	return c
}

func (c *Cache) shard(k Key) *shard {
	return &c.shards[maphash.String(c.seed, k.name)&(numShards-1)]
}

// Put caches resp, the answer to the query with key k, and reports whether
// it did. Only NOERROR and NXDOMAIN answers to k's question that are not
// truncated are cached: positive ones for the smallest TTL among their
// records, negative ones (NXDOMAIN, or NOERROR without answers) for
// min(SOA TTL, SOA MINIMUM) and only if they carry a SOA, as RFC 2308 asks.
// resp is packed, not kept; the caller may keep using it.
func (c *Cache) Put(k Key, resp *dns.Msg) bool {
	return c.PutEntry(k, resp) != nil
}

// PutEntry is Put, returning the entry made, or nil if resp was not
// cached.
func (c *Cache) PutEntry(k Key, resp *dns.Msg) *Entry {
	return c.PutTagged(k, resp, 0)
}

// PutTagged is PutEntry, keeping tag with the entry for Entry.Tag: a
// small fact about the response that is not in it (the DNS firewall keeps
// its DNSSEC verdict), which lives and dies with the entry.
func (c *Cache) PutTagged(k Key, resp *dns.Msg, tag uint8) *Entry {
	if resp == nil || resp.Truncated || len(resp.Question) != 1 {
		return nil
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil
	}
	q := resp.Question[0]
	if q.Qtype != k.qtype || q.Qclass != k.qclass || !dnsname.EqualFold(q.Name, k.name) {
		return nil
	}
	ttl, ok := cacheTTL(resp)
	if !ok || ttl == 0 {
		return nil
	}
	life := min(time.Duration(ttl)*time.Second, c.maxTTL)

	wire, ok := pack(resp)
	if !ok {
		return nil
	}
	now := c.now()
	e := &Entry{wire: wire, tag: tag, compress: resp.Compress, stored: now, life: life}

	s := c.shard(k)
	s.mu.Lock()
	if _, exists := s.items[k]; !exists && len(s.items) >= s.max {
		s.evictLocked(now)
	}
	s.items[k] = e
	s.mu.Unlock()
	return e
}

// maxTTL is the largest TTL RFC 2181 allows.
const maxTTL = 1<<31 - 1

// cacheTTL returns how long resp may be cached, in seconds: the smallest
// TTL among its records, a SOA counting as min(TTL, MINIMUM). It reports
// false for a negative answer without a SOA, which must not be cached.
func cacheTTL(resp *dns.Msg) (uint32, bool) {
	ttl := uint32(1<<32 - 1)
	hasSOA := false
	for _, sec := range [][]dns.RR{resp.Answer, resp.Ns, resp.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue // its TTL field holds flags
			}
			t := h.Ttl
			if t > maxTTL {
				t = 0 // RFC 2181 section 8: a TTL with the top bit set means 0
			}
			if soa, ok := rr.(*dns.SOA); ok {
				hasSOA = true
				t = min(t, soa.Minttl)
			}
			ttl = min(ttl, t)
		}
	}
	negative := resp.Rcode == dns.RcodeNameError || len(resp.Answer) == 0
	if negative && !hasSOA {
		return 0, false
	}
	return ttl, true
}

// pack returns resp as the cache keeps it, packed with compression, or
// false if it does not pack: its ID 0, each SOA's TTL lowered to its
// MINIMUM, so clients cache a negative answer no longer than we do (RFC
// 2308 section 5), and its OPT record without options (cookies, padding,
// NSID belong to one exchange with the upstream, not to every client
// served from cache). resp is not modified: what changes is copied.
func pack(resp *dns.Msg) ([]byte, bool) {
	m := *resp // shallow: Pack only reads, but for the OPT record, copied below
	m.Id = 0
	m.Compress = true
	m.Ns = clampSOA(resp.Ns)
	// The OPT record is the last one in the additional section, as
	// dns.Msg.IsEdns0 finds it; Pack writes the extended rcode into it.
	for i := len(resp.Extra) - 1; i >= 0; i-- {
		if resp.Extra[i].Header().Rrtype != dns.TypeOPT {
			continue
		}
		opt, ok := resp.Extra[i].(*dns.OPT)
		if !ok {
			return nil, false
		}
		o := *opt
		o.Option = nil
		m.Extra = slices.Clone(resp.Extra)
		m.Extra[i] = &o
		break
	}
	wire, err := m.Pack()
	if err != nil {
		return nil, false
	}
	return slices.Clip(slices.Clone(wire)), true // Pack's buffer has room for the uncompressed message
}

// clampSOA returns rrs with each SOA's TTL lowered to its MINIMUM, the
// SOAs it changes copied.
func clampSOA(rrs []dns.RR) []dns.RR {
	out, copied := rrs, false
	for i, rr := range rrs {
		if soa, ok := rr.(*dns.SOA); ok && soa.Minttl < soa.Hdr.Ttl {
			if !copied {
				out, copied = slices.Clone(rrs), true
			}
			c := *soa
			c.Hdr.Ttl = c.Minttl
			out[i] = &c
		}
	}
	return out
}

// evictSample is how many entries an eviction looks at. Sampling keeps
// eviction O(1) without the per-Get bookkeeping an LRU list would need.
const evictSample = 8

// evictLocked removes one entry: an expired one if the sample holds one,
// else the one closest to expiry, whose loss costs the least.
func (s *shard) evictLocked(now time.Time) {
	var victim Key
	var soonest time.Time
	n := 0
	for k, e := range s.items { // map iteration starts at a random place
		expires := e.Expires()
		if !expires.After(now) {
			victim = k
			break
		}
		if n == 0 || expires.Before(soonest) {
			victim, soonest = k, expires
		}
		if n++; n == evictSample {
			break
		}
	}
	delete(s.items, victim)
}

// Get returns the response cached for k, unpacked anew, with every TTL lowered
// by the whole seconds it spent in cache (never below 1), or false. The
// message's ID is 0 and its question is as first cached: the caller sets its
// client's ID and question, in the client's case.
func (c *Cache) Get(k Key) (*dns.Msg, bool) {
	m, e, _ := c.GetEntry(k)
	return m, e != nil
}

// Lookup returns the unexpired entry cached for k, or nil, without
// unpacking its response: for callers that serve a form derived from it. k is not
// retained, so its name may alias a buffer the caller reuses.
func (c *Cache) Lookup(k Key, now time.Time) *Entry {
	s := c.shard(k)
	s.mu.RLock()
	e := s.items[k]
	s.mu.RUnlock()
	if e == nil || !e.Expires().After(now) {
		return nil
	}
	return e
}

// GetEntry is Get, also returning the entry the message was unpacked from (nil
// when nothing is cached for k) and the seconds its TTLs were lowered by.
func (c *Cache) GetEntry(k Key) (*dns.Msg, *Entry, uint32) {
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.items[k]
	s.mu.RUnlock()
	if !ok {
		return nil, nil, 0
	}
	now := c.now()
	if !e.Expires().After(now) {
		s.drop(k, e)
		return nil, nil, 0
	}
	m := new(dns.Msg)
	if err := m.Unpack(e.wire); err != nil {
		// Put packed what it could, and miekg/dns unpacks what it
		// packs; should it not, the entry is of no use: a miss.
		s.drop(k, e)
		return nil, nil, 0
	}
	m.Compress = e.compress
	// Every TTL is at least the entry's lifetime in seconds, and less than
	// that has elapsed, so none reaches 0.
	elapsed := uint32(max(0, now.Sub(e.stored)/time.Second))
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl -= elapsed
			}
		}
	}
	return m, e, elapsed
}

// drop removes e, if it is still the entry for k.
func (s *shard) drop(k Key, e *Entry) {
	s.mu.Lock()
	if s.items[k] == e {
		delete(s.items, k)
	}
	s.mu.Unlock()
}

// Len returns the number of responses held, expired ones not yet evicted
// included.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.items)
		s.mu.RUnlock()
	}
	return n
}

// Flush empties the cache, for a reload that changed upstreams, and
// lets go of the memory its maps had grown to.
func (c *Cache) Flush() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.items = make(map[Key]*Entry)
		s.mu.Unlock()
	}
}

// lowerASCII lower-cases the ASCII letters of a name, as DNS compares
// them; strings.ToLower would also fold Unicode and merge distinct names.
// It does not allocate when s is already lower case, as most names are.
func lowerASCII(s string) string {
	i := 0
	for i < len(s) && !('A' <= s[i] && s[i] <= 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if 'A' <= b[i] && b[i] <= 'Z' {
			b[i] += 'a' - 'A'
		}
	}
	return string(b)
}
