package fleet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/etcdtest"
)

// TestBadElementsIgnoredAndCounted: elements written straight to etcd
// that the policy would not have learned are not programmed, whether they
// are there when the gateway starts (its load) or arrive later (its
// watch), and each is counted by its reason.
func TestBadElementsIgnoredAndCounted(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	soon := encodeExpiry(time.Now().Add(10 * time.Minute).Unix())
	far := encodeExpiry(time.Now().Add(3 * time.Hour).Unix())
	line := func(key, exp string) string { return key + " " + exp + "\n" }
	bad := []struct{ key, value, reason string }{
		{batchKey("w", 1, 1), batchHeader + line("public.example/192.0.2.1/everyone", soon), ReasonMalformed},
		{batchKey("w", 1, 2), batchHeader + line("public.example/192.0.2.1/everyone/", "soon"), ReasonMalformed},
		// One bad line: none of the batch is used, its good line included.
		{batchKey("w", 1, 3), batchHeader + line("public.example/192.0.2.4/everyone/", soon) + "junk\n", ReasonMalformed},
		{batchKey("w", 1, 4), "fqdngate-learned 2\n" + line("public.example/192.0.2.5/everyone/", soon), ReasonMalformed},
		// The per-element keys of before, and anything else.
		{"public.example/192.0.2.6/everyone/", soon, ReasonUnknownKey},
		{"w/1", batchHeader + line("public.example/192.0.2.7/everyone/", soon), ReasonUnknownKey},
		{batchKey("w", 1, 5), batchHeader + line("public.example/192.0.2.1/nope/", soon), ReasonUnknownRule},
		{batchKey("w", 1, 6), batchHeader + line("api.bank.example/192.0.2.1/bank/web", soon), ReasonUnknownGroup},
		{batchKey("w", 1, 7), batchHeader + line("evil.example/192.0.2.1/everyone/", soon), ReasonNameNotAllowed},
		{batchKey("w", 1, 8), batchHeader + line("public.example/10.0.0.1/everyone/", soon), ReasonAddress},
		{batchKey("w", 1, 9), batchHeader + line("public.example/192.0.2.2/everyone/", far), ReasonExpiry},
	}
	// The good element and six addresses of one name, whose cap is four,
	// in one batch.
	good := batchHeader + line("public.example/192.0.2.3/everyone/", soon)
	for i := range 6 {
		good += line(fmt.Sprintf("y.cdn.example/192.0.2.%d/everyone/", 40+i), soon)
	}
	writeAll := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		for _, b := range bad {
			if _, err := cli.Put(ctx, "/fqdngate/learned/"+b.key, b.value); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := cli.Put(ctx, "/fqdngate/learned/"+batchKey("w", 2, 1), good); err != nil {
			t.Fatal(err)
		}
	}
	writeAll()
	a := startGateway(t, c.Client(t), "a", nil, nil)
	a.waitLoaded(t)
	writeAll() // again, through the watch
	want := map[string]float64{ReasonPerNameCap: 4}
	for _, b := range bad {
		want[b.reason] += 2
	}
	waitFor(t, "every bad element counted twice", func() bool {
		for reason, n := range want {
			if promtest.ToFloat64(a.m.ignored.WithLabelValues(reason)) < n {
				return false
			}
		}
		return true
	})
	for reason, n := range want {
		if got := promtest.ToFloat64(a.m.ignored.WithLabelValues(reason)); got != n {
			t.Errorf("ignored %s: got %v, want %v", reason, got, n)
		}
	}
	byName := map[dnsname.Name]int{}
	for _, e := range a.store.List() {
		byName[e.Name]++
		if e.Name == "public.example" && e.Addr != netip.MustParseAddr("192.0.2.3") {
			t.Errorf("programmed %s %s from etcd, which the policy refuses", e.Name, e.Addr)
		}
	}
	if byName["public.example"] != 1 || byName["y.cdn.example"] != 4 || len(byName) != 2 {
		t.Errorf("programmed per name: got %v, want public.example: 1, y.cdn.example: 4", byName)
	}
}

// TestOneMemberDownKeepsWorking: with one etcd member of three stopped,
// the quorum holds, and so does hold: peers.
func TestOneMemberDownKeepsWorking(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	b := startGateway(t, c.Client(t), "b", nil, nil)
	settle(t, a, b)

	c.Stop(0) // the leader, as often as not: an election follows
	e := publishAcked(t, a, func(i int) learn.Entry {
		return entry("public.example", fmt.Sprintf("192.0.2.%d", 100+i), "everyone", "", 5*time.Minute)
	})
	if !b.holds(e) {
		t.Fatal("a released the answer, but b does not hold the element")
	}
}

// publishAcked publishes fresh elements (mk(0), mk(1), ...) at a until
// one is acknowledged by every live gateway, and returns it: right after
// a change in the cluster, a gateway may still fall back to a local hold
// once or twice while it settles. It fails the test if none is within
// waitTimeout.
func publishAcked(t *testing.T, a *gateway, mk func(i int) learn.Entry) learn.Entry {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for i := 0; ; i++ {
		waitFor(t, "a working with etcd", func() bool { return a.Degraded() == nil })
		e := mk(i)
		acked := a.holdsEnded("acked")
		if err := a.Publish(context.Background(), []learn.Entry{e}); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if a.holdsEnded("acked") > acked {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("no publication acknowledged within %v", waitTimeout)
		}
		t.Logf("publication %d held locally only (%v); again", i, a.Degraded())
	}
}

// TestAllMembersDown: without etcd, both gateways keep what they have and
// hold new answers locally at once; when etcd is back they resync
// without dropping anything, and what was learned meanwhile reaches the
// other gateway.
func TestAllMembersDown(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	b := startGateway(t, c.Client(t), "b", nil, nil)
	settle(t, a, b)
	before := entry("public.example", "192.0.2.60", "everyone", "", 10*time.Minute)
	if err := a.Publish(context.Background(), []learn.Entry{before}); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	for i := range 3 {
		c.Stop(i)
	}
	waitFor(t, "a and b to notice", func() bool { return a.Degraded() != nil && b.Degraded() != nil })
	if got := promtest.ToFloat64(a.m.degraded); got != 1 {
		t.Errorf("fqdngate_fleet_degraded: got %v, want 1", got)
	}
	if !a.IsLeader() || !b.IsLeader() {
		t.Errorf("degraded gateways run their own refreshes: leaders a %v, b %v, want both", a.IsLeader(), b.IsLeader())
	}
	during := entry("api.bank.example", "192.0.2.61", "bank", "payments", 10*time.Minute)
	if err := a.Publish(context.Background(), []learn.Entry{during}); err != nil {
		t.Fatalf("Publish without etcd: %v", err)
	}
	// At once: no hold timed out on the way.
	if got := a.holdsEnded("degraded"); got != 1 {
		t.Errorf("holds degraded: got %v, want 1", got)
	}
	if got := a.holdsEnded("timeout_release"); got != 0 {
		t.Errorf("holds timed out without etcd: got %v, want 0", got)
	}
	if !a.holds(during) || !a.holds(before) || !b.holds(before) {
		t.Fatal("without etcd, a gateway lost or did not enforce an element")
	}

	for i := range 3 {
		c.Restart(i)
	}
	waitFor(t, "a and b back with etcd", func() bool { return a.Degraded() == nil && b.Degraded() == nil })
	// A hold waits for the gateways registered in etcd: until a sees b
	// registered again (b's lease may have run out during the outage, and
	// b re-registers on its own schedule), a has nobody to wait for.
	settle(t, a, b)
	waitFor(t, "b to get what a learned without etcd", func() bool { return b.holds(during) })
	if !a.holds(before) || !b.holds(before) || !a.holds(during) {
		t.Fatal("the resync dropped a live element")
	}
	after := publishAcked(t, a, func(i int) learn.Entry {
		return entry("public.example", fmt.Sprintf("192.0.2.%d", 150+i), "everyone", "", 10*time.Minute)
	})
	if !b.holds(after) {
		t.Fatal("after the outage, a released an answer that b does not hold")
	}
}

// TestKilledGatewayIsNotWaitedFor: a gateway that vanishes without a word
// (kill -9: its connection to etcd just goes) is waited for until its
// lease expires, then no more; holds complete without timing out.
func TestKilledGatewayIsNotWaitedFor(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	bCli := etcdtest.NewClient(t, c.Endpoints()...)
	var bGate *gate
	b := startGateway(t, bCli, "b", func(s *learn.Store) learn.Publisher { bGate = newGate(s); return bGate }, nil)
	t.Cleanup(bGate.release)
	settle(t, a, b)

	e := entry("public.example", "192.0.2.70", "everyone", "", 5*time.Minute)
	done := publishAsync(a, e)
	<-bGate.arrived // b will never acknowledge it
	bCli.Close()    // no revoke, no goodbye: the lease runs out
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("a still waits for b long after b's lease must have expired")
	}
	if got := a.holdsEnded("acked"); got != 1 {
		t.Errorf("holds acked: got %v, want 1 (timeouts: %v)", got, a.holdsEnded("timeout_release"))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.live) != 0 {
		t.Errorf("a still counts %v as live", a.live)
	}
}

// TestNewGatewayLoadsBeforeLoaded: a gateway that joins has programmed
// the whole learned set (more than one transaction's worth) by the time
// Loaded is closed.
func TestNewGatewayLoadsBeforeLoaded(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startGateway(t, c.Client(t), "a", nil, func(o *Options) { patient(o); o.Hold = HoldLocal })
	a.waitLoaded(t)
	var all []learn.Entry
	for i := range 300 {
		all = append(all, entry(fmt.Sprintf("n%d.cdn.example", i), fmt.Sprintf("2001:db8::%x", i+1), "everyone", "", 10*time.Minute))
	}
	// Three batches of a hundred: full transactions.
	for i := 0; i < len(all); i += 100 {
		if err := a.Publish(context.Background(), all[i:i+100]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "a to write everything", func() bool { return a.count(a.m.written) == float64(len(all)) })

	b := startGateway(t, c.Client(t), "b", nil, patient)
	b.waitLoaded(t)
	missing := 0
	for _, e := range all {
		if !b.holds(e) {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("loaded, but %d of %d elements are missing", missing, len(all))
	}
}

// TestOneRefreshLeader: one gateway of the fleet runs the refresh timers;
// when it goes, another takes over.
func TestOneRefreshLeader(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	b := startGateway(t, c.Client(t), "b", nil, nil)
	a.waitLoaded(t)
	b.waitLoaded(t)
	waitFor(t, "a leader", func() bool { return a.IsLeader() || b.IsLeader() })
	if a.IsLeader() && b.IsLeader() {
		t.Fatal("two leaders")
	}
	leader, other := a, b
	if b.IsLeader() {
		leader, other = b, a
	}
	leader.stop()
	if leader.IsLeader() {
		t.Error("a stopped gateway still says it leads")
	}
	waitFor(t, "the other gateway to take over", other.IsLeader)
}

// TestUnreachableAtStart: a gateway that cannot reach etcd at all is never
// Loaded (so never ready), says why, and still answers with a local hold
// at once.
func TestUnreachableAtStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	a := startGateway(t, etcdtest.NewClient(t, nowhere), "a", nil, func(o *Options) { o.WriteTimeout = 300 * time.Millisecond })
	waitFor(t, "a to give up on etcd once", func() bool {
		err := a.Degraded()
		return err != nil && err != errConnecting
	})
	select {
	case <-a.Loaded():
		t.Fatal("loaded without etcd")
	default:
	}
	e := entry("public.example", "192.0.2.80", "everyone", "", time.Minute)
	if err := a.Publish(context.Background(), []learn.Entry{e}); err != nil {
		t.Fatalf("Publish without etcd: %v", err)
	}
	if got := a.holdsEnded("degraded"); got != 1 || !a.holds(e) {
		t.Fatalf("holds degraded %v, a holds it %v; want 1, true", got, a.holds(e))
	}
}

// TestSetAccept: a reloaded policy's check applies to the elements read
// from then on, and to those read before: an element the previous check
// refused is programmed before SetAccept returns (a gateway that started
// on its local file alone, then got its first shared revision); elements
// the new check refuses stop counting against the per-name cap, and come
// back under a later check that accepts them again, within its cap.
func TestSetAccept(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	a := startGateway(t, c.Client(t), "a", nil, nil)
	a.waitLoaded(t)
	ctx := context.Background()
	put := func(key string) {
		t.Helper()
		putBatch(t, cli, key+" "+encodeExpiry(time.Now().Add(time.Minute).Unix()))
	}
	counted := func() int {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.mirror.counted("public.example")
	}
	a.SetAccept(ctx, nil, 0) // refuses everything
	put("public.example/192.0.2.90/everyone/")
	waitFor(t, "the element to be refused", func() bool {
		return promtest.ToFloat64(a.m.ignored.WithLabelValues(ReasonUnknownRule)) == 1
	})
	if a.holds(entry("public.example", "192.0.2.90", "everyone", "", 0)) {
		t.Fatal("an element the check refused is programmed")
	}

	a.SetAccept(ctx, Accept(testPolicy(t), nil), 4)
	if !a.holds(entry("public.example", "192.0.2.90", "everyone", "", 0)) {
		t.Error("the element refused before the reload is not programmed when SetAccept returns")
	}
	put("public.example/192.0.2.91/everyone/")
	e := entry("public.example", "192.0.2.91", "everyone", "", 0)
	waitFor(t, "the element to be programmed", func() bool { return a.holds(e) })
	if got := counted(); got != 2 {
		t.Errorf("public.example counts %d elements against the cap, want 2", got)
	}

	a.SetAccept(ctx, nil, 0)
	if got := counted(); got != 0 {
		t.Errorf("with every element refused, public.example counts %d against the cap, want 0", got)
	}
	programmed := promtest.ToFloat64(a.m.programd)
	capped := promtest.ToFloat64(a.m.ignored.WithLabelValues(ReasonPerNameCap))
	a.SetAccept(ctx, Accept(testPolicy(t), nil), 1)
	if got := counted(); got != 1 {
		t.Errorf("with a cap of 1, public.example counts %d, want 1", got)
	}
	if got := promtest.ToFloat64(a.m.programd) - programmed; got != 1 {
		t.Errorf("accepted again under a cap of 1: %v elements programmed, want 1", got)
	}
	if got := promtest.ToFloat64(a.m.ignored.WithLabelValues(ReasonPerNameCap)) - capped; got != 1 {
		t.Errorf("accepted again under a cap of 1: %v elements over the cap, want 1", got)
	}
}
