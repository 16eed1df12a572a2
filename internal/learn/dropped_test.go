package learn

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
)

func TestStoreDropped(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := NewStore(StoreConfig{MaxPerName: 2, MaxEntries: 3, Now: func() time.Time { return now }})
	pub := func(name, addr string, ttl time.Duration) {
		t.Helper()
		e := Entry{Name: dnsname.Name(name), Rule: "r", Addr: netip.MustParseAddr(addr), Expires: now.Add(ttl)}
		if err := s.Publish(context.Background(), []Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name, addr string
		ttl        time.Duration
		advance    time.Duration // before the step
		want       uint64
	}{
		{"a.example", "192.0.2.1", time.Minute, 0, 0},
		{"a.example", "192.0.2.2", 2 * time.Minute, 0, 0},
		{"a.example", "192.0.2.2", 3 * time.Minute, 0, 0},            // extended: nothing dropped
		{"a.example", "192.0.2.3", 3 * time.Minute, 0, 1},            // per-name bound pushes out .1
		{"b.example", "192.0.2.4", time.Minute, 0, 1},                // third entry fits
		{"c.example", "192.0.2.5", time.Minute, 0, 2},                // store bound pushes one out
		{"d.example", "192.0.2.6", time.Minute, 10 * time.Minute, 2}, // everything expired first: nothing dropped early
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		pub(st.name, st.addr, st.ttl)
		if got := s.Dropped(); got != st.want {
			t.Errorf("step %d (%s %s): Dropped() = %d, want %d", i, st.name, st.addr, got, st.want)
		}
	}
}
