package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// slogLine is the line log/slog's own handler writes for e: the oracle the
// hand-written encoder must match byte for byte.
func slogLine(t *testing.T, format string, at time.Time, e Event) string {
	t.Helper()
	var buf bytes.Buffer
	opts := &slog.HandlerOptions{ReplaceAttr: withUnit}
	var h slog.Handler = slog.NewJSONHandler(&buf, opts)
	if format == "text" {
		h = slog.NewTextHandler(&buf, opts)
	}
	msg := "decision"
	if e.Closed {
		msg = "closed"
	}
	r := slog.NewRecord(at, slog.LevelInfo, msg, 0)
	src := ""
	if e.Source.IsValid() {
		src = e.Source.String()
	}
	r.AddAttrs(slog.String("component", e.Component.String()), slog.String("source", src), slog.String("name", e.Name))
	if e.Port != 0 {
		r.AddAttrs(slog.Int("port", int(e.Port)))
	}
	if e.QType != "" {
		r.AddAttrs(slog.String("qtype", e.QType))
	}
	r.AddAttrs(slog.String("action", e.Decision.Action.String()), slog.String("rule", e.Decision.RuleName()), slog.String("reason", e.Decision.Reason.String()))
	r.AddAttrs(e.Attrs...)
	if err := h.Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// withUnit does to durations what the encoder does, as slog's
// ReplaceAttr: the key gets durationSuffix, the value is appendMillis'
// decimal, which both handlers write as a bare number.
func withUnit(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Any(a.Key+durationSuffix, json.Number(appendMillis(nil, a.Value.Duration())))
	}
	return a
}

func TestAppendMillis(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0"},
		{time.Nanosecond, "0.000001"},
		{412 * time.Microsecond, "0.412"},
		{123456 * time.Nanosecond, "0.123456"},
		{time.Millisecond, "1"},
		{1500 * time.Millisecond, "1500"},
		{2*time.Minute + 7*time.Nanosecond, "120000.000007"},
		{-1500 * time.Nanosecond, "-0.0015"},
		{math.MaxInt64, "9223372036854.775807"},
		{math.MinInt64, "-9223372036854.775808"},
	} {
		if got := string(appendMillis(nil, tt.d)); got != tt.want {
			t.Errorf("appendMillis(%v) = %s, want %s", tt.d, got, tt.want)
		}
	}
}

type stringer struct{}

func (stringer) String() string { return "i am \"stringer\"" }

var oracleEvents = []Event{
	{Component: DNS, Source: netip.MustParseAddr("10.1.0.7"), Name: "api.bank.example", QType: "A",
		Decision: policy.Decision{Action: policy.Allow, Rule: &policy.Rule{Name: "bank-api"}},
		Attrs:    []slog.Attr{slog.String("rcode", "NOERROR"), slog.Duration("latency", 123456*time.Nanosecond), slog.Int64("n", -5), slog.Uint64("u", 7), slog.Bool("cached", true), slog.Float64("f", 1.5)}},
	{Component: Proxy, Source: netip.MustParseAddr("2001:db8::1"), Name: "evil \"quoted\" name=x\n\ttab\x00nul\x7f", Port: 443,
		Decision: policy.Decision{Action: policy.WouldDeny, Reason: policy.ReasonNoRule},
		Attrs:    []slog.Attr{slog.Any("err", errors.New("dial tcp: refused")), slog.Any("s", stringer{}), slog.Any("list", []string{"a", "b"}), slog.Group("bytes", slog.Int("up", 1), slog.Int("down", 2))}},
	{Component: Firewall, Name: "ünïcode\u2028sep \xff\xfe bad utf8", Decision: policy.Decision{Reason: policy.ReasonNotAllowedIP},
		Attrs: []slog.Attr{slog.Time("at", time.Date(2026, 11, 22, 1, 2, 3, 4, time.UTC)), slog.String("", "dropped empty key"), slog.String("empty", "")}},
	{Component: Proxy, Name: "durations", Port: 443, Decision: policy.Decision{Action: policy.Allow, Rule: &policy.Rule{Name: "r"}},
		Attrs: []slog.Attr{slog.Duration("duration", 2*time.Minute+7*time.Nanosecond), slog.Duration("zero", 0), slog.Duration("neg", -1500*time.Nanosecond),
			slog.Group("phase", slog.Duration("dial", 3*time.Millisecond)), slog.Duration("odd key=", time.Millisecond)}},
	{Component: DNS, Source: netip.MustParseAddr("::ffff:192.0.2.1"), Name: "a\\b", QType: "TYPE65534"},
	{Component: Proxy, Source: netip.MustParseAddr("10.1.0.7"), Name: "api.bank.example", Port: 443, Closed: true,
		Decision: policy.Decision{Action: policy.Allow, Rule: &policy.Rule{Name: "bank-api"}},
		Attrs:    []slog.Attr{slog.String("conn", "1a2b3c4d-7"), slog.String("ended", "eof"), slog.Int64("bytes_up", 517)}},
}

func TestEncoderMatchesSlog(t *testing.T) {
	at := time.Date(2026, 11, 22, 3, 4, 5, 678901234, time.UTC)
	for _, format := range []string{"json", "text"} {
		for i, e := range oracleEvents {
			var buf bytes.Buffer
			l := New(&buf, format, nil)
			l.now = func() time.Time { return at }
			l.Record(context.Background(), e)
			if want := slogLine(t, format, at, e); buf.String() != want {
				t.Errorf("%s event %d:\n got %s\nwant %s", format, i, buf.String(), want)
			}
		}
	}
}

// FuzzEncoderMatchesSlog holds the encoder to slog for arbitrary names and
// attribute strings: names come from the network.
func FuzzEncoderMatchesSlog(f *testing.F) {
	for _, e := range oracleEvents {
		f.Add(e.Name, e.QType, "v")
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	f.Fuzz(func(t *testing.T, name, qtype, val string) {
		e := Event{Component: DNS, Name: name, QType: qtype, Attrs: []slog.Attr{slog.String("k", val)}}
		for _, format := range []string{"json", "text"} {
			var buf bytes.Buffer
			l := New(&buf, format, nil)
			l.now = func() time.Time { return at }
			l.Record(context.Background(), e)
			if want := slogLine(t, format, at, e); buf.String() != want {
				t.Fatalf("%s:\n got %q\nwant %q", format, buf.String(), want)
			}
		}
	})
}

// TestStampMatchesFormat holds the cached timestamp to time.Format, across
// seconds, zones, fractions with and without trailing zeros, and years
// that cannot be cached.
func TestStampMatchesFormat(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		berlin = time.FixedZone("CET", 3600)
	}
	zones := []*time.Location{time.UTC, time.FixedZone("X", -(9*3600 + 30*60)), berlin}
	rng := rand.New(rand.NewPCG(1, 2))
	l := New(nil, "json", nil)
	for i := range 20000 {
		sec := rng.Int64N(1 << 33)
		if i%50 == 0 {
			sec = -rng.Int64N(1 << 36) // years before 0000 and far back
		}
		ns := rng.Int64N(1e9)
		switch i % 4 {
		case 0:
			ns = 0
		case 1:
			ns -= ns % 1e6
		}
		at := time.Unix(sec, ns).In(zones[i%len(zones)])
		for _, text := range []bool{false, true} {
			layout := time.RFC3339Nano
			if text {
				layout = textTime
			}
			if got, want := string(l.stampOf(at).append(nil, at, text)), at.Format(layout); got != want {
				t.Fatalf("%v (text %v): got %s, want %s", at, text, got, want)
			}
		}
	}
}
