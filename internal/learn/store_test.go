package learn

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

func entry(name, addr string, expires time.Time) Entry {
	return Entry{Name: dnsname.Name(name), Rule: "r", Group: "g", Addr: netip.MustParseAddr(addr), Expires: expires}
}

func TestStoreExpiryOnlyMovesLater(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	later, sooner := c.t.Add(time.Hour), c.t.Add(time.Minute)
	tests := []struct {
		name    string
		publish time.Time
		want    time.Time
	}{
		{"first", sooner, sooner},
		{"extended", later, later},
		{"a shorter TTL does not shorten", sooner, later},
	}
	for _, tt := range tests {
		if err := s.Publish(context.Background(), []Entry{entry("a.example", "192.0.2.1", tt.publish)}); err != nil {
			t.Fatal(err)
		}
		l := s.List()
		if len(l) != 1 || !l[0].Expires.Equal(tt.want) {
			t.Errorf("%s: got %+v, want one entry expiring %v", tt.name, l, tt.want)
		}
	}
}

func TestStoreExpires(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	_ = s.Publish(context.Background(), []Entry{
		entry("a.example", "192.0.2.1", c.t.Add(time.Minute)),
		entry("a.example", "192.0.2.2", c.t.Add(time.Hour)),
		entry("b.example", "192.0.2.3", c.t.Add(-time.Second)), // already expired: ignored
	})
	if got := s.Len(); got != 2 {
		t.Errorf("Len: got %d, want 2", got)
	}
	c.t = c.t.Add(2 * time.Minute)
	if got := s.Len(); got != 1 {
		t.Errorf("Len after a minute's entry expired: got %d, want 1", got)
	}
	if l := s.List(); len(l) != 1 || l[0].Addr.String() != "192.0.2.2" {
		t.Errorf("List: got %+v, want only 192.0.2.2", l)
	}
}

func TestStoreBounds(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{MaxEntries: 10, MaxPerName: 3, Now: c.Now})
	// One name with five addresses, each expiring later than the last:
	// the per-name bound keeps the three latest.
	for i := range 5 {
		_ = s.Publish(context.Background(), []Entry{entry("rr.example", fmt.Sprintf("192.0.2.%d", i+1), c.t.Add(time.Duration(i+1)*time.Minute))})
	}
	var got []string
	for _, e := range s.List() {
		got = append(got, e.Addr.String())
	}
	if len(got) != 3 {
		t.Fatalf("per-name bound: got %v, want 3 entries", got)
	}
	for _, a := range got {
		if a == "192.0.2.1" || a == "192.0.2.2" {
			t.Errorf("per-name bound kept %s, which expires soonest", a)
		}
	}
	if total, perName := s.Evictions(); total != 2 || perName != 2 {
		t.Errorf("evictions: got %d total, %d per name; want 2, 2", total, perName)
	}
	// Many names: the store never holds more than its maximum.
	for i := range 100 {
		_ = s.Publish(context.Background(), []Entry{entry(fmt.Sprintf("n%d.example", i), "198.51.100.1", c.t.Add(time.Hour))})
		if n := s.Len(); n > 10 {
			t.Fatalf("after %d names: %d entries, want at most 10", i+1, n)
		}
	}
}

// at returns the time d after c's.
func (c *clock) at(d time.Duration) time.Time { return c.t.Add(d) }

// checkStore fails t unless s's internal state is consistent: every name's
// records sorted by address, none twice, within the per-name bound, no
// name without records, and s.n counting them all within the bound.
func checkStore(t *testing.T, s *Store) {
	t.Helper()
	total := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for name, recs := range sh.names {
			if len(recs) == 0 {
				t.Errorf("%s: held with no records", name)
			}
			if len(recs) > s.perName {
				t.Errorf("%s: %d records, bound %d", name, len(recs), s.perName)
			}
			if s.shard(name) != sh {
				t.Errorf("%s: in the wrong shard", name)
			}
			for j := range recs {
				if j > 0 && recs[j].addr.Less(recs[j-1].addr) {
					t.Errorf("%s: records not sorted: %v after %v", name, recs[j].addr, recs[j-1].addr)
				}
				for k := range j {
					if recs[k].addr == recs[j].addr && recs[k].rg == recs[j].rg {
						t.Errorf("%s: %v %v held twice", name, recs[j].addr, recs[j].rg.Value())
					}
				}
			}
			total += len(recs)
		}
		sh.mu.RUnlock()
	}
	if n := int(s.n.Load()); n != total {
		t.Errorf("count: %d, but %d records held", n, total)
	}
	if total > s.max {
		t.Errorf("%d records held, bound %d", total, s.max)
	}
}

// held returns the expiry s holds for name and addr (rule r, group g),
// expired or not, and whether it holds it.
func held(s *Store, name, addr string) (time.Time, bool) {
	e := entry(name, addr, time.Time{})
	sh := s.shard(e.Name)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	recs := sh.names[e.Name]
	if j, ok := search(recs, &e); ok {
		return time.Unix(recs[j].exp, 0).UTC(), true
	}
	return time.Time{}, false
}

func TestStoreExpiryRounding(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	ms := time.Millisecond
	tests := []struct {
		name    string
		publish time.Duration // after the clock
		want    time.Duration // expiry listed after
	}{
		{"whole second kept", 10 * time.Second, 10 * time.Second},
		{"rounded up", 10*time.Second + 1*ms, 11 * time.Second},
		{"later within the second: no change", 10*time.Second + 999*ms, 11 * time.Second},
		{"exactly the held second: no change", 11 * time.Second, 11 * time.Second},
		{"a nanosecond past it: next second", 11*time.Second + 1, 12 * time.Second},
		{"earlier: not shortened", 3 * time.Second, 12 * time.Second},
		{"much later", time.Hour + 500*ms, time.Hour + time.Second},
	}
	for _, tt := range tests {
		if err := s.Publish(context.Background(), []Entry{entry("a.example", "192.0.2.1", c.at(tt.publish))}); err != nil {
			t.Fatal(err)
		}
		l := s.List()
		if len(l) != 1 || l[0].Expires != c.at(tt.want).UTC() {
			t.Errorf("%s: got %+v, want one entry expiring %v", tt.name, l, c.at(tt.want).UTC())
		}
		if len(l) == 1 && l[0].Expires.Before(c.at(tt.publish)) {
			t.Errorf("%s: listed expiry %v earlier than published %v", tt.name, l[0].Expires, c.at(tt.publish))
		}
	}
	checkStore(t, s)
}

// TestStoreExpired: entries whose Expires has passed are ignored, whether
// or not the store holds (an expired, unswept) entry for them.
func TestStoreExpired(t *testing.T) {
	tests := []struct {
		name     string
		held     time.Duration // the held entry's expiry, after start; 0: none
		advance  time.Duration // then the clock moves on by
		publish  time.Duration // and this is published, after start
		wantHeld bool          // the entry is listed afterwards
		wantExp  time.Duration // with this expiry, after start
	}{
		{"not held, already expired", 0, time.Minute, 30 * time.Second, false, 0},
		{"not held, expires now", 0, time.Minute, time.Minute, false, 0},
		{"held expired, republished expired: not revived", 10 * time.Second, time.Minute, 50 * time.Second, false, 0},
		{"held expired, republished sub-second short of now: not revived", 10 * time.Second, time.Minute + 500*time.Millisecond, time.Minute + 400*time.Millisecond, false, 0},
		{"held expired, republished unexpired: revived", 10 * time.Second, time.Minute, 2 * time.Minute, true, 2 * time.Minute},
		{"held unexpired, republished expired: kept", 2 * time.Minute, time.Minute, 30 * time.Second, true, 2 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1_000_000, 0)}
			start := c.t
			s := NewStore(StoreConfig{Now: c.Now})
			if tt.held != 0 {
				_ = s.Publish(context.Background(), []Entry{entry("a.example", "192.0.2.1", start.Add(tt.held))})
			}
			c.t = c.t.Add(tt.advance)
			_ = s.Publish(context.Background(), []Entry{entry("a.example", "192.0.2.1", start.Add(tt.publish))})
			l := s.List()
			switch {
			case !tt.wantHeld && len(l) != 0:
				t.Errorf("got %+v, want nothing listed", l)
			case tt.wantHeld && (len(l) != 1 || !l[0].Expires.Equal(start.Add(tt.wantExp))):
				t.Errorf("got %+v, want one entry expiring %v", l, start.Add(tt.wantExp))
			}
			checkStore(t, s)
		})
	}
}

func TestStorePerNameBound(t *testing.T) {
	type pub struct {
		addr    string
		group   string
		expires time.Duration // after start
	}
	tests := []struct {
		name          string
		perName       int
		advance       time.Duration // after the first batch
		first, second []pub
		want          []string // addr/group held afterwards, sorted
		wantEvicted   uint64
	}{
		{
			name: "the soonest makes room", perName: 2,
			first:  []pub{{"192.0.2.1", "g", 3 * time.Minute}, {"192.0.2.2", "g", time.Minute}},
			second: []pub{{"192.0.2.3", "g", 2 * time.Minute}},
			want:   []string{"192.0.2.1/g", "192.0.2.3/g"}, wantEvicted: 1,
		},
		{
			name: "a batch larger than the bound keeps its latest", perName: 2,
			first: []pub{{"192.0.2.1", "g", time.Minute}, {"192.0.2.2", "g", 3 * time.Minute}, {"192.0.2.3", "g", 2 * time.Minute}, {"192.0.2.4", "g", 4 * time.Minute}},
			want:  []string{"192.0.2.2/g", "192.0.2.4/g"}, wantEvicted: 2,
		},
		{
			name: "one address in two groups is two entries", perName: 2,
			first:  []pub{{"192.0.2.1", "a", 2 * time.Minute}, {"192.0.2.1", "b", time.Minute}},
			second: []pub{{"192.0.2.2", "a", 3 * time.Minute}},
			want:   []string{"192.0.2.1/a", "192.0.2.2/a"}, wantEvicted: 1,
		},
		{
			name: "refreshing a held entry evicts nothing", perName: 2,
			first:  []pub{{"192.0.2.1", "g", time.Minute}, {"192.0.2.2", "g", time.Minute}},
			second: []pub{{"192.0.2.1", "g", time.Hour}, {"192.0.2.2", "g", 30 * time.Second}},
			want:   []string{"192.0.2.1/g", "192.0.2.2/g"}, wantEvicted: 0,
		},
		{
			name: "a bound of one", perName: 1,
			first:  []pub{{"192.0.2.1", "g", 3 * time.Minute}, {"192.0.2.2", "g", time.Minute}},
			second: []pub{{"192.0.2.3", "g", 2 * time.Minute}, {"192.0.2.4", "g", 4 * time.Minute}},
			want:   []string{"192.0.2.4/g"}, wantEvicted: 3,
		},
		{
			name: "an expired entry makes room uncounted", perName: 2, advance: 90 * time.Second,
			first:  []pub{{"192.0.2.1", "g", 3 * time.Minute}, {"192.0.2.2", "g", time.Minute}},
			second: []pub{{"192.0.2.3", "g", 2 * time.Minute}},
			want:   []string{"192.0.2.1/g", "192.0.2.3/g"}, wantEvicted: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1_000_000, 0)}
			start := c.t
			s := NewStore(StoreConfig{MaxPerName: tt.perName, Now: c.Now})
			batch := func(ps []pub) []Entry {
				var b []Entry
				for _, p := range ps {
					e := entry("rr.example", p.addr, start.Add(p.expires))
					e.Group = p.group
					b = append(b, e)
				}
				return b
			}
			_ = s.Publish(context.Background(), batch(tt.first))
			checkStore(t, s)
			c.t = c.t.Add(tt.advance)
			_ = s.Publish(context.Background(), batch(tt.second))
			checkStore(t, s)
			var got []string
			for _, e := range s.List() {
				got = append(got, e.Addr.String()+"/"+e.Group)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("held: got %v, want %v", got, tt.want)
			}
			if total, perName := s.Evictions(); total != tt.wantEvicted || perName != tt.wantEvicted {
				t.Errorf("evictions: got %d total, %d per name; want %d", total, perName, tt.wantEvicted)
			}
		})
	}
}

func TestStoreMaxEntries(t *testing.T) {
	tests := []struct {
		name        string
		max         int
		fill        []Entry       // published first
		advance     time.Duration // then the clock moves on by
		publish     []Entry       // then this is
		wantLen     int
		wantHeld    []string // name/addr that must be held
		wantEvicted uint64
	}{
		{
			name: "another name makes room", max: 2,
			fill:    []Entry{entry("a.example", "192.0.2.1", time.Unix(1_000_000+60, 0))},
			publish: []Entry{entry("b.example", "192.0.2.2", time.Unix(1_000_000+60, 0)), entry("b.example", "192.0.2.3", time.Unix(1_000_000+60, 0))},
			wantLen: 2, wantHeld: []string{"b.example/192.0.2.2", "b.example/192.0.2.3"}, wantEvicted: 1,
		},
		{
			name: "the name itself, if it is the only one", max: 1,
			publish: []Entry{entry("b.example", "192.0.2.2", time.Unix(1_000_000+60, 0)), entry("b.example", "192.0.2.3", time.Unix(1_000_000+120, 0))},
			wantLen: 1, wantHeld: []string{"b.example/192.0.2.3"}, wantEvicted: 1,
		},
		{
			name: "expired entries are swept first", max: 2,
			fill:    []Entry{entry("a.example", "192.0.2.1", time.Unix(1_000_000+10, 0)), entry("c.example", "192.0.2.9", time.Unix(1_000_000+600, 0))},
			advance: time.Minute,
			publish: []Entry{entry("b.example", "192.0.2.2", time.Unix(1_000_000+600, 0))},
			wantLen: 2, wantHeld: []string{"b.example/192.0.2.2", "c.example/192.0.2.9"}, wantEvicted: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1_000_000, 0)}
			s := NewStore(StoreConfig{MaxEntries: tt.max, Now: c.Now})
			_ = s.Publish(context.Background(), tt.fill)
			c.t = c.t.Add(tt.advance)
			_ = s.Publish(context.Background(), tt.publish)
			checkStore(t, s)
			for _, h := range tt.wantHeld {
				name, addr, _ := strings.Cut(h, "/")
				if _, ok := held(s, name, addr); !ok {
					t.Errorf("%s not held; List: %+v", h, s.List())
				}
			}
			if n := s.Len(); n != tt.wantLen {
				t.Errorf("Len: got %d, want %d", n, tt.wantLen)
			}
			if total, perName := s.Evictions(); total != tt.wantEvicted || perName != 0 {
				t.Errorf("evictions: got %d total, %d per name; want %d, 0", total, perName, tt.wantEvicted)
			}
		})
	}
}

func TestStoreSweep(t *testing.T) {
	type step struct {
		advance  time.Duration // the clock moves on by
		publish  string        // then this address of b.example is published, expiring in an hour ("": nothing)
		wantHeld bool          // whether a.example's expired entry is still held (unswept) after
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a Publish that adds sweeps once sweepEvery passed", []step{
			{6 * time.Second, "192.0.2.2", true}, // a.example expired, the last sweep (at start) 6s ago
			{3 * time.Second, "192.0.2.3", true}, // 9s ago
			{time.Second, "192.0.2.4", false},    // sweepEvery ago
			{time.Second, "192.0.2.4", false},
		}},
		{"a Publish that adds nothing does not sweep", []step{
			{6 * time.Second, "192.0.2.2", true},
			{time.Hour / 2, "192.0.2.2", true},
			{time.Hour / 2, "192.0.2.2", true},
		}},
		{"Len sweeps", []step{
			{6 * time.Second, "", true},
			{0, "len", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &clock{t: time.Unix(1_000_000, 0)}
			s := NewStore(StoreConfig{Now: c.Now})
			// The first Publish that adds sweeps (there was none before),
			// the store empty.
			_ = s.Publish(context.Background(), []Entry{entry("a.example", "192.0.2.1", c.at(5*time.Second))})
			for i, st := range tt.steps {
				c.t = c.t.Add(st.advance)
				switch st.publish {
				case "":
				case "len":
					s.Len()
				default:
					_ = s.Publish(context.Background(), []Entry{entry("b.example", st.publish, c.at(time.Hour))})
				}
				if _, ok := held(s, "a.example", "192.0.2.1"); ok != st.wantHeld {
					t.Errorf("step %d: a.example held: %v, want %v", i, ok, st.wantHeld)
				}
				for _, e := range s.List() {
					if e.Name == "a.example" {
						t.Errorf("step %d: expired entry listed: %+v", i, e)
					}
				}
				checkStore(t, s)
			}
		})
	}
}

// TestStorePublishHeldAllocs: republishing held entries, with the same
// expiry or a later one, allocates nothing.
func TestStorePublishHeldAllocs(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	batch := []Entry{entry("a.example", "192.0.2.1", c.at(time.Minute)), entry("a.example", "2001:db8::1", c.at(time.Minute))}
	_ = s.Publish(context.Background(), batch)
	if n := testing.AllocsPerRun(100, func() { _ = s.Publish(context.Background(), batch) }); n != 0 {
		t.Errorf("republishing: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		batch[0].Expires = batch[0].Expires.Add(time.Second)
		batch[1].Expires = batch[0].Expires
		_ = s.Publish(context.Background(), batch)
	}); n != 0 {
		t.Errorf("extending: %v allocations, want 0", n)
	}
	if l := s.List(); len(l) != 2 || !l[0].Expires.Equal(batch[0].Expires) || !l[1].Expires.Equal(batch[0].Expires) {
		t.Errorf("after extending: got %+v, want both expiring %v", l, batch[0].Expires)
	}
}

func TestStoreMixedBatch(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	exp := c.at(time.Minute)
	other := entry("a.example", "192.0.2.1", exp)
	other.Rule = "other"
	_ = s.Publish(context.Background(), []Entry{
		entry("a.example", "192.0.2.1", exp),
		entry("b.example", "192.0.2.1", exp),
		entry("a.example", "192.0.2.2", exp), // a.example again, not next to its first
		other,                                // same name and address, another rule
		entry("b.example", "192.0.2.1", exp), // twice in the batch
	})
	checkStore(t, s)
	var got []string
	for _, e := range s.List() {
		got = append(got, fmt.Sprintf("%s %s %s %s %v", e.Name, e.Rule, e.Group, e.Addr, e.Expires.Equal(exp)))
	}
	slices.Sort(got)
	want := []string{
		"a.example other g 192.0.2.1 true",
		"a.example r g 192.0.2.1 true",
		"a.example r g 192.0.2.2 true",
		"b.example r g 192.0.2.1 true",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestStoreModel publishes random batches, moving a clock on, and checks
// the store lists what a map of (name, rule, group, address) to the latest
// expiry, rounded up to a second, would.
func TestStoreModel(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	type key struct {
		name, rule, group string
		addr              netip.Addr
	}
	model := map[key]time.Time{}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20_000 {
		batch := make([]Entry, 1+rng.IntN(4))
		for i := range batch {
			batch[i] = Entry{
				Name:    dnsname.Name(fmt.Sprintf("n%d.example", rng.IntN(20))),
				Rule:    fmt.Sprintf("r%d", rng.IntN(2)),
				Group:   fmt.Sprintf("g%d", rng.IntN(2)),
				Addr:    netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(8))}),
				Expires: c.t.Add(time.Duration(rng.IntN(20_000)-2_000) * time.Millisecond),
			}
			if rng.IntN(3) == 0 {
				batch[i].Addr = netip.AddrFrom16(batch[i].Addr.As16()) // v4-mapped: another address
			}
		}
		_ = s.Publish(context.Background(), batch)
		for _, e := range batch {
			if !e.Expires.After(c.t) {
				continue
			}
			k := key{string(e.Name), e.Rule, e.Group, e.Addr}
			exp := time.Unix(ceilUnix(e.Expires), 0).UTC()
			if exp.After(model[k]) {
				model[k] = exp
			}
		}
		c.t = c.t.Add(time.Duration(rng.IntN(300)) * time.Millisecond)
		if rng.IntN(100) == 0 {
			checkStore(t, s)
			want := map[key]time.Time{}
			for k, exp := range model {
				if exp.After(c.t) {
					want[k] = exp
				}
			}
			got := map[key]time.Time{}
			for _, e := range s.List() {
				got[key{string(e.Name), e.Rule, e.Group, e.Addr}] = e.Expires
			}
			if !maps.Equal(got, want) {
				t.Fatalf("at %v: store lists %v, want %v", c.t, got, want)
			}
			if n := s.Len(); n != len(want) {
				t.Fatalf("Len: got %d, want %d", n, len(want))
			}
		}
	}
}

// TestStoreConcurrent publishes, lists and counts from several goroutines
// (run with -race) against tight bounds.
func TestStoreConcurrent(t *testing.T) {
	var mu sync.Mutex
	c := &clock{t: time.Unix(1_000_000, 0)}
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return c.t }
	s := NewStore(StoreConfig{MaxEntries: 50, MaxPerName: 4, Now: now})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 0))
			for range 5_000 {
				name := dnsname.Name(fmt.Sprintf("n%d.example", rng.IntN(30)))
				batch := make([]Entry, 1+rng.IntN(3))
				for i := range batch {
					batch[i] = Entry{Name: name, Rule: "r", Group: fmt.Sprintf("g%d", rng.IntN(2)),
						Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(8))}), Expires: now().Add(time.Duration(rng.IntN(60)) * time.Second)}
				}
				_ = s.Publish(context.Background(), batch)
				if n := s.n.Load(); n > 50 {
					t.Errorf("%d entries counted, bound 50", n)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			mu.Lock()
			c.t = c.t.Add(time.Second)
			mu.Unlock()
			if n := len(s.List()); n > 50 {
				t.Errorf("listed %d entries, bound 50", n)
			}
			if n := s.Len(); n > 50 {
				t.Errorf("Len %d, bound 50", n)
			}
		}
	})
	wg.Wait()
	checkStore(t, s)
}

// TestStoreSweepShrinks: the sweep lets go of the arrays of names whose
// pools shrank, and rebuilds shard maps that emptied.
func TestStoreSweepShrinks(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	// One name with a big pool, all but one of it short-lived.
	var batch []Entry
	for i := range 500 {
		batch = append(batch, entry("pool.example", netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String(), c.at(time.Minute)))
	}
	batch = append(batch, entry("pool.example", "192.0.2.1", c.at(time.Hour)))
	// Enough names in shard 0 for it to be rebuilt once they expire.
	sh := &s.shards[0]
	for i := 0; len(batch) < 501+shrinkNames; i++ {
		if name := dnsname.Name(fmt.Sprintf("n%d.example", i)); s.shard(name) == sh {
			batch = append(batch, entry(string(name), "192.0.2.2", c.at(time.Minute)))
		}
	}
	_ = s.Publish(context.Background(), batch)
	if n := s.Len(); n != len(batch) {
		t.Fatalf("Len: got %d, want %d", n, len(batch))
	}
	if sh.peak < shrinkNames {
		t.Fatalf("shard 0 peak: %d names, want at least %d", sh.peak, shrinkNames)
	}
	c.t = c.t.Add(2 * time.Minute)
	if n := s.Len(); n != 1 {
		t.Fatalf("Len: got %d, want 1", n)
	}
	checkStore(t, s)
	recs := s.shard("pool.example").names["pool.example"]
	if len(recs) != 1 || cap(recs) > 4 {
		t.Errorf("pool.example: %d records in an array of %d, want 1 in a small one", len(recs), cap(recs))
	}
	if sh.peak > 1 {
		t.Errorf("shard 0: peak %d names after the sweep, want the map rebuilt", sh.peak)
	}
}

// TestStoreDNSSEC: an entry lists the DNSSEC verdict of the answer that
// added it; a later answer with another verdict extends it, adding no
// second entry.
func TestStoreDNSSEC(t *testing.T) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	s := NewStore(StoreConfig{Now: c.Now})
	e := entry("a.example", "192.0.2.1", c.t.Add(time.Minute))
	e.DNSSEC = "secure"
	other := entry("b.example", "192.0.2.2", c.t.Add(time.Minute))
	if err := s.Publish(context.Background(), []Entry{e, other}); err != nil {
		t.Fatal(err)
	}
	e.DNSSEC, e.Expires = "insecure", c.t.Add(time.Hour)
	if err := s.Publish(context.Background(), []Entry{e}); err != nil {
		t.Fatal(err)
	}
	l := s.List()
	slices.SortFunc(l, func(a, b Entry) int { return strings.Compare(string(a.Name), string(b.Name)) })
	if len(l) != 2 || l[0].DNSSEC != "secure" || !l[0].Expires.Equal(c.t.Add(time.Hour)) || l[1].DNSSEC != "" {
		t.Errorf("got %+v, want a.example secure until an hour, b.example without a verdict", l)
	}
}
