package dnsfw

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/dnscache"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// upstreamUDPSize is the EDNS0 buffer size asked of upstreams: the DNS
// flag day 2020 value, which avoids IP fragmentation; larger answers come
// over TCP (the resolver retries on TC).
const upstreamUDPSize = 1232

// maxUDPReply bounds UDP replies whatever buffer size the client offers.
const maxUDPReply = 4096

// Notes explain an outcome the policy's Reason does not: they go into the
// audit line as dns_reason.
const (
	noteFormat     = "malformed query"
	noteBadVers    = "unsupported EDNS version"
	noteClass      = "query class is not IN"
	noteRateLimit  = "client over dns.rate_limit"
	noteQType      = "record type not in dns.qtypes"
	noteBusy       = "upstream queries over dns.max_inflight"
	noteUpstream   = "upstream failed"
	noteRebinding  = "every address in the answer is non-public or this host's own (rebinding protection)"
	noteCNAME      = "CNAME target not allowed (inspect_cname): "
	notePublish    = "publishing learned addresses failed"
	noteWouldRebnd = "non-public addresses would be removed (rebinding protection)"
	noteUnverified = "addresses failed tls.verify and were removed: "
	noteWouldVerif = "addresses failed tls.verify and would be removed: "
	noteNoVerified = "no address passed tls.verify: "
	noteBudget     = "client over dns.wildcard_budget: "
	noteTransfer   = "zone transfers are not forwarded"
	noteNoZone     = "no servers for forward zone "
	noteInsecure   = "answer is DNSSEC-insecure and the rule has dnssec: required"
	noteBogus      = "answer failed DNSSEC validation: "
)

// deniedNegTTL is the TTL, and the SOA minimum, of the SOA record in a
// denied NXDOMAIN: clients and their caches keep the denial this long
// (RFC 2308) rather than asking again at once, and a policy change that
// allows the name reaches them at most this late.
const deniedNegTTL = 60

// deniedSOAMname is the primary server named in denials' SOA records: a
// name that cannot exist (RFC 6761), so nothing mistakes it for a real one.
const deniedSOAMname = "fqdngate.invalid."

// handler serves one socket; ctx is the socket's Serve context.
type handler struct {
	f   *Firewall
	ctx context.Context
	tcp bool
}

func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if !h.f.fromInside(remoteAddr(w), addrPortOf(w.LocalAddr()).Addr(), h.tcp) {
		return // no reply
	}
	x := getExchange()
	x.start = h.f.now()
	x.src = remoteAddr(w)
	x.tcp = h.tcp
	h.f.serve(h.ctx, w, req, x)
	putExchange(x)
}

// exchange is one query's state, pooled so a query allocates only what it
// must.
type exchange struct {
	start   time.Time
	src     netip.AddrPort
	tcp     bool
	decided bool // dec is a policy decision
	// dec is the decision recorded: the policy's, or the refusal the
	// firewall made on top of it (refuse).
	dec policy.Decision
	// allow is the policy's decision when a rule allows the name for the
	// client; its Rule and Group are what the answer's addresses are
	// learned for, in audit mode too. Rule is nil otherwise.
	allow policy.Decision
	// quiet refusals are counted but not audited: load shedding must not
	// turn a flood into a flood of log lines.
	quiet      bool
	unverified []netip.Addr // addresses removed (or, in audit mode, not) for failing tls.verify
	note       string
	upstream   string
	cached     bool
	refresh    bool // RunRefresh's, not a client's
	in         inspection
	attrs      []slog.Attr
	// answers, when set, is the audit line's answers, made in advance.
	answers string
	// centry is the cache entry the answer came from (or went into), and
	// celapsed the whole seconds its TTLs were lowered by: where makeReady
	// keeps the reply for the fast path.
	centry   *dnscache.Entry
	celapsed uint32
	// published is set when the answer's addresses were published, with
	// the earliest expiry given and the publisher's drop count before.
	published bool
	pubUntil  time.Time
	pubDrops  uint64
	batch     []learn.Entry // publish's, reused
	// adm is the query's admission; handed is set when the fast path made
	// it and handed the query over, and the ordinary path carries on from
	// it instead of admitting the query again.
	adm    admission
	handed bool
	upq    [1]dns.Question // the question sent upstream
	// epoch is the policy's and host addresses' number (Firewall.epoch)
	// when the answer was inspected: the ready made from it carries it.
	epoch uint64
	// validating is set when the policy validates answers (dns.dnssec),
	// and dnssec is the answer's verdict; the audit line shows it.
	validating bool
	dnssec     validation
	// dnssecInfo is the informational EDE of an insecure answer (an
	// unsupported algorithm or digest), sent with it; 0: none.
	dnssecInfo uint16
	// ede, when edeSet, is the Extended DNS Error (RFC 8914) the reply
	// carries, with edeText.
	ede     uint16
	edeSet  bool
	edeText string
}

var exchangePool = sync.Pool{New: func() any { return new(exchange) }}

// getExchange takes an exchange from the pool, as new.
func getExchange() *exchange { return exchangePool.Get().(*exchange) }

// putExchange resets x and gives it back to the pool. Reset here rather
// than when taken: a pooled exchange must not hold the policy and rules
// of its last query, or a reload's collection could not free the policy
// it replaced.
func putExchange(x *exchange) {
	x.reset()
	exchangePool.Put(x)
}

func (x *exchange) reset() {
	in, attrs, unv, batch := x.in, x.attrs, x.unverified, x.batch
	in.reset()
	clear(attrs[:cap(attrs)])
	*x = exchange{in: in, attrs: attrs[:0], unverified: unv[:0], batch: batch[:0]}
}

func remoteAddr(w dns.ResponseWriter) netip.AddrPort {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(w.RemoteAddr().String())
	return ap
}

// replyWriter sends one reply: a dns.ResponseWriter over TCP, a udpReply
// over UDP.
type replyWriter interface {
	Write(b []byte) (int, error)
}

// serve answers req, audits and counts it: under the policy it was
// admitted under, when the fast path handed it over, else the policy in
// force.
func (f *Firewall) serve(ctx context.Context, w replyWriter, req *dns.Msg, x *exchange) {
	p := f.policy()
	if x.handed {
		p = x.adm.pol
	}
	m := f.answer(ctx, p, req, x)
	rcode := -1 // dropped
	if m != nil {
		rcode = f.write(w, req, m, x)
	}
	f.record(ctx, req, x, rcode)
}

// answer returns the reply to req, or nil to send none.
func (f *Firewall) answer(ctx context.Context, p *policy.Policy, req *dns.Msg, x *exchange) *dns.Msg {
	if len(req.Question) != 1 {
		x.note = noteFormat
		return reply(req, dns.RcodeFormatError)
	}
	if rc := checkEDNS(req); rc != dns.RcodeSuccess {
		x.note = noteFormat
		if rc == dns.RcodeBadVers {
			x.note = noteBadVers
		}
		return reply(req, rc)
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		x.note = noteClass
		return reply(req, dns.RcodeRefused)
	}
	if !x.handed {
		f.admit(&x.adm, p, x.src.Addr(), q.Name, q.Qtype, x.start)
	}
	a := &x.adm
	x.decided, x.dec, x.allow, x.note, x.quiet = true, a.dec, a.allow, a.note, a.quiet
	switch a.refusal {
	case refusedLoad, refusedQType:
		return reply(req, dns.RcodeRefused)
	case refusedPolicy:
		return denyReply(p, req)
	}

	opt := req.IsEdns0()
	do := opt != nil && opt.Do()
	m, err := f.resolve(ctx, p, req, do, false, x)
	if err != nil {
		if err == errOverBudget {
			return reply(req, dns.RcodeRefused) // admitUpstream noted why
		}
		if de, ok := err.(*dnssecError); ok {
			// Audit mode too: a forged answer is never released.
			x.note = noteBogus + de.res.String()
			x.dec = refuse(x.dec, policy.ReasonBogus, policy.Fail)
			x.ede, x.edeSet, x.edeText = de.res.EDE, true, de.res.Reason
			return reply(req, dns.RcodeServerFailure)
		}
		if f.isBusy(err) {
			x.note = noteBusy
			x.dec = refuse(x.dec, policy.ReasonBusy, policy.Fail)
			x.quiet = true
			f.metrics.refused.WithLabelValues("busy").Inc()
			return reply(req, dns.RcodeRefused)
		}
		x.note = noteUpstream + ": " + err.Error()
		x.dec = refuse(x.dec, policy.ReasonUpstream, policy.Fail)
		return reply(req, dns.RcodeServerFailure)
	}
	if m.Rcode == dns.RcodeServerFailure || m.Rcode == dns.RcodeRefused {
		// What the resolver returns when every upstream it tried failed
		// this way: relayed, but it is not the answer the rule allowed.
		x.note = noteUpstream + ": upstream answered " + rcodeString(m.Rcode)
		x.dec = refuse(x.dec, policy.ReasonUpstream, policy.Fail)
		return reply(req, m.Rcode)
	}
	if x.adm.zone != nil {
		// The zone's servers are the authority on its names: their
		// answer goes out as they gave it, and none of its addresses is
		// learned (published) or kept for the fast path.
		x.answers = relayedAddrs(m)
		return asReply(req, m, do)
	}

	if x.validating && !do {
		stripDNSSEC(m, q.Qtype) // asked for upstream, not by the client
	}
	x.epoch = f.epoch(p)
	inspect(p, f.classes, q.Name, m, &x.in)
	// The ordinary path publishes every answer it sends: what the fast path
	// may skip (rel.publish) it does anyway.
	rel := f.release(p, x.src.Addr(), x.allow, x.in.targets(), x.dnssec, nil, x.start)
	if rel.insecure {
		x.note = noteInsecure
		if p.Mode == policy.Enforce {
			x.dec = refuse(x.dec, policy.ReasonInsecure, policy.Deny)
			x.ede, x.edeSet, x.edeText = dns.ExtendedErrorCodeBlocked, true, "DNSSEC required; the answer is "+x.dnssec.String()
			return reply(req, dns.RcodeRefused)
		}
		x.dec = refuse(x.dec, policy.ReasonInsecure, policy.WouldDeny)
	}
	if rel.cname != "" {
		x.note = noteCNAME + rel.cname
		if rel.cnameDec.Action == policy.Deny {
			x.dec = refuse(x.dec, policy.ReasonCNAME, policy.Deny)
			return denyReply(p, req)
		}
		x.dec = refuse(x.dec, policy.ReasonCNAME, policy.WouldDeny)
	}
	if x.in.dropped > 0 && len(x.in.addrs) == 0 {
		x.note = noteRebinding
		x.dec = refuse(x.dec, policy.ReasonRebinding, policy.Deny)
		return reply(req, dns.RcodeServerFailure)
	}
	if x.in.wouldDrop > 0 && x.note == "" {
		x.note = noteWouldRebnd
	}
	if x.in.capped > 0 {
		f.metrics.capHits.Inc()
	}
	if rel.verify && len(x.in.addrs) > 0 {
		if !f.verifyAnswer(ctx, p, q.Name, m, x) {
			x.dec = refuse(x.dec, policy.ReasonVerify, policy.Deny)
			return reply(req, dns.RcodeServerFailure)
		}
	}
	// Audit mode publishes too, for names a rule allows: turning
	// enforcement on must not start from an empty learned set.
	if x.allow.Rule != nil && len(x.in.addrs) > 0 {
		drops, _ := f.dropped()
		now := f.now()
		if err := f.publish(ctx, p, q.Name, x.allow, x.in.addrs, x.learnedState(), now, &x.batch); err != nil {
			x.note = notePublish + ": " + err.Error()
			x.dec = refuse(x.dec, policy.ReasonPublish, policy.Fail)
			f.metrics.publishFailures.Inc()
			f.log.Warn("publishing learned addresses failed; answered SERVFAIL",
				"name", q.Name, "error", err)
			return reply(req, dns.RcodeServerFailure)
		}
		x.published, x.pubDrops = true, drops
		x.pubUntil = learnedExpiry(p, now, minAddrTTL(x.in.addrs))
	}
	if x.dnssecInfo != 0 && !x.edeSet {
		// For information: the answer is insecure because the zone uses
		// what this validator does not support. No ready is made of it:
		// the fast path's replies carry no EDE.
		x.ede, x.edeSet, x.edeText = x.dnssecInfo, true, "DNSSEC insecure: "+dns.ExtendedErrorCodeToString[x.dnssecInfo]
		return asReply(req, m, do)
	}
	f.makeReady(p, m, x)
	return asReply(req, m, do)
}

// asReply makes m, an upstream's answer to req's question, the reply to
// req: the client's own header and question, the upstream's answer.
func asReply(req, m *dns.Msg, do bool) *dns.Msg {
	m.Id = req.Id
	m.Opcode = dns.OpcodeQuery
	m.Question = req.Question
	m.Response = true
	m.Authoritative = false
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.CheckingDisabled = req.CheckingDisabled
	m.AuthenticatedData = m.AuthenticatedData && (do || req.AuthenticatedData)
	m.Zero = false
	return m
}

// resolve returns an answer to req's question that the caller owns: from
// the cache, if the policy has it on and it holds one and fresh is false,
// else from upstream (and then into the cache).
func (f *Firewall) resolve(ctx context.Context, p *policy.Policy, req *dns.Msg, do, fresh bool, x *exchange) (*dns.Msg, error) {
	var key dnscache.Key
	x.validating = validating(p, x.adm.zone)
	// Validated answers are cached with their verdict, which only the
	// dnscache.Cache keeps.
	useCache := p.DNS.Cache && f.cache != nil && (!x.validating || f.wcache != nil)
	if useCache {
		q := req.Question[0]
		key = cacheKey(x.validating, strings.ToLower(q.Name), q.Qtype, do, req.CheckingDisabled)
	}
	if useCache && !fresh {
		var (
			m  *dns.Msg
			ok bool
		)
		if f.wcache != nil {
			m, x.centry, x.celapsed = f.wcache.GetEntry(key)
			ok = x.centry != nil && usableEntry(x.validating, x.centry.Tag())
			if !ok {
				x.centry = nil
			}
		} else {
			m, ok = f.cache.Get(key)
		}
		if ok {
			f.metrics.cacheHits.Inc()
			x.cached = true
			if x.centry != nil {
				x.dnssec, x.dnssecInfo = tagState(x.centry.Tag()), tagInfo(x.centry.Tag())
			}
			return m, nil
		}
		f.metrics.cacheMisses.Inc()
	}
	// The question goes upstream in lower case: the case of a name the
	// client was charged for already (admitUpstream) must not carry
	// anything out either.
	x.upq[0] = req.Question[0]
	x.upq[0].Name = strings.ToLower(x.upq[0].Name)
	if !f.admitUpstream(x, x.upq[0].Name, x.start) {
		return nil, errOverBudget
	}
	up := new(dns.Msg)
	up.RecursionDesired = true
	up.CheckingDisabled = req.CheckingDisabled || x.validating
	up.Question = x.upq[:]
	up.SetEdns0(upstreamUDPSize, do || x.validating)
	// The Exchanger bounds its time (Exchanger): a timer per query here
	// cost 6% of the CPU of an uncached answer.
	var (
		m   *dns.Msg
		u   policy.Upstream
		err error
	)
	switch z := x.adm.zone; {
	case z == nil:
		m, u, err = f.exchanger.Exchange(ctx, up)
	case f.forwarder == nil:
		err = errors.New(noteNoZone + string(z.Zone))
	default:
		m, u, err = f.forwarder.Forward(ctx, z, up)
	}
	if u.Addr.IsValid() {
		x.upstream = u.String()
	}
	if err != nil {
		return nil, err
	}
	if x.validating && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError) {
		// Before anything keeps or uses the answer: a bogus one is an
		// error, never cached.
		if err := f.validate(ctx, p, up, m, x); err != nil {
			return nil, err
		}
	}
	if useCache {
		// Put copies m, which inspect is about to change.
		if f.wcache != nil {
			x.centry, x.celapsed = f.wcache.PutTagged(key, m, entryTag(x.dnssec, x.dnssecInfo)), 0
		} else {
			f.cache.Put(key, m)
		}
	}
	return m, nil
}

// publish hands addrs, learned for qname under d's rule and group, to the
// publisher and waits until it says they are enforceable.
func (f *Firewall) publish(ctx context.Context, p *policy.Policy, qname string, d policy.Decision, addrs []learnedAddr, state string, now time.Time, batchp *[]learn.Entry) error {
	name, err := dnsname.Parse(qname)
	if err != nil {
		return err // Decide allowed it, so this does not happen
	}
	// Publishers do not keep the batch (learn.Publisher): the exchange's
	// serves again.
	batch := (*batchp)[:0]
	for _, a := range addrs {
		batch = append(batch, learn.Entry{
			Name:    name,
			Rule:    d.Rule.Name,
			Group:   d.Group,
			Addr:    a.addr,
			Expires: learnedExpiry(p, now, a.ttl),
			DNSSEC:  state,
		})
	}
	err = f.publishBatch(ctx, batch)
	clear(batch) // holds no names or rules while pooled
	*batchp = batch[:0]
	return err
}

// publishBatch hands batch to the publisher, bounded by the publish
// timeout.
func (f *Firewall) publishBatch(ctx context.Context, batch []learn.Entry) error {
	if f.store != nil {
		// The in-memory store never blocks; spare it the timer.
		return f.store.Publish(ctx, batch)
	}
	ctx, cancel := context.WithTimeout(ctx, f.pubTimeout)
	defer cancel()
	return f.publisher.Publish(ctx, batch)
}

// write sends m to the client: with an OPT record if the query had one,
// within the client's UDP size (else truncated, so it retries over TCP).
// It returns the rcode sent.
func (f *Firewall) write(w replyWriter, req, m *dns.Msg, x *exchange) int {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(opt.UDPSize())
		o.SetDo(opt.Do())
		if x.edeSet {
			o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: x.ede, ExtraText: x.edeText})
		}
		m.Extra = append(m.Extra, o)
		// Within the client's size, but no larger than 4096 bytes: bigger
		// datagrams fragment, and fragments get lost (and spoofed).
		size = min(max(size, int(opt.UDPSize())), maxUDPReply)
	} else if m.Rcode > 0xF {
		// An extended rcode cannot be said without OPT.
		m.Rcode = dns.RcodeServerFailure
	}
	if x.tcp {
		size = dns.MaxMsgSize
	}
	m.Truncate(size)
	bp := f.bufs.get()
	b, err := m.PackBuffer(*bp)
	if err == nil {
		_, err = w.Write(b)
	}
	f.bufs.put(bp)
	if err != nil {
		f.log.Debug("writing DNS reply", "client", x.src.String(), "error", err)
	}
	return m.Rcode
}

// record writes the query's audit line and, for a client's query, counts
// it. groups are those a refresh published for.
func (f *Firewall) record(ctx context.Context, req *dns.Msg, x *exchange, rcode int, groups ...string) {
	var q dns.Question
	if len(req.Question) == 1 {
		q = req.Question[0]
	}
	f.recordQuestion(ctx, strings.TrimSuffix(q.Name, "."), q.Qtype, x, rcode, groups...)
}

// recordQuestion is record for a question given by its name (without the
// trailing dot) and type; name is not retained.
func (f *Firewall) recordQuestion(ctx context.Context, name string, qtype uint16, x *exchange, rcode int, groups ...string) {
	action := "none"
	if x.decided {
		action = x.dec.Action.String()
	}
	if !x.refresh {
		f.metrics.countQuery(action, qtype, rcode)
	}
	if f.audit == nil || !x.decided || x.quiet {
		// Only decisions are audited: a malformed, rate-limited or
		// over-bound flood must not become a flood of log lines. Metrics
		// count them.
		return
	}
	end := f.now()
	answers := x.answers
	if answers == "" {
		answers = addrList(x.in.addrs, rcode)
	}
	attrs := append(x.attrs[:0],
		slog.String("transport", transport(x)),
		slog.String("rcode", rcodeString(rcode)),
		slog.String("answers", answers),
		slog.String("upstream", upstreamLabel(x)),
		slog.Duration("latency", end.Sub(x.start)),
	)
	if x.dec.NearRule != nil {
		attrs = append(attrs, slog.String("near_rule", x.dec.NearRule.Name))
	}
	if z := x.adm.zone; z != nil {
		attrs = append(attrs, slog.String("zone", string(z.Zone)))
	}
	if len(groups) > 0 && groups[0] != "" {
		attrs = append(attrs, slog.String("groups", strings.Join(groups, ",")))
	}
	if len(x.unverified) > 0 {
		attrs = append(attrs, slog.String("unverified", joinAddrs(x.unverified)))
	}
	if x.validating {
		attrs = append(attrs, slog.String("dnssec", x.dnssec.String()))
	}
	if x.note != "" {
		attrs = append(attrs, slog.String("dns_reason", x.note))
	}
	x.attrs = attrs
	f.audit.Record(ctx, audit.Event{
		Component: audit.DNS,
		Source:    x.src.Addr(),
		Name:      name,
		QType:     typeString(qtype),
		Decision:  x.dec,
		Attrs:     attrs,
		Time:      end,
	})
}

// relayedAddrs lists the addresses of m's A and AAAA records, for the
// audit line of an answer relayed without inspection.
func relayedAddrs(m *dns.Msg) string {
	if m.Rcode != dns.RcodeSuccess {
		return ""
	}
	var b []byte
	for _, rr := range m.Answer {
		var a netip.Addr
		switch r := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(r.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(r.AAAA)
		}
		if !a.IsValid() {
			continue
		}
		if len(b) > 0 {
			b = append(b, ' ')
		}
		b = a.AppendTo(b)
	}
	return string(b)
}

// minAddrTTL returns the smallest TTL among addrs.
func minAddrTTL(addrs []learnedAddr) uint32 {
	ttl := uint32(maxTTLValue)
	for _, a := range addrs {
		ttl = min(ttl, a.ttl)
	}
	return ttl
}

func upstreamLabel(x *exchange) string {
	if x.cached {
		return "cache"
	}
	return x.upstream
}

func addrList(addrs []learnedAddr, rcode int) string {
	if rcode != dns.RcodeSuccess || len(addrs) == 0 {
		return ""
	}
	var b []byte
	for i, a := range addrs {
		if i > 0 {
			b = append(b, ' ')
		}
		b = a.addr.AppendTo(b)
	}
	return string(b)
}

func transport(x *exchange) string {
	switch {
	case x.refresh:
		return "refresh"
	case x.tcp:
		return "tcp"
	}
	return "udp"
}

func rcodeString(rc int) string {
	if rc < 0 {
		return "dropped"
	}
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + itoa(rc)
}

func typeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return "TYPE" + itoa(int(t))
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return string(b[i:])
}

// checkEDNS returns the rcode for req's EDNS: FORMERR for more than one OPT
// record, BADVERS for a version other than 0 (RFC 6891 6.1.1, 6.1.3).
func checkEDNS(req *dns.Msg) int {
	var opt *dns.OPT
	for _, rr := range req.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			if opt != nil {
				return dns.RcodeFormatError
			}
			opt = o
		}
	}
	if opt != nil && opt.Version() != 0 {
		return dns.RcodeBadVers
	}
	return dns.RcodeSuccess
}

func typeAllowed(p *policy.Policy, t uint16) bool { return p.TypeAllowed(t) }

// refuse returns the decision for a refusal the firewall made on top of d
// for reason r, with action a (Deny; WouldDeny for what audit mode lets
// through; Fail when the firewall could not carry out what was allowed). A
// decision already refused or failed keeps its own reason, and so does a
// would-deny that is only noted again; a would-deny that was then answered
// with a refusal or a failure takes a and r. Rule is always cleared: the audit
// line's rule is empty on a refusal, so nothing mistakes it for
// permission; the rule that named the destination becomes NearRule
// (near_rule in the line), so an assessor sees which rule named it and why
// it was still refused.
func refuse(d policy.Decision, r policy.Reason, a policy.Action) policy.Decision {
	if d.Action == policy.Deny || d.Action == policy.Fail || d.Action == policy.WouldDeny && a == policy.WouldDeny {
		return d
	}
	near := d.Rule
	if near == nil {
		near = d.NearRule
	}
	return policy.Decision{Action: a, Reason: r, Pattern: d.Pattern, Group: d.Group, NearRule: near}
}

// denyReply answers a denied query as dns.deny_with says; nil means drop.
// An NXDOMAIN carries an SOA, so that clients cache the denial (RFC 2308)
// instead of asking again at once.
func denyReply(p *policy.Policy, req *dns.Msg) *dns.Msg {
	switch p.DNS.DenyWith {
	case policy.DenyRefused:
		return reply(req, dns.RcodeRefused)
	case policy.DenyDrop:
		return nil
	}
	m := reply(req, dns.RcodeNameError)
	if len(req.Question) == 1 {
		m.Ns = []dns.RR{deniedSOA(req.Question[0].Name)}
	}
	return m
}

// deniedSOA is the SOA of a denied name's NXDOMAIN: the name as its own
// zone, so it is an ancestor-or-self of the question as resolvers expect,
// with the negative-caching TTL deniedNegTTL.
func deniedSOA(name string) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: deniedNegTTL},
		Ns:      deniedSOAMname,
		Mbox:    "hostmaster." + deniedSOAMname,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  deniedNegTTL,
	}
}

// reply returns an empty reply to req with rcode.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.CheckingDisabled = req.CheckingDisabled
	m.Rcode = rcode
	m.Question = req.Question
	return m
}

// maxPooledBuf bounds the pack buffers kept for reuse; TCP answers can be
// 64 KiB, and one such answer should not pin that much per pooled buffer.
const maxPooledBuf = 4096

type bufPool struct{ p sync.Pool }

func (b *bufPool) get() *[]byte {
	if bp, ok := b.p.Get().(*[]byte); ok {
		return bp
	}
	// PackBuffer needs the length, not just the capacity.
	buf := make([]byte, maxPooledBuf)
	return &buf
}

func (b *bufPool) put(bp *[]byte) { b.p.Put(bp) }
