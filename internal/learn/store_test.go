package learn

import (
	"context"
	"fmt"
	"net/netip"
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
