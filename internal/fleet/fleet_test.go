package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// waitTimeout bounds every wait for a condition: generous, since the test
// machines are small and loaded. Tests wait for conditions, never for
// fixed times.
const waitTimeout = 30 * time.Second

// gateway is one Fleet in the test process, with its own local store.
type gateway struct {
	*Fleet
	store *learn.Store
	stop  func() // ends Run (withdrawing the gateway) and waits for it
}

// startGateway starts a Fleet named node on cli, enforcing into a fresh
// learn.Store (through local, if not nil, which must publish to that
// store), checked against the test policy.
func startGateway(t testing.TB, cli *clientv3.Client, node string, local func(*learn.Store) learn.Publisher, tweak func(*Options)) *gateway {
	t.Helper()
	p := testPolicy(t)
	store := learn.NewStore(learn.StoreConfig{MaxPerName: p.DNS.MaxLearnedPerName})
	var pub learn.Publisher = store
	if local != nil {
		pub = local(store)
	}
	o := Options{
		Node:         node,
		Local:        pub,
		Accept:       Accept(p, nil),
		MaxPerName:   p.DNS.MaxLearnedPerName,
		Registerer:   prometheus.NewRegistry(),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", node),
		HoldTimeout:  waitTimeout, // a hold that times out fails the test, unless it sets its own
		NodeTTL:      2 * time.Second,
		WriteTimeout: 2 * time.Second,
		ProbeEvery:   200 * time.Millisecond,
	}
	if tweak != nil {
		tweak(&o)
	}
	f, err := New(cli, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil {
			t.Errorf("%s: Run: %v", node, err)
		}
	}()
	g := &gateway{Fleet: f, store: store, stop: sync.OnceFunc(func() { cancel(); <-done })}
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) waitLoaded(t testing.TB) {
	t.Helper()
	select {
	case <-g.Loaded():
	case <-time.After(waitTimeout):
		t.Fatalf("%s: not loaded after %v (%v)", g.o.Node, waitTimeout, g.Degraded())
	}
}

// settle waits until every gateway of gws has loaded and sees the others
// alive.
func settle(t testing.TB, gws ...*gateway) {
	t.Helper()
	for _, g := range gws {
		g.waitLoaded(t)
	}
	for _, g := range gws {
		waitFor(t, g.o.Node+" to see the others", func() bool {
			g.mu.Lock()
			defer g.mu.Unlock()
			return len(g.live) == len(gws)-1
		})
	}
}

// holds reports whether g's store holds e, until its expiry or later.
func (g *gateway) holds(e learn.Entry) bool {
	for _, h := range g.store.List() {
		if h.Name == e.Name && h.Addr == e.Addr && h.Rule == e.Rule && h.Group == e.Group {
			return !h.Expires.Before(e.Expires.Truncate(time.Second))
		}
	}
	return false
}

// count returns the value of one of g's counters.
func (g *gateway) count(c prometheus.Collector) float64 { return promtest.ToFloat64(c) }

func (g *gateway) holdsEnded(result string) float64 {
	return promtest.ToFloat64(g.m.holds.WithLabelValues(result))
}

// patient gives a gateway etcd timeouts no loaded machine reaches, for
// tests that want every hold acknowledged rather than what happens when
// etcd is slow: the defaults of startGateway (2s) keep the failure tests
// short, and a two-core machine running several etcd clusters under -race
// misses them now and then.
func patient(o *Options) {
	o.NodeTTL, o.WriteTimeout = 15*time.Second, 15*time.Second
}

// waitFor waits until cond holds, failing the test after waitTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gate is a local publisher that lets no Publish through to its store
// until opened: a gateway that is slow to program its kernel.
type gate struct {
	store   *learn.Store
	arrived chan struct{} // a Publish is waiting (one slot)
	mu      sync.Mutex
	open    chan struct{}
}

func newGate(s *learn.Store) *gate {
	return &gate{store: s, arrived: make(chan struct{}, 1), open: make(chan struct{})}
}

func (g *gate) Publish(ctx context.Context, batch []learn.Entry) error {
	select {
	case g.arrived <- struct{}{}:
	default:
	}
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.store.Publish(ctx, batch)
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

// publishAsync publishes batch at g and returns a channel that receives
// the result.
func publishAsync(g *gateway, batch ...learn.Entry) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- g.Publish(context.Background(), batch) }()
	return ch
}

func TestHoldPeersWaitsForTheOtherGateway(t *testing.T) {
	c := etcdtest.Start(t, 3)
	var bGate *gate
	a := startGateway(t, c.Client(t), "a", nil, nil)
	b := startGateway(t, c.Client(t), "b", func(s *learn.Store) learn.Publisher { bGate = newGate(s); return bGate }, nil)
	settle(t, a, b)

	e := entry("api.bank.example", "192.0.2.10", "bank", "payments", 5*time.Minute)
	done := publishAsync(a, e)
	select {
	case <-bGate.arrived:
	case err := <-done:
		t.Fatalf("a released the answer (%v) before b programmed it", err)
	case <-time.After(waitTimeout):
		t.Fatal("b never got the element")
	}
	if !a.holds(e) {
		t.Fatal("a holds the answer but has not programmed it itself")
	}
	// b is stuck programming, so it has not acknowledged: a must still
	// hold the answer (its hold timeout is far away).
	select {
	case err := <-done:
		t.Fatalf("a released the answer (%v) while b had not programmed it", err)
	case <-time.After(200 * time.Millisecond):
	}
	bGate.release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("a never released the answer after b programmed it")
	}
	if !b.holds(e) {
		t.Fatal("a released the answer, but b does not hold the element")
	}
	if got := a.holdsEnded("acked"); got != 1 {
		t.Errorf("holds acked: got %v, want 1", got)
	}
}

func TestHoldLocalDoesNotWait(t *testing.T) {
	c := etcdtest.Start(t, 3)
	var bGate *gate
	a := startGateway(t, c.Client(t), "a", nil, func(o *Options) { o.Hold = HoldLocal })
	b := startGateway(t, c.Client(t), "b", func(s *learn.Store) learn.Publisher { bGate = newGate(s); return bGate }, nil)
	settle(t, a, b)

	e := entry("public.example", "2001:db8::10", "everyone", "", 5*time.Minute)
	select {
	case err := <-publishAsync(a, e):
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("hold: local waited for b, which is stuck")
	}
	if !a.holds(e) {
		t.Fatal("a released the answer without programming it")
	}
	// Replication goes on asynchronously.
	<-bGate.arrived
	bGate.release()
	waitFor(t, "b to program the element", func() bool { return b.holds(e) })
	if got := a.holdsEnded("local"); got != 1 {
		t.Errorf("holds local: got %v, want 1", got)
	}
}

func TestHoldTimeout(t *testing.T) {
	for _, tc := range []struct {
		on      OnTimeout
		wantErr bool
		result  string
	}{
		{Release, false, "timeout_release"},
		{ServFail, true, "timeout_servfail"},
	} {
		t.Run(tc.on.String(), func(t *testing.T) {
			c := etcdtest.Start(t, 3)
			var bGate *gate
			var released []string // what Options.Released was told
			a := startGateway(t, c.Client(t), "a", nil, func(o *Options) {
				o.HoldTimeout = 300 * time.Millisecond
				o.OnTimeout = tc.on
				o.Released = func(batch []learn.Entry, why string) {
					released = append(released, string(batch[0].Name)+": "+why)
				}
			})
			b := startGateway(t, c.Client(t), "b", func(s *learn.Store) learn.Publisher { bGate = newGate(s); return bGate }, nil)
			t.Cleanup(bGate.release) // before b stops
			settle(t, a, b)

			e := entry("public.example", "192.0.2.20", "everyone", "", 5*time.Minute)
			err := a.Publish(context.Background(), []learn.Entry{e})
			if got := err != nil; got != tc.wantErr {
				t.Fatalf("Publish: got %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, ErrHoldTimeout) {
				t.Fatalf("Publish: got %v, want ErrHoldTimeout", err)
			}
			if got := a.holdsEnded(tc.result); got != 1 {
				t.Errorf("holds %s: got %v, want 1", tc.result, got)
			}
			if !a.holds(e) {
				t.Error("a does not hold the element it timed out on")
			}
			// A released answer is reported for the audit log; one
			// answered SERVFAIL is audited by the DNS firewall itself.
			wantReleased := 0
			if !tc.wantErr {
				wantReleased = 1
			}
			if len(released) != wantReleased || wantReleased == 1 && !strings.Contains(released[0], "public.example: gateways b did not acknowledge") {
				t.Errorf("Released calls: %q, want %d naming the lagging gateway b", released, wantReleased)
			}
		})
	}
}

// etcdWrites counts the writes etcd has committed: every write to the key
// space moves the revision by one, whoever made it; lease grants do not,
// but cost a consensus round too, so the gateways' own count of them is
// added.
func etcdWrites(t testing.TB, cli *clientv3.Client, gws ...*gateway) int64 {
	t.Helper()
	n := etcdRevision(t, cli)
	for _, g := range gws {
		n += int64(promtest.ToFloat64(g.m.writes.WithLabelValues("lease")))
	}
	return n
}

// etcdRevision is the cluster's current revision.
func etcdRevision(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "/")
	if err != nil {
		t.Fatalf("reading the revision: %v", err)
	}
	return resp.Header.Revision
}

// TestCoalescing: a name answered again and again (from the cache, with
// the same expiry, or with a later one within the same second) costs etcd
// at most 0.1 writes per answer, acknowledgements included; a later
// expiry is written.
func TestCoalescing(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	b := startGateway(t, c.Client(t), "b", nil, nil)
	settle(t, a, b)

	expires := time.Now().Add(5 * time.Minute).Truncate(time.Second).Add(100 * time.Millisecond)
	batch := []learn.Entry{
		{Name: "x.cdn.example", Addr: mustAddr("192.0.2.30"), Rule: "everyone", Expires: expires},
		{Name: "x.cdn.example", Addr: mustAddr("2001:db8::30"), Rule: "everyone", Expires: expires},
	}
	before := etcdWrites(t, cli, a, b)
	const answers = 200
	for i := range answers {
		// Answers from the cache carry the same expiry; fresh ones
		// within the same second a slightly later one.
		for j := range batch {
			batch[j].Expires = expires.Add(time.Duration(i) * time.Millisecond)
		}
		if err := a.Publish(context.Background(), batch); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	if !b.holds(batch[0]) || !b.holds(batch[1]) {
		t.Fatal("a released the answers, but b does not hold the elements")
	}
	// a acknowledges its own write too, asynchronously: count it.
	waitAcked(t, cli, "x.cdn.example/192.0.2.30/everyone/", "a", "b")
	writes := etcdWrites(t, cli, a, b) - before
	if per := float64(writes) / answers; per > 0.1 {
		t.Errorf("%d etcd writes for %d answers of one name: %.3f per answer, want at most 0.1", writes, answers, per)
	}
	t.Logf("%d etcd writes for %d answers (%.3f per answer)", writes, answers, float64(writes)/answers)

	// A later expiry is news: written once, and b extends the element.
	later := []learn.Entry{batch[0]}
	later[0].Expires = expires.Add(2 * time.Minute)
	written := a.count(a.m.written)
	if err := a.Publish(context.Background(), later); err != nil {
		t.Fatalf("Publish with a later expiry: %v", err)
	}
	if got := a.count(a.m.written) - written; got != 1 {
		t.Errorf("elements written for a later expiry: got %v, want 1", got)
	}
	if !b.holds(later[0]) {
		t.Error("a released the extension, but b holds the element with its old expiry")
	}
}

// waitAcked waits until the watermarks of nodes have reached the revision
// that last wrote key.
func waitAcked(t testing.TB, cli *clientv3.Client, key string, nodes ...string) {
	t.Helper()
	get := func(k string) (*clientv3.GetResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		return cli.Get(ctx, k)
	}
	rev, ok := etcdElements(t, cli)[key]
	if !ok {
		t.Fatalf("etcd holds no batch with %s", key)
	}
	waitFor(t, fmt.Sprintf("%v to acknowledge revision %d", nodes, rev.rev), func() bool {
		for _, n := range nodes {
			resp, err := get("/fqdngate/nodes/" + n)
			if err != nil || len(resp.Kvs) != 1 {
				return false
			}
			if wm, _ := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64); wm < rev.rev {
				return false
			}
		}
		return true
	})
}

// etcdElements reads every batch etcd holds, and returns each element's
// latest expiry and the latest revision that wrote it, by key; every
// learned key must be a batch that parses.
func etcdElements(t testing.TB, cli *clientv3.Client) map[string]etcdHeld {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "/fqdngate/learned/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]etcdHeld{}
	for _, kv := range resp.Kvs {
		if _, ok := parseBatchKey(strings.TrimPrefix(string(kv.Key), "/fqdngate/learned/")); !ok {
			t.Fatalf("etcd holds %s, which is not a batch", kv.Key)
		}
		elems, err := parseBatch(kv.Value)
		if err != nil {
			t.Fatalf("%s: %v", kv.Key, err)
		}
		for _, el := range elems {
			h := out[el.key]
			h.exp = max(h.exp, el.e.Expires.Unix())
			h.rev = max(h.rev, kv.ModRevision)
			out[el.key] = h
		}
	}
	return out
}

// etcdHeld is an element's latest expiry and revision in etcd.
type etcdHeld struct{ exp, rev int64 }

// putBatch writes lines (<key> <expiry>, without the newline) as one batch
// of a gateway "w" that is not running, and returns the revision.
func putBatch(t testing.TB, cli *clientv3.Client, lines ...string) int64 {
	t.Helper()
	v := batchHeader
	for _, l := range lines {
		v += l + "\n"
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	resp, err := cli.Put(ctx, "/fqdngate/learned/"+batchKey("w", 0, uint64(time.Now().UnixNano())), v)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestConcurrentPublishes: answers at three gateways at once, many for
// the same elements with different expiries (two gateways resolving one
// name together), share transactions; every hold is acknowledged, every
// gateway ends with every element, and etcd with each element's latest
// expiry: a write never shortens another's.
func TestConcurrentPublishes(t *testing.T) {
	c := etcdtest.Start(t, 3)
	var gws []*gateway
	for _, n := range []string{"a", "b", "c"} {
		gws = append(gws, startGateway(t, c.Client(t), n, nil, patient))
	}
	settle(t, gws...)
	const elements, rounds = 150, 4
	base := time.Now().Add(5 * time.Minute).Truncate(time.Second)
	elem := func(i, round int) learn.Entry {
		return learn.Entry{
			Name:    dnsname.Name(fmt.Sprintf("n%d.cdn.example", i)),
			Addr:    netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}),
			Rule:    "everyone",
			Expires: base.Add(time.Duration(round) * time.Minute),
		}
	}
	var wg sync.WaitGroup
	for round := range rounds {
		for i := range elements {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g := gws[(i+round)%len(gws)]
				if err := g.Publish(context.Background(), []learn.Entry{elem(i, round)}); err != nil {
					t.Errorf("Publish: %v", err)
				}
			}()
		}
	}
	wg.Wait()
	var acked float64
	for _, g := range gws {
		acked += g.holdsEnded("acked")
	}
	if acked != elements*rounds {
		t.Errorf("holds acked: got %v, want %d", acked, elements*rounds)
	}
	latest := func(i int) learn.Entry { return elem(i, rounds-1) }
	for _, g := range gws {
		waitFor(t, g.o.Node+" to hold every element until its latest expiry", func() bool {
			for i := range elements {
				if !g.holds(latest(i)) {
					return false
				}
			}
			return true
		})
	}
	held := etcdElements(t, c.Client(t))
	if len(held) != elements {
		t.Fatalf("etcd holds %d elements, want %d", len(held), elements)
	}
	want := latest(0).Expires.Unix()
	for key, h := range held {
		if h.exp != want {
			t.Errorf("%s expires at %d, want the latest, %d", key, h.exp, want)
		}
	}
}

// counting is a local publisher that counts the entries it is given.
type counting struct {
	store *learn.Store
	mu    sync.Mutex
	n     int
}

func (c *counting) Publish(ctx context.Context, batch []learn.Entry) error {
	c.mu.Lock()
	c.n += len(batch)
	c.mu.Unlock()
	return c.store.Publish(ctx, batch)
}

// TestOwnBatchesNotProgrammedAgain: a gateway's own batch, back through
// its watch, is not parsed and programmed a second time (its kernel has
// the elements since Publish), yet its elements count against their
// name's cap as elements etcd holds, and a new gateway loads them.
func TestOwnBatchesNotProgrammedAgain(t *testing.T) {
	c := etcdtest.Start(t, 1)
	var local *counting
	a := startGateway(t, c.Client(t), "a", func(s *learn.Store) learn.Publisher { local = &counting{store: s}; return local }, nil)
	b := startGateway(t, c.Client(t), "b", nil, nil)
	settle(t, a, b)

	e := entry("api.bank.example", "192.0.2.10", "bank", "payments", 5*time.Minute)
	if err := a.Publish(context.Background(), []learn.Entry{e}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// Once a's watch has passed its own write, it has seen the batch.
	waitFor(t, "a's watch to pass its own batch", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		_, h, ok := a.mirror.lookup(&e)
		return ok && a.applied.Load() >= h.rev
	})
	local.mu.Lock()
	n := local.n
	local.mu.Unlock()
	if n != 1 {
		t.Errorf("a's local publisher got %d entries, want 1 (the batch came back through the watch and was programmed again)", n)
	}
	a.mu.Lock()
	counted := a.mirror.counted(e.Name)
	a.mu.Unlock()
	if counted != 1 {
		t.Errorf("a counts %d elements of %s against its cap, want 1", counted, e.Name)
	}
	if !b.holds(e) {
		t.Error("b does not hold a's element")
	}
	late := startGateway(t, c.Client(t), "late", nil, nil)
	late.waitLoaded(t)
	if !late.holds(e) {
		t.Error("a gateway started later did not load a's element")
	}
}
