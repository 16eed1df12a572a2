package dnsfw

import (
	"context"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
	"weak"

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
	// full is the reply packed without OPT and without compression; its
	// header's ID and flags and its question are the first client's,
	// replaced per query. Its TTLs are as of base.
	full form
	// compact is the same reply compressed, as the ordinary path packs it
	// when the uncompressed one does not fit the client's UDP size
	// (dns.Msg.Truncate): kept only when full is longer than
	// dns.MinMsgSize. Its question is in lower case, and it is sent only
	// for that very question: compression points answer names into the
	// question only where their spelling matches the question's exactly,
	// so the ordinary path's compressed bytes depend on the client's
	// spelling (a question in mixed case takes the ordinary path).
	compact *form
	base    time.Time
	// life is how long after base the ready is used (the smallest TTL,
	// or the entry's expiry if sooner): made again after.
	life time.Duration
	qlen uint16 // length of the question section (the reply fits maxUDPReply)
	ad   bool   // the upstream's AD bit
	// maxTTL is the largest TTL, as of base, of the addresses learned
	// from the reply: until when a publication must hold them.
	maxTTL  uint32
	answers string   // the audit line's answers
	chain   []string // CNAME targets from the question name
	pubs    atomic.Pointer[[]published]
}

// expires returns when r stops being used.
func (r *ready) expires() time.Time { return r.base.Add(r.life) }

// form is one packing of a ready's reply.
type form struct {
	wire    []byte
	ttlOffs []uint16 // where wire's TTLs are
}

// newForm returns wire as a form, or false if its records cannot be found.
func newForm(wire []byte) (form, bool) {
	offs, ok := ttlOffsets(wire, nil)
	return form{wire: wire, ttlOffs: offs}, ok
}

// fit returns the form of r to send to a client with room bytes for it
// (its UDP size less its OPT record), q's, or nil when neither fits and the
// ordinary path must truncate. The choice is dns.Msg.Truncate's, which
// the ordinary path makes: uncompressed if that fits, else compressed if
// that fits.
func (r *ready) fit(room int, q *wireQuery) *form {
	switch {
	case len(r.full.wire) <= room:
		return &r.full
	case r.compact != nil && len(r.compact.wire) <= room &&
		string(q.question) == string(r.compact.wire[dnsHeaderSize:dnsHeaderSize+int(r.qlen)]):
		return r.compact // packed against this very question, spelling included
	}
	return nil
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
// publication just made (x.published) to it. Only an answer from the
// cache makes a ready: an answer fresh from the upstream may never be
// asked for again within its TTL (a name asked once, a fill of many), and
// its ready would hold more than its entry does for nothing. The first
// cache hit makes it; the fast path serves the next.
func (f *Firewall) makeReady(p *policy.Policy, m *dns.Msg, x *exchange) {
	if x.centry == nil || !x.cached || !x.published || p.Mode != policy.Enforce || m.Rcode != dns.RcodeSuccess ||
		len(m.Answer) == 0 || len(m.Extra) != 0 || x.note != "" || x.in.capped > 0 || len(x.unverified) > 0 {
		return
	}
	pub := published{rule: x.allow.Rule.Name, group: x.allow.Group, until: x.pubUntil, drops: x.pubDrops}
	epoch := x.epoch // taken before the answer was inspected
	if r, ok := x.centry.Derived().(*ready); ok && r.epoch == epoch && f.now().Before(r.expires()) {
		r.addPublished(pub)
		return
	}
	// Packed as the ordinary path packs replies that fit, uncompressed: a
	// pointer to the question would give the answer's names each client's
	// case.
	wire, err := m.Pack()
	if err != nil || len(wire) > maxUDPReply || len(m.Question) != 1 {
		return
	}
	full, ok := newForm(wire)
	if !ok {
		return
	}
	minTTL := uint32(maxTTLValue)
	for _, o := range full.ttlOffs {
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
		full:    full,
		compact: compactForm(m, len(wire)),
		base:    base,
		life:    expires.Sub(base),
		qlen:    uint16(qend + 4 - dnsHeaderSize),
		ad:      m.AuthenticatedData,
		answers: addrList(x.in.addrs, dns.RcodeSuccess),
	}
	for _, a := range x.in.addrs {
		r.maxTTL = max(r.maxTTL, a.ttl)
	}
	for _, rr := range m.Answer {
		if c, ok := rr.(*dns.CNAME); ok {
			r.chain = append(r.chain, c.Target)
		}
	}
	r.addPublished(pub)
	x.centry.SetDerived(r)
}

// compactForm returns m, whose uncompressed length is n, packed with
// compression, as the ordinary path sends it to a client asking in lower
// case whose UDP size the uncompressed reply exceeds; or nil when the
// uncompressed one fits every client (dns.MinMsgSize) or the compressed
// one cannot be kept.
func compactForm(m *dns.Msg, n int) *form {
	if n <= dns.MinMsgSize {
		return nil
	}
	c := *m // shallow: Pack reads the records, never writes them
	q := m.Question[0]
	q.Name = strings.ToLower(q.Name)
	c.Question = []dns.Question{q}
	c.Compress = true
	wire, err := c.Pack()
	// Truncate decides by its count of the compressed length (Len), the
	// fast path by the bytes: keep them only if the two agree, so both
	// paths choose alike.
	if err != nil || len(wire) != c.Len() || len(wire) > maxUDPReply {
		return nil
	}
	fm, ok := newForm(slices.Clone(wire)) // Pack's buffer had room for the uncompressed reply
	if !ok {
		return nil
	}
	return &fm
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
// to, for readies. The policy is held weakly: the last one queried must
// not stay alive after a reload until the next query (a 100,000-rule
// policy is 50 MB); once collected it equals no policy in force.
type policyEpoch struct {
	p    weak.Pointer[policy.Policy]
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
		if e != nil && e.p.Value() == p && e.host == host {
			return e.n
		}
		next := &policyEpoch{p: weak.Make(p), host: host, n: 1}
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

// optLen is the length of the OPT record the fast path adds for a client
// that sent one: root owner, type, class, TTL and an empty RDATA.
const optLen = 11

// fastQuery is the fast path's state for one socket's reader.
type fastQuery struct {
	q   wireQuery
	out [maxUDPReply]byte
	// adm is the admission of the last query serveFast declined, when it
	// made one (admitted): the ordinary path carries on from it.
	adm      admission
	admitted bool
}

// take returns the admission of the query serveFast just declined, and
// whether it made one, for the ordinary path. fq keeps no pointer to the
// policy: a reader idle after a reload must not hold the old one.
func (fq *fastQuery) take() (admission, bool) {
	a := fq.adm
	fq.adm.pol = nil
	return a, fq.admitted
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
	if !ok || r.epoch != f.epoch(p) || !now.Before(r.expires()) || len(q.question) != int(r.qlen) {
		return false
	}
	age := uint32(max(0, now.Sub(r.base)/time.Second))
	if f.release(p, src.Addr(), a.allow, r.chain, tagState(e.Tag()), &publication{r: r, age: age}, now) != (release{}) {
		return false // the ordinary path denies, verifies or publishes
	}

	room, n := dns.MinMsgSize, 0
	if q.edns {
		room = min(max(room, int(q.size)), maxUDPReply) - optLen
		n = optLen
	}
	fm := r.fit(room, q)
	if fm == nil {
		return false // the ordinary path truncates
	}
	n += len(fm.wire)

	out := fq.out[:n]
	copy(out, fm.wire)
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
	for _, o := range fm.ttlOffs {
		ttl := binary.BigEndian.Uint32(fm.wire[o:])
		binary.BigEndian.PutUint32(out[o:], ttl-min(age, ttl))
	}
	if q.edns {
		binary.BigEndian.PutUint16(out[10:], 1)
		opt := out[len(fm.wire):]
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
	x := getExchange()
	x.start, x.src = now, src
	x.decided, x.dec, x.allow = true, a.dec, a.allow
	x.cached = true
	x.validating, x.dnssec = validate, tagState(e.Tag())
	x.answers = r.answers
	// Answered: fq keeps no pointer to the policy (see take).
	a.pol = nil
	name := q.name[:len(q.name)-1] // the audit line's names have no trailing dot
	f.recordQuestion(ctx, unsafe.String(unsafe.SliceData(name), len(name)), q.qtype, x, dns.RcodeSuccess)
	putExchange(x)
	return true
}
