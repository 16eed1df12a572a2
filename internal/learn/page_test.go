package learn

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

// pageStore returns a store holding entries of names a..e.example, rules
// web and db, groups office and "" (any source), IPv4 and IPv6 addresses.
func pageStore(t *testing.T) (*Store, []Entry) {
	t.Helper()
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	var all []Entry
	for i := range 40 {
		e := Entry{
			Name:    dnsname.Name(fmt.Sprintf("%c.example", 'a'+i%5)),
			Rule:    []string{"web", "db"}[i%2],
			Group:   []string{"office", ""}[i/2%2],
			Expires: c.t.Add(time.Hour),
		}
		if i%3 == 0 {
			e.Addr = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i))
		} else {
			e.Addr = netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i))
		}
		all = append(all, e)
	}
	// The same address for a second name: two entries, one key each.
	dup := all[1]
	dup.Name = "z.example"
	all = append(all, dup)
	if err := s.Publish(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(all, func(a, b Entry) int { return compareKey(&a, &b) })
	return s, all
}

func keys(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = fmt.Sprintf("%s %s %s %s", e.Addr, e.Rule, e.Group, e.Name)
	}
	return out
}

func TestPageFilters(t *testing.T) {
	s, all := pageStore(t)
	pfx := func(s string) netip.Prefix { p, _ := ParseAddrFilter(s); return p }
	tests := []struct {
		name string
		f    Filter
	}{
		{"none", Filter{}},
		{"name", Filter{Name: "c.example"}},
		{"rule", Filter{Rule: "db"}},
		{"group", Filter{Group: "office"}},
		{"any-source group is not a filter", Filter{Group: ""}},
		{"address", Filter{Addr: pfx("192.0.2.7")}},
		{"prefix v4", Filter{Addr: pfx("192.0.2.0/28")}},
		{"prefix v6", Filter{Addr: pfx("2001:db8::/32")}},
		{"name and rule", Filter{Name: "b.example", Rule: "web"}},
		{"nothing matches", Filter{Name: "nowhere.example"}},
		{"shared address, second name", Filter{Name: "z.example"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []Entry
			for _, e := range all {
				if tt.f.Match(&e) {
					want = append(want, e)
				}
			}
			// Every page size, from one entry a page to all at once:
			// the pages add up to the matching entries, in order.
			for _, limit := range []int{1, 2, 3, 7, len(all), MaxPage} {
				var got []Entry
				var c Cursor
				for pages := 0; ; pages++ {
					if pages > len(all)+1 {
						t.Fatalf("limit %d: more pages than entries", limit)
					}
					// Through its string, as a client passes it.
					pc, err := ParseCursor(c.String())
					if err != nil {
						t.Fatal(err)
					}
					page, next := Page(s.All(tt.f.Name), tt.f, pc, limit) // by name: the store looks the name up
					if len(page) > limit {
						t.Fatalf("limit %d: got a page of %d", limit, len(page))
					}
					got = append(got, page...)
					if next == (Cursor{}) {
						break
					}
					if len(page) != limit {
						t.Fatalf("limit %d: a short page of %d before the last", limit, len(page))
					}
					c = next
				}
				if g, w := keys(got), keys(want); !slices.Equal(g, w) {
					t.Errorf("limit %d:\ngot  %q\nwant %q", limit, g, w)
				}
			}
		})
	}
}

func TestParseFilterAndCursor(t *testing.T) {
	addrs := []struct {
		in, want string
		bad      bool
	}{
		{in: "192.0.2.7", want: "192.0.2.7/32"},
		{in: "::ffff:192.0.2.7", want: "192.0.2.7/32"},
		{in: "192.0.2.77/24", want: "192.0.2.0/24"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "example.com", bad: true},
		{in: "192.0.2.0/33", bad: true},
		{in: "fe80::1%eth0", bad: true},
	}
	for _, tt := range addrs {
		p, err := ParseAddrFilter(tt.in)
		if tt.bad != (err != nil) || (!tt.bad && p.String() != tt.want) {
			t.Errorf("ParseAddrFilter(%q): got %v, %v; want %q, bad %v", tt.in, p, err, tt.want, tt.bad)
		}
	}
	for _, s := range []string{"!!", "Zm9v", "MTkyLjAuMi4x"} { // not base64; "foo"; "192.0.2.1" without the other parts
		if _, err := ParseCursor(s); err == nil {
			t.Errorf("ParseCursor(%q): got no error", s)
		}
	}
	e := Entry{Name: "a.example", Rule: "web", Group: "office", Addr: netip.MustParseAddr("2001:db8::1")}
	if c, err := ParseCursor(CursorAt(&e).String()); err != nil || c != CursorAt(&e) {
		t.Errorf("cursor round trip: got %+v, %v; want %+v", c, err, CursorAt(&e))
	}
}

// TestPageConcurrentInserts pages through a store while others add
// entries: every entry held from the start is listed exactly once, and the
// pages come in order without repeating a key.
func TestPageConcurrentInserts(t *testing.T) {
	s := NewStore(StoreConfig{})
	exp := time.Now().Add(time.Hour)
	var before []Entry
	for i := range 5000 {
		before = append(before, Entry{Name: dnsname.Name(fmt.Sprintf("n%d.example", i%500)), Rule: "web", Addr: netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), Expires: exp})
	}
	if err := s.Publish(context.Background(), before); err != nil {
		t.Fatal(err)
	}
	// Each writer adds a bounded number, so that the listing, which
	// lists what lands after its cursor too, comes to an end.
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				// Addresses before, between and after the held ones.
				a := netip.AddrFrom4([4]byte{[]byte{192, 203}[w], 0, byte(i >> 8), byte(i)})
				b := netip.AddrFrom4([4]byte{198, 51, byte(i >> 8 % 20), byte(i)})
				_ = s.Publish(context.Background(), []Entry{
					{Name: dnsname.Name(fmt.Sprintf("new%d.example", i)), Rule: "web", Addr: a, Expires: exp},
					{Name: dnsname.Name(fmt.Sprintf("new%d.example", i)), Rule: "db", Addr: b, Expires: exp},
				})
			}
		}()
	}
	seen := map[string]int{}
	var last *Entry
	var c Cursor
	for {
		page, next := Page(s.All(""), Filter{}, c, 97)
		for i := range page {
			if last != nil && compareKey(last, &page[i]) >= 0 {
				t.Fatalf("out of order: %v after %v", keys(page[i:i+1]), keys([]Entry{*last}))
			}
			last = &page[i]
			seen[keys(page[i : i+1])[0]]++
		}
		if next == (Cursor{}) {
			break
		}
		c = next
	}
	wg.Wait()
	for _, k := range keys(before) {
		if seen[k] != 1 {
			t.Errorf("%s listed %d times, want once", k, seen[k])
		}
	}
	if len(seen) <= len(before) {
		t.Logf("no concurrent insert landed in the listing (%d keys)", len(seen))
	}
}

// BenchmarkPage lists one page of a store of 1,000,000 entries (100,000
// names), at the start and in the middle, with and without a filter:
// what a /v1/learned request costs at that size.
func BenchmarkPage(b *testing.B) {
	s := NewStore(StoreConfig{})
	exp := time.Now().Add(time.Hour)
	batch := make([]Entry, 0, 10)
	for n := range 100_000 {
		batch = batch[:0]
		for i := n * 10; i < n*10+10; i++ {
			batch = append(batch, Entry{Name: dnsname.Name(fmt.Sprintf("n%d.example", n)), Rule: "web", Addr: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), Expires: exp})
		}
		if err := s.Publish(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	mid := CursorAt(&Entry{Addr: netip.MustParseAddr("2001:db8::7:a120"), Rule: "web"})
	for _, bc := range []struct {
		name  string
		f     Filter
		c     Cursor
		limit int
	}{
		{"first-1000", Filter{}, Cursor{}, 1000},
		{"middle-10000", Filter{}, mid, MaxPage},
		{"name", Filter{Name: "n4242.example"}, Cursor{}, 1000},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				page, _ := Page(s.All(bc.f.Name), bc.f, bc.c, bc.limit)
				if len(page) == 0 {
					b.Fatal("empty page")
				}
			}
		})
	}
}
