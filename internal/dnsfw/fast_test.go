package dnsfw

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/errgroup"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// droppingPublisher is a publisher that counts early drops, which lets the
// fast path skip publishing; tests move the count.
type droppingPublisher struct {
	countingPublisher
	drops atomic.Uint64
}

func (d *droppingPublisher) Dropped() uint64 { return d.drops.Load() }

func (d *droppingPublisher) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.batches)
}

// fastEnv is an env whose publisher lets the fast path run.
func fastEnv(t *testing.T, h dns.HandlerFunc, o opts) (*env, *droppingPublisher) {
	pub := &droppingPublisher{}
	cfg := o.cfg
	o.cfg = func(c *Config) {
		c.Publisher = pub
		if cfg != nil {
			cfg(c)
		}
	}
	return newEnv(t, h, o), pub
}

// TestFastPathMatchesOrdinary sends the same queries to a firewall whose
// publisher lets cache hits take the fast path and to one whose publisher
// does not, and wants the same replies, first and repeated, at once and
// after time passed: the fast path is an optimisation, not a behaviour.
func TestFastPathMatchesOrdinary(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    opts
	}{
		{"batched", opts{}},
		{"one datagram per call", opts{noBatch: true}},
		{"wildcard socket", opts{udpSessions: true}},
	} {
		t.Run(tc.name, func(t *testing.T) { testFastPathMatchesOrdinary(t, tc.o) })
	}
}

// manyAddrs returns n A (ipv4) or AAAA records for name, TTL 300, as CDNs
// answer.
func manyAddrs(name string, n int, ipv4 bool) []dns.RR {
	var rrs []dns.RR
	for i := range n {
		if ipv4 {
			rrs = append(rrs, dnstest.A(name, 300, "192.0.2."+itoa(i+1)))
		} else {
			rrs = append(rrs, dnstest.AAAA(name, 300, "2001:db8::"+strconv.FormatInt(int64(i+1), 16)))
		}
	}
	return rrs
}

func testFastPathMatchesOrdinary(t *testing.T, o opts) {
	extra := []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "cdn.edge.bank.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 120}, Target: "x.edge.bank.example."},
		dnstest.SOA("example.com", 3600, 60),
		// Answers longer than 512 bytes uncompressed (without OPT): 12
		// AAAA (640 bytes, 376 compressed), 20 A (800, 360); behind a
		// CNAME, 30 AAAA (1,596, 898: TC without EDNS, and longer than
		// 1232 uncompressed) and 20 A (856, 378).
		dnstest.CNAME("big.edge.bank.example", 120, "pool.edge.bank.example"),
	}
	extra = append(extra, manyAddrs("many.edge.bank.example", 12, false)...)
	extra = append(extra, manyAddrs("many.edge.bank.example", 20, true)...)
	extra = append(extra, manyAddrs("pool.edge.bank.example", 30, false)...)
	extra = append(extra, manyAddrs("pool.edge.bank.example", 20, true)...)
	z := zone(extra...)
	fast, _ := fastEnv(t, z, o)
	slow := newEnv(t, z, opts{noBatch: true, cfg: func(c *Config) { c.Publisher = &countingPublisher{} }})

	type query struct {
		name  string
		src   string
		qtype uint16
		mod   func(*dns.Msg)
	}
	queries := []query{
		{name: "api.bank.example", src: payments, qtype: dns.TypeA},
		{name: "ApI.bAnK.ExAmPlE", src: payments, qtype: dns.TypeA},
		{name: "api.bank.example", src: payments, qtype: dns.TypeAAAA, mod: func(m *dns.Msg) { m.SetEdns0(1232, true) }},
		{name: "API.BANK.EXAMPLE", src: payments, qtype: dns.TypeAAAA, mod: func(m *dns.Msg) { m.SetEdns0(512, false) }},
		{name: "api.bank.example", src: payments, qtype: dns.TypeA, mod: func(m *dns.Msg) { m.CheckingDisabled = true }},
		{name: "api.bank.example", src: payments, qtype: dns.TypeA, mod: func(m *dns.Msg) { m.AuthenticatedData = true; m.RecursionDesired = false }},
		{name: "api.bank.example", src: payments, qtype: dns.TypeA, mod: func(m *dns.Msg) {
			m.SetEdns0(4096, false)
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}},
		{name: "cdn.edge.bank.example", src: payments, qtype: dns.TypeA},
		{name: "www.example.com", src: web, qtype: dns.TypeA},
		{name: "public.example", src: stranger, qtype: dns.TypeA},
		{name: "api.bank.example", src: web, qtype: dns.TypeA},          // denied
		{name: "nothing.example.com", src: web, qtype: dns.TypeA},       // denied
		{name: "api.bank.example", src: payments, qtype: dns.TypeTXT},   // refused type
		{name: "www.example.com", src: web, qtype: dns.TypeAAAA},        // NODATA
		{name: "x.edge.bank.example", src: payments, qtype: dns.TypeMX}, // refused type
	}
	// Replies that fit only compressed (no EDNS: 512 bytes), or not at
	// all (TC), asked in lower and mixed case, without EDNS and with
	// sizes 512 and 1232.
	edns := func(size uint16) func(*dns.Msg) { return func(m *dns.Msg) { m.SetEdns0(size, false) } }
	for _, name := range []string{"many.edge.bank.example", "MaNy.EdGe.BaNk.ExAmPlE", "big.edge.bank.example", "BIG.edge.bank.example", "pool.edge.bank.example"} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			queries = append(queries,
				query{name: name, src: payments, qtype: qtype},
				query{name: name, src: payments, qtype: qtype, mod: edns(512)},
				query{name: name, src: payments, qtype: qtype, mod: edns(1232)},
			)
		}
	}
	ask := func(e *env, q query, id uint16) []byte {
		t.Helper()
		m := new(dns.Msg).SetQuestion(dns.Fqdn(q.name), q.qtype)
		m.Id = id
		if q.mod != nil {
			q.mod(m)
		}
		r, err := e.exchangeRaw(q.src, m, 3*time.Second)
		if err != nil {
			t.Fatalf("%s %s from %s: %v", q.name, dns.TypeToString[q.qtype], q.src, err)
		}
		return r
	}
	rounds := []time.Duration{0, 0, 0, 7 * time.Second, 95 * time.Second}
	for round, advance := range rounds {
		fast.clock.Advance(advance)
		slow.clock.Advance(advance)
		for i, q := range queries {
			id := uint16(round*1000 + i + 1)
			// The packed bytes, not just the messages: the fast path sends
			// bytes it did not pack, compression pointers included.
			want, got := ask(slow, q, id), ask(fast, q, id)
			if !bytes.Equal(got, want) {
				t.Errorf("round %d, %s %s from %s (%d bytes fast, %d ordinary):\nfast path:\n%s\nordinary:\n%s",
					round, q.name, dns.TypeToString[q.qtype], q.src, len(got), len(want), unpacked(got), unpacked(want))
			}
		}
	}
	if fast.fw.fastHits.Load() == 0 {
		t.Fatal("the fast path answered nothing; the comparison compared the ordinary path with itself")
	}
	if slow.fw.fastHits.Load() != 0 {
		t.Fatal("the fast path answered for a publisher without Dropped")
	}
	if f, s := fast.up.QueryCount(), slow.up.QueryCount(); f != s {
		t.Errorf("upstream queries: %d with the fast path, %d without", f, s)
	}

	// The audit lines agree too, apart from the latency and the fake
	// upstreams' addresses. A line is written after its reply, so lines
	// of consecutive queries may swap: compare them sorted.
	n := len(rounds) * len(queries)
	norm := func(lines []map[string]any) []string {
		var out []string
		for _, m := range lines {
			delete(m, "latency_ms")
			delete(m, "time")
			if m["upstream"] != "cache" {
				m["upstream"] = "upstream"
			}
			j, _ := json.Marshal(m)
			out = append(out, string(j))
		}
		slices.Sort(out)
		return out
	}
	fl, sl := norm(fast.auditLines(n)), norm(slow.auditLines(n))
	if len(fl) != len(sl) {
		t.Fatalf("audit lines: %d with the fast path, %d without", len(fl), len(sl))
	}
	for i := range fl {
		if fl[i] != sl[i] {
			t.Errorf("audit lines differ:\nfast path: %s\nordinary:  %s", fl[i], sl[i])
		}
	}
}

// exchangeRaw sends m from src to the firewall over UDP and returns the
// reply's bytes as they arrived.
func (e *env) exchangeRaw(src string, m *dns.Msg, timeout time.Duration) ([]byte, error) {
	q, err := m.Pack()
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, net.UDPAddrFromAddrPort(e.udp))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<16)
	for {
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
			return buf[:n], nil
		}
	}
}

// unpacked returns b unpacked, for messages.
func unpacked(b []byte) string {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return fmt.Sprintf("unpacking %x: %v", b, err)
	}
	return m.String()
}

// TestFastPathCompressed: a reply longer than 512 bytes uncompressed but
// not compressed goes out compressed from the fast path to a client
// without EDNS, as the ordinary path would send it; a question in mixed
// case (whose compressed reply differs) is left to the ordinary path.
func TestFastPathCompressed(t *testing.T) {
	// 10 AAAA: 540 bytes uncompressed, 320 compressed.
	e, _ := fastEnv(t, dnstest.Zone(manyAddrs("many.edge.bank.example", 10, false)...), opts{})
	m := new(dns.Msg).SetQuestion("many.edge.bank.example.", dns.TypeAAAA)
	e.ask(payments, "many.edge.bank.example", dns.TypeAAAA) // upstream
	e.ask(payments, "many.edge.bank.example", dns.TypeAAAA) // cache: makes the ready
	hits := e.fw.fastHits.Load()
	for i, name := range []string{"many.edge.bank.example.", "many.edge.bank.example.", "MANY.edge.bank.example."} {
		m.Question[0].Name = name
		m.Id = uint16(i + 1)
		b, err := e.exchangeRaw(payments, m, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			t.Fatal(err)
		}
		full := r.Copy()
		full.Compress = false
		if r.Truncated || len(r.Answer) != 10 || len(b) > dns.MinMsgSize || full.Len() <= dns.MinMsgSize {
			t.Errorf("%s without EDNS: TC %v, %d records, %d bytes (%d uncompressed); want all 10 compressed within 512",
				name, r.Truncated, len(r.Answer), len(b), full.Len())
		}
	}
	if got := e.fw.fastHits.Load() - hits; got != 2 {
		t.Errorf("fast answers: %d, want 2 (lower case twice; mixed case goes the ordinary way)", got)
	}
}

// TestReadyOnFirstCacheHit: an answer from the upstream is cached without
// a ready reply; the first answer from the cache makes one, and the fast
// path serves the queries after it.
func TestReadyOnFirstCacheHit(t *testing.T) {
	e, _ := fastEnv(t, zone(), opts{})
	k := cacheKey(false, "api.bank.example.", dns.TypeA, false, false)
	readyKept := func() bool {
		en := e.fw.wcache.Lookup(k, e.clock.Now())
		if en == nil {
			t.Fatal("the answer is not cached")
		}
		_, ok := en.Derived().(*ready)
		return ok
	}
	for i, want := range []struct {
		ready bool
		fast  uint64
	}{{false, 0}, {true, 0}, {true, 1}, {true, 2}} {
		m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
		b, err := e.exchangeRaw(payments, m, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r := new(dns.Msg); r.Unpack(b) != nil || len(answerAddrs(r)) != 1 {
			t.Fatalf("query %d: got %s", i+1, unpacked(b))
		}
		if got := readyKept(); got != want.ready {
			t.Errorf("after query %d: ready reply kept %v, want %v", i+1, got, want.ready)
		}
		if got := e.fw.fastHits.Load(); got != want.fast {
			t.Errorf("after query %d: %d fast answers, want %d", i+1, got, want.fast)
		}
	}
}

func TestFastPathPublishes(t *testing.T) {
	e, pub := fastEnv(t, zone(), opts{})
	e.ask(payments, "api.bank.example", dns.TypeA) // upstream, published
	e.ask(payments, "api.bank.example", dns.TypeA) // cache: makes the ready
	hits := e.fw.fastHits.Load()
	n := pub.count()
	e.ask(payments, "api.bank.example", dns.TypeA)
	if e.fw.fastHits.Load() != hits+1 {
		t.Fatal("third query: not answered by the fast path")
	}
	if pub.count() != n {
		t.Errorf("a fast answer whose addresses are held published again")
	}
	// Later answers of a record above min_ttl need no later expiry: the
	// record's life ends when it did, whatever the whole-second TTL says.
	for range 3 {
		e.clock.Advance(1500 * time.Millisecond)
		e.ask(payments, "api.bank.example", dns.TypeA)
	}
	if pub.count() != n || e.fw.fastHits.Load() != hits+4 {
		t.Errorf("answers 1.5s apart: %d publishes (want %d), %d fast (want %d)", pub.count(), n, e.fw.fastHits.Load()-hits, 4)
	}

	// The publisher dropped something: the next answer publishes again.
	pub.drops.Add(1)
	e.ask(payments, "api.bank.example", dns.TypeA)
	if pub.count() != n+1 {
		t.Errorf("after a drop: publishes %d, want %d", pub.count(), n+1)
	}
	e.ask(payments, "api.bank.example", dns.TypeA)
	if pub.count() != n+1 {
		t.Errorf("after the republish: publishes %d, want %d", pub.count(), n+1)
	}

	// A record TTL below min_ttl (30s): the learned life is min_ttl from
	// each answer, so a later answer needs a later expiry and publishes.
	e2, pub2 := fastEnv(t, dnstest.Zone(dnstest.A("api.bank.example", 20, "192.0.2.10")), opts{})
	e2.ask(payments, "api.bank.example", dns.TypeA)
	e2.ask(payments, "api.bank.example", dns.TypeA)
	n = pub2.count()
	e2.clock.Advance(5 * time.Second)
	r := e2.ask(payments, "api.bank.example", dns.TypeA)
	if r.Answer[0].Header().Ttl != 15 {
		t.Errorf("TTL after 5s: got %d, want 15", r.Answer[0].Header().Ttl)
	}
	last := pub2.last()
	if pub2.count() != n+1 || len(last) != 1 || !last[0].Expires.Equal(e2.clock.Now().Add(30*time.Second+10*time.Minute)) {
		t.Errorf("answer 5s later: %d publishes (want %d), last %+v", pub2.count(), n+1, last)
	}

	// A different group allowed by another rule for the same name gets
	// its own publication.
	e3, pub3 := fastEnv(t, zone(), opts{rules: "  - name: web-bank\n    from: [web]\n    to: [api.bank.example]\n    ports: [443]"})
	e3.ask(payments, "api.bank.example", dns.TypeA)
	e3.ask(payments, "api.bank.example", dns.TypeA)
	e3.ask(web, "api.bank.example", dns.TypeA)
	last = pub3.last()
	if len(last) != 1 || last[0].Rule != "web-bank" || last[0].Group != "web" {
		t.Errorf("other group's first answer from the ready: last publish %+v, want one for web-bank/web", last)
	}
}

// TestFastPathFollowsPolicy: a reload, another group, inspect_cname and the
// rate limit all apply to answers the fast path would send.
func TestFastPathFollowsPolicy(t *testing.T) {
	z := zone(&dns.CNAME{Hdr: dns.RR_Header{Name: "cdn.edge.bank.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 120}, Target: "api.bank.example."})
	e, _ := fastEnv(t, z, opts{rules: "  - name: web-cdn\n    from: [web]\n    to: [cdn.edge.bank.example]\n    ports: [443]"})
	for range 3 {
		e.ask(payments, "api.bank.example", dns.TypeA)
		e.ask(web, "cdn.edge.bank.example", dns.TypeA)
	}
	if e.fw.fastHits.Load() == 0 {
		t.Fatal("no fast answers")
	}
	// inspect_cname: the chain's api.bank.example is not web's.
	p := e.policy(opts{dns: "  inspect_cname: true", rules: "  - name: web-cdn\n    from: [web]\n    to: [cdn.edge.bank.example]\n    ports: [443]"})
	e.pol.Store(p)
	e.ask(payments, "cdn.edge.bank.example", dns.TypeA) // allowed for payments: makes a ready under p
	e.ask(payments, "cdn.edge.bank.example", dns.TypeA)
	if r := e.ask(web, "cdn.edge.bank.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("inspect_cname, chain outside web's rules: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	// A reload that removes the rule: denied at once.
	e.pol.Store(e.policy(opts{}))
	if r := e.ask(web, "cdn.edge.bank.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("after the reload removed web-cdn: got %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	// Rate limit: 5 queries/s, bursts of 5; the clock stands still.
	e.pol.Store(e.policy(opts{dns: "  rate_limit: 5\n  rate_burst: 5"}))
	refused := 0
	for range 12 {
		if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused != 7 {
		t.Errorf("rate limit 5 with burst 5, 12 queries: %d refused, want 7", refused)
	}
}

// TestFastPathLeavesTruncationToOrdinary: a ready larger than the client's
// UDP size, compressed too, is truncated by the ordinary path, never sent
// whole.
func TestFastPathLeavesTruncationToOrdinary(t *testing.T) {
	var rrs []dns.RR
	for i := range 40 {
		rrs = append(rrs, dnstest.A("api.bank.example", 300, "192.0.2."+itoa(i+1)))
	}
	e, _ := fastEnv(t, dnstest.Answer(rrs...), opts{})
	e.ask(payments, "api.bank.example", dns.TypeA)
	e.ask(payments, "api.bank.example", dns.TypeA)
	hits := e.fw.fastHits.Load()
	m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
	r, err := e.exchange(payments, "udp", m, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Error("40 addresses without EDNS: got no TC")
	}
	m.SetEdns0(512, false) // with OPT: 1,325 bytes uncompressed, 685 compressed
	if r, err = e.exchange(payments, "udp", m, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Error("40 addresses with EDNS 512: got no TC")
	}
	if e.fw.fastHits.Load() != hits {
		t.Error("the fast path answered a query whose reply does not fit")
	}
	// With EDNS 1232 only the compressed reply fits: the fast path sends it.
	m.IsEdns0().SetUDPSize(1232)
	if r, err = e.exchange(payments, "udp", m, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 40 || e.fw.fastHits.Load() != hits+1 {
		t.Errorf("with EDNS 1232: TC %v, %d records, fast %v", r.Truncated, len(r.Answer), e.fw.fastHits.Load() != hits)
	}
	hits = e.fw.fastHits.Load()
	if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Truncated || len(r.Answer) != 40 || e.fw.fastHits.Load() != hits+1 {
		t.Errorf("with EDNS 4096: TC %v, %d records, fast %v", r.Truncated, len(r.Answer), e.fw.fastHits.Load() != hits)
	}
}

// blockingDropPublisher blocks its publishes until released; it counts no
// drops.
type blockingDropPublisher struct {
	gate chan struct{}
}

func (b *blockingDropPublisher) Publish(ctx context.Context, _ []learn.Entry) error {
	select {
	case <-b.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *blockingDropPublisher) Dropped() uint64 { return 0 }

// TestFastPathNeverBeforePublish: with a publisher that has not returned,
// no answer leaves, not even one the fast path could build.
func TestFastPathNeverBeforePublish(t *testing.T) {
	pub := &blockingDropPublisher{gate: make(chan struct{})}
	e := newEnv(t, zone(), opts{cfg: func(c *Config) { c.Publisher = pub; c.PublishTimeout = 300 * time.Millisecond }})
	if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("publish timed out: got %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("cached, publish timed out: got %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if e.fw.fastHits.Load() != 0 {
		t.Fatal("fast answers without a publication")
	}
	close(pub.gate)
	for range 2 {
		if r := e.ask(payments, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("published: got %s", dns.RcodeToString[r.Rcode])
		}
	}
}

// TestFastPathOnlyInEnforce: audit mode answers through the ordinary path,
// which notes what it would have refused.
func TestFastPathOnlyInEnforce(t *testing.T) {
	e, _ := fastEnv(t, zone(), opts{mode: "audit"})
	for range 3 {
		e.ask(payments, "api.bank.example", dns.TypeA)
	}
	if e.fw.fastHits.Load() != 0 {
		t.Error("fast answers in audit mode")
	}
	if e.pol.Load().Mode != policy.Audit {
		t.Fatal("not in audit mode")
	}
}

// FuzzWireQuery checks the fast path's query reader against miekg/dns: a
// datagram it accepts unpacks, with the same ID, flags, question and EDNS.
func FuzzWireQuery(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var q wireQuery
		if !q.parse(b) {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("accepted, but miekg/dns cannot unpack: %v", err)
		}
		if len(m.Question) != 1 || m.Response || m.Opcode != dns.OpcodeQuery || m.Truncated || len(m.Answer)+len(m.Ns) != 0 {
			t.Fatalf("accepted an unusual message:\n%s", m)
		}
		mq := m.Question[0]
		if m.Id != q.id || m.RecursionDesired != q.rd || m.CheckingDisabled != q.cd || m.AuthenticatedData != q.ad ||
			mq.Name != string(q.name) || strings.ToLower(mq.Name) != string(q.lower) || mq.Qtype != q.qtype || mq.Qclass != dns.ClassINET {
			t.Fatalf("read %+v, miekg/dns %s", q, m)
		}
		opt := m.IsEdns0()
		if (opt != nil) != q.edns || opt != nil && (opt.UDPSize() != q.size || opt.Do() != q.do || opt.Version() != 0 || opt.ExtendedRcode() != 0) {
			t.Fatalf("EDNS: read %v %d %v, miekg/dns %v", q.edns, q.size, q.do, opt)
		}
		if len(m.Extra) > 1 || len(m.Extra) == 1 && opt == nil {
			t.Fatalf("extra records: %v", m.Extra)
		}
	})
}

// TestUDPBatches sends hundreds of queries without waiting, from several
// sockets, a mix of fast answers, cache misses, denials and malformed
// datagrams, and wants every reply to match its query.
func TestUDPBatches(t *testing.T) {
	e, _ := fastEnv(t, zone(), opts{dns: "  rate_limit: 0"})
	e.ask(payments, "api.bank.example", dns.TypeA)
	e.ask(payments, "api.bank.example", dns.TypeA)
	type want struct {
		name  string
		rcode int
	}
	names := []want{
		{"api.bank.example.", dns.RcodeSuccess},    // fast
		{"x.edge.bank.example.", dns.RcodeSuccess}, // upstream, then cache
		{"evil.example.", dns.RcodeNameError},      // denied
		{"API.bank.EXAMPLE.", dns.RcodeSuccess},
	}
	const perConn = 300
	var g errgroup.Group
	for c := range 4 {
		g.Go(func() error {
			conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(payments)}, net.UDPAddrFromAddrPort(e.udp))
			if err != nil {
				return err
			}
			defer conn.Close()
			_ = conn.SetReadBuffer(1 << 20)
			// Bursts of 25 queries in flight per socket: enough to fill
			// batches, too few to overflow the server's socket buffer.
			sent := map[uint16]want{}
			buf := make([]byte, 4096)
			for i := range perConn {
				w := names[(i+c)%len(names)]
				id := uint16(c*1000 + i + 1)
				if i%50 == 7 {
					if _, err := conn.Write([]byte{byte(id >> 8), byte(id), 0x01}); err != nil { // garbage: no reply
						return err
					}
				}
				m := new(dns.Msg).SetQuestion(w.name, dns.TypeA)
				m.Id = id
				if i%2 == 0 {
					m.SetEdns0(1232, false)
				}
				b, _ := m.Pack()
				if _, err := conn.Write(b); err != nil {
					return err
				}
				sent[id] = w
				if i%25 != 24 {
					continue
				}
				for len(sent) > 0 {
					_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, err := conn.Read(buf)
					if err != nil {
						return fmt.Errorf("conn %d: %d replies missing: %v", c, len(sent), err)
					}
					r := new(dns.Msg)
					if err := r.Unpack(buf[:n]); err != nil {
						return err
					}
					w, ok := sent[r.Id]
					if !ok {
						return fmt.Errorf("conn %d: reply with ID %d: not asked, or answered twice", c, r.Id)
					}
					delete(sent, r.Id)
					if r.Question[0].Name != w.name || r.Rcode != w.rcode {
						return fmt.Errorf("conn %d: ID %d: got %s %s, want %s %s", c, r.Id, r.Question[0].Name, dns.RcodeToString[r.Rcode], w.name, dns.RcodeToString[w.rcode])
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if e.fw.fastHits.Load() < 4*perConn/4 {
		t.Errorf("fast answers: %d of %d queries", e.fw.fastHits.Load(), 4*perConn)
	}
}

// TestPolicyEpoch: a policy keeps its number while it is the one seen,
// and no number ever stands for two policies, even when a query under the
// old policy runs after the reload.
func TestPolicyEpoch(t *testing.T) {
	e, _ := fastEnv(t, zone(), opts{})
	p1, p2 := e.policy(opts{}), e.policy(opts{})
	seen := map[uint64]*policy.Policy{}
	for i, p := range []*policy.Policy{p1, p1, p2, p2, p1, p2, p2} {
		n := e.fw.epoch(p)
		if q, ok := seen[n]; ok && q != p {
			t.Fatalf("step %d: epoch %d stands for two policies", i, n)
		}
		seen[n] = p
	}
	if a, b := e.fw.epoch(p2), e.fw.epoch(p2); a != b {
		t.Errorf("the same policy twice in a row: epochs %d and %d", a, b)
	}
}

// TestWireQueryOptions: EDNS options the fast path cannot vouch for send
// the query the ordinary way, where miekg/dns unpacks (or refuses) it.
func TestWireQueryOptions(t *testing.T) {
	base, err := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opt  []byte // the OPT record appended to base
		want bool
	}{
		{"no options", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0}, true},
		{"cookie", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}, true},
		{"padding", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 6, 0, 12, 0, 2, 0, 0}, true},
		{"option length past rdata", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 200}, false},
		{"option header cut short", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 2, 0, 10}, false},
		{"client subnet, bad family", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 8, 0, 8, 0, 4, 0, 9, 0, 0}, false},
		{"client subnet, good", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2}, false},
		{"rdata past the datagram", []byte{0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 9, 0, 10}, false},
	}
	for _, tt := range tests {
		b := append([]byte(nil), base...)
		b[11] = 1 // ARCOUNT
		b = append(b, tt.opt...)
		var q wireQuery
		if got := q.parse(b); got != tt.want {
			t.Errorf("%s: parse = %v, want %v", tt.name, got, tt.want)
		}
		if err := new(dns.Msg).Unpack(b); q.parse(b) && err != nil {
			t.Errorf("%s: accepted, but miekg/dns refuses it: %v", tt.name, err)
		}
	}
}

// TestFastPathInspectCNAMEPerClient: a client in two groups makes the
// ready; a client in only one of them, allowed the question by the same
// rule and group, is still refused the chain by inspect_cname.
func TestFastPathInspectCNAMEPerClient(t *testing.T) {
	z := dnstest.Zone(
		&dns.CNAME{Hdr: dns.RR_Header{Name: "api.bank.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "target.example."},
		dnstest.A("target.example", 300, "192.0.2.50"),
	)
	e, _ := fastEnv(t, z, opts{})
	y := strings.NewReplacer("UPSTREAM", e.up.Addr.String()).Replace(`
dns:
  upstreams: [UPSTREAM]
  inspect_cname: true
sources:
  payments: [127.0.0.2/32, 127.0.0.5/32]
  extra: [127.0.0.5/32]
rules:
  - name: bank
    from: [payments]
    to: [api.bank.example]
    ports: [443]
  - name: t
    from: [extra]
    to: [target.example]
    ports: [443]
`)
	p, err := policy.Parse("cname.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	e.pol.Store(p)
	const both, one = "127.0.0.5", "127.0.0.2"
	for range 3 {
		if r := e.ask(both, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("client in both groups: %s", dns.RcodeToString[r.Rcode])
		}
	}
	if e.fw.fastHits.Load() == 0 {
		t.Fatal("no fast answers")
	}
	if r := e.ask(one, "api.bank.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("client only in payments: got %s with %d answers, want NXDOMAIN", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
}

// TestFastPathAfterReload: a reload that keeps the name allowed but lowers
// max_ttl is answered with the new TTL at once (no ready of the old policy
// serves it), and once the new ready's TTL has run out while the cache
// entry lives on, a new ready is made.
func TestFastPathAfterReload(t *testing.T) {
	e, _ := fastEnv(t, zone(), opts{})
	for range 3 {
		e.ask(payments, "api.bank.example", dns.TypeA)
	}
	if e.fw.fastHits.Load() == 0 {
		t.Fatal("no fast answers")
	}
	e.pol.Store(e.policy(opts{dns: "  max_ttl: 60s"}))
	for i := range 3 {
		if ttl := e.ask(payments, "api.bank.example", dns.TypeA).Answer[0].Header().Ttl; ttl != 60 {
			t.Errorf("answer %d after the reload to max_ttl 60s: TTL %d", i, ttl)
		}
	}
	e.clock.Advance(61 * time.Second)
	for range 2 {
		e.ask(payments, "api.bank.example", dns.TypeA)
	}
	h := e.fw.fastHits.Load()
	e.ask(payments, "api.bank.example", dns.TypeA)
	if e.fw.fastHits.Load() != h+1 {
		t.Error("no fast answer once the ready's TTL ran out before its cache entry's")
	}
}

// TestFastPathADBit: the AD bit of a cached answer reaches only clients
// that asked with DO or AD, from either path.
func TestFastPathADBit(t *testing.T) {
	z := zone()
	authentic := func(w dns.ResponseWriter, r *dns.Msg) {
		z(adWriter{w}, r)
	}
	e, _ := fastEnv(t, authentic, opts{})
	for _, tc := range []struct {
		name   string
		mod    func(*dns.Msg)
		wantAD bool
	}{
		{"plain", func(*dns.Msg) {}, false},
		{"DO", func(m *dns.Msg) { m.SetEdns0(1232, true) }, true},
		{"AD", func(m *dns.Msg) { m.AuthenticatedData = true }, true},
	} {
		for i := range 3 {
			m := new(dns.Msg).SetQuestion("api.bank.example.", dns.TypeA)
			tc.mod(m)
			r, err := e.exchange(payments, "udp", m, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.AuthenticatedData != tc.wantAD {
				t.Errorf("%s, answer %d: AD %v, want %v", tc.name, i, r.AuthenticatedData, tc.wantAD)
			}
		}
	}
	if e.fw.fastHits.Load() == 0 {
		t.Fatal("no fast answers")
	}
}

// adWriter sets AD on the upstream's answers.
type adWriter struct{ dns.ResponseWriter }

func (w adWriter) WriteMsg(m *dns.Msg) error {
	m.AuthenticatedData = true
	return w.ResponseWriter.WriteMsg(m)
}

// TestFastPathNotForVerifiedRules: answers for a rule with tls.verify are
// verified every time, so never come from the fast path.
func TestFastPathNotForVerifiedRules(t *testing.T) {
	var calls atomic.Int64
	e, _ := fastEnv(t, zone(dnstest.A("verified.example", 300, "192.0.2.40")), opts{
		rules: "  - name: verified\n    from: [web]\n    to: [verified.example]\n    ports: [443]\n    tls: {verify: true}",
		cfg: func(c *Config) {
			c.Verify = func(context.Context, string, netip.Addr, uint16, *policy.TLS) error { calls.Add(1); return nil }
		},
	})
	for range 4 {
		if r := e.ask(web, "verified.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("got %s", dns.RcodeToString[r.Rcode])
		}
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("Verify called %d times for 4 answers, want 4", n)
	}
	if e.fw.fastHits.Load() != 0 {
		t.Error("fast answers for a tls.verify rule")
	}
}

// FuzzTTLOffsets checks ttlOffsets, which finds the TTLs the fast path
// lowers in a ready's reply, compressed or not, against miekg/dns: where
// both read a message, every record's TTL is where ttlOffsets says.
func FuzzTTLOffsets(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	answer := append([]dns.RR{dnstest.CNAME("big.edge.bank.example", 120, "pool.edge.bank.example")},
		manyAddrs("pool.edge.bank.example", 12, false)...)
	for _, compress := range []bool{false, true} {
		m := new(dns.Msg).SetQuestion("big.edge.bank.example.", dns.TypeAAAA)
		m.Response, m.Answer, m.Compress = true, answer, compress
		m.Ns = []dns.RR{dnstest.SOA("bank.example", 3600, 60)}
		m.SetEdns0(1232, true)
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		offs, ok := ttlOffsets(b, nil)
		m := new(dns.Msg)
		if !ok || m.Unpack(b) != nil {
			return
		}
		rrs := append(append(append([]dns.RR(nil), m.Answer...), m.Ns...), m.Extra...)
		if len(offs) != len(rrs) {
			t.Fatalf("%d TTL offsets, %d records:\n%s", len(offs), len(rrs), m)
		}
		for i, rr := range rrs {
			if got := binary.BigEndian.Uint32(b[offs[i]:]); got != rr.Header().Ttl {
				t.Fatalf("record %d (%s): TTL at offset %d is %d, want %d", i, rr, offs[i], got, rr.Header().Ttl)
			}
		}
	})
}
