package history

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// TestQuerySourcesAndEach: Query counts distinct sources exactly over
// days, lists the first 16 in order, and its hits agree with the rows
// Each streams; PerSource splits by source.
func TestQuerySourcesAndEach(t *testing.T) {
	r, st, _ := newTestRecorder(t, Options{Now: func() time.Time { return day2 }})
	var b1, b2 []audit.Event
	for i := range 20 {
		src := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)})
		b1 = append(b1, dnsEvent(day1, src, "tracker.example", policy.Deny, ""))
		b2 = append(b2, dnsEvent(day2, src, "tracker.example", policy.Deny, ""), dnsEvent(day2, src, "tracker.example", policy.Deny, ""))
	}
	record(t, r, b1, b2)
	ctx := context.Background()

	rows, err := st.Query(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Hits != 60 || rows[0].Sources != 20 || len(rows[0].SourceAddrs) != 16 ||
		!slices.IsSorted(rows[0].SourceAddrs) || rows[0].SourceAddrs[0] != "192.0.2.100" {
		t.Fatalf("got %+v; want one row, 60 hits, 20 sources, the first 16 in order", rows)
	}
	per, err := st.Query(ctx, Filter{PerSource: true, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(per) != 20 || per[0].Hits != 3 || per[0].Sources != 1 || per[0].Source != "192.0.2.100" {
		t.Fatalf("per source: got %d rows, first %+v; want 20 of 3 hits each, in source order", len(per), per[0])
	}
	var n int
	var hits int64
	days := map[string]bool{}
	if err := st.Each(ctx, Filter{Name: "tracker.example"}, func(r *Row) error {
		n++
		hits += r.Hits
		days[r.Day] = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 40 || hits != 60 || len(days) != 2 {
		t.Errorf("Each: %d rows, %d hits over %d days; want 40 rows (a day and a source each), 60 hits, 2 days", n, hits, len(days))
	}
	stop := errors.New("stop")
	if err := st.Each(ctx, Filter{}, func(*Row) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Each returned %v; want the callback's error", err)
	}
}
