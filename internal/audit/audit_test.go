package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

type countRec struct{ calls []string }

func (c *countRec) CountDecision(comp Component, a policy.Action, rule string) {
	c.calls = append(c.calls, comp.String()+"/"+a.String()+"/"+rule)
}

func TestRecordJSON(t *testing.T) {
	var buf bytes.Buffer
	cnt := &countRec{}
	l := New(&buf, "json", cnt)
	rule := &policy.Rule{Name: "bank-api"}
	l.Record(context.Background(), Event{
		Component: DNS,
		Source:    netip.MustParseAddr("10.1.0.7"),
		Name:      "api.bank.example",
		QType:     "A",
		Decision:  policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: rule},
		Attrs:     []slog.Attr{slog.String("rcode", "NOERROR")},
	})
	l.Record(context.Background(), Event{
		Component: Proxy,
		Source:    netip.MustParseAddr("10.1.0.8"),
		Name:      "evil.example",
		Port:      443,
		Decision:  policy.Decision{Action: policy.WouldDeny, Reason: policy.ReasonNoRule},
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want one per decision:\n%s", len(lines), buf.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"msg": "decision", "component": "dns", "source": "10.1.0.7", "name": "api.bank.example", "qtype": "A", "action": "allow", "rule": "bank-api", "reason": "matched", "rcode": "NOERROR"}
	for k, v := range want {
		if first[k] != v {
			t.Errorf("first line: %s = %v, want %v", k, first[k], v)
		}
	}
	if _, ok := first["time"]; !ok {
		t.Error("first line has no time")
	}
	if _, ok := first["port"]; ok {
		t.Error("DNS line has a port; want none")
	}
	if second["action"] != "would-deny" || second["rule"] != "" || second["port"] != float64(443) || second["reason"] != "no rule allows this destination" {
		t.Errorf("second line: got %v", second)
	}
	if got, want := strings.Join(cnt.calls, ","), "dns/allow/bank-api,proxy/would-deny/"; got != want {
		t.Errorf("counter calls: got %q, want %q", got, want)
	}
}

func TestRecordText(t *testing.T) {
	var buf bytes.Buffer
	New(&buf, "text", nil).Record(context.Background(), Event{Component: Firewall, Source: netip.MustParseAddr("2001:db8::1"), Name: "203.0.113.9", Port: 22})
	got := buf.String()
	for _, w := range []string{"msg=decision", "component=firewall", "source=2001:db8::1", "port=22", "action=deny"} {
		if !strings.Contains(got, w) {
			t.Errorf("text line %q lacks %q", got, w)
		}
	}
}

// TestRecordClosed: the line that closes a connection says so in msg and
// is not counted as another decision.
func TestRecordClosed(t *testing.T) {
	var buf bytes.Buffer
	cnt := &countRec{}
	l := New(&buf, "json", cnt)
	d := policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: &policy.Rule{Name: "bank-api"}}
	l.Record(context.Background(), Event{Component: Proxy, Name: "api.bank.example", Port: 443, Decision: d})
	l.Record(context.Background(), Event{Component: Proxy, Name: "api.bank.example", Port: 443, Decision: d, Closed: true})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{"decision", "closed"} {
		var m map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
			t.Fatal(err)
		}
		if m["msg"] != want || m["action"] != "allow" || m["rule"] != "bank-api" {
			t.Errorf("line %d: got msg %v, action %v, rule %v; want msg %s, allow by bank-api", i, m["msg"], m["action"], m["rule"], want)
		}
	}
	if got, want := strings.Join(cnt.calls, ","), "proxy/allow/bank-api"; got != want {
		t.Errorf("counter calls: got %q, want %q (the closing line is no new decision)", got, want)
	}
}

func TestNilLogger(t *testing.T) {
	var l *Logger
	l.Record(context.Background(), Event{}) // must not panic
}

// BenchmarkRecord measures what one audit line costs on the hot path.
func BenchmarkRecord(b *testing.B) {
	rule := &policy.Rule{Name: "bank-api"}
	ev := Event{
		Component: DNS,
		Source:    netip.MustParseAddr("10.1.0.7"),
		Name:      "api.bank.example",
		QType:     "A",
		Decision:  policy.Decision{Action: policy.Allow, Reason: policy.ReasonMatched, Rule: rule},
		Attrs:     []slog.Attr{slog.String("rcode", "NOERROR"), slog.String("answers", "192.0.2.1,192.0.2.2")},
	}
	for _, format := range []string{"json", "text"} {
		b.Run(format, func(b *testing.B) {
			l := New(io.Discard, format, nil)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				l.Record(ctx, ev)
			}
		})
	}
}

// BenchmarkRecordViaSlog is the same line through log/slog's JSON handler,
// the baseline the direct encoder replaced.
func BenchmarkRecordViaSlog(b *testing.B) {
	rule := &policy.Rule{Name: "bank-api"}
	h := slog.NewJSONHandler(io.Discard, nil)
	ctx := context.Background()
	src := netip.MustParseAddr("10.1.0.7")
	b.ReportAllocs()
	for b.Loop() {
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "decision", 0)
		r.AddAttrs(slog.String("component", "dns"), slog.String("source", src.String()), slog.String("name", "api.bank.example"),
			slog.String("qtype", "A"), slog.String("action", "allow"), slog.String("rule", rule.Name), slog.String("reason", "matched"),
			slog.String("rcode", "NOERROR"), slog.String("answers", "192.0.2.1,192.0.2.2"))
		_ = h.Handle(ctx, r)
	}
}

// TestRecordMsg: a line with its own msg adds to a decision written
// before; it is not counted as a decision again.
func TestRecordMsg(t *testing.T) {
	var buf bytes.Buffer
	cnt := &countRec{}
	l := New(&buf, "json", cnt)
	l.Record(context.Background(), Event{
		Component: DNS,
		Name:      "api.bank.example",
		Decision:  policy.Decision{Action: policy.Allow, Rule: &policy.Rule{Name: "bank-api"}},
		Msg:       "hold_timeout",
	})
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if line["msg"] != "hold_timeout" || line["rule"] != "bank-api" {
		t.Errorf("line = %s, want msg hold_timeout and rule bank-api", buf.String())
	}
	if len(cnt.calls) != 0 {
		t.Errorf("counted %v, want nothing", cnt.calls)
	}
}

// TestRecordPod: with SetPodOf, a line whose source is a pod's address
// names the pod after source; other sources get no pod field.
func TestRecordPod(t *testing.T) {
	pod := netip.MustParseAddr("10.244.1.5")
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		l := New(&buf, format, nil)
		l.SetPodOf(func(a netip.Addr) (string, bool) { return "payments/checkout-1", a == pod })
		l.Record(context.Background(), Event{Component: DNS, Source: pod, Name: "api.bank.example"})
		l.Record(context.Background(), Event{Component: DNS, Source: netip.MustParseAddr("10.244.1.6"), Name: "api.bank.example"})
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		want := `"source":"10.244.1.5","pod":"payments/checkout-1","name"`
		if format == "text" {
			want = "source=10.244.1.5 pod=payments/checkout-1 name="
		}
		if len(lines) != 2 || !strings.Contains(lines[0], want) || strings.Contains(lines[1], "pod") {
			t.Errorf("%s lines:\n%s\nwant the first with %s, the second without a pod", format, buf.String(), want)
		}
	}
}
