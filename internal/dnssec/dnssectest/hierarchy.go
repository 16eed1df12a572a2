package dnssectest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Hierarchy is the signed test hierarchy, served by one loopback
// authoritative server per zone once started.
type Hierarchy struct {
	Zones map[string]*Zone
	Addrs map[string]string // name server host name → 127.0.0.1:port
	// Anchor is the trust anchor of the test root: its KSK's DS record in
	// presentation format, as a trust anchor file holds it.
	Anchor  string
	servers []*dns.Server
}

// The zones, their algorithms and denial methods:
//
//	.                  RSASHA256        NSEC
//	example.           ECDSAP256SHA256  NSEC
//	bank.example.      ED25519          NSEC3 opt-out
//	p384.example.      ECDSAP384SHA384  NSEC3
//	rsa512.example.    RSASHA512        NSEC
//	roll.example.      two KSKs, DS for the new one, data signed by the old
//	badds.example.     signed, the DS in example. matches no key
//	unsupalg.example.  signed, the DS in example. names algorithm 253
//	sub.p384.example.  ECDSAP256SHA256  NSEC, below an NSEC3 parent
//	revoked.example.   its only KSK has the REVOKE bit; the DS matches it
//	sha1ds.example.    ED25519, only a SHA-1 DS
//	mixedds.example.   ED25519, a right SHA-1 DS and a wrong SHA-256 DS
//	unsigned.example.  unsigned, no DS (NSEC proof in example.)
//	shop.bank.example. unsigned, no DS (NSEC3 opt-out in bank.example.)
//
// Build makes the hierarchy with signatures valid from an hour before now
// to a day after (except the deliberately expired and future ones).
func Build(now time.Time) (h *Hierarchy, err error) { return BuildWithNames(now, 0) }

// BuildWithNames is Build with one more zone, bench.example.
// (ECDSAP256SHA256, NSEC, delegated from example. with a DS), holding n
// names n0.bench.example. … n<n-1>.bench.example., each with its own
// signed A record in 198.51.100.0/24: distinct names whose answers need a
// signature verified each, for benchmarks.
func BuildWithNames(now time.Time, n int) (h *Hierarchy, err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(buildError); ok {
				h, err = nil, e
				return
			}
			panic(r)
		}
	}()
	return build(now, n), nil
}

func build(now time.Time, benchNames int) *Hierarchy {
	h := &Hierarchy{Zones: map[string]*Zone{}, Addrs: map[string]string{}}
	zone := func(name string, signed bool, algs ...uint8) *Zone {
		z := &Zone{name: name, signed: signed}
		for _, a := range algs {
			z.Keys = append(z.Keys, newKey(name, a))
		}
		ns := "ns." + name
		if name == "." {
			ns = "ns.root."
		}
		z.add(fmt.Sprintf("%s 3600 IN SOA %s hostmaster.%s 1 3600 600 86400 60", name, ns, strings.TrimPrefix(name, ".")),
			fmt.Sprintf("%s 3600 IN NS %s", name, ns))
		h.Zones[name] = z
		return z
	}
	root := zone(".", true, dns.RSASHA256)
	root.add("ns.root. 3600 IN A 127.0.0.1")
	ex := zone("example.", true, dns.ECDSAP256SHA256)
	bank := zone("bank.example.", true, dns.ED25519)
	bank.nsec3, bank.optOut = true, true
	p384 := zone("p384.example.", true, dns.ECDSAP384SHA384)
	p384.nsec3 = true
	rsa512 := zone("rsa512.example.", true, dns.RSASHA512)
	roll := zone("roll.example.", true, dns.ECDSAP256SHA256, dns.ECDSAP256SHA256)
	badds := zone("badds.example.", true, dns.ECDSAP256SHA256)
	unsup := zone("unsupalg.example.", true, dns.ECDSAP256SHA256)
	sub := zone("sub.p384.example.", true, dns.ECDSAP256SHA256)
	revoked := zone("revoked.example.", true, dns.ECDSAP256SHA256)
	revoked.Keys[0].Pub.Flags |= dns.REVOKE // before build: the DNSKEY set carries the revoked flag
	sha1 := zone("sha1ds.example.", true, dns.ED25519)
	mixed := zone("mixedds.example.", true, dns.ED25519)
	unsigned := zone("unsigned.example.", false)
	shop := zone("shop.bank.example.", false)

	ex.add("www.example. IN A 192.0.2.1",
		"www.example. IN AAAA 2001:db8::1",
		"*.wild.example. IN A 192.0.2.9",
		"a.ent.example. IN A 192.0.2.10",
		"alias.example. IN CNAME www.unsigned.example.",
		"tobank.example. IN CNAME www.bank.example.",
		"dn.example. IN DNAME bank.example.",
		"dnu.example. IN DNAME unsigned.example.",
		"forged.example. IN A 192.0.2.66",
		"expired.example. IN A 192.0.2.67",
		"future.example. IN A 192.0.2.68")
	bank.add("www.bank.example. IN A 192.0.2.20",
		"*.w.bank.example. IN A 192.0.2.21")
	p384.add("www.p384.example. IN A 192.0.2.30",
		"*.w.p384.example. IN A 192.0.2.31")
	rsa512.add("www.rsa512.example. IN A 192.0.2.40")
	roll.add("www.roll.example. IN A 192.0.2.50")
	badds.add("www.badds.example. IN A 192.0.2.60")
	unsup.add("www.unsupalg.example. IN A 192.0.2.70")
	unsigned.add("www.unsigned.example. IN A 192.0.2.80")
	sub.add("www.sub.p384.example. IN A 192.0.2.32")
	revoked.add("www.revoked.example. IN A 192.0.2.120")
	sha1.add("www.sha1ds.example. IN A 192.0.2.100")
	mixed.add("www.mixedds.example. IN A 192.0.2.110")
	shop.add("www.shop.bank.example. IN A 192.0.2.90")

	delegate := func(parent, child *Zone, ds ...*dns.DS) {
		parent.add(fmt.Sprintf("%s 3600 IN NS ns.%s", child.name, child.name),
			fmt.Sprintf("ns.%s 3600 IN A 127.0.0.1", child.name))
		for _, d := range ds {
			parent.data = append(parent.data, d)
		}
	}
	dsOf := func(z *Zone, i int) *dns.DS {
		d := z.Keys[i].Pub.ToDS(dns.SHA256)
		d.Hdr.Ttl = 3600
		return d
	}
	delegate(root, ex, dsOf(ex, 0))
	delegate(ex, bank, dsOf(bank, 0))
	delegate(ex, p384, dsOf(p384, 0))
	delegate(ex, rsa512, dsOf(rsa512, 0))
	delegate(ex, roll, dsOf(roll, 1)) // the new KSK only; data signed by the old key
	other := newKey("badds.example.", dns.ECDSAP256SHA256)
	wrong := other.Pub.ToDS(dns.SHA256)
	wrong.KeyTag = badds.Keys[0].Pub.KeyTag() // same tag, digest of another key
	delegate(ex, badds, wrong)
	alg := dsOf(unsup, 0)
	alg.Algorithm = 253
	delegate(ex, unsup, alg)
	delegate(ex, unsigned)
	delegate(p384, sub, dsOf(sub, 0))
	delegate(ex, revoked, dsOf(revoked, 0)) // a DS for the revoked key
	d1 := sha1.Keys[0].Pub.ToDS(dns.SHA1)
	d1.Hdr.Ttl = 3600
	delegate(ex, sha1, d1)
	// A correct SHA-1 DS beside a SHA-256 DS that matches no key: the
	// SHA-1 one must be ignored (RFC 4509 section 3).
	m1 := mixed.Keys[0].Pub.ToDS(dns.SHA1)
	m1.Hdr.Ttl = 3600
	m256 := newKey("mixedds.example.", dns.ED25519).Pub.ToDS(dns.SHA256)
	m256.KeyTag, m256.Hdr.Ttl = mixed.Keys[0].Pub.KeyTag(), 3600
	delegate(ex, mixed, m1, m256)
	delegate(bank, shop)
	if benchNames > 0 {
		bench := zone("bench.example.", true, dns.ECDSAP256SHA256)
		for i := range benchNames {
			bench.data = append(bench.data, &dns.A{
				Hdr: dns.RR_Header{Name: fmt.Sprintf("n%d.bench.example.", i), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600},
				A:   net.IPv4(198, 51, 100, byte(i%254+1)).To4(),
			})
		}
		delegate(ex, bench, dsOf(bench, 0))
	}

	for _, z := range h.Zones {
		z.build(now)
	}
	// Faults signed into example.: a record changed after signing, and
	// signatures outside their validity window.
	f := ex.Sets[RRKey{"forged.example.", dns.TypeA}][0].(*dns.A)
	f.A = net.ParseIP("192.0.2.166").To4()
	ex.sign(RRKey{"expired.example.", dns.TypeA}, ex.Sets[RRKey{"expired.example.", dns.TypeA}], window{now.Add(-48 * time.Hour), now.Add(-24 * time.Hour)})
	ex.sign(RRKey{"future.example.", dns.TypeA}, ex.Sets[RRKey{"future.example.", dns.TypeA}], window{now.Add(24 * time.Hour), now.Add(48 * time.Hour)})

	h.Anchor = root.Keys[0].Pub.ToDS(dns.SHA256).String() + "\n"
	return h
}

// Start serves every zone on its own loopback UDP and TCP port.
func (h *Hierarchy) Start() error {
	for name, z := range h.Zones {
		z := z
		handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			if len(r.Question) != 1 {
				m := new(dns.Msg)
				m.SetRcode(r, dns.RcodeFormatError)
				_ = w.WriteMsg(m)
				return
			}
			m := z.answer(r.Question[0])
			rcode, aa := m.Rcode, m.Authoritative
			m.SetReply(r)
			m.Rcode, m.Authoritative = rcode, aa
			if o := r.IsEdns0(); o != nil {
				m.SetEdns0(4096, o.Do())
			}
			_ = w.WriteMsg(m)
		})
		pc, ln, err := ListenPair()
		if err != nil {
			return err
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: handler, UDPSize: 65535}, {Listener: ln, Handler: handler}} {
			started := make(chan struct{})
			s.NotifyStartedFunc = func() { close(started) }
			go func() { _ = s.ActivateAndServe() }()
			<-started
			h.servers = append(h.servers, s)
		}
		ns := "ns." + name
		if name == "." {
			ns = "ns.root."
		}
		h.Addrs[ns] = pc.LocalAddr().String()
	}
	return nil
}

// ListenPair binds UDP and TCP on one loopback port, retrying when the
// TCP side of a free UDP port is taken.
func ListenPair() (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, err
}

// Stop stops the servers.
func (h *Hierarchy) Stop() {
	for _, s := range h.servers {
		_ = s.Shutdown()
	}
}

// Iterator is the test recursive upstream: it iterates from the test root
// over real DNS messages, following referrals and CNAMEs, and hands back
// what the authoritative servers said, signatures and all (it does not
// validate: CD or not, bogus data is handed over).
type Iterator struct {
	H *Hierarchy
	// Filter, if not nil, changes every response before it is returned
	// (an upstream that strips signatures, forges records).
	Filter func(*dns.Msg)
	// InMemory asks the zones directly instead of their servers: no
	// sockets, so Start is not needed (benchmarks' upstream).
	InMemory bool
}

// Exchange resolves q's question.
func (it *Iterator) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	resp, err := it.resolve(ctx, q.Question[0], 0)
	if err != nil {
		return nil, err
	}
	resp.Id = q.Id
	resp.Question = q.Question
	if it.Filter != nil {
		it.Filter(resp)
	}
	return resp, nil
}

// ask sends q to the name server ns (a host name of the hierarchy):
// over UDP, then TCP when truncated; with InMemory, to its zone directly.
func (it *Iterator) ask(ctx context.Context, q dns.Question, ns string) (*dns.Msg, error) {
	if it.InMemory {
		z := it.H.Zones[strings.TrimPrefix(ns, "ns.")]
		if ns == "ns.root." {
			z = it.H.Zones["."]
		}
		if z == nil {
			return nil, fmt.Errorf("no zone served by %s", ns)
		}
		return z.answer(q).Copy(), nil
	}
	addr := it.H.Addrs[ns]
	if addr == "" {
		return nil, fmt.Errorf("no address for %s", ns)
	}
	m := new(dns.Msg)
	m.Question = []dns.Question{q}
	m.Id = dns.Id()
	m.SetEdns0(4096, true)
	c := &dns.Client{Net: "udp", UDPSize: 65535, Timeout: 5 * time.Second}
	resp, _, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		return nil, err
	}
	if resp.Truncated {
		tc := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		if resp, _, err = tc.ExchangeContext(ctx, m, addr); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

func (it *Iterator) resolve(ctx context.Context, q dns.Question, depth int) (*dns.Msg, error) {
	if depth > 8 {
		return nil, fmt.Errorf("CNAME chain too long at %s", q.Name)
	}
	server := "ns.root."
	for hop := 0; hop < 10; hop++ {
		resp, err := it.ask(ctx, q, server)
		if err != nil {
			return nil, err
		}
		if !resp.Authoritative && len(resp.Answer) == 0 {
			next := ""
			for _, r := range resp.Ns {
				if ns, ok := r.(*dns.NS); ok {
					next = ns.Ns
				}
			}
			if next == "" {
				return nil, fmt.Errorf("lame referral for %s", q.Name)
			}
			server = next
			continue
		}
		resp.Extra = nil
		// Chase a CNAME into wherever it points.
		if q.Qtype != dns.TypeCNAME && len(resp.Answer) > 0 {
			last := resp.Answer[len(resp.Answer)-1]
			for _, r := range resp.Answer {
				if r.Header().Rrtype != dns.TypeRRSIG {
					last = r
				}
			}
			if cn, ok := last.(*dns.CNAME); ok {
				more, err := it.resolve(ctx, dns.Question{Name: cn.Target, Qtype: q.Qtype, Qclass: q.Qclass}, depth+1)
				if err != nil {
					return nil, err
				}
				resp.Answer = append(resp.Answer, more.Answer...)
				resp.Ns = more.Ns
				resp.Rcode = more.Rcode
			}
		}
		return resp, nil
	}
	return nil, fmt.Errorf("too many referrals for %s", q.Name)
}

// ServeDNS answers as a recursive resolver would: the iterator's answer,
// with the client's ID and question; SERVFAIL when iterating fails.
func (it *Iterator) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	if len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := it.Exchange(ctx, r)
	if err != nil {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
		return
	}
	resp.Id = r.Id
	resp.Response = true
	resp.RecursionAvailable = true
	resp.RecursionDesired = r.RecursionDesired
	resp.CheckingDisabled = r.CheckingDisabled
	resp.Authoritative = false
	resp.AuthenticatedData = false
	do := false
	if o := r.IsEdns0(); o != nil {
		do = o.Do()
		resp.SetEdns0(4096, do)
	}
	if !do {
		resp.Answer, resp.Ns = WithoutDNSSEC(resp.Answer), WithoutDNSSEC(resp.Ns)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = max(size, int(o.UDPSize()))
		}
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

// WithoutDNSSEC returns rrs without RRSIG, NSEC and NSEC3 records, for a
// client that did not set DO.
func WithoutDNSSEC(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, r := range rrs {
		switch r.Header().Rrtype {
		case dns.TypeRRSIG, dns.TypeNSEC, dns.TypeNSEC3:
		default:
			out = append(out, r)
		}
	}
	return out
}

// buildError is what build panics with when a key or a signature cannot
// be made; Build returns it.
type buildError string

func (e buildError) Error() string { return string(e) }

func failf(format string, args ...any) { panic(buildError(fmt.Sprintf(format, args...))) }
