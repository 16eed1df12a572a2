package dnscache

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func newCache(cfg Config) (*Cache, *fakeClock) {
	clk := &fakeClock{t: t0}
	cfg.Now = clk.now
	return New(cfg), clk
}

func query(name string, qtype uint16) *dns.Msg {
	return new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
}

func key(t testing.TB, q *dns.Msg) Key {
	t.Helper()
	k, ok := KeyOf(q)
	if !ok {
		t.Fatalf("KeyOf(%v) failed", q.Question)
	}
	return k
}

func reply(q *dns.Msg, rcode int, answer []dns.RR, ns ...dns.RR) *dns.Msg {
	m := dnstest.Reply(q, rcode, answer...)
	m.Ns = ns
	return m
}

func ttls(m *dns.Msg) []uint32 {
	var out []uint32
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype != dns.TypeOPT {
				out = append(out, rr.Header().Ttl)
			}
		}
	}
	return out
}

func TestTTL(t *testing.T) {
	q := query("www.example.com", dns.TypeA)
	soa := dnstest.SOA("example.com", 3600, 60)
	tests := []struct {
		name   string
		resp   *dns.Msg
		maxTTL time.Duration
		after  time.Duration
		want   []uint32 // nil: a miss
	}{
		{"fresh", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 0, 0, []uint32{300}},
		{"whole seconds elapsed", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 0, 10900 * time.Millisecond, []uint32{290}},
		{"last second", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 0, 299900 * time.Millisecond, []uint32{1}},
		{"expired", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 0, 300 * time.Second, nil},
		{"smallest TTL rules", reply(q, dns.RcodeSuccess, []dns.RR{
			dnstest.CNAME("www.example.com", 60, "cdn.example.net"), dnstest.A("cdn.example.net", 300, "192.0.2.1")}), 0, 30 * time.Second, []uint32{30, 270}},
		{"expired by smallest TTL", reply(q, dns.RcodeSuccess, []dns.RR{
			dnstest.CNAME("www.example.com", 60, "cdn.example.net"), dnstest.A("cdn.example.net", 300, "192.0.2.1")}), 0, 60 * time.Second, nil},
		{"authority counts", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")},
			&dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: 20}, Ns: "ns.example.com."}), 0, 20 * time.Second, nil},
		{"MaxTTL caps the stay, not the TTL", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 10 * time.Second, 9 * time.Second, []uint32{291}},
		{"MaxTTL expires", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 10 * time.Second, 10 * time.Second, nil},
		{"NXDOMAIN uses SOA MINIMUM", reply(q, dns.RcodeNameError, nil, soa), 0, 0, []uint32{60}},
		{"NXDOMAIN decrements", reply(q, dns.RcodeNameError, nil, soa), 0, 45 * time.Second, []uint32{15}},
		{"NXDOMAIN expires", reply(q, dns.RcodeNameError, nil, soa), 0, 60 * time.Second, nil},
		{"NODATA uses SOA MINIMUM", reply(q, dns.RcodeSuccess, nil, soa), 0, 59 * time.Second, []uint32{1}},
		{"SOA TTL below MINIMUM", reply(q, dns.RcodeNameError, nil, dnstest.SOA("example.com", 30, 600)), 0, 0, []uint32{30}},
		{"SOA TTL below MINIMUM expires", reply(q, dns.RcodeNameError, nil, dnstest.SOA("example.com", 30, 600)), 0, 30 * time.Second, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, clk := newCache(Config{MaxTTL: tt.maxTTL})
			k := key(t, q)
			if !c.Put(k, tt.resp) {
				t.Fatal("Put refused a cacheable response")
			}
			clk.set(t0.Add(tt.after))
			m, ok := c.Get(k)
			if tt.want == nil {
				if ok {
					t.Fatalf("got a hit with TTLs %v after %v, want a miss", ttls(m), tt.after)
				}
				return
			}
			if !ok {
				t.Fatalf("got a miss after %v, want TTLs %v", tt.after, tt.want)
			}
			if got := ttls(m); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got TTLs %v after %v, want %v", got, tt.after, tt.want)
			}
			if m.Rcode != tt.resp.Rcode {
				t.Errorf("got rcode %d, want %d", m.Rcode, tt.resp.Rcode)
			}
		})
	}
}

func TestNotCached(t *testing.T) {
	q := query("www.example.com", dns.TypeA)
	a := []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}
	truncated := reply(q, dns.RcodeSuccess, a)
	truncated.Truncated = true
	tests := []struct {
		name string
		resp *dns.Msg
	}{
		{"nil", nil},
		{"SERVFAIL", reply(q, dns.RcodeServerFailure, nil)},
		{"REFUSED", reply(q, dns.RcodeRefused, nil)},
		{"FORMERR", reply(q, dns.RcodeFormatError, nil)},
		{"truncated", truncated},
		{"TTL with the top bit set", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 1<<31, "192.0.2.1")})},
		{"zero TTL", reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 0, "192.0.2.1")})},
		{"NXDOMAIN without SOA", reply(q, dns.RcodeNameError, nil)},
		{"NODATA without SOA", reply(q, dns.RcodeSuccess, nil)},
		{"SOA MINIMUM zero", reply(q, dns.RcodeNameError, nil, dnstest.SOA("example.com", 3600, 0))},
		{"other question", reply(query("evil.example", dns.TypeA), dns.RcodeSuccess, a)},
		{"other type", reply(query("www.example.com", dns.TypeAAAA), dns.RcodeSuccess, nil, dnstest.SOA("example.com", 3600, 60))},
		{"no question", &dns.Msg{Answer: a}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newCache(Config{})
			k := key(t, q)
			if c.Put(k, tt.resp) {
				t.Error("Put cached it, want refused")
			}
			if _, ok := c.Get(k); ok {
				t.Error("got a hit, want a miss")
			}
		})
	}
}

func TestKeys(t *testing.T) {
	edns := func(m *dns.Msg, do bool) *dns.Msg { m.SetEdns0(1232, do); return m }
	cd := func(m *dns.Msg) *dns.Msg { m.CheckingDisabled = true; return m }
	tests := []struct {
		name string
		a, b *dns.Msg
		same bool
	}{
		{"case-insensitive", query("WWW.Example.COM", dns.TypeA), query("www.example.com", dns.TypeA), true},
		{"EDNS without DO is plain", edns(query("a.test", dns.TypeA), false), query("a.test", dns.TypeA), true},
		{"DO separates", edns(query("a.test", dns.TypeA), true), edns(query("a.test", dns.TypeA), false), false},
		{"CD separates", cd(query("a.test", dns.TypeA)), query("a.test", dns.TypeA), false},
		{"type separates", query("a.test", dns.TypeA), query("a.test", dns.TypeAAAA), false},
		{"class separates", query("a.test", dns.TypeA), func() *dns.Msg { m := query("a.test", dns.TypeA); m.Question[0].Qclass = dns.ClassCHAOS; return m }(), false},
		{"only ASCII folds", query("\u00c4.test", dns.TypeA), query("\u00e4.test", dns.TypeA), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka, kb := key(t, tt.a), key(t, tt.b)
			if got := ka == kb; got != tt.same {
				t.Errorf("got %v == %v: %v, want %v", ka, kb, got, tt.same)
			}
		})
	}
	if _, ok := KeyOf(&dns.Msg{}); ok {
		t.Error("KeyOf accepted a query without a question")
	}
}

func TestDOBitSeparatesEntries(t *testing.T) {
	c, _ := newCache(Config{})
	plain := query("www.example.com", dns.TypeA)
	secure := query("www.example.com", dns.TypeA)
	secure.SetEdns0(1232, true)
	c.Put(key(t, secure), reply(secure, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}))
	if _, ok := c.Get(key(t, plain)); ok {
		t.Error("got a hit for a query without DO from an entry cached with DO")
	}
	m, ok := c.Get(key(t, secure))
	if !ok {
		t.Fatal("got a miss for the DO query")
	}
	if opt := m.IsEdns0(); opt == nil || !opt.Do() {
		t.Error("got the cached OPT without DO, want DO kept")
	}
}

func TestCasePreservedInQuestionIsIrrelevant(t *testing.T) {
	c, _ := newCache(Config{})
	q := query("WWW.Example.com", dns.TypeA)
	c.Put(key(t, q), reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}))
	if _, ok := c.Get(key(t, query("www.EXAMPLE.com", dns.TypeA))); !ok {
		t.Error("got a miss for the same name in another case")
	}
}

func TestCopies(t *testing.T) {
	c, clk := newCache(Config{})
	q := query("www.example.com", dns.TypeA)
	q.SetEdns0(1232, false)
	resp := reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")})
	resp.Id = 777
	resp.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708aabbccddeeff0011"}}
	k := key(t, q)
	c.Put(k, resp)
	resp.Answer[0].Header().Ttl = 1 // the caller's copy is its own

	m, _ := c.Get(k)
	if m.Id != 0 {
		t.Errorf("got ID %d, want 0 for the caller to set", m.Id)
	}
	if opt := m.IsEdns0(); opt == nil || len(opt.Option) != 0 {
		t.Errorf("got OPT %v, want one without the upstream's options", opt)
	}
	m.Answer[0].Header().Ttl = 5
	m.Answer = nil

	clk.set(t0.Add(time.Second))
	m, _ = c.Get(k)
	if got := ttls(m); len(got) != 1 || got[0] != 299 {
		t.Errorf("got TTLs %v, want [299]: the cache must not share records with callers", got)
	}
}

// TestPutLeavesResponse: what Put changes in the response it keeps (the
// ID, the SOA's TTL, the OPT record's options) it changes in its own
// copy, not in the caller's.
func TestPutLeavesResponse(t *testing.T) {
	c, _ := newCache(Config{})
	q := query("nx.example.com", dns.TypeA)
	q.SetEdns0(1232, true)
	resp := reply(q, dns.RcodeNameError, nil, dnstest.SOA("example.com", 3600, 60))
	resp.Id = 777
	resp.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708aabbccddeeff0011"}}
	want := resp.String()
	if !c.Put(key(t, q), resp) {
		t.Fatal("Put refused a cacheable response")
	}
	if got := resp.String(); got != want {
		t.Errorf("Put changed the caller's response:\n%s\nwant\n%s", got, want)
	}
	m, ok := c.Get(key(t, q))
	if !ok {
		t.Fatal("got a miss")
	}
	if m.Id != 0 || m.Ns[0].Header().Ttl != 60 || len(m.IsEdns0().Option) != 0 || !m.IsEdns0().Do() {
		t.Errorf("got\n%s\nwant ID 0, the SOA's TTL 60, the OPT record with DO and without options", m)
	}

	// Two OPT records (a malformed answer): the last is the one IsEdns0
	// finds, and the one Pack writes to.
	resp.Extra = append([]dns.RR{&dns.OPT{
		Hdr:    dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 4096},
		Option: []dns.EDNS0{&dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "0102"}},
	}}, resp.Extra...)
	want = resp.String()
	if !c.Put(key(t, q), resp) {
		t.Fatal("Put refused a response with two OPT records")
	}
	if got := resp.String(); got != want {
		t.Errorf("Put changed the caller's response:\n%s\nwant\n%s", got, want)
	}
	if m, ok = c.Get(key(t, q)); !ok || len(m.Extra) != 2 || len(m.Extra[0].(*dns.OPT).Option) != 1 || len(m.IsEdns0().Option) != 0 {
		t.Errorf("got\n%s\nwant the first OPT record as it was, the last without options", m)
	}
}

// TestUnpackableEntryIsAMiss: an entry whose bytes do not unpack (which
// Put never stores) is a miss, and is dropped: the cache fails closed.
func TestUnpackableEntryIsAMiss(t *testing.T) {
	c, _ := newCache(Config{})
	q := query("www.example.com", dns.TypeA)
	k := key(t, q)
	e := c.PutEntry(k, reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}))
	if e == nil {
		t.Fatal("Put refused a cacheable response")
	}
	e.wire = e.wire[:len(e.wire)-2] // the A record's address cut short
	if m, ok := c.Get(k); ok {
		t.Fatalf("got a hit from bytes that do not unpack:\n%s", m)
	}
	if n := c.Len(); n != 0 {
		t.Errorf("the cache holds %d entries, want the unusable one dropped", n)
	}
}

func TestEviction(t *testing.T) {
	c, _ := newCache(Config{MaxEntries: numShards * 2})
	for i := range 1000 {
		q := query(fmt.Sprintf("host%d.example.com", i), dns.TypeA)
		c.Put(key(t, q), reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A(q.Question[0].Name, 300, "192.0.2.1")}))
	}
	if got, limit := c.Len(), numShards*2; got > limit {
		t.Errorf("got %d entries, want at most %d", got, limit)
	}
	c.Flush()
	if got := c.Len(); got != 0 {
		t.Errorf("got %d entries after Flush, want 0", got)
	}
}

func TestEvictionPrefersExpiredThenSoonest(t *testing.T) {
	mk := func(name string, expires time.Duration) (Key, *Entry) {
		return Key{name: name, qtype: dns.TypeA, qclass: dns.ClassINET}, &Entry{stored: t0, life: expires}
	}
	tests := []struct {
		name    string
		entries map[string]time.Duration
		want    string
	}{
		{"expired first", map[string]time.Duration{"a.": 50 * time.Second, "b.": -time.Second, "c.": 10 * time.Second}, "b."},
		{"else soonest to expire", map[string]time.Duration{"a.": 50 * time.Second, "b.": 20 * time.Second, "c.": 10 * time.Second}, "c."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := shard{items: map[Key]*Entry{}}
			for n, d := range tt.entries {
				k, e := mk(n, d)
				s.items[k] = e
			}
			s.evictLocked(t0)
			for n := range tt.entries {
				k, _ := mk(n, 0)
				if _, kept := s.items[k]; kept == (n == tt.want) {
					t.Errorf("%s: got kept=%v, want %v", n, kept, n != tt.want)
				}
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	c := New(Config{MaxEntries: 64})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				q := query(fmt.Sprintf("h%d.example.com", (i*7+g)%100), dns.TypeA)
				k := key(t, q)
				c.Put(k, reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A(q.Question[0].Name, 300, "192.0.2.1")}))
				if m, ok := c.Get(k); ok {
					m.Answer[0].Header().Ttl = 0
				}
			}
		})
	}
	wg.Wait()
}

// TestTagKeptWithEntry: a tag lives with its entry and is replaced with it.
func TestTagKeptWithEntry(t *testing.T) {
	c, clk := newCache(Config{})
	q := query("www.example.com", dns.TypeA)
	k := key(t, q)
	c.PutTagged(k, reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.1")}), 2)
	clk.set(t0.Add(10 * time.Second))
	if _, e, _ := c.GetEntry(k); e == nil || e.Tag() != 2 {
		t.Fatalf("GetEntry: entry %v, want one tagged 2", e)
	}
	c.Put(k, reply(q, dns.RcodeSuccess, []dns.RR{dnstest.A("www.example.com", 300, "192.0.2.2")}))
	if e := c.Lookup(k, clk.now()); e == nil || e.Tag() != 0 {
		t.Fatalf("after Put: entry %v, want one tagged 0", e)
	}
}
