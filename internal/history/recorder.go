package history

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fqdngate/fqdngate/internal/audit"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// maxName is the longest name a decision keeps (a DNS name's limit);
// longer invalid names are cut.
const maxName = 253

// slot is one decision on its way to the writer: fixed size and free of
// borrowed memory, because the DNS firewall's fast path hands the audit
// a name that aliases a buffer it reuses. Every string field holds a
// string the sender does not reuse (rule and group names from the
// policy, attributes built for the line).
type slot struct {
	at      time.Time
	src     netip.Addr
	port    uint16
	comp    audit.Component
	action  policy.Action
	reason  policy.Reason
	cert    uint8 // certNone, certVerified, certFailed
	nameLen uint8
	name    [maxName]byte
	qtype   string
	rule    string
	group   string
	answers string
	sni     string
}

const (
	certNone = iota
	certVerified
	certFailed
)

var certWords = [...]string{certNone: "", certVerified: "verified", certFailed: "failed"}

// RecorderConfig configures a Recorder.
type RecorderConfig struct {
	// Store receives the rows. Required.
	Store *Store
	// GroupsOf names the source groups of a source, for decisions whose
	// rule matched no group (denials). If nil, those rows have no group.
	GroupsOf func(netip.Addr) []string
	// Logger receives write errors. If nil, they are discarded.
	Logger *slog.Logger
	// Registerer, if not nil, gets the fqdngate_history_* metrics.
	Registerer prometheus.Registerer
	// Buffer is how many decisions wait for the writer before new ones
	// are dropped from the history. If zero, 16384.
	Buffer int
	// MaxRows bounds the rows aggregated in memory between writes (and
	// while writes fail or wait for a lock): past it, new rows are
	// dropped and counted; rows already waiting still count their hits.
	// If zero, 100000.
	MaxRows int
	// FlushEvery is how often rows are written. If zero, DefaultFlushEvery.
	FlushEvery time.Duration
	// FlushRows, if not zero, writes early once this many rows wait. By
	// default there is no early write: at MaxRows new rows are dropped
	// (counted) until the next write, so that a flood of distinct names
	// bounds the history's CPU (a write per FlushEvery) as MaxRows
	// bounds its memory.
	FlushRows int
	// SyncEvery is the least time between a write and one Sync forces
	// when more than SyncFreeRows rows wait: a Sync sooner after the last
	// write then returns without writing. If zero, DefaultSyncEvery.
	SyncEvery time.Duration
	// SyncFreeRows is how many rows may wait for a Sync to write them
	// whatever SyncEvery says: a write of a few rows costs little, and
	// keeps what an operator reads at the console current. If zero,
	// DefaultSyncFreeRows.
	SyncFreeRows int
	// Now is the clock for Sync's limit, for decisions that carry no
	// time, and for the day change. If nil, time.Now.
	Now func() time.Time
}

// DefaultFlushEvery is how often a Recorder writes its rows. A row is
// written once per interval however often it is hit, so the interval,
// not the decision rate, sets what the history costs: at a second, a
// gateway answering many distinct names spent half its CPU upserting
// (BENCHMARKS.md, "The decision history's cost"). A minute is Pi-hole's
// choice (DBINTERVAL) for the same trade. Readers through the daemon
// see the rows at once (Sync); a crash loses at most this much history,
// never an audit line.
const DefaultFlushEvery = time.Minute

// DefaultSyncEvery is the least time between a write and one a reader
// forces (Sync). Without it a console refreshed every second, or a script
// polling /v1/history, brought back a write a second, of up to MaxRows
// rows under a flood of distinct names: the cost DefaultFlushEvery
// exists to avoid. A reader therefore sees every decision made more than
// this long before it asked, and usually all of them.
const DefaultSyncEvery = 10 * time.Second

// DefaultSyncFreeRows is how many waiting rows a Sync writes regardless
// of DefaultSyncEvery: at a console refreshed every second, at most this
// many rows a second, where a flood could otherwise bring MaxRows.
const DefaultSyncFreeRows = 1000

// drainEvery is how often Run takes the decisions waiting in the buffer.
const drainEvery = 50 * time.Millisecond

// Recorder takes decisions from the audit path (it is an audit.Sink)
// and writes them to a Store from one goroutine, Run.
type Recorder struct {
	cfg  RecorderConfig
	ch   chan slot
	sync chan chan struct{}
	ran  chan struct{} // closed when Run returns
	m    *metrics
	rows map[rowKey]*agg // owned by Run
	day  string          // the day of the last retention pass; owned by Run
	// lastWrite is when the rows were last written (or a write tried);
	// the rows waiting are all younger. Owned by Run.
	lastWrite time.Time
	// The day of the last decision added, as a number (Unix days) and a
	// string: formatting it for each decision cost a tenth of add.
	lastDayN int64
	lastDay  string
}

// NewRecorder returns a Recorder for cfg; Run writes what it observes.
func NewRecorder(cfg RecorderConfig) (*Recorder, error) {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 16384
	}
	if cfg.MaxRows <= 0 {
		cfg.MaxRows = 100_000
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	if cfg.SyncFreeRows <= 0 {
		cfg.SyncFreeRows = DefaultSyncFreeRows
	}
	if cfg.SyncEvery <= 0 {
		cfg.SyncEvery = DefaultSyncEvery
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Recorder{cfg: cfg, ch: make(chan slot, cfg.Buffer), sync: make(chan chan struct{}), ran: make(chan struct{}), m: m, rows: map[rowKey]*agg{}}, nil
}

// Observe implements audit.Sink: it copies what the history keeps of e
// and hands it to the writer without waiting. A full buffer drops it
// from the history and counts it.
func (r *Recorder) Observe(e audit.Event) {
	var s slot
	s.at = e.Time
	s.src = e.Source
	s.port = e.Port
	s.comp = e.Component
	s.action = e.Decision.Action
	s.reason = e.Decision.Reason
	s.qtype = e.QType
	s.rule = e.Decision.RuleName()
	s.group = e.Decision.Group
	s.nameLen = uint8(copy(s.name[:], e.Name))
	for _, a := range e.Attrs {
		switch a.Key {
		case "answers", "dialled":
			s.answers = a.Value.String()
		case "sni":
			s.sni = a.Value.String()
		}
	}
	switch {
	case e.Decision.Reason == policy.ReasonVerify:
		s.cert = certFailed
	case e.Component == audit.Proxy && e.Decision.Action == policy.Allow && e.Decision.Rule != nil &&
		e.Decision.Rule.TLS != nil && (e.Decision.Rule.TLS.Verify || len(e.Decision.Rule.TLS.Pins) > 0):
		// The proxy dials a rule with tls.verify or pins only after the
		// upstream certificate passed.
		s.cert = certVerified
	}
	select {
	case r.ch <- s:
	default:
		r.m.dropped.WithLabelValues("buffer_full").Inc()
	}
}

// Run writes what Observe hands over until ctx is done, then writes what
// is left (bounded by a short deadline) and returns nil. Write failures
// are logged and counted; they never stop it.
func (r *Recorder) Run(ctx context.Context) error {
	defer close(r.ran)
	r.day = Day(r.cfg.Now())
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	// The buffer is drained on a tick, not by a receive per decision: a
	// goroutine parked on the channel would be woken by every decision,
	// and those wakeups cost the DNS firewall more than the copies.
	// 16,384 decisions every 50 ms is 300,000 a second before drops.
	drain := time.NewTicker(drainEvery)
	defer drain.Stop()
	for {
		select {
		case <-drain.C:
			r.drain()
			if r.cfg.FlushRows > 0 && len(r.rows) >= r.cfg.FlushRows {
				r.flush(ctx)
			}
		case <-t.C:
			r.drain()
			r.rollDay(ctx)
			r.flush(ctx)
		case done := <-r.sync:
			r.drain()
			if r.lastWrite.IsZero() || len(r.rows) <= r.cfg.SyncFreeRows || r.cfg.Now().Sub(r.lastWrite) >= r.cfg.SyncEvery {
				r.flush(ctx)
			}
			close(done)
		case <-ctx.Done():
			r.drain()
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			r.flush(fctx)
			cancel()
			return nil
		}
	}
}

// lowerName is b in lower case, with one copy (a name that is already
// lower case, as most are, is not copied twice).
func lowerName(b []byte) string {
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			return strings.ToLower(string(b))
		}
	}
	return string(b)
}

// drain aggregates the decisions waiting in the buffer.
func (r *Recorder) drain() {
	for {
		select {
		case s := <-r.ch:
			r.add(&s)
		default:
			return
		}
	}
}

// Sync writes the decisions observed so far, so that a read after it
// sees them; readers through the daemon call it, as rows are otherwise
// written every FlushEvery. When more than SyncFreeRows rows wait, it
// writes at most once per SyncEvery: sooner after the last write it
// returns without writing, and a read after it sees every decision older
// than SyncEvery (the rows still waiting came after the last write). It
// returns ctx's error if ctx ends first, and nil once Run has returned (it
// wrote what was left).
func (r *Recorder) Sync(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case r.sync <- done:
	case <-r.ran:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// add aggregates one decision into the rows waiting for the next write.
func (r *Recorder) add(s *slot) {
	at := s.at
	if at.IsZero() {
		at = r.cfg.Now()
	}
	if n := at.Unix() / 86400; n != r.lastDayN || r.lastDay == "" {
		r.lastDayN, r.lastDay = n, Day(at)
	}
	k := rowKey{day: r.lastDay, Key: Key{
		Group:     s.group,
		Source:    s.src,
		Component: s.comp.String(),
		Name:      lowerName(s.name[:s.nameLen]),
		Port:      s.port,
		QType:     s.qtype,
		Action:    s.action.String(),
		Rule:      s.rule,
		Reason:    s.reason.String(),
	}}
	if k.Group == "" && r.cfg.GroupsOf != nil && s.src.IsValid() {
		k.Group = strings.Join(r.cfg.GroupsOf(s.src), ",")
	}
	a := r.rows[k]
	if a == nil {
		if len(r.rows) >= r.cfg.MaxRows {
			r.m.dropped.WithLabelValues("rows_full").Inc()
			return
		}
		a = &agg{first: at, last: at}
		r.rows[k] = a
	}
	a.hits++
	a.first = minTime(a.first, at)
	a.last = maxTime(a.last, at)
	// A cached name's answers are the same set decision after decision:
	// merge a set only when it differs from the last one merged.
	if s.answers != "" && s.answers != "-" && len(a.answers) < maxAnswers && s.answers != a.lastAnswers {
		a.answers = mergeSet(a.answers, strings.Split(s.answers, ","), maxAnswers)
		a.lastAnswers = s.answers
	}
	if s.sni != "" && len(a.sni) < maxSNI {
		a.sni = mergeSet(a.sni, []string{s.sni}, maxSNI)
	}
	if s.cert != certNone {
		a.cert = mergeSet(a.cert, []string{certWords[s.cert]}, maxCert)
	}
}

// rollDay drops the days retention no longer keeps once a day.
func (r *Recorder) rollDay(ctx context.Context) {
	today := Day(r.cfg.Now())
	if today == r.day {
		return
	}
	r.day = today
	if err := r.cfg.Store.Prune(ctx); err != nil {
		r.failed(ctx, "pruning", err)
	}
}

// flush writes the waiting rows in one transaction. On failure they are
// kept for the next try (MaxRows bounds them), except when the file is
// full, over max_size or corrupt, where retrying cannot help.
func (r *Recorder) flush(ctx context.Context) {
	if len(r.rows) == 0 {
		return
	}
	r.lastWrite = r.cfg.Now()
	err := r.cfg.Store.write(ctx, r.rows)
	if err == nil {
		r.m.flushes.Inc()
		r.m.rowsWritten.Add(float64(len(r.rows)))
		clear(r.rows)
		if n, err := r.cfg.Store.Size(ctx); err == nil {
			r.m.size.Set(float64(n))
		}
		return
	}
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return
	}
	r.failed(ctx, "writing", err)
	if errors.Is(err, ErrOverSize) || IsFull(err) || IsCorrupt(err) {
		r.m.dropped.WithLabelValues(dropReason(err)).Add(float64(len(r.rows)))
		clear(r.rows)
	}
}

func dropReason(err error) string {
	switch {
	case errors.Is(err, ErrOverSize):
		return "max_size"
	case IsCorrupt(err):
		return "corrupt"
	default:
		return "disk_full"
	}
}

// failed logs and counts a failed write; a corrupt file is moved aside
// and a new one started.
func (r *Recorder) failed(_ context.Context, what string, err error) {
	r.m.errors.WithLabelValues(errorKind(err)).Inc()
	r.cfg.Logger.Error(what+" the decision history; enforcement goes on", "file", r.cfg.Store.Path(), "err", err)
	if !IsCorrupt(err) {
		return
	}
	to, rerr := r.cfg.Store.Replace()
	if rerr != nil {
		r.cfg.Logger.Error("replacing the corrupt decision history; history stops until it opens", "file", r.cfg.Store.Path(), "err", rerr)
		return
	}
	r.m.corrupt.Inc()
	r.cfg.Logger.Warn("the decision history was corrupt: moved aside, a new one started", "file", r.cfg.Store.Path(), "moved_to", to)
}

func errorKind(err error) string {
	switch {
	case errors.Is(err, ErrOverSize):
		return "max_size"
	case IsCorrupt(err):
		return "corrupt"
	case IsFull(err):
		return "disk_full"
	default:
		return "other"
	}
}

// CountCorrupt counts a corrupt file found at start (Open moved it aside).
func (r *Recorder) CountCorrupt() { r.m.corrupt.Inc() }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
