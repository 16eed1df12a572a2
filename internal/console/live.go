package console

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/audit"
)

// Decision is one decision as the live view shows it.
type Decision struct {
	Time      string   `json:"time"` // RFC 3339, milliseconds, UTC
	Component string   `json:"component"`
	Source    string   `json:"source"`
	Groups    []string `json:"groups"` // the source's groups when the browser is told
	Name      string   `json:"name"`
	Port      uint16   `json:"port,omitempty"`
	QType     string   `json:"qtype,omitempty"`
	Action    string   `json:"action"`
	Rule      string   `json:"rule"`
	Reason    string   `json:"reason"`
}

// MaxViewers bounds the browsers that follow decisions at once: each
// holds a buffer of SubscriberBuffer decisions.
const (
	MaxViewers       = 64
	SubscriberBuffer = 256
)

// ErrTooManyViewers is returned by subscribe beyond MaxViewers.
var ErrTooManyViewers = errors.New("too many browsers follow the live decisions; close one")

// Live hands every decision to the browsers following them. It is an
// audit.Sink: Observe is on every decision's path, so it never blocks
// and never waits for a browser; a browser that does not keep up loses
// decisions, which are counted (fqdngate_console_dropped_total) and
// reported to it.
type Live struct {
	subs    atomic.Pointer[[]*subscriber] // swapped under mu, read without it
	mu      sync.Mutex                    // guards swaps of subs
	dropped prometheus.Counter
}

type subscriber struct {
	ch      chan Decision
	dropped atomic.Uint64 // since the browser was last told
}

// NewLive returns a Live registering its drop counter with reg (if not
// nil).
func NewLive(reg prometheus.Registerer) (*Live, error) {
	l := &Live{dropped: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fqdngate_console_dropped_total",
		Help: "Decisions the console's live view did not send to a browser that did not keep up.",
	})}
	if reg != nil {
		if err := reg.Register(l.dropped); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Observe implements audit.Sink. With nobody following it costs one
// atomic load.
func (l *Live) Observe(e audit.Event) {
	subs := l.subs.Load()
	if subs == nil || len(*subs) == 0 {
		return
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	d := Decision{
		Time:      t.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Component: e.Component.String(),
		// The DNS firewall's name may be a view of a buffer it reuses.
		Name:   strings.Clone(e.Name),
		Port:   e.Port,
		QType:  e.QType,
		Action: e.Decision.Action.String(),
		Rule:   e.Decision.RuleName(),
		Reason: e.Decision.Reason.String(),
	}
	if e.Source.IsValid() {
		d.Source = e.Source.String()
	}
	for _, s := range *subs {
		select {
		case s.ch <- d:
		default:
			s.dropped.Add(1)
			l.dropped.Inc()
		}
	}
}

// subscribe adds a follower; unsubscribe must follow.
func (l *Live) subscribe() (*subscriber, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cur []*subscriber
	if p := l.subs.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= MaxViewers {
		return nil, ErrTooManyViewers
	}
	s := &subscriber{ch: make(chan Decision, SubscriberBuffer)}
	next := append(append(make([]*subscriber, 0, len(cur)+1), cur...), s)
	l.subs.Store(&next)
	return s, nil
}

func (l *Live) unsubscribe(s *subscriber) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.subs.Load()
	if p == nil {
		return
	}
	next := make([]*subscriber, 0, len(*p))
	for _, x := range *p {
		if x != s {
			next = append(next, x)
		}
	}
	l.subs.Store(&next)
}
