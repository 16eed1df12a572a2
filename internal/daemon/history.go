package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/fqdngate/fqdngate/internal/history"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// decisionHistory is the running decision history: the audit logger's
// sink, written by its own goroutine, read by /v1/history.
type decisionHistory struct {
	store *history.Store
	rec   *history.Recorder
	stop  context.CancelFunc
	done  chan struct{}
}

// historyPath is where p keeps the history: history.path, or the
// default location for this process.
func historyPath(p *policy.Policy) string {
	if p.History.Path != "" {
		return p.History.Path
	}
	return history.DefaultPath(history.ProcessEnv(), p.Firewall.StateFile)
}

// openHistory opens the history p asks for and makes d.audit hand it
// every decision. The history never stops enforcement: a file that
// cannot be opened is logged and fqdngate runs without history.
func (d *Daemon) openHistory(p *policy.Policy) {
	if !p.History.Enabled {
		return
	}
	log := d.log.With("component", "history")
	path := historyPath(p)
	if path == "" {
		log.Error("decision history off: no history.path and no home or state directory to put it in; set history.path")
		return
	}
	st, replaced, err := history.Open(path, history.Options{Retention: p.History.Retention, MaxSize: p.History.MaxSize})
	if err != nil {
		log.Error("decision history off; enforcement goes on", "err", err)
		return
	}
	rec, err := history.NewRecorder(history.RecorderConfig{
		Store:      st,
		GroupsOf:   func(a netip.Addr) []string { return d.Policy().GroupsOf(a) },
		Logger:     log,
		Registerer: d.reg,
	})
	if err != nil {
		st.Close()
		log.Error("decision history off", "err", fmt.Errorf("registering its metrics: %w", err))
		return
	}
	if replaced != "" {
		rec.CountCorrupt()
		log.Warn("the decision history was corrupt: moved aside, a new one started", "file", path, "moved_to", replaced)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &decisionHistory{store: st, rec: rec, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		_ = rec.Run(ctx)
	}()
	d.audit.SetSink(rec)
	d.hist = h
	log.Info("decision history", "file", path, "retention", fmt.Sprintf("%dd", p.History.Retention/(24*time.Hour)), "max_size", p.History.MaxSize)
}

// closeHistory writes what is left and closes the file; called once no
// decision can be made any more.
func (d *Daemon) closeHistory() {
	h := d.hist
	if h == nil {
		return
	}
	h.stop()
	<-h.done
	if err := h.store.Close(); err != nil {
		d.log.Error("closing the decision history", "component", "history", "err", err)
	}
}

// queryHistory serves /v1/history; nil when history is off.
func (d *Daemon) queryHistory() func(context.Context, history.Filter) ([]history.Row, error) {
	if d.hist == nil {
		return nil
	}
	h := d.hist
	return func(ctx context.Context, f history.Filter) ([]history.Row, error) {
		// Rows are written once a minute; a reader sees every decision
		// made more than history.DefaultSyncEvery before it asked (Sync
		// forces at most one write per that interval).
		if err := h.rec.Sync(ctx); err != nil {
			return nil, fmt.Errorf("writing the newest decisions before reading: %w", err)
		}
		return h.store.Query(ctx, f)
	}
}

// describeHistory is the history section as restartPending shows it.
func describeHistory(p *policy.Policy) string {
	if !p.History.Enabled {
		return "off"
	}
	return fmt.Sprintf("path=%s retention=%dd max_size=%d", historyPath(p), p.History.Retention/(24*time.Hour), p.History.MaxSize)
}
