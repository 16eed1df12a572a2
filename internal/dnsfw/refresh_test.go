package dnsfw

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/testutil/dnstest"
)

// movingZone answers A queries for its names with an address and TTL the
// test changes, and NODATA to everything else.
type movingZone struct {
	mu   sync.Mutex
	addr map[string]string // name → address
	ttl  uint32
}

func (z *movingZone) set(name, addr string, ttl uint32) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.addr[name+"."] = addr
	z.ttl = ttl
}

func (z *movingZone) handle(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg).SetReply(r)
	m.RecursionAvailable = true
	q := r.Question[0]
	z.mu.Lock()
	a, ok := z.addr[strings.ToLower(q.Name)]
	ttl := z.ttl
	z.mu.Unlock()
	if ok && q.Qtype == dns.TypeA {
		m.Answer = []dns.RR{dnstest.A(q.Name, ttl, a)}
	}
	_ = w.WriteMsg(m)
}

// recordingPublisher keeps every entry published, in order.
type recordingPublisher struct {
	mu      sync.Mutex
	entries []learn.Entry
}

func (p *recordingPublisher) Publish(_ context.Context, batch []learn.Entry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.entries = append(p.entries, batch...)
	return nil
}

// take returns the entries published since the last take.
func (p *recordingPublisher) take() []learn.Entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.entries
	p.entries = nil
	return out
}

// waitFor polls cond until it holds or ten seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// settle lets RunRefresh tick a few times with the clock standing still.
// Only for checking that nothing happens: to wait for something, wait for
// it (waitRefreshes).
func settle() { time.Sleep(30 * time.Millisecond) }

// refreshesDone returns how many resolutions (one per name and type)
// RunRefresh has finished: answered, published, audited and counted.
func refreshesDone(t *testing.T, e *env) int {
	t.Helper()
	n := 0.0
	for _, result := range []string{"learned", "empty", "failed"} {
		n += testCounter(t, e.fw.metrics.refreshes.WithLabelValues(result))
	}
	return int(n)
}

// waitRefreshes waits until RunRefresh has finished n resolutions in all,
// and no more: a round is over only when its A and its AAAA resolutions
// both are. Until then one of them may still be asking upstream or
// publishing, and moving the clock, reading the upstream's count or taking
// the published entries races with it.
func waitRefreshes(t *testing.T, e *env, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d refresh resolutions", n), func() bool { return refreshesDone(t, e) >= n })
	if got := refreshesDone(t, e); got != n {
		t.Fatalf("refresh resolutions: got %d, want %d", got, n)
	}
}

const refreshRules = `
  - name: pinned
    from: [payments, web]
    to: [api.pinned.example, "*.pinned.example"]
    refresh: 1m
  - name: open
    to: [open.example]
    refresh: 2m`

func startRefresh(t *testing.T, e *env) (stop func()) {
	t.Helper()
	e.fw.refreshTick = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.fw.RunRefresh(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("RunRefresh: got %v, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("RunRefresh did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func entryStrings(es []learn.Entry) []string {
	var out []string
	for _, en := range es {
		out = append(out, en.Rule+"/"+en.Group+"/"+string(en.Name)+"/"+en.Addr.String())
	}
	slices.Sort(out)
	return out
}

func TestRefresh(t *testing.T) {
	z := &movingZone{addr: map[string]string{}}
	z.set("api.pinned.example", "192.0.2.1", 300)
	z.set("open.example", "192.0.2.9", 300)
	pub := &recordingPublisher{}
	e := newEnv(t, z.handle, opts{rules: refreshRules, cfg: func(c *Config) { c.Publisher = pub }})
	start := e.clock.Now()

	// At start, before any client asks: each exact name, for each group of
	// its rule, or for every source.
	startRefresh(t, e)
	waitRefreshes(t, e, 4) // A and AAAA of two names
	got := pub.take()
	want := []string{"open//open.example/192.0.2.9", "pinned/payments/api.pinned.example/192.0.2.1", "pinned/web/api.pinned.example/192.0.2.1"}
	if g := entryStrings(got); !slices.Equal(g, want) {
		t.Fatalf("published at start: got %v, want %v", g, want)
	}
	for _, en := range got {
		if want := start.Add(300*time.Second + 10*time.Minute); !en.Expires.Equal(want) {
			t.Errorf("%s expires at %v, want %v (TTL + grace)", en.Addr, en.Expires, want)
		}
	}
	// A and AAAA of two names.
	if n := e.up.QueryCount(); n != 4 {
		t.Errorf("upstream queries at start: got %d, want 4", n)
	}

	// The answer changes; nothing asks until refresh (1m, under the TTL)
	// runs out.
	z.set("api.pinned.example", "192.0.2.2", 300)
	e.clock.Advance(59 * time.Second)
	settle()
	if g := pub.take(); len(g) != 0 {
		t.Errorf("published before refresh ran out: %v", entryStrings(g))
	}
	e.clock.Advance(time.Second)
	waitRefreshes(t, e, 6) // api.pinned.example's A and AAAA
	got = pub.take()
	want = []string{"pinned/payments/api.pinned.example/192.0.2.2", "pinned/web/api.pinned.example/192.0.2.2"}
	if g := entryStrings(got); !slices.Equal(g, want) {
		t.Errorf("published after 1m: got %v, want %v", g, want)
	}

	// A TTL shorter than refresh decides, raised to min_ttl (30s).
	z.set("api.pinned.example", "192.0.2.3", 5)
	e.clock.Advance(time.Minute) // both due (pinned 1m, open 2m); answer TTL 5s
	waitRefreshes(t, e, 10)
	pub.take()
	e.clock.Advance(29 * time.Second)
	settle()
	if g := pub.take(); len(g) != 0 {
		t.Errorf("published before min_ttl ran out: %v", entryStrings(g))
	}
	e.clock.Advance(time.Second)
	waitRefreshes(t, e, 14) // both names: the zone's TTL is one for all
	want = []string{"open//open.example/192.0.2.9", "pinned/payments/api.pinned.example/192.0.2.3", "pinned/web/api.pinned.example/192.0.2.3"}
	if g := entryStrings(pub.take()); !slices.Equal(g, want) {
		t.Errorf("published after min_ttl: got %v, want %v", g, want)
	}

	// Client answers come from the cache the refresh filled; the refresh
	// itself always asks upstream.
	before := e.up.QueryCount()
	if r := e.ask(payments, "api.pinned.example", dns.TypeA); !slices.Equal(answerAddrs(r), []string{"192.0.2.3"}) {
		t.Errorf("client answer: got %v, want the refreshed 192.0.2.3", answerAddrs(r))
	}
	if n := e.up.QueryCount(); n != before {
		t.Errorf("client query went upstream (%d queries); want it answered from the refreshed cache", n-before)
	}

	lines := e.auditLines(1)
	var refreshLine map[string]any
	for _, l := range lines {
		if l["transport"] == "refresh" && l["name"] == "api.pinned.example" && l["qtype"] == "A" {
			refreshLine = l
			break
		}
	}
	wantLine := map[string]any{"component": "dns", "source": "", "action": "allow", "rule": "pinned",
		"reason": "matched", "rcode": "NOERROR", "answers": "192.0.2.1", "groups": "payments,web"}
	for k, v := range wantLine {
		if refreshLine[k] != v {
			t.Errorf("refresh audit line: %s: got %v, want %v", k, refreshLine[k], v)
		}
	}
	// The A resolutions: two at start, one after 1m, two after 2m, two
	// after 2m30s; the AAAA ones found nothing.
	if got := testCounter(t, e.fw.metrics.refreshes.WithLabelValues("learned")); got != 7 {
		t.Errorf("refreshes counted learned: got %v, want 7", got)
	}
}

func TestRefreshFollowsReload(t *testing.T) {
	z := &movingZone{addr: map[string]string{}}
	z.set("api.pinned.example", "192.0.2.1", 300)
	z.set("open.example", "192.0.2.9", 300)
	z.set("new.example", "192.0.2.7", 300)
	pub := &recordingPublisher{}
	e := newEnv(t, z.handle, opts{rules: refreshRules, cfg: func(c *Config) { c.Publisher = pub }})
	stop := startRefresh(t, e)
	waitRefreshes(t, e, 4)
	pub.take()

	// Rule open removed, pinned changed (from), a new rule added: within
	// a tick, with the clock standing still.
	e.up.Reset()
	e.pol.Store(e.policy(opts{rules: `
  - name: pinned
    from: [payments]
    to: [api.pinned.example]
    refresh: 1m
  - name: newer
    to: [new.example]
    refresh: 10s`}))
	waitRefreshes(t, e, 8) // A and AAAA of the changed and the new rule's names
	got := pub.take()
	want := []string{"newer//new.example/192.0.2.7", "pinned/payments/api.pinned.example/192.0.2.1"}
	if g := entryStrings(got); !slices.Equal(g, want) {
		t.Errorf("published after reload: got %v, want %v", g, want)
	}
	e.clock.Advance(3 * time.Minute)
	waitRefreshes(t, e, 12) // pinned and newer due once more; open not
	for _, q := range e.up.Queries() {
		if name := q.Msg.Question[0].Name; name == "open.example." {
			t.Errorf("the removed rule's name was refreshed: %v", q.Msg.Question[0])
		}
	}

	// Stops on ctx.
	stop()
	n := e.up.QueryCount()
	e.clock.Advance(time.Hour)
	settle()
	if got := e.up.QueryCount(); got != n {
		t.Errorf("upstream queries after stop: got %d more, want none", got-n)
	}
}

func TestRefreshProtections(t *testing.T) {
	tests := []struct {
		name      string
		h         dns.HandlerFunc
		dns       string
		rules     string
		fault     dnstest.Fault
		want      []string // published entries
		wantLine  map[string]any
		wantRetry time.Duration // when the name is asked again
	}{
		{"rebinding", dnstest.Answer(dnstest.A("api.pinned.example", 300, "10.0.0.1")), "", refreshRules, dnstest.Fault{}, nil,
			map[string]any{"action": "deny", "rule": "", "near_rule": "pinned", "reason": "answer pointed a public name at private addresses (dns.rebinding_protection)", "rcode": "SERVFAIL"},
			30 * time.Second},
		{"rebinding, mixed", dnstest.Answer(dnstest.A("api.pinned.example", 300, "10.0.0.1"), dnstest.A("api.pinned.example", 300, "192.0.2.1")), "", refreshRules, dnstest.Fault{},
			[]string{"pinned/payments/api.pinned.example/192.0.2.1", "pinned/web/api.pinned.example/192.0.2.1"},
			map[string]any{"action": "allow", "rule": "pinned", "answers": "192.0.2.1"}, time.Minute},
		{"upstream fails", zone(), "", refreshRules, dnstest.Fault{Rcode: dns.RcodeServerFailure}, nil,
			map[string]any{"action": "fail", "rule": "", "near_rule": "pinned", "reason": "upstream unreachable or failed"},
			30 * time.Second},
		{"CNAME leaves the policy for one group", dnstest.Answer(
			dnstest.CNAME("api.pinned.example", 300, "lb.cdn.example"),
			dnstest.A("lb.cdn.example", 300, "198.51.100.7")),
			"  inspect_cname: true", refreshRules + `
  - name: cdn
    from: [web]
    to: ["*.cdn.example"]`, dnstest.Fault{},
			[]string{"pinned/web/api.pinned.example/198.51.100.7"},
			map[string]any{"action": "allow", "rule": "pinned", "groups": "web", "dns_reason": noteCNAME + "lb.cdn.example."}, time.Minute},
		{"CNAME leaves the policy", dnstest.Answer(
			dnstest.CNAME("api.pinned.example", 300, "lb.cdn.example"),
			dnstest.A("lb.cdn.example", 300, "198.51.100.7")),
			"  inspect_cname: true", refreshRules, dnstest.Fault{}, nil,
			map[string]any{"action": "deny", "rule": "", "near_rule": "pinned", "reason": "a name in the CNAME chain is not allowed (dns.inspect_cname)"},
			30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pub := &recordingPublisher{}
			e := newEnv(t, tt.h, opts{dns: tt.dns, rules: tt.rules, cfg: func(c *Config) { c.Publisher = pub }})
			e.up.SetFault(tt.fault)
			startRefresh(t, e)
			waitRefreshes(t, e, 4)
			var got []string
			for _, s := range entryStrings(pub.take()) {
				if strings.Contains(s, "api.pinned.example") {
					got = append(got, s)
				}
			}
			// dnstest.Answer answers AAAA queries with the A records too.
			if got = slices.Compact(got); !slices.Equal(got, tt.want) {
				t.Errorf("published: got %v, want %v", got, tt.want)
			}
			var line map[string]any
			for _, l := range e.auditLines(4) {
				if l["name"] == "api.pinned.example" && l["qtype"] == "A" {
					line = l
				}
			}
			for k, v := range tt.wantLine {
				if line[k] != v {
					t.Errorf("audit line: %s: got %v, want %v", k, line[k], v)
				}
			}
			// Retried sooner after a failure; otherwise at refresh.
			count := func() int {
				n := 0
				for _, q := range e.up.Queries() {
					if q.Msg.Question[0].Name == "api.pinned.example." && q.Msg.Question[0].Qtype == dns.TypeA {
						n++
					}
				}
				return n
			}
			e.clock.Advance(tt.wantRetry - time.Second)
			settle()
			if n := count(); n != 1 {
				t.Errorf("A queries before %v: got %d, want 1", tt.wantRetry, n)
			}
			e.clock.Advance(time.Second)
			waitFor(t, "the retry", func() bool { return count() == 2 })
		})
	}
}

func TestRefreshSkipsRulesWithout(t *testing.T) {
	e := newEnv(t, zone(), opts{})
	startRefresh(t, e)
	settle()
	if n := e.up.QueryCount(); n != 0 {
		t.Errorf("upstream queries with no refresh rule: got %d, want 0", n)
	}
	if got := len(e.fw.Learned().List()); got != 0 {
		t.Errorf("learned: got %d, want 0", got)
	}
}
