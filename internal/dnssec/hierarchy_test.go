package dnssec

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// hierarchy is the signed test hierarchy, served by one loopback
// authoritative server per zone.
type hierarchy struct {
	zones   map[string]*testZone
	addrs   map[string]string // name server host name → 127.0.0.1:port
	anchors *Anchors
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
func buildHierarchy(t testing.TB, now time.Time) *hierarchy {
	h := &hierarchy{zones: map[string]*testZone{}, addrs: map[string]string{}}
	zone := func(name string, signed bool, algs ...uint8) *testZone {
		z := &testZone{name: name, signed: signed}
		for _, a := range algs {
			z.keys = append(z.keys, newKey(t, name, a))
		}
		ns := "ns." + name
		if name == "." {
			ns = "ns.root."
		}
		z.add(fmt.Sprintf("%s 3600 IN SOA %s hostmaster.%s 1 3600 600 86400 60", name, ns, strings.TrimPrefix(name, ".")),
			fmt.Sprintf("%s 3600 IN NS %s", name, ns))
		h.zones[name] = z
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
	revoked.keys[0].pub.Flags |= dns.REVOKE // before build: the DNSKEY set carries the revoked flag
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

	delegate := func(parent, child *testZone, ds ...*dns.DS) {
		parent.add(fmt.Sprintf("%s 3600 IN NS ns.%s", child.name, child.name),
			fmt.Sprintf("ns.%s 3600 IN A 127.0.0.1", child.name))
		for _, d := range ds {
			parent.data = append(parent.data, d)
		}
	}
	dsOf := func(z *testZone, i int) *dns.DS {
		d := z.keys[i].pub.ToDS(dns.SHA256)
		d.Hdr.Ttl = 3600
		return d
	}
	delegate(root, ex, dsOf(ex, 0))
	delegate(ex, bank, dsOf(bank, 0))
	delegate(ex, p384, dsOf(p384, 0))
	delegate(ex, rsa512, dsOf(rsa512, 0))
	delegate(ex, roll, dsOf(roll, 1)) // the new KSK only; data signed by the old key
	other := newKey(t, "badds.example.", dns.ECDSAP256SHA256)
	wrong := other.pub.ToDS(dns.SHA256)
	wrong.KeyTag = badds.keys[0].pub.KeyTag() // same tag, digest of another key
	delegate(ex, badds, wrong)
	alg := dsOf(unsup, 0)
	alg.Algorithm = 253
	delegate(ex, unsup, alg)
	delegate(ex, unsigned)
	delegate(p384, sub, dsOf(sub, 0))
	delegate(ex, revoked, dsOf(revoked, 0)) // a DS for the revoked key
	d1 := sha1.keys[0].pub.ToDS(dns.SHA1)
	d1.Hdr.Ttl = 3600
	delegate(ex, sha1, d1)
	// A correct SHA-1 DS beside a SHA-256 DS that matches no key: the
	// SHA-1 one must be ignored (RFC 4509 section 3).
	m1 := mixed.keys[0].pub.ToDS(dns.SHA1)
	m1.Hdr.Ttl = 3600
	m256 := newKey(t, "mixedds.example.", dns.ED25519).pub.ToDS(dns.SHA256)
	m256.KeyTag, m256.Hdr.Ttl = mixed.keys[0].pub.KeyTag(), 3600
	delegate(ex, mixed, m1, m256)
	delegate(bank, shop)

	for _, z := range h.zones {
		z.build(t, now)
	}
	// Faults signed into example.: a record changed after signing, and
	// signatures outside their validity window.
	f := ex.sets[rrKey{"forged.example.", dns.TypeA}][0].(*dns.A)
	f.A = net.ParseIP("192.0.2.166").To4()
	ex.sign(t, rrKey{"expired.example.", dns.TypeA}, ex.sets[rrKey{"expired.example.", dns.TypeA}], window{now.Add(-48 * time.Hour), now.Add(-24 * time.Hour)})
	ex.sign(t, rrKey{"future.example.", dns.TypeA}, ex.sets[rrKey{"future.example.", dns.TypeA}], window{now.Add(24 * time.Hour), now.Add(48 * time.Hour)})

	anchor := root.keys[0].pub.ToDS(dns.SHA256)
	var err error
	h.anchors, err = ParseAnchors(anchor.String(), "test anchor")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// start serves every zone on its own loopback UDP and TCP port.
func (h *hierarchy) start() error {
	for name, z := range h.zones {
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
		pc, ln, err := listenPair()
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
		h.addrs[ns] = pc.LocalAddr().String()
	}
	return nil
}

// listenPair binds UDP and TCP on one loopback port, retrying when the
// TCP side of a free UDP port is taken.
func listenPair() (net.PacketConn, net.Listener, error) {
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

func (h *hierarchy) stop() {
	for _, s := range h.servers {
		_ = s.Shutdown()
	}
}

// iterator is the test recursive upstream: it iterates from the test root
// over real DNS messages, following referrals and CNAMEs, and hands back
// what the authoritative servers said, signatures and all.
type iterator struct {
	h      *hierarchy
	filter func(*dns.Msg)
}

func (it *iterator) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	resp, err := it.resolve(ctx, q.Question[0], 0)
	if err != nil {
		return nil, err
	}
	resp.Id = q.Id
	resp.Question = q.Question
	if it.filter != nil {
		it.filter(resp)
	}
	return resp, nil
}

func (it *iterator) resolve(ctx context.Context, q dns.Question, depth int) (*dns.Msg, error) {
	if depth > 8 {
		return nil, fmt.Errorf("CNAME chain too long at %s", q.Name)
	}
	server := it.h.addrs["ns.root."]
	c := &dns.Client{Net: "udp", UDPSize: 65535, Timeout: 5 * time.Second}
	for hop := 0; hop < 10; hop++ {
		m := new(dns.Msg)
		m.Question = []dns.Question{q}
		m.Id = dns.Id()
		m.SetEdns0(4096, true)
		resp, _, err := c.ExchangeContext(ctx, m, server)
		if err != nil {
			return nil, err
		}
		if resp.Truncated {
			tc := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
			if resp, _, err = tc.ExchangeContext(ctx, m, server); err != nil {
				return nil, err
			}
		}
		if !resp.Authoritative && len(resp.Answer) == 0 {
			next := ""
			for _, r := range resp.Ns {
				if ns, ok := r.(*dns.NS); ok {
					next = it.h.addrs[ns.Ns]
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

var testH *hierarchy

func TestMain(m *testing.M) {
	tb := &mainTB{}
	testH = buildHierarchy(tb, time.Now())
	if tb.failed != "" {
		fmt.Fprintln(os.Stderr, "building the test hierarchy:", tb.failed)
		os.Exit(1)
	}
	if err := testH.start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting the test servers:", err)
		os.Exit(1)
	}
	code := m.Run()
	testH.stop()
	os.Exit(code)
}

// mainTB lets TestMain build the hierarchy with the helpers tests use.
type mainTB struct {
	testing.TB
	failed string
}

func (m *mainTB) Helper() {}
func (m *mainTB) Fatal(args ...any) {
	m.failed = fmt.Sprint(args...)
	panic(m.failed)
}
func (m *mainTB) Fatalf(format string, args ...any) {
	m.failed = fmt.Sprintf(format, args...)
	panic(m.failed)
}
