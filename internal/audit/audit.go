// Package audit writes one structured line per policy decision, the trail
// an assessor reads.
package audit

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
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
// the line after the common fields. A slog.Duration attribute is written
// with its unit: key "latency" becomes "latency_ms", its value milliseconds
// as a decimal number.
type Event struct {
	Component Component
	Source    netip.Addr
	Name      string
	Port      uint16 // 0 when not applicable
	QType     string // DNS only
	Decision  policy.Decision
	Attrs     []slog.Attr
	// Time is when the decision was made; if zero, Record reads the clock.
	Time time.Time
	// Closed marks the line that ends a connection an earlier Event
	// allowed (a proxy tunnel): msg is "closed" instead of "decision", the
	// decision is repeated so the line reads on its own, and it is not
	// counted as a decision again.
	Closed bool
	// Msg, if set, replaces the line's msg ("decision") for a line that
	// adds to a decision already written (a fleet hold that timed out):
	// it is not counted as a decision again.
	Msg string
}

// Counter is told about every decision, for metrics. If nil, nothing counts.
type Counter interface {
	CountDecision(c Component, a policy.Action, rule string)
}

// Sink is handed every decision (not the lines that add to one: Closed
// or Msg set) after it is counted, for the decision history. Observe is
// on every decision's path: it must not block, and e and its Attrs are
// only valid during the call (the DNS firewall reuses them).
type Sink interface {
	Observe(e Event)
}

// Logger writes decisions. A nil *Logger discards them.
//
// Lines are the ones log/slog's JSON and text handlers would write for the
// same record, durations given their unit as ReplaceAttr would (tests hold
// it to that), but encoded directly into a pooled
// buffer: the audit line is on every query's path, and slog's general
// machinery cost more than the DNS firewall's own work on cached answers.
type Logger struct {
	w       io.Writer
	text    bool
	counter Counter
	sinks   []Sink // set before the Logger is shared
	bufs    sync.Pool
	now     func() time.Time // tests fix the clock
	stamp   atomic.Pointer[stamp]
	// podOf names the pod a source address belongs to; nil: none.
	podOf func(netip.Addr) (string, bool)
}

// SetPodOf makes every line whose source is a pod's address name the pod
// ("namespace/name") in a pod field after source. Call it before the
// first Record.
func (l *Logger) SetPodOf(f func(netip.Addr) (string, bool)) {
	if l != nil {
		l.podOf = f
	}
}

// New returns a Logger writing to w in format "json" (default) or "text".
// Each line reaches w in one Write call; w must be safe for concurrent use.
func New(w io.Writer, format string, c Counter) *Logger {
	return &Logger{w: w, text: format == "text", counter: c, now: time.Now}
}

// SetSink makes s see every decision, after the sinks set before it (the
// decision history, the console's live view). Call it before the Logger
// is shared with anything that records.
func (l *Logger) SetSink(s Sink) { l.sinks = append(l.sinks, s) }

// Record counts e (metrics, and the hit of the rule that allowed it), hands
// it to the sink, and writes it as one line "decision" (or "closed") with fields time, level,
// component, source, pod (when SetPodOf names one), name, port (when not 0), qtype (when set), action,
// rule, reason, observing (the group whose observe_until made it a
// would-deny, when one did), then e.Attrs.
func (l *Logger) Record(ctx context.Context, e Event) {
	if l == nil {
		return
	}
	t := e.Time
	if t.IsZero() {
		t = l.now()
	}
	if !e.Closed && e.Msg == "" {
		if l.counter != nil {
			l.counter.CountDecision(e.Component, e.Decision.Action, e.Decision.RuleName())
		}
		// A rule's hits (/v1/rules): traffic it allowed, from a source.
		// Lines without one (a refresh fqdngate makes itself) are no use
		// of the rule.
		if r := e.Decision.Rule; r != nil && e.Decision.Action == policy.Allow && e.Source.IsValid() {
			r.Usage().Hit(t)
		}
		for _, s := range l.sinks {
			s.Observe(e)
		}
	}
	if l.w == nil {
		return
	}
	bp, _ := l.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 512)
		bp = &b
	}
	enc := encoder{buf: (*bp)[:0], text: l.text}
	msg := "decision"
	switch {
	case e.Msg != "":
		msg = e.Msg
	case e.Closed:
		msg = "closed"
	}
	enc.begin(t, l.stampOf(t), msg)
	enc.str("component", e.Component.String())
	if e.Source.IsValid() {
		var a [48]byte
		enc.bytes("source", e.Source.AppendTo(a[:0]))
	} else {
		enc.str("source", "")
	}
	if l.podOf != nil && e.Source.IsValid() {
		if pod, ok := l.podOf(e.Source); ok {
			enc.str("pod", pod)
		}
	}
	enc.str("name", e.Name)
	if e.Port != 0 {
		enc.int("port", int64(e.Port))
	}
	if e.QType != "" {
		enc.str("qtype", e.QType)
	}
	enc.str("action", e.Decision.Action.String())
	enc.str("rule", e.Decision.RuleName())
	enc.str("reason", e.Decision.Reason.String())
	if e.Decision.Observing != "" {
		enc.str("observing", e.Decision.Observing)
	}
	for _, a := range e.Attrs {
		enc.attr("", a)
	}
	enc.end()
	_, _ = l.w.Write(enc.buf)
	if cap(enc.buf) <= 64<<10 { // keep the pool from pinning huge lines
		*bp = enc.buf
		l.bufs.Put(bp)
	}
}
