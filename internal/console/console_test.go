package console

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/learn"
	"github.com/fqdngate/fqdngate/internal/policy"
)

const testPolicy = `listen: {dns: "", proxy: "", admin: ""}
sources:
  payments: [10.1.0.0/24]
  office: {cidrs: [10.2.0.0/24], observe_until: 2027-01-30}
rules:
  - name: bank-api
    from: [payments]
    to: [api.bank.example]
    ports: [443]
  - name: docs
    to: [docs.example]
`

// fixture is the console over a real history file and a real audit
// logger, the path decisions take in the daemon.
type fixture struct {
	t     *testing.T
	pol   *policy.Policy
	srv   *httptest.Server
	audit *audit.Logger
	live  *Live
	store *history.Store
	reg   *prometheus.Registry
}

func newFixture(t *testing.T, mutate func(*Config)) *fixture {
	t.Helper()
	p, err := policy.Parse("/etc/fqdngate/policy.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	// Before office's observe_until: the groups page shows it observing.
	p.SetClock(func() time.Time { return time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC) })
	st, _, err := history.Open(filepath.Join(t.TempDir(), "history.db"), history.Options{Retention: 7 * 24 * time.Hour, MaxSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	rec, err := history.NewRecorder(history.RecorderConfig{Store: st, GroupsOf: p.GroupsOf, Logger: slog.New(slog.DiscardHandler), Registerer: reg, FlushEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rec.Run(ctx) }()
	live, err := NewLive(reg)
	if err != nil {
		t.Fatal(err)
	}
	al := audit.New(io.Discard, "json", nil)
	al.SetSink(rec)
	al.SetSink(live)
	c := Config{
		Policy:  func() *policy.Policy { return p },
		Live:    live,
		History: st.Query,
		Learned: func(dnsname.Name) iter.Seq[learn.Entry] {
			return slices.Values([]learn.Entry{{Name: dnsname.Name("api.bank.example"), Rule: "bank-api", Group: "payments", Addr: netip.MustParseAddr("192.0.2.10"), Expires: time.Now().Add(90 * time.Second)}})
		},
	}
	if mutate != nil {
		mutate(&c)
	}
	h, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
		st.Close()
	})
	return &fixture{t: t, pol: p, srv: srv, audit: al, live: live, store: st, reg: reg}
}

func (f *fixture) record(src, name string, port uint16, comp audit.Component, a policy.Action, reason policy.Reason) {
	f.recordRule(src, name, port, comp, a, reason, "")
}

// recordRule records a decision made by rule (none if empty); an allowed
// one counts as the rule's hit, as in the daemon.
func (f *fixture) recordRule(src, name string, port uint16, comp audit.Component, a policy.Action, reason policy.Reason, rule string) {
	d := policy.Decision{Action: a, Reason: reason}
	if rule != "" {
		d.Rule = f.pol.Rule(rule)
	}
	f.audit.Record(context.Background(), audit.Event{Component: comp, Source: netip.MustParseAddr(src), Name: name, Port: port, QType: "A", Decision: d})
}

func (f *fixture) get(path string) (int, string) {
	f.t.Helper()
	resp, err := http.Get(f.srv.URL + path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHistory waits until the history holds name.
func (f *fixture) waitHistory(name string) {
	f.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		rows, err := f.store.Query(context.Background(), history.Filter{Name: name})
		if err == nil && len(rows) > 0 {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("the history never held %s (%v)", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPages(t *testing.T) {
	// The rules and groups pages read usage and observe_until from the
	// policy itself, where the audit logger counts hits.
	f := newFixture(t, nil)
	for i := 0; i < 3; i++ {
		f.record("10.1.0.7", "evil.example", 0, audit.DNS, policy.Deny, policy.ReasonNoRule)
	}
	f.record("10.1.0.8", "a.cdn.example", 443, audit.Proxy, policy.Deny, policy.ReasonNoRule)
	f.record("10.2.0.9", "wiki.office.example", 0, audit.DNS, policy.WouldDeny, policy.ReasonNoRule)
	for i := 0; i < 42; i++ {
		f.recordRule("10.1.0.7", "api.bank.example", 0, audit.DNS, policy.Allow, policy.ReasonMatched, "bank-api")
	}
	f.waitHistory("api.bank.example")
	f.waitHistory("wiki.office.example")

	for _, tt := range []struct {
		path string
		code int
		want []string
		not  []string
	}{
		{"/ui/", 200, []string{`<nav aria-label="Console pages">`, `aria-current="page">Live</a>`, `<label for="f-group">Group</label>`, `data-src="/ui/events"`, `<th scope="col">Action</th>`, "mode <strong>enforce</strong>"}, nil},
		{"/ui/?group=payments&action=deny&name=evil", 200, []string{`data-src="/ui/events?action=deny&amp;group=payments&amp;name=evil"`, `<option selected>payments</option>`, `<option selected>deny</option>`, `value="evil"`}, nil},
		{"/ui/top", 200, []string{"Group payments", "evil.example", `<span class="action a-deny">deny</span>`, "Group office", "would-deny"}, []string{"api.bank.example"}},
		{"/ui/domains?group=office", 200, []string{"wiki.office.example"}, []string{"evil.example"}},
		{"/ui/domains?since=soon", 400, []string{"Error:"}, nil},
		{"/ui/learned", 200, []string{"api.bank.example", "<code>192.0.2.10</code>", "bank-api"}, []string{"Next page"}},
		{"/ui/learned?name=other.example", 200, []string{"No learned address.", `value="other.example"`}, []string{"<code>192.0.2.10</code>"}},
		{"/ui/learned?after=%21%21", 200, []string{`role="alert"`}, []string{"<code>192.0.2.10</code>"}},
		{"/ui/rules", 200, []string{`<th scope="row">bank-api</th>`, ">42<", "every source", "<strong>never</strong>"}, nil},
		{"/ui/groups", 200, []string{"<strong>observing</strong> until 2027-01-31 00:00 UTC", "enforced", "10.1.0.0/24"}, nil},
		{"/ui/explain?from=10.1.0.7&to=api.bank.example:443", 200, []string{`Verdict: <span class="action a-allow">allow</span>`, "bank-api"}, nil},
		{"/ui/explain?from=10.3.0.7&to=api.bank.example:443", 200, []string{`a-deny">deny</span>`}, nil},
		{"/ui/explain?from=10.2.0.7&to=api.bank.example:443", 200, []string{`would-deny</span>`, "group office observes"}, nil},
		{"/ui/explain?from=nonsense&to=x", 400, []string{"Error:"}, nil},
		{"/ui/suggest?group=payments", 200, []string{"+ ", "evil.example", "  - name: bank-api", `<textarea id="yaml" readonly`, `id="copy"`, "from: [payments]"}, []string{"wiki.office.example"}},
		{"/ui/static/console.js", 200, []string{"EventSource"}, nil},
		{"/ui/login", 303, nil, nil},
	} {
		t.Run(tt.path, func(t *testing.T) {
			c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			resp, err := c.Get(f.srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != tt.code {
				t.Fatalf("got %d, want %d:\n%s", resp.StatusCode, tt.code, body)
			}
			for _, s := range tt.want {
				if !strings.Contains(body, s) {
					t.Errorf("missing %q in:\n%s", s, body)
				}
			}
			for _, s := range tt.not {
				if strings.Contains(body, s) {
					t.Errorf("unexpected %q", s)
				}
			}
			if strings.HasPrefix(tt.path, "/ui/") && resp.Header.Get("Content-Security-Policy") == "" {
				t.Errorf("no Content-Security-Policy")
			}
		})
	}
}

// The login page is open: it shows nothing of the policy.
func TestLoginPageShowsNothing(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Login = true })
	code, body := f.get("/ui/login?failed=1")
	if code != 200 || !strings.Contains(body, `<label for="token">Admin token</label>`) || !strings.Contains(body, "not the token") {
		t.Fatalf("got %d:\n%s", code, body)
	}
	for _, s := range []string{"policy.yaml", "mode", "<nav", "console.js"} {
		if strings.Contains(body, s) {
			t.Errorf("the login page shows %q", s)
		}
	}
}

// Without history or learned hooks the pages say so instead of failing;
// rule usage and observing groups come from the policy, so they show.
func TestPagesWithoutHooks(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.History, c.Learned = nil, nil })
	for path, want := range map[string]string{
		"/ui/top":     "history is off",
		"/ui/suggest": "history is off",
		"/ui/rules":   "<strong>never</strong>",
		"/ui/groups":  "<strong>observing</strong> until 2027-01-31",
		"/ui/learned": "No learned address.",
	} {
		if _, body := f.get(path); !strings.Contains(body, want) {
			t.Errorf("%s: missing %q", path, want)
		}
	}
}

// The live stream applies the URL's filter to what it sends.
func TestLiveFiltered(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.srv.URL+"/ui/events?group=payments&action=deny&name=EVIL", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	// Subscribed once the first comment arrived.
	if _, err := rd.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	f.record("10.2.0.1", "evil.example", 0, audit.DNS, policy.Deny, policy.ReasonNoRule)         // other group
	f.record("10.1.0.1", "evil.example", 0, audit.DNS, policy.Allow, policy.ReasonMatched)       // other action
	f.record("10.1.0.1", "fine.example", 0, audit.DNS, policy.Deny, policy.ReasonNoRule)         // other name
	f.record("10.1.0.1", "www.evil.example", 443, audit.Proxy, policy.Deny, policy.ReasonNoRule) // this one
	var got []Decision
	for len(got) < 1 {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if s, ok := strings.CutPrefix(line, "data: "); ok {
			var d Decision
			if err := json.Unmarshal([]byte(s), &d); err != nil {
				t.Fatalf("%q: %v", s, err)
			}
			got = append(got, d)
		}
	}
	d := got[0]
	if d.Name != "www.evil.example" || d.Source != "10.1.0.1" || d.Action != "deny" || d.Component != "proxy" || d.Port != 443 || len(d.Groups) != 1 || d.Groups[0] != "payments" {
		t.Errorf("got %+v, want the proxy's denial of www.evil.example from 10.1.0.1 in payments", d)
	}
}

// A browser that does not read never holds a decision up: what does not
// fit its buffer is dropped and counted.
func TestLiveNeverBlocks(t *testing.T) {
	f := newFixture(t, nil)
	sub, err := f.live.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer f.live.unsubscribe(sub)
	const extra = 10
	for i := 0; i < SubscriberBuffer+extra; i++ {
		f.record("10.1.0.1", "x.example", 0, audit.DNS, policy.Deny, policy.ReasonNoRule) // would hang here if Observe blocked
	}
	if got := sub.dropped.Load(); got != extra {
		t.Errorf("the subscriber lost %d, want %d", got, extra)
	}
	if got := testutil.ToFloat64(f.live.dropped); got != extra {
		t.Errorf("fqdngate_console_dropped_total = %v, want %d", got, extra)
	}
	if len(sub.ch) != SubscriberBuffer {
		t.Errorf("buffered %d, want %d", len(sub.ch), SubscriberBuffer)
	}
}

func TestTooManyViewers(t *testing.T) {
	l, _ := NewLive(nil)
	var subs []*subscriber
	for i := 0; i < MaxViewers; i++ {
		s, err := l.subscribe()
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if _, err := l.subscribe(); err != ErrTooManyViewers {
		t.Fatalf("got %v, want ErrTooManyViewers", err)
	}
	l.unsubscribe(subs[0])
	if _, err := l.subscribe(); err != nil {
		t.Fatalf("after one left: %v", err)
	}
}
