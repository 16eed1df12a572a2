package dnsfw

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// The fast path answers a repeated UDP query from the cache without
// unpacking it, copying a dns.Msg, packing a reply or publishing again:
// the reply was packed when the ordinary path last answered the question
// (under the same policy) and is kept with the cache entry as a ready;
// serving it is a copy with the client's ID, flags, question (in its
// case) and the TTLs lowered by the time since. It decides nothing of its
// own: every query it reads is admitted by admit, and a ready goes out
// only when release says it may go as it is (admit.go), the functions the
// ordinary path decides with. So:
//
//   - the policy decides every query, before the cache is looked at, under
//     the policy in force: a ready made under another policy is not used;
//   - what inspecting the answer removed stays removed: the ready is the
//     inspected answer, and with dns.inspect_cname the chain is decided
//     again for this client;
//   - addresses are enforceable before the reply leaves: a ready remembers,
//     per rule and source group, until when its addresses were published,
//     and the publisher's count of entries it dropped early then; a query
//     that needs a later expiry, or comes after the publisher dropped
//     anything, takes the ordinary path, which publishes;
//   - every query is rate limited, counted and audited as the ordinary
//     path does.
//
// Everything else (refusals, TCP, audit mode, rules with tls.verify,
// answers that need truncating, queries of any unusual shape) takes the
// ordinary path; a query the fast path admitted is handed over with its
// admission, so it is admitted (and rate limited) once.

// ready is a reply ready to send, derived from one cache entry under one
// policy.
type ready struct {
	// epoch is the policy's (Firewall.epoch): a number, not the policy,
	// so that readies do not keep replaced policies alive.
	epoch uint64
	// wire is the reply packed without OPT; its header's ID and flags and
	// its question are the first client's, replaced per query. Its TTLs
	// are as of base.
	wire    []byte
	qlen    int // length of the question section
	ttlOffs []uint16
	base    time.Time
	expires time.Time // base plus the smallest TTL: made again after
	ad      bool      // the upstream's AD bit
	addrs   []learnedAddr
	answers string   // the audit line's answers
	chain   []string // CNAME targets from the question name
	pubs    atomic.Pointer[[]published]
}

// published records one publication of a ready's addresses.
type published struct {
	rule  string // its name
	group string
	until time.Time // every address is enforceable at least until
	drops uint64    // the publisher's Dropped() before publishing
}

// DropCounter is implemented by Publishers that can say how many entries
// they removed before the expiry they were given (to respect a bound, or
// because the kernel lost them). A cache hit whose addresses were
// published before, to expiries still ahead, skips publishing only if
// this count has not moved since; with a Publisher that does not
// implement it, every answer is published.
type DropCounter interface {
	Dropped() uint64
}

func (f *Firewall) dropped() (uint64, bool) {
	if f.drops == nil {
		return 0, false
	}
	return f.drops.Dropped(), true
}

// makeReady keeps m, the inspected answer about to become the reply (its
// header still the upstream's), with the cache entry it came from, for the
// fast path; or, when one is kept already for this policy, adds the
// publication just made (x.published) to it.
func (f *Firewall) makeReady(p *policy.Policy, m *dns.Msg, x *exchange) {
	if x.centry == nil || !x.published || p.Mode != policy.Enforce || m.Rcode != dns.RcodeSuccess ||
		len(m.Answer) == 0 || len(m.Extra) != 0 || x.note != "" || x.in.capped > 0 || len(x.unverified) > 0 {
		return
	}
	pub := published{rule: x.allow.Rule.Name, group: x.allow.Group, until: x.pubUntil, drops: x.pubDrops}
	epoch := x.epoch // taken before the answer was inspected
	if r, ok := x.centry.Derived().(*ready); ok && r.epoch == epoch && f.now().Before(r.expires) {
		r.addPublished(pub)
		return
	}
	// Packed as the ordinary path packs replies, uncompressed: a pointer
	// to the question would give the answer's names each client's case.
	wire, err := m.Pack()
	if err != nil || len(wire) > maxUDPReply {
		return
	}
	offs, ok := ttlOffsets(wire, nil)
	if !ok {
		return
	}
	minTTL := uint32(maxTTLValue)
	for _, o := range offs {
		minTTL = min(minTTL, binary.BigEndian.Uint32(wire[o:]))
	}
	if minTTL == 0 || minTTL > maxTTLValue {
		return
	}
	qend := skipName(wire, dnsHeaderSize)
	if qend < 0 {
		return
	}
	base := x.centry.Stored().Add(time.Duration(x.celapsed) * time.Second)
	expires := base.Add(time.Duration(minTTL) * time.Second)
	if x.centry.Expires().Before(expires) {
		expires = x.centry.Expires()
	}
	r := &ready{
		epoch:   epoch,
		wire:    wire,
		qlen:    qend + 4 - dnsHeaderSize,
		ttlOffs: offs,
		base:    base,
		expires: expires,
		ad:      m.AuthenticatedData,
		addrs:   append([]learnedAddr(nil), x.in.addrs...),
		answers: addrList(x.in.addrs, dns.RcodeSuccess),
	}
	for _, rr := range m.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			r.chain = append(r.chain, c.Target)
		}
	}
	r.addPublished(pub)
	x.centry.SetDerived(r)
}

// publishSlack is how much later than its publication an answer from a
// ready may need its addresses without publishing again. TTLs count whole
// seconds: a record cached at t with TTL n lives until t+n, but its TTL
// reads n-k from t+k to t+k+1, so an answer's expiry computed from it
// (now + TTL) runs up to a second ahead of t+n, and would otherwise ask for
// a publication in most seconds although nothing changed. The nftables
// backend programs every element a second past its expiry (refreshSlack)
// for the same reason.
const publishSlack = time.Second

// policyEpoch numbers a policy, with the host's addresses it is applied
// to, for readies.
type policyEpoch struct {
	p    *policy.Policy
	host uint64 // the version of Config.Local
	n    uint64
}

// epoch returns the number of policy p as applied to the host's addresses
// now: the same for as long as p is the policy in force and the host's
// addresses do not change, a new one whenever either does (a reload, an
// address added or removed; or, briefly, a query still running under the
// policy before). A number is never given to two policies, or to two sets
// of host addresses, so a ready made under one is never used under
// another: an answer inspected before an address became the host's own
// is inspected again.
func (f *Firewall) epoch(p *policy.Policy) uint64 {
	var host uint64
	if f.local != nil {
		host = f.local.Version()
	}
	for {
		e := f.polEpoch.Load()
		if e != nil && e.p == p && e.host == host {
			return e.n
		}
		next := &policyEpoch{p: p, host: host, n: 1}
		if e != nil {
			next.n = e.n + 1
		}
		if f.polEpoch.CompareAndSwap(e, next) {
			return next.n
		}
	}
}

// maxTTLValue is the largest TTL RFC 2181 allows.
const maxTTLValue = 1<<31 - 1

// addPublished records pub, replacing an earlier one for its rule and
// group.
func (r *ready) addPublished(pub published) {
	for {
		old := r.pubs.Load()
		var next []published
		if old != nil {
			next = make([]published, 0, len(*old)+1)
			for _, o := range *old {
				if o.rule != pub.rule || o.group != pub.group {
					next = append(next, o)
				}
			}
		}
		next = append(next, pub)
		if r.pubs.CompareAndSwap(old, &next) {
			return
		}
	}
}

// publishedUntil returns until when r's addresses were published for rule
// and group, if the publisher has dropped nothing since.
func (r *ready) publishedUntil(rule, group string, drops uint64) (time.Time, bool) {
	pubs := r.pubs.Load()
	if pubs == nil {
		return time.Time{}, false
	}
	for _, p := range *pubs {
		if p.rule == rule && p.group == group {
			return p.until, p.drops == drops
		}
	}
	return time.Time{}, false
}

// fastQuery is the fast path's state for one socket's reader.
type fastQuery struct {
	q   wireQuery
	out [maxUDPReply]byte
	// adm is the admission of the last query serveFast declined, when it
	// made one (admitted): the ordinary path carries on from it.
	adm      admission
	admitted bool
}

// serveFast answers the query in b from src through w and reports whether
// it did. If not, nothing was sent, and the caller takes the ordinary
// path, handing it fq's admission when fq.admitted is set: the query was
// then admitted (and rate limited, and counted if refused for load)
// already, and must not be again.
func (f *Firewall) serveFast(ctx context.Context, fq *fastQuery, b []byte, src netip.AddrPort, w replyWriter) bool {
	fq.admitted = false
	if f.wcache == nil {
		return false
	}
	q := &fq.q
	if !q.parse(b) {
		return false
	}
	p := f.policy()
	if !p.DNS.Cache {
		return false // no ready to send: the ordinary path admits the query
	}
	now := f.now()
	lower := unsafe.String(unsafe.SliceData(q.lower), len(q.lower))
	a := &fq.adm
	f.admit(a, p, src.Addr(), lower, q.qtype, now)
	fq.admitted = true
	if a.refusal != admitted || a.dec.Action != policy.Allow {
		return false // the ordinary path writes the refusal
	}
	if a.zone != nil {
		return false // forwarded answers are relayed, never kept ready
	}
	validate := validating(p, a.zone)
	e := f.wcache.Lookup(cacheKey(validate, lower, q.qtype, q.do, q.cd), now)
	if e == nil || !usableEntry(validate, e.Tag()) || tagInfo(e.Tag()) != 0 {
		return false // no entry; or one whose reply carries an EDE, which the ordinary path sends
	}
	r, ok := e.Derived().(*ready)
	if !ok || r.epoch != f.epoch(p) || !now.Before(r.expires) || len(q.question) != r.qlen {
		return false
	}
	age := uint32(max(0, now.Sub(r.base)/time.Second))
	if f.release(p, src.Addr(), a.allow, r.chain, tagState(e.Tag()), &publication{r: r, age: age}, now) != (release{}) {
		return false // the ordinary path denies, verifies or publishes
	}

	limit := dns.MinMsgSize
	n := len(r.wire)
	if q.edns {
		limit = min(max(limit, int(q.size)), maxUDPReply)
		n += 11
	}
	if n > limit {
		return false // the ordinary path truncates
	}

	out := fq.out[:n]
	copy(out, r.wire)
	binary.BigEndian.PutUint16(out[0:], q.id)
	bits := uint16(1<<15 | 1<<7) // QR, RA; opcode QUERY, rcode NOERROR
	if q.rd {
		bits |= 1 << 8
	}
	if r.ad && (q.do || q.ad) {
		bits |= 1 << 5
	}
	if q.cd {
		bits |= 1 << 4
	}
	binary.BigEndian.PutUint16(out[2:], bits)
	copy(out[dnsHeaderSize:], q.question)
	for _, o := range r.ttlOffs {
		ttl := binary.BigEndian.Uint32(r.wire[o:])
		binary.BigEndian.PutUint32(out[o:], ttl-min(age, ttl))
	}
	if q.edns {
		binary.BigEndian.PutUint16(out[10:], 1)
		opt := out[len(r.wire):]
		opt[0] = 0 // root
		binary.BigEndian.PutUint16(opt[1:], dns.TypeOPT)
		binary.BigEndian.PutUint16(opt[3:], q.size)
		binary.BigEndian.PutUint32(opt[5:], 0) // rcode, version, flags
		if q.do {
			opt[7] = 0x80
		}
		binary.BigEndian.PutUint16(opt[9:], 0)
	}
	f.fastHits.Add(1) // before the reply, which tests wait for
	if _, err := w.Write(out); err != nil {
		f.log.Debug("writing DNS reply", "client", src.String(), "error", err)
	}

	f.metrics.cacheHits.Inc()
	x := exchangePool.Get().(*exchange)
	x.reset()
	x.start, x.src = now, src
	x.decided, x.dec, x.allow = true, a.dec, a.allow
	x.cached = true
	x.validating, x.dnssec = validate, tagState(e.Tag())
	x.answers = r.answers
	name := q.name[:len(q.name)-1] // the audit line's names have no trailing dot
	f.recordQuestion(ctx, unsafe.String(unsafe.SliceData(name), len(name)), q.qtype, x, dns.RcodeSuccess)
	exchangePool.Put(x)
	return true
}
