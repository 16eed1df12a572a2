package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// wait bounds every wait for etcd: generous, for -race on a loaded machine.
const wait = 30 * time.Second

const prefix = "/fqdngate-test/"

// testStore returns a store under a prefix of its own in a fresh
// three-member cluster.
func testStore(t *testing.T) (*Store, *clientv3.Client, *etcdtest.Cluster) {
	t.Helper()
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	return NewStore(cli, prefix), cli, c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

const (
	v1 = "rules:\n  - name: web\n    to: [example.com]\n"
	v2 = "rules:\n  - name: web\n    to: [example.com, example.org]\n"
)

// TestPushHistoryRollback is the round trip of the shared policy: two
// pushes, an unchanged push, a rollback that lands as a new revision, and
// the history that tells it.
func TestPushHistoryRollback(t *testing.T) {
	s, _, _ := testStore(t)
	ctx := ctxT(t)
	if _, err := s.Current(ctx); !errors.Is(err, ErrNoRevision) {
		t.Fatalf("Current before any push: got %v, want ErrNoRevision", err)
	}
	r1, created, err := s.Push(ctx, Push{Content: []byte(v1), Author: "alice@ws1", Source: "shared.yaml", Message: "first"})
	if err != nil || !created || r1.Number != 1 {
		t.Fatalf("first push: got revision %d, created %v, %v; want 1, true", r1.Number, created, err)
	}
	r2, created, err := s.Push(ctx, Push{Content: []byte(v2), Author: "bob@ws2", Source: "shared.yaml"})
	if err != nil || !created || r2.Number != 2 {
		t.Fatalf("second push: got revision %d, created %v, %v; want 2, true", r2.Number, created, err)
	}
	same, created, err := s.Push(ctx, Push{Content: []byte(v2), Author: "bob@ws2"})
	if err != nil || created || same.Number != 2 {
		t.Errorf("pushing the current content again: got revision %d, created %v, %v; want 2, false", same.Number, created, err)
	}
	cur, err := s.Current(ctx)
	if err != nil || cur.Number != 2 || cur.Content != v2 || cur.SHA256 != Sum([]byte(v2)) || cur.Author != "bob@ws2" {
		t.Fatalf("Current: got %+v, %v; want revision 2 with v2", cur, err)
	}
	var checked string
	r3, created, err := s.Rollback(ctx, 1, "carol@ws3", func(src policy.Source) error {
		checked = src.Name
		return nil
	})
	if err != nil || !created || r3.Number != 3 || r3.RollbackOf != 1 || r3.Content != v1 {
		t.Fatalf("rollback to 1: got %+v, created %v, %v; want revision 3 with v1", r3, created, err)
	}
	if checked != "shared revision 1" {
		t.Errorf("rollback checked %q, want shared revision 1", checked)
	}
	if _, _, err := s.Rollback(ctx, 2, "carol@ws3", func(policy.Source) error { return errors.New("does not compose") }); err == nil {
		t.Error("a rollback whose check fails: got no error")
	}
	if _, _, err := s.Rollback(ctx, 9, "carol@ws3", nil); !errors.Is(err, ErrBadRevision) || !strings.Contains(err.Error(), "revision 9 does not exist") {
		t.Errorf("rollback to a revision that does not exist: got %v", err)
	}
	hist, err := s.History(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range hist {
		got = append(got, r.Author)
		if r.Content != "" {
			t.Errorf("history of revision %d carries its content", r.Number)
		}
	}
	if strings.Join(got, " ") != "carol@ws3 bob@ws2 alice@ws1" || hist[0].Number != 3 || hist[0].RollbackOf != 1 || hist[2].Message != "first" {
		t.Errorf("history: got %+v", hist)
	}
	if hist, _ := s.History(ctx, 1); len(hist) != 1 || hist[0].Number != 3 {
		t.Errorf("history limited to 1: got %+v", hist)
	}
}

// TestPushPrunesHistory: with KeepLast(3) each push keeps the newest
// three revisions and deletes the older ones in the transaction that
// stores it (one etcd revision per push); history lists what is kept; a
// rollback to a pruned revision says it was pruned, one to a revision
// that never existed says that, and one to a kept revision lands.
func TestPushPrunesHistory(t *testing.T) {
	s, cli, _ := testStore(t)
	s.KeepLast(3)
	ctx := ctxT(t)
	etcdRev := func() int64 {
		t.Helper()
		resp, err := cli.Get(ctx, "/")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	numbers := func() string {
		t.Helper()
		hist, err := s.History(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		var ns []string
		for _, r := range hist {
			ns = append(ns, strconv.FormatInt(r.Number, 10))
		}
		return strings.Join(ns, " ")
	}
	for i := range 5 {
		before := etcdRev()
		r, created, err := s.Push(ctx, Push{Content: []byte(v1 + strings.Repeat("#\n", i))})
		if err != nil || !created || r.Number != int64(i+1) {
			t.Fatalf("push %d: %+v %v %v", i+1, r, created, err)
		}
		if after := etcdRev(); after != before+1 {
			t.Errorf("push %d took etcd from revision %d to %d; want one transaction", i+1, before, after)
		}
	}
	if got := numbers(); got != "5 4 3" {
		t.Errorf("history after 5 pushes keeping 3: got %q, want \"5 4 3\"", got)
	}
	if oldest, err := s.Oldest(ctx); err != nil || oldest != 3 {
		t.Errorf("Oldest: got %d, %v; want 3", oldest, err)
	}
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{2, "shared revision 2 was pruned: the fleet keeps the newest revisions only (cluster.history_keep), from 3 on"},
		{1, "shared revision 1 was pruned"},
		{9, "shared revision 9 does not exist"},
	} {
		if _, _, err := s.Rollback(ctx, tc.n, "carol", nil); !errors.Is(err, ErrBadRevision) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rollback %d: got %v, want %q", tc.n, err, tc.want)
		}
	}
	r, created, err := s.Rollback(ctx, 3, "carol", nil)
	if err != nil || !created || r.Number != 6 || r.RollbackOf != 3 {
		t.Fatalf("rollback 3: %+v %v %v", r, created, err)
	}
	if got := numbers(); got != "6 5 4" {
		t.Errorf("history after the rollback: got %q, want \"6 5 4\"", got)
	}
	if cur, err := s.Current(ctx); err != nil || cur.Number != 6 {
		t.Errorf("current: %+v %v", cur, err)
	}

	// Without KeepLast every revision stays.
	all := NewStore(cli, prefix)
	if _, _, err := all.Push(ctx, Push{Content: []byte(v2)}); err != nil {
		t.Fatal(err)
	}
	if got := numbers(); got != "7 6 5 4" {
		t.Errorf("history after a push that keeps everything: got %q, want \"7 6 5 4\"", got)
	}
}

// TestConcurrentPushes: pushes racing from several writers all land, each
// as its own revision, none over another.
func TestConcurrentPushes(t *testing.T) {
	s, _, _ := testStore(t)
	ctx := ctxT(t)
	const n = 6
	var wg sync.WaitGroup
	nums := make(chan int64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, _, err := s.Push(ctx, Push{Content: []byte(v1 + strings.Repeat("#\n", i+1)), Author: "racer"})
			if err != nil {
				t.Error(err)
				return
			}
			nums <- r.Number
		}()
	}
	wg.Wait()
	close(nums)
	seen := map[int64]bool{}
	for n := range nums {
		if seen[n] {
			t.Errorf("revision %d handed out twice", n)
		}
		seen[n] = true
	}
	if cur, err := s.Current(ctx); err != nil || cur.Number != n {
		t.Errorf("current: got %d, %v; want %d", cur.Number, err, n)
	}
}

// TestWatch: the revision in force first, then each new one; a corrupt
// record comes with ErrBadRevision and is not taken for the content.
func TestWatch(t *testing.T) {
	s, cli, _ := testStore(t)
	ctx := ctxT(t)
	if _, _, err := s.Push(ctx, Push{Content: []byte(v1)}); err != nil {
		t.Fatal(err)
	}
	type delivery struct {
		n   int64
		err error
	}
	got := make(chan delivery, 10)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(wctx, func(r Revision, err error) { got <- delivery{r.Number, err} }, nil)
	}()
	defer func() { cancel(); <-done }()
	next := func() delivery {
		t.Helper()
		select {
		case d := <-got:
			return d
		case <-time.After(wait):
			t.Fatal("no revision delivered")
		}
		return delivery{}
	}
	if d := next(); d.n != 1 || d.err != nil {
		t.Fatalf("first delivery: got %+v, want revision 1", d)
	}
	if _, _, err := s.Push(ctx, Push{Content: []byte(v2)}); err != nil {
		t.Fatal(err)
	}
	if d := next(); d.n != 2 || d.err != nil {
		t.Fatalf("after a push: got %+v, want revision 2", d)
	}
	// A record whose content does not match its checksum, written as
	// someone with write access to etcd could.
	bad, _ := json.Marshal(Revision{Number: 3, SHA256: Sum([]byte(v1)), Content: v2 + "  - name: sneaky\n    to: [203.0.113.0/24]\n"})
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpPut(s.keys.revision(3), string(bad)),
		clientv3.OpPut(s.keys.current(), "3"),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	if d := next(); d.n != 3 || !errors.Is(d.err, ErrBadRevision) || !strings.Contains(d.err.Error(), "does not match its sha256") {
		t.Fatalf("corrupt revision: got %+v, want revision 3 with ErrBadRevision", d)
	}
	if _, err := cli.Put(ctx, s.keys.current(), "not a number"); err != nil {
		t.Fatal(err)
	}
	if d := next(); !errors.Is(d.err, ErrBadRevision) {
		t.Fatalf("a current key that is not a number: got %+v, want ErrBadRevision", d)
	}
	if _, _, err := s.Push(ctx, Push{Content: []byte(v1 + "# again\n")}); err == nil {
		t.Error("push over a current key that is not a number: got no error")
	}
}

// TestWatchSurvivesMemberLoss: with one member of three stopped (quorum
// kept) pushes still reach a watcher, and after the member returns too.
func TestWatchSurvivesMemberLoss(t *testing.T) {
	s, _, c := testStore(t)
	ctx := ctxT(t)
	got := make(chan int64, 10)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Watch(wctx, func(r Revision, err error) {
			if err == nil {
				got <- r.Number
			}
		}, nil)
	}()
	defer func() { cancel(); <-done }()
	expect := func(n int64) {
		t.Helper()
		for {
			select {
			case g := <-got:
				if g == n {
					return
				}
			case <-time.After(wait):
				t.Fatalf("revision %d not delivered", n)
			}
		}
	}
	push := func(content string) {
		t.Helper()
		if _, _, err := s.Push(ctx, Push{Content: []byte(content)}); err != nil {
			t.Fatal(err)
		}
	}
	push(v1)
	expect(1)
	c.Stop(0)
	push(v2)
	expect(2)
	c.Restart(0)
	push(v1)
	expect(3)
}

// TestAnnouncer: the status key appears with what the node says, follows
// it, disappears at once on a clean stop, and by lease expiry when the
// node dies without a word.
func TestAnnouncer(t *testing.T) {
	s, cli, c := testStore(t)
	ctx := ctxT(t)
	var mu sync.Mutex
	rev := int64(1)
	a := NewAnnouncer(cli, AnnouncerOptions{Prefix: prefix, Node: "gw-a", Interval: 200 * time.Millisecond, TTL: 2 * time.Second,
		Status: func() Status {
			mu.Lock()
			defer mu.Unlock()
			return Status{PolicyRevision: rev, Learned: 7, Version: "v-test"}
		}})
	actx, stopA := context.WithCancel(ctx)
	aDone := make(chan struct{})
	go func() { defer close(aDone); _ = a.Run(actx) }()

	// gw-b's client dies with it, as with kill -9: nothing revokes its
	// lease.
	cliB := c.Client(t)
	b := NewAnnouncer(cliB, AnnouncerOptions{Prefix: prefix, Node: "gw-b", Interval: 200 * time.Millisecond, TTL: 2 * time.Second,
		Status: func() Status { return Status{PolicyRevision: 1} }})
	bctx, stopB := context.WithCancel(ctx)
	bDone := make(chan struct{})
	go func() { defer close(bDone); _ = b.Run(bctx) }()
	defer stopB()

	if _, _, err := s.Push(ctx, Push{Content: []byte(v1)}); err != nil {
		t.Fatal(err)
	}
	rep := waitFleet(t, cli, func(r Report) bool { return len(r.Nodes) == 2 && r.Healthy() })
	if n := rep.Nodes[0]; n.Node != "gw-a" || n.Learned != 7 || n.Version != "v-test" || n.PolicyRevision != 1 || n.Updated.IsZero() {
		t.Errorf("gw-a's status: got %+v", n)
	}
	if a.Err() != nil {
		t.Errorf("Err while etcd takes the status: %v", a.Err())
	}
	// A second gateway with gw-a's name does not take its key over; it
	// says why.
	twin := NewAnnouncer(cliB, AnnouncerOptions{Prefix: prefix, Node: "gw-a", Interval: 200 * time.Millisecond, TTL: 2 * time.Second,
		Status: func() Status { return Status{PolicyRevision: 99} }})
	tctx, stopTwin := context.WithCancel(ctx)
	twinDone := make(chan struct{})
	go func() { defer close(twinDone); _ = twin.Run(tctx) }()
	deadline := time.Now().Add(wait)
	for twin.Err() == nil || !strings.Contains(twin.Err().Error(), `another gateway holds node name "gw-a"`) {
		if time.Now().After(deadline) {
			t.Fatalf("a twin of gw-a: got Err %v", twin.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopTwin()
	<-twinDone
	if n := waitFleet(t, cli, func(Report) bool { return true }).Nodes[0]; n.PolicyRevision != 1 {
		t.Errorf("the twin overwrote gw-a's status: %+v", n)
	}

	// A push gw-a has not applied: it lags until it says it has.
	if _, _, err := s.Push(ctx, Push{Content: []byte(v2)}); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, cli, func(r Report) bool { return r.CurrentRevision == 2 && nodeState(r, "gw-a") == StateLagging })
	mu.Lock()
	rev = 2
	mu.Unlock()
	a.Poke()
	waitFleet(t, cli, func(r Report) bool { return nodeState(r, "gw-a") == StateOK })

	// gw-b dies without a word, as with kill -9: its connection goes
	// first, so nothing revokes its lease, and its key expires with it.
	cliB.Close()
	stopB()
	<-bDone
	rep = waitFleet(t, cli, func(r Report) bool { return nodeState(r, "gw-b") == StateGone })
	if rep.Healthy() {
		t.Error("a fleet with a gone node reports healthy")
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !regexpMatch(`(?m)^gw-a +ok +2 +0 +\S+ ago +7 +-$`, text.String()) || !regexpMatch(`(?m)^gw-b +gone +- +0 `, text.String()) {
		t.Errorf("fleet status text:\n%s", text.String())
	}

	// Forgetting: a live node is refused, a gone one goes.
	if err := Forget(ctx, cli, prefix, "gw-a"); err == nil || !strings.Contains(err.Error(), "is alive") {
		t.Errorf("forgetting a live node: got %v", err)
	}
	if err := Forget(ctx, cli, prefix, "gw-b"); err != nil {
		t.Errorf("forgetting a gone node: %v", err)
	}
	waitFleet(t, cli, func(r Report) bool { return len(r.Nodes) == 1 && r.Healthy() })

	// A clean stop withdraws the key at once (well before the TTL).
	stopA()
	<-aDone
	waitFleet(t, cli, func(r Report) bool { return nodeState(r, "gw-a") == StateGone })
}

// TestFleetRejected: a node that refused a newer revision is reported as
// such, with why.
func TestFleetRejected(t *testing.T) {
	s, cli, _ := testStore(t)
	ctx := ctxT(t)
	for _, v := range []string{v1, v2} {
		if _, _, err := s.Push(ctx, Push{Content: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	a := NewAnnouncer(cli, AnnouncerOptions{Prefix: prefix, Node: "gw-a", Interval: 200 * time.Millisecond,
		Status: func() Status {
			return Status{PolicyRevision: 1, RejectedRevision: 2, LastError: "shared revision 2:3:9: rule \"web\": no"}
		}})
	actx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(actx) }()
	defer func() { stop(); <-done }()
	rep := waitFleet(t, cli, func(r Report) bool { return nodeState(r, "gw-a") == StateRejected })
	if n := rep.Nodes[0]; n.Lag != 1 || !strings.Contains(n.LastError, "shared revision 2:3:9") {
		t.Errorf("got %+v", n)
	}
	var text strings.Builder
	_ = rep.WriteText(&text)
	if !strings.Contains(text.String(), `revision 2 refused: shared revision 2:3:9: rule "web": no`) {
		t.Errorf("fleet status text:\n%s", text.String())
	}
}

func nodeState(r Report, node string) string {
	for _, n := range r.Nodes {
		if n.Node == node {
			return n.State
		}
	}
	return ""
}

// waitFleet reads the fleet until ok holds.
func waitFleet(t *testing.T, cli *clientv3.Client, ok func(Report) bool) Report {
	t.Helper()
	deadline := time.Now().Add(wait)
	var last Report
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := ReadFleet(ctx, cli, prefix)
		cancel()
		if err == nil {
			if ok(r) {
				return r
			}
			last = r
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	t.Fatalf("the fleet never got there; last read:\n%s", b)
	return Report{}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// FuzzDecodeRevision feeds the revision record decoder what etcd could
// hold: it must not panic, and a record it accepts is whole (its number,
// and content matching its checksum). Run it with:
//
//	go test -run '^$' -fuzz '^FuzzDecodeRevision$' -fuzztime 30s ./internal/cluster/
func FuzzDecodeRevision(f *testing.F) {
	good, _ := json.Marshal(Revision{Number: 7, SHA256: Sum([]byte(v1)), Author: "a", Content: v1})
	f.Add(int64(7), good)
	f.Add(int64(8), good)
	f.Add(int64(7), []byte(`{"revision":7,"sha256":"00","content":"rules: []"}`))
	f.Add(int64(1), []byte(`not json`))
	f.Add(int64(1), []byte(`{"revision":1,"content":"\ud800"}`))
	f.Fuzz(func(t *testing.T, n int64, rec []byte) {
		r, err := decodeRevision(n, rec)
		if err != nil {
			if !errors.Is(err, ErrBadRevision) {
				t.Fatalf("error %v does not wrap ErrBadRevision", err)
			}
			return
		}
		if r.Number != n || Sum([]byte(r.Content)) != r.SHA256 {
			t.Fatalf("accepted a record that is not whole: %+v", r)
		}
	})
}

// TestAnnouncerRestartAfterKill: a gateway restarted after kill -9 finds
// its previous run's status key; it waits for it to expire, without
// reporting etcd degraded meanwhile, and then takes its place.
func TestAnnouncerRestartAfterKill(t *testing.T) {
	_, cli, c := testStore(t)
	ctx := ctxT(t)
	run := func(a *Announcer) (stop func()) {
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(actx) }()
		return func() { cancel(); <-done }
	}
	opts := func(learned int) AnnouncerOptions {
		return AnnouncerOptions{Prefix: prefix, Node: "gw-r", Interval: 200 * time.Millisecond, TTL: 2 * time.Second,
			Status: func() Status { return Status{Learned: learned} }}
	}
	first := c.Client(t)
	stopFirst := run(NewAnnouncer(first, opts(1)))
	waitFleet(t, cli, func(r Report) bool { return len(r.Nodes) == 1 && r.Nodes[0].Learned == 1 })
	first.Close() // killed: nothing revokes its lease
	stopFirst()

	second := NewAnnouncer(c.Client(t), opts(42))
	defer run(second)()
	deadline := time.Now().Add(wait)
	for {
		if err := second.Err(); err != nil {
			t.Fatalf("the restarted gateway reports %v while its previous key expires", err)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := ReadFleet(rctx, cli, prefix)
		cancel()
		if err == nil && len(r.Nodes) == 1 && r.Nodes[0].Learned == 42 && r.Nodes[0].State == StateOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted gateway never took its status key back: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
