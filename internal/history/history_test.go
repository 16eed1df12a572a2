package history

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

var (
	day1 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	day2 = day1.AddDate(0, 0, 1)
	src1 = netip.MustParseAddr("192.0.2.10")
	src2 = netip.MustParseAddr("192.0.2.11")
	src3 = netip.MustParseAddr("198.51.100.7")
)

var (
	ruleWeb    = &policy.Rule{Name: "web"}
	ruleVerify = &policy.Rule{Name: "bank", TLS: &policy.TLS{Verify: true}}
)

func dnsEvent(at time.Time, src netip.Addr, name string, action policy.Action, answers string) audit.Event {
	d := policy.Decision{Action: action, Reason: policy.ReasonNoRule}
	if action == policy.Allow {
		d = policy.Decision{Action: action, Reason: policy.ReasonMatched, Rule: ruleWeb, Group: "office"}
	}
	return audit.Event{Component: audit.DNS, Source: src, Name: name, QType: "A", Decision: d, Time: at,
		Attrs: []slog.Attr{slog.String("answers", answers)}}
}

// groupsOf puts 192.0.2.0/24 in office, 198.51.100.0/24 in lab and ci.
func groupsOf(a netip.Addr) []string {
	switch {
	case netip.MustParsePrefix("192.0.2.0/24").Contains(a):
		return []string{"office"}
	case netip.MustParsePrefix("198.51.100.0/24").Contains(a):
		return []string{"ci", "lab"}
	}
	return nil
}

func newTestRecorder(t *testing.T, o Options) (*Recorder, *Store, *prometheus.Registry) {
	t.Helper()
	st, _, err := Open(filepath.Join(t.TempDir(), "h", "history.db"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(RecorderConfig{Store: st, GroupsOf: groupsOf, Registerer: reg, Now: o.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r, st, reg
}

// record hands events to r the way the audit path does and writes them
// in one flush per inner slice.
func record(t *testing.T, r *Recorder, batches ...[]audit.Event) {
	t.Helper()
	for _, b := range batches {
		for _, e := range b {
			r.Observe(e)
		}
		for len(r.ch) > 0 {
			s := <-r.ch
			r.add(&s)
		}
		r.flush(context.Background())
		if len(r.rows) != 0 {
			t.Fatalf("flush left %d rows", len(r.rows))
		}
	}
}

func TestAggregation(t *testing.T) {
	long := strings.Repeat("a", 300) + ".example"
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("203.0.113.%d", i+10))
	}
	type want struct {
		day, group, comp, name, action, rule string
		port                                 uint16
		hits, sources                        int64
		answers, sni, cert                   []string
		first, last                          time.Time
	}
	cases := []struct {
		name    string
		batches [][]audit.Event
		filter  Filter
		want    []want
	}{
		{
			name: "same key same day is one row, answers unioned",
			batches: [][]audit.Event{{
				dnsEvent(day1, src1, "api.example.com", policy.Allow, "203.0.113.1"),
				dnsEvent(day1.Add(time.Hour), src1, "API.example.com", policy.Allow, "203.0.113.2,203.0.113.1"),
			}},
			want: []want{{group: "office", comp: "dns", name: "api.example.com", action: "allow", rule: "web", hits: 2, sources: 1,
				answers: []string{"203.0.113.1", "203.0.113.2"}, first: day1, last: day1.Add(time.Hour)}},
		},
		{
			name: "hits add up across flushes",
			batches: [][]audit.Event{
				{dnsEvent(day1.Add(time.Hour), src1, "a.example", policy.Allow, "203.0.113.1")},
				{dnsEvent(day1, src1, "a.example", policy.Allow, "203.0.113.9")},
			},
			want: []want{{group: "office", comp: "dns", name: "a.example", action: "allow", rule: "web", hits: 2, sources: 1,
				answers: []string{"203.0.113.1", "203.0.113.9"}, first: day1, last: day1.Add(time.Hour)}},
		},
		{
			name: "two days are two rows per day, one over all days",
			batches: [][]audit.Event{{
				dnsEvent(day1, src1, "a.example", policy.Deny, ""),
				dnsEvent(day2, src2, "a.example", policy.Deny, ""),
			}},
			filter: Filter{PerDay: true},
			want: []want{
				{day: "2026-12-01", group: "office", comp: "dns", name: "a.example", action: "deny", hits: 1, sources: 1, first: day1, last: day1},
				{day: "2026-12-02", group: "office", comp: "dns", name: "a.example", action: "deny", hits: 1, sources: 1, first: day2, last: day2},
			},
		},
		{
			name: "distinct sources are counted exactly over days",
			batches: [][]audit.Event{{
				dnsEvent(day1, src1, "a.example", policy.Deny, ""),
				dnsEvent(day2, src1, "a.example", policy.Deny, ""),
				dnsEvent(day2, src2, "a.example", policy.Deny, ""),
			}},
			want: []want{{group: "office", comp: "dns", name: "a.example", action: "deny", hits: 3, sources: 2, first: day1, last: day2}},
		},
		{
			name: "a denial takes the source's groups; group filter matches one of several",
			batches: [][]audit.Event{{
				dnsEvent(day1, src3, "x.example", policy.Deny, ""),
				dnsEvent(day1, src1, "y.example", policy.Deny, ""),
			}},
			filter: Filter{Group: "lab"},
			want:   []want{{group: "ci,lab", comp: "dns", name: "x.example", action: "deny", hits: 1, sources: 1, first: day1, last: day1}},
		},
		{
			name: "proxy: port, dialled address, SNI and a verified certificate",
			batches: [][]audit.Event{{{
				Component: audit.Proxy, Source: src1, Name: "bank.example", Port: 443, Time: day1,
				Decision: policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: ruleVerify, Group: "office"},
				Attrs:    []slog.Attr{slog.String("sni", "bank.example"), slog.String("dialled", "203.0.113.5:443")},
			}, {
				Component: audit.Proxy, Source: src1, Name: "bank.example", Port: 443, Time: day1,
				Decision: policy.Decision{Action: policy.Deny, Reason: policy.ReasonVerify},
			}}},
			filter: Filter{Component: "proxy"},
			want: []want{
				{group: "office", comp: "proxy", name: "bank.example", port: 443, action: "allow", rule: "bank", hits: 1, sources: 1,
					answers: []string{"203.0.113.5:443"}, sni: []string{"bank.example"}, cert: []string{"verified"}, first: day1, last: day1},
				{group: "office", comp: "proxy", name: "bank.example", port: 443, action: "deny", hits: 1, sources: 1,
					cert: []string{"failed"}, first: day1, last: day1},
			},
		},
		{
			name: "answers are bounded, over several flushes too",
			batches: [][]audit.Event{
				{dnsEvent(day1, src1, "cdn.example", policy.Allow, strings.Join(many[20:], ","))},
				{dnsEvent(day1, src1, "cdn.example", policy.Allow, strings.Join(many[:20], ","))},
			},
			want: []want{{group: "office", comp: "dns", name: "cdn.example", action: "allow", rule: "web", hits: 2, sources: 1,
				answers: mergeSet(many, nil, maxAnswers), first: day1, last: day1}},
		},
		{
			name:    "an over-long name is cut to 253 bytes",
			batches: [][]audit.Event{{dnsEvent(day1, src1, long, policy.Deny, "")}},
			want:    []want{{group: "office", comp: "dns", name: long[:253], action: "deny", hits: 1, sources: 1, first: day1, last: day1}},
		},
		{
			name: "filters: action, name and the names below it, since",
			batches: [][]audit.Event{{
				dnsEvent(day1, src1, "example.org", policy.Deny, ""),
				dnsEvent(day2, src1, "www.example.org", policy.Deny, ""),
				dnsEvent(day2, src1, "notexample.org", policy.Deny, ""),
				dnsEvent(day2, src1, "www.example.org", policy.Allow, "203.0.113.1"),
			}},
			filter: Filter{Action: "deny", Name: "example.org", Since: day2},
			want:   []want{{group: "office", comp: "dns", name: "www.example.org", action: "deny", hits: 1, sources: 1, first: day2, last: day2}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, st, _ := newTestRecorder(t, Options{Retention: 3650 * 24 * time.Hour, Now: func() time.Time { return day2 }})
			record(t, r, tc.batches...)
			rows, err := st.Query(context.Background(), tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			var got []want
			for _, r := range rows {
				got = append(got, want{day: r.Day, group: r.Group, comp: r.Component, name: r.Name, action: r.Action, rule: r.Rule, port: r.Port,
					hits: r.Hits, sources: r.Sources, answers: nilIfEmpty(r.Answers), sni: nilIfEmpty(r.SNI), cert: nilIfEmpty(r.Cert), first: r.FirstSeen, last: r.LastSeen})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func days(t *testing.T, st *Store) []string {
	t.Helper()
	st.mu.RLock()
	defer st.mu.RUnlock()
	rs, err := st.db.Query("SELECT DISTINCT day FROM decisions ORDER BY day")
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		var d string
		if err := rs.Scan(&d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

func TestRetention(t *testing.T) {
	now := day1
	clock := func() time.Time { return now }
	dir := t.TempDir()
	path := filepath.Join(dir, "history.db")
	st, _, err := Open(path, Options{Retention: 3 * 24 * time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRecorder(RecorderConfig{Store: st, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	for i := range 5 {
		evs = append(evs, dnsEvent(day1.AddDate(0, 0, -i), src1, fmt.Sprintf("d%d.example", i), policy.Deny, ""))
	}
	record(t, r, evs)
	// Written before the clock says they are old: the next pass drops them.
	if got := len(days(t, st)); got != 5 {
		t.Fatalf("got %d days before pruning, want 5", got)
	}
	// The day changes while running: rollDay prunes.
	now = day1.AddDate(0, 0, 1)
	r.rollDay(context.Background())
	if got, want := days(t, st), []string{"2026-11-30", "2026-12-01"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after the day changed, got days %v, want %v", got, want)
	}
	st.Close()
	// At start, a day later: only day1 stays.
	now = day1.AddDate(0, 0, 2)
	st, _, err = Open(path, Options{Retention: 3 * 24 * time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if got, want := days(t, st), []string{"2026-12-01"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after reopening, got days %v, want %v", got, want)
	}
}

func TestMaxSize(t *testing.T) {
	now := day1.AddDate(0, 0, 10)
	const max = 256 << 10
	r, st, reg := newTestRecorder(t, Options{Retention: 100 * 24 * time.Hour, MaxSize: max, Now: func() time.Time { return now }})
	// Ten past days of about 70 KiB of rows each: the oldest must go.
	for d := range 10 {
		var evs []audit.Event
		at := day1.AddDate(0, 0, d)
		for i := range 500 {
			evs = append(evs, dnsEvent(at, src1, fmt.Sprintf("host-%05d.day%d.example.com", i, d), policy.Deny, ""))
		}
		record(t, r, evs)
		size, err := st.Size(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if size > max {
			t.Fatalf("after day %d: size %d, over max_size %d", d, size, max)
		}
	}
	got := days(t, st)
	if len(got) == 0 || len(got) >= 10 {
		t.Fatalf("got days %v; want the newest few only", got)
	}
	if got[len(got)-1] != "2026-12-10" {
		t.Errorf("the newest day went: %v", got)
	}
	for _, d := range got {
		if d < "2026-12-05" {
			t.Errorf("day %s stayed while newer ones went: %v", d, got)
		}
	}
	fi, err := os.Stat(st.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 2*max {
		t.Errorf("the file is %d bytes; dropped days must give their pages back (max_size %d)", fi.Size(), max)
	}
	// Today alone over max_size: new rows are dropped and counted.
	var evs []audit.Event
	for i := range 4500 {
		evs = append(evs, dnsEvent(now, src1, fmt.Sprintf("today-%05d.example.com", i), policy.Deny, ""))
	}
	record(t, r, evs[:1500], evs[1500:3000], evs[3000:])
	if n := testutil.ToFloat64(r.m.dropped.WithLabelValues("max_size")); n == 0 {
		t.Errorf("no rows counted as dropped for max_size")
	}
	_ = reg
}

func TestCorruptFileAtOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "history.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	st, moved, err := Open(path, Options{Now: func() time.Time { return day1 }})
	if err != nil {
		t.Fatalf("a corrupt file must be replaced, got %v", err)
	}
	defer st.Close()
	if want := path + ".corrupt-20261201T100000Z"; moved != want {
		t.Errorf("moved to %q, want %q", moved, want)
	}
	if b, err := os.ReadFile(moved); err != nil || !strings.HasPrefix(string(b), "not a database") {
		t.Errorf("the corrupt file is not kept aside: %v", err)
	}
	r, err := NewRecorder(RecorderConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	record(t, r, []audit.Event{dnsEvent(day1, src1, "a.example", policy.Deny, "")})
	if got := days(t, st); len(got) != 1 {
		t.Errorf("the new file has days %v, want one", got)
	}
}

func TestCorruptFileWhileRunning(t *testing.T) {
	r, st, _ := newTestRecorder(t, Options{Now: func() time.Time { return day1 }})
	record(t, r, []audit.Event{dnsEvent(day1, src1, "a.example", policy.Deny, "")})
	// Something overwrites the file under the running store.
	st.mu.Lock()
	st.db.Close()
	if err := os.WriteFile(st.path, []byte(strings.Repeat("garbage!", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(st.path + "-wal")
	os.Remove(st.path + "-shm")
	db, err := st.open()
	if err == nil {
		t.Fatal("opening garbage worked")
	}
	if !IsCorrupt(err) {
		t.Fatalf("opening garbage: %v is not seen as corruption", err)
	}
	// Keep a handle on the garbage, as a process that had it open would.
	st.db = db
	st.db, _ = sqlOpenRaw(st.path)
	st.mu.Unlock()

	record(t, r, []audit.Event{dnsEvent(day1, src1, "b.example", policy.Deny, "")})
	if n := testutil.ToFloat64(r.m.corrupt); n != 1 {
		t.Fatalf("corrupt counted %v times, want 1", n)
	}
	matches, _ := filepath.Glob(st.path + ".corrupt-*")
	if len(matches) == 0 {
		t.Fatal("the corrupt file was not moved aside")
	}
	record(t, r, []audit.Event{dnsEvent(day1, src1, "c.example", policy.Deny, "")})
	rows, err := st.Query(context.Background(), Filter{})
	if err != nil || len(rows) != 1 || rows[0].Name != "c.example" {
		t.Fatalf("the new file has %+v, %v; want the row written after the replacement", rows, err)
	}
}

func TestFileIsPrivate(t *testing.T) {
	_, st, _ := newTestRecorder(t, Options{})
	for _, f := range []string{st.Path(), st.Path() + "-wal"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
}

// TestSync: rows are written once a minute, but a reader that syncs
// first sees every decision observed before it asked; once Run has
// returned, Sync does not wait.
func TestSync(t *testing.T) {
	r, st, _ := newTestRecorder(t, Options{})
	if r.cfg.FlushEvery != DefaultFlushEvery || r.cfg.FlushRows != 0 {
		t.Fatalf("defaults: flush every %v, at %d rows (max %d)", r.cfg.FlushEvery, r.cfg.FlushRows, r.cfg.MaxRows)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	r.Observe(dnsEvent(time.Now(), src1, "sync.example", policy.Deny, ""))
	rows, err := st.Query(context.Background(), Filter{})
	if err != nil || len(rows) != 0 {
		t.Fatalf("before Sync: %d rows, %v; want none written yet", len(rows), err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := r.Sync(sctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	rows, err = st.Query(context.Background(), Filter{})
	if err != nil || len(rows) != 1 || rows[0].Name != "sync.example" {
		t.Fatalf("after Sync: %+v, %v; want the one decision", rows, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := r.Sync(sctx); err != nil {
		t.Fatalf("Sync after Run returned: %v", err)
	}
}

// TestRowsCapDropsNotFlushes: past MaxRows between writes, decisions that
// would start a new row are dropped and counted, and nothing is written
// early; rows already waiting still count their hits.
func TestRowsCapDropsNotFlushes(t *testing.T) {
	st, _, err := Open(filepath.Join(t.TempDir(), "history.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(RecorderConfig{Store: st, Registerer: reg, MaxRows: 3})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 10 {
		r.Observe(dnsEvent(now, src1, fmt.Sprintf("n%d.example", i), policy.Deny, ""))
	}
	r.Observe(dnsEvent(now, src1, "n0.example", policy.Deny, ""))
	r.drain()
	if len(r.rows) != 3 {
		t.Fatalf("%d rows wait, want the cap of 3", len(r.rows))
	}
	if got := testutil.ToFloat64(r.m.dropped.WithLabelValues("rows_full")); got != 7 {
		t.Errorf("rows_full drops = %v, want 7", got)
	}
	r.flush(context.Background())
	rows, err := st.Query(context.Background(), Filter{Name: "n0.example"})
	if err != nil || len(rows) != 1 || rows[0].Hits != 2 {
		t.Fatalf("n0.example: %+v, %v; want one row of 2 hits", rows, err)
	}
}

// TestSyncRateLimited: readers cannot force writes faster than SyncEvery.
// Under a stream of distinct names, a hundred Syncs within SyncEvery of
// the first write nothing more; once SyncEvery has passed, one Sync
// writes again and a reader sees every decision made before it.
func TestSyncRateLimited(t *testing.T) {
	st, _, err := Open(filepath.Join(t.TempDir(), "history.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var (
		mu  sync.Mutex
		now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	reg := prometheus.NewRegistry()
	r, err := NewRecorder(RecorderConfig{Store: st, Registerer: reg, Now: clock, FlushEvery: time.Hour, SyncEvery: 10 * time.Second, SyncFreeRows: 5})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	flushes := func() int { return int(testutil.ToFloat64(r.m.flushes)) }
	stored := func() int {
		rows, err := st.Query(context.Background(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		return len(rows)
	}

	// While at most SyncFreeRows rows wait, every Sync writes.
	for i := range 3 {
		r.Observe(dnsEvent(clock(), src1, fmt.Sprintf("few%d.example", i), policy.Deny, ""))
		if err := r.Sync(sctx); err != nil {
			t.Fatal(err)
		}
		advance(50 * time.Millisecond)
	}
	if got, rows := flushes(), stored(); got != 3 || rows != 3 {
		t.Fatalf("3 Syncs of one row each: %d writes, %d rows stored; want 3 and 3", got, rows)
	}
	// A flood: 6 rows before each Sync, more than SyncFreeRows.
	for i := range 100 {
		for j := range 6 {
			r.Observe(dnsEvent(clock(), src1, fmt.Sprintf("n%d-%d.flood.example", i, j), policy.Deny, ""))
		}
		if err := r.Sync(sctx); err != nil {
			t.Fatal(err)
		}
		advance(50 * time.Millisecond) // 100 Syncs over 5 s, under SyncEvery
	}
	if got := flushes(); got != 3 {
		t.Fatalf("100 Syncs within SyncEvery of the last write wrote %d more times, want none", got-3)
	}
	if got := stored(); got != 3 {
		t.Fatalf("after the limited Syncs %d rows are stored, want only the first writes' 3", got)
	}
	advance(5 * time.Second) // SyncEvery since the first write
	if err := r.Sync(sctx); err != nil {
		t.Fatal(err)
	}
	if got := flushes(); got != 4 {
		t.Fatalf("a Sync SyncEvery after the last write: %d writes in all, want 4", got)
	}
	if got := stored(); got != 603 {
		t.Fatalf("after it %d rows are stored, want all 603", got)
	}
	if r2, _ := NewRecorder(RecorderConfig{Store: st}); r2.cfg.SyncEvery != DefaultSyncEvery || DefaultSyncEvery != 10*time.Second {
		t.Errorf("default SyncEvery %v, want 10s", r2.cfg.SyncEvery)
	}
}
