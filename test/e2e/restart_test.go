package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// watchClosed probes, until ctx ends, connections that must never open
// and DNS answers that must never arrive. wait returns what got through
// and the fewest attempts any probe made.
func watchClosed(ctx context.Context, f *forward) (wait func() (opened []string, fewest int)) {
	type probe struct {
		what string
		try  func() error // nil: stayed closed
	}
	probes := []probe{
		{"group a to an unlisted address", func() error { return f.a.dropped(ap("203.0.113.77", allowedPort)) }},
		{"group a to an unlisted name's address", func() error { return f.a.dropped(ap("203.0.113.66", allowedPort)) }},
		{"group a to its learned address on another port", func() error { return f.a.dropped(ap("203.0.113.10", otherPort)) }},
		{"group b to group a's learned address", func() error { return f.b.dropped(ap("203.0.113.10", allowedPort)) }},
		{"group a asking the outside resolver for an unlisted name", func() error {
			r, err := f.a.exchange("udp", authorityAddr, "evil.example.com", dns.TypeA, 300*time.Millisecond)
			if err == nil && len(r.Answer) > 0 {
				return fmt.Errorf("answered %v", r.Answer)
			}
			return nil
		}},
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		opened []string
		tries  = make([]int, len(probes))
	)
	start := time.Now()
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				tries[i]++
				at := time.Since(start)
				if err := p.try(); err != nil {
					mu.Lock()
					opened = append(opened, fmt.Sprintf("t=%.2fs %s: %v", at.Seconds(), p.what, err))
					mu.Unlock()
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	return func() ([]string, int) {
		wg.Wait()
		return opened, slices.Min(tries)
	}
}

// TestKillAndRestart: fqdngate killed with SIGKILL leaves its table in
// the kernel. An established connection survives the kill and the
// restart, learned names keep working after the restart without a fresh
// query, and nothing unlisted opens at any point. If the table is lost
// too, the state file restores what was learned.
func TestKillAndRestart(t *testing.T) {
	f := startForward(t, 2*time.Second, `  - name: api
    from: [a]
    to: [api.example.com]
  - name: b-only
    from: [b]
    to: [b.example.com]
`)
	auth := f.net.inet.auth
	auth.Set("api.example.com", dnstest.A("api.example.com", 300, "203.0.113.10"))
	auth.Set("evil.example.com", dnstest.A("evil.example.com", 300, "203.0.113.66"))
	api := ap("203.0.113.10", allowedPort)
	if _, _, err := f.a.lookup("api.example.com", dns.TypeA); err != nil {
		t.Fatalf("%v\n%s", err, f.gate.logs())
	}
	est, err := f.a.open("api.example.com", api, reachWait)
	if err != nil {
		t.Fatalf("opening a connection: %v", err)
	}
	defer est.Close()
	stillServes := func(when string) {
		t.Helper()
		if body, err := est.get(reachWait); err != nil || body != "served "+api.String() {
			t.Errorf("established connection %s: %q, %v; want it to carry on", when, body, err)
		}
	}
	stillServes("before the kill")
	// Let the state file catch up (it is written half a second after a
	// change).
	time.Sleep(time.Second)

	ctx, stopWatching := context.WithCancel(context.Background())
	opened := watchClosed(ctx, f)
	time.Sleep(300 * time.Millisecond)
	f.gate.kill9()
	queries := auth.Seen("api.example.com", 0)

	// While fqdngate is down, the kernel enforces what it last programmed.
	time.Sleep(500 * time.Millisecond)
	stillServes("while fqdngate is down")
	mustReach(t, f.a, "api.example.com", api)
	time.Sleep(500 * time.Millisecond)

	f.gate.start()
	stillServes("after the restart")
	mustReach(t, f.a, "api.example.com", api)
	if n := auth.Seen("api.example.com", 0) - queries; n != 0 {
		t.Errorf("the authority saw %d queries for api.example.com across the restart, want 0", n)
	}
	time.Sleep(time.Second)
	stopWatching()
	got, fewest := opened()
	if len(got) > 0 {
		t.Errorf("around the kill and restart, %d probes got through, want none:\n%s", len(got), strings.Join(got, "\n"))
	}
	if fewest < 5 {
		t.Errorf("a probe ran only %d times around the kill and restart; the check means little", fewest)
	}
	if !strings.Contains(f.gate.stderr.String(), "adopted existing nftables table") {
		t.Errorf("the restarted fqdngate did not adopt its table\n%s", f.gate.logs())
	}

	// Table and process both gone: the state file brings the learned
	// address back on start, still without a fresh query.
	f.gate.kill9()
	if out, err := f.gate.nft("delete", "table", "inet", f.gate.table); err != nil {
		t.Fatalf("deleting our table: %v\n%s", err, out)
	}
	mustReach(t, f.b, "api.example.com", api) // no table: nothing is enforced
	mark := f.gate.stderr.Len()
	f.gate.start()
	if log := f.gate.stderr.From(mark); !strings.Contains(log, "restored=1") {
		t.Errorf("starting without a table: want the state file's entry restored; stderr:\n%s", log)
	}
	mustReach(t, f.a, "api.example.com", api)
	mustDrop(t, f.b, api)
	if n := auth.Seen("api.example.com", 0) - queries; n != 0 {
		t.Errorf("the authority saw %d queries for api.example.com across the restarts, want 0", n)
	}
	if t.Failed() {
		t.Log(f.gate.logs())
	}
}
