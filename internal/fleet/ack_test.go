package fleet

import (
	"container/heap"
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// TestTakeCarriesWatermark: the flusher's next transaction of learned
// elements carries this gateway's watermark when it moved since the last
// one that did; the watermark goes alone only when asked for (its own
// slot); never when the gateway is not registered (no lease) or the fleet
// is down.
func TestTakeCarriesWatermark(t *testing.T) {
	c := etcdtest.Start(t, 1)
	// Never Run: take is driven by hand, and nothing is written.
	f, err := New(c.Client(t), Options{Node: "a", Local: learn.NewStore(learn.StoreConfig{}), Accept: func(learn.Entry) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	elem := func(i int) learn.Entry {
		return learn.Entry{Name: dnsname.Name("n" + strconv.Itoa(i) + ".cdn.example"), Addr: mustAddr("198.51.100." + strconv.Itoa(i)), Rule: "everyone", Expires: exp}
	}
	f.mu.Lock()
	f.up, f.ackLease, f.ackSent = true, 7, 10
	f.mu.Unlock()
	f.applied.Store(10)

	for i, tc := range []struct {
		name    string
		setup   func()
		publish bool // an element is queued first
		alone   bool // take's argument
		nothing bool // take returns nil
		ops     int
		wm      int64
	}{
		{name: "elements, watermark not moved", publish: true, ops: 1},
		{name: "elements, watermark moved", setup: func() { f.applied.Store(12) }, publish: true, ops: 1, wm: 12},
		{name: "nothing to write", nothing: true},
		{name: "nothing to write alone", alone: true, nothing: true},
		{name: "watermark moved, no element", setup: func() { f.applied.Store(13) }, nothing: true},
		{name: "watermark moved, alone", alone: true, wm: 13},
		{name: "elements are not taken alone", publish: true, alone: true, nothing: true},
		{name: "elements left behind", ops: 1},
		// Group commit: while a transaction of elements is in flight,
		// the next waits for it (unless full), and so does a watermark.
		{name: "elements wait for the one in flight", setup: func() { f.inflight["x"] = &op{} }, publish: true, nothing: true},
		{name: "watermark waits for the elements in flight", setup: func() { f.applied.Store(14) }, alone: true, nothing: true},
		{name: "a full flush does not wait", setup: func() {
			for j := range maxBatch {
				e := elem(j % 256)
				e.Name = dnsname.Name("full" + strconv.Itoa(j) + ".cdn.example")
				f.enqueueLocked([]learn.Entry{e}, time.Now().Unix())
			}
		}, ops: maxBatch, wm: 14},
		{name: "queued elements and watermark leave once it is written", setup: func() { delete(f.inflight, "x"); f.applied.Store(15) }, ops: 1, wm: 15},
		{name: "not registered", setup: func() { f.ackLease = 0; f.applied.Store(16) }, alone: true, nothing: true},
		{name: "fleet down", setup: func() { f.up, f.ackLease = false, 7 }, publish: true, nothing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			if tc.setup != nil {
				tc.setup()
			}
			if tc.publish {
				f.enqueueLocked([]learn.Entry{elem(i)}, time.Now().Unix())
			}
			f.mu.Unlock()
			fl := f.take(tc.alone)
			switch {
			case tc.nothing && fl != nil:
				t.Fatalf("take: got a flush of %d elements, watermark %d; want nothing", len(fl.ops), fl.wm)
			case tc.nothing:
				return
			case fl == nil:
				t.Fatalf("take: got nothing, want %d elements, watermark %d", tc.ops, tc.wm)
			}
			if len(fl.ops) != tc.ops || fl.wm != tc.wm {
				t.Errorf("take: got %d elements, watermark %d; want %d, %d", len(fl.ops), fl.wm, tc.ops, tc.wm)
			}
			if tc.wm != 0 && fl.lease != 7 {
				t.Errorf("take: watermark on lease %d, want the registration's, 7", fl.lease)
			}
			for _, o := range fl.ops {
				delete(f.inflight, o.key) // as written would
			}
		})
	}
}

// TestWatermarkOnlyRises: the flusher's transactions in flight together may
// be applied in any order, and one sent before a reconnection may be
// applied after the next registration: a watermark write never lowers the
// key, and never moves it to another lease than the one it is on.
func TestWatermarkOnlyRises(t *testing.T) {
	c := etcdtest.Start(t, 1)
	cli := c.Client(t)
	g := startGateway(t, cli, "a", nil, nil)
	settle(t, g)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	read := func() (int64, clientv3.LeaseID) {
		t.Helper()
		resp, err := cli.Get(ctx, "/fqdngate/nodes/a")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading a's watermark: %v, %v", resp, err)
		}
		v := string(resp.Kvs[0].Value)
		wm, err := strconv.ParseInt(v, 10, 64)
		if err != nil || len(v) != watermarkDigits {
			t.Fatalf("a's watermark %q is not %d digits", v, watermarkDigits)
		}
		return wm, clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	wm0, lease := read()
	g.mu.Lock()
	registered := g.ackLease
	g.mu.Unlock()
	if lease != registered {
		t.Fatalf("a's watermark is on lease %x, the gateway registered on %x", lease, registered)
	}
	other, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		wm    int64
		lease clientv3.LeaseID
		want  int64
	}{
		{"a lower watermark, applied late", wm0 - 1, lease, wm0},
		{"the same watermark", wm0, lease, wm0},
		{"a higher one on another connection's lease", wm0 + 100, other.ID, wm0},
		{"a higher one on the key's lease", wm0 + 1, lease, wm0 + 1},
		{"then the lower one again", wm0, lease, wm0 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl := &flush{wm: tc.wm, lease: tc.lease, done: make(chan struct{})}
			g.write(ctx, fl, &leases{ids: map[int64]clientv3.LeaseID{}})
			if fl.err != nil {
				t.Fatalf("write: %v", fl.err)
			}
			got, gotLease := read()
			if got != tc.want || gotLease != lease {
				t.Errorf("a's watermark: got %d on lease %x, want %d on %x", got, gotLease, tc.want, lease)
			}
		})
	}
	if g.Degraded() != nil {
		t.Errorf("the gateway went degraded: %v", g.Degraded())
	}
}

// TestWakeAcked: a watermark that moves wakes the holds whose revision
// every live gateway has reached, lowest first, and no other; a gateway
// that leaves can release holds; with no other gateway every hold is
// released.
func TestWakeAcked(t *testing.T) {
	f := &Fleet{live: map[string]int64{}}
	waiting := map[int64]*ackWait{}
	for _, rev := range []int64{15, 5, 10, 20} {
		w := &ackWait{rev: rev, ch: make(chan struct{})}
		heap.Push(&f.acks, w)
		waiting[rev] = w
	}
	woken := func(rev int64) bool {
		select {
		case <-waiting[rev].ch:
			return true
		default:
			return false
		}
	}
	for _, step := range []struct {
		name  string
		live  map[string]int64
		woken []int64 // every hold woken so far, the others still waiting
	}{
		{"b at 10, c at 12", map[string]int64{"b": 10, "c": 12}, []int64{5, 10}},
		{"c moves on, b does not", map[string]int64{"b": 10, "c": 30}, []int64{5, 10}},
		{"b at 17", map[string]int64{"b": 17, "c": 30}, []int64{5, 10, 15}},
		{"d joins behind", map[string]int64{"b": 30, "c": 30, "d": 1}, []int64{5, 10, 15}},
		{"d leaves", map[string]int64{"b": 30, "c": 30}, []int64{5, 10, 15, 20}},
	} {
		f.live = step.live
		f.wakeAckedLocked()
		for rev, w := range waiting {
			want := slices.Contains(step.woken, rev)
			if got := woken(rev); got != want {
				t.Errorf("%s: hold for %d woken: got %v, want %v", step.name, rev, got, want)
			}
			if want != (w.i < 0) {
				t.Errorf("%s: hold for %d: heap index %d; want it out of the heap: %v", step.name, rev, w.i, want)
			}
		}
	}
	w := &ackWait{rev: 99, ch: make(chan struct{})}
	heap.Push(&f.acks, w)
	f.live = map[string]int64{}
	f.wakeAckedLocked()
	select {
	case <-w.ch:
	default:
		t.Error("with no other gateway live, a hold is not woken")
	}
}
