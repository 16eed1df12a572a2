// Package audit writes one structured line per policy decision, the trail
// an assessor reads.
package audit

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// Component names the part of fqdngate that decided.
type Component uint8

const (
	DNS Component = iota
	Proxy
	Firewall
)

func (c Component) String() string { return [...]string{"dns", "proxy", "firewall"}[c] }

// Event is one decision. Attrs carries component-specific detail (rcode and
// answers for DNS, bytes and duration for the proxy); they are appended to
// the line after the common fields.
type Event struct {
	Component Component
	Source    netip.Addr
	Name      string
	Port      uint16 // 0 when not applicable
	QType     string // DNS only
	Decision  policy.Decision
	Attrs     []slog.Attr
}

// Counter is told about every decision, for metrics. If nil, nothing counts.
type Counter interface {
	CountDecision(c Component, a policy.Action, rule string)
}

// Logger writes decisions. The zero value discards them; a nil *Logger too.
type Logger struct {
	h       slog.Handler
	counter Counter
}

// New returns a Logger writing to w in format "json" (default) or "text".
func New(w io.Writer, format string, c Counter) *Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var h slog.Handler
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	} else {
		h = slog.NewJSONHandler(w, opts)
	}
	return &Logger{h: h, counter: c}
}

// Record writes e as one line "decision" with fields time, component,
// source, name, port, qtype, action, rule, reason, then e.Attrs.
func (l *Logger) Record(ctx context.Context, e Event) {
	if l == nil {
		return
	}
	if l.counter != nil {
		l.counter.CountDecision(e.Component, e.Decision.Action, e.Decision.RuleName())
	}
	if l.h == nil || !l.h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "decision", 0)
	r.AddAttrs(
		slog.String("component", e.Component.String()),
		slog.String("source", addrString(e.Source)),
		slog.String("name", e.Name),
	)
	if e.Port != 0 {
		r.AddAttrs(slog.Int("port", int(e.Port)))
	}
	if e.QType != "" {
		r.AddAttrs(slog.String("qtype", e.QType))
	}
	r.AddAttrs(
		slog.String("action", e.Decision.Action.String()),
		slog.String("rule", e.Decision.RuleName()),
		slog.String("reason", e.Decision.Reason.String()),
	)
	r.AddAttrs(e.Attrs...)
	_ = l.h.Handle(ctx, r)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}
