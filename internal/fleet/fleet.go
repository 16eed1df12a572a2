// Package fleet shares the addresses a gateway learns with every other
// gateway of its fleet through etcd, and holds an answer until they all
// enforce it.
package fleet

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/learn"
)

// Fleet is a learn.Publisher that enforces locally first (Options.Local),
// then writes the entries to etcd for the other gateways, and returns when
// Options.Hold says the answer may go. Run reads what the others write,
// checks it (Options.Accept) and programs it through Local.
//
// Without etcd (unreachable, no quorum, not yet reached) it enforces what
// it has and holds new answers locally only, at once: Degraded says why,
// and what was learned meanwhile is written when etcd is back.
type Fleet struct {
	cli   *clientv3.Client
	o     Options
	log   *slog.Logger
	m     *metrics
	drops dropCounter // Local, when it is one

	learnedPrefix string // <prefix>learned/
	nodesPrefix   string // <prefix>nodes/
	nodeKey       string // <prefix>nodes/<node>

	check atomic.Pointer[check]
	calls atomic.Uint64 // Dropped's answer when Local cannot say
	// overflow counts elements never written for want of room in the
	// queue (Options.MaxPending).
	overflow atomic.Uint64
	leader   atomic.Bool
	// applied is the etcd revision up to which every learned element
	// has been read and programmed (or ignored); only the goroutine that
	// applies etcd's elements writes it.
	applied atomic.Int64

	loaded   chan struct{}
	loadOnce sync.Once
	// kick wakes the flusher, which writes learned elements and this
	// gateway's watermark; buffered, one slot.
	kick chan struct{}

	mu sync.Mutex // guards the following
	// up: connected, loaded and registered; while false, Publish holds
	// locally only and downErr says why.
	up      bool
	downErr error
	everUp  bool
	cancel  context.CancelCauseFunc // ends the current connection
	changed chan struct{}           // closed and replaced when up changes, or live is reloaded
	// live holds the other gateways' watermarks, by node name.
	live map[string]int64
	// acks holds the holds waiting for every live gateway to acknowledge
	// a revision, lowest first: a watermark that moves wakes only those
	// it releases, not every waiting answer (see wakeAckedLocked).
	acks ackHeap
	// mirror is what etcd holds, element by element, as far as this
	// gateway knows (from its loads, its watch and its own writes): a
	// published entry that etcd holds with the same or a later expiry is
	// not written again. It counts the elements of each name taken from
	// etcd, for Options.MaxPerName.
	mirror mirror
	// queue holds the flushes waiting to be written, oldest first, each of
	// at most maxBatch elements; queued indexes their elements by key,
	// and inflight those of the flush being written.
	queue    []*flush
	queued   map[string]*op
	inflight map[string]*op
	// The most elements queued and inflight held since they were last
	// replaced (shrinkLocked).
	queuedPeak, inflightPeak int
	// boot and seq name the next batch this process writes (batchKey).
	boot, seq uint64
	// ownBatches starts the keys, below learnedPrefix, of the batches
	// this process writes: apply skips them when they come back through
	// the watch (written has recorded them).
	ownBatches string
	// ackLease is the lease of this gateway's watermark key while it is
	// registered (0: not connected); ackSent is the highest watermark
	// handed to a write on it. A write of the flusher carries the
	// watermark when applied has passed ackSent (see take).
	ackLease clientv3.LeaseID
	ackSent  int64

	// The hold's timeouts are logged at most once a second.
	logMu      sync.Mutex
	lastLog    time.Time
	suppressed int
}

// check is what elements from etcd must pass (SetAccept).
type check struct {
	accept     func(learn.Entry) error
	maxPerName int
}

// dropCounter is dnsfw.DropCounter, which the fleet passes through.
type dropCounter interface{ Dropped() uint64 }

// ErrHoldTimeout is what Publish returns, wrapped, when a hold with
// OnTimeout ServFail times out.
var ErrHoldTimeout = errors.New("fleet: the other gateways did not acknowledge the addresses in time")

// errConnecting is Degraded's answer until Run has reached etcd once,
// errStopped once Run has returned.
var (
	errConnecting = errors.New("etcd: not reached yet")
	errStopped    = errors.New("etcd: the fleet is stopped")
)

// New returns a Fleet of gateways sharing cli's etcd. Nothing is read or
// written before Run.
func New(cli *clientv3.Client, o Options) (*Fleet, error) {
	switch {
	case cli == nil:
		return nil, errors.New("fleet: no etcd client")
	case o.Node == "" || strings.ContainsAny(o.Node, "/\x00"):
		return nil, fmt.Errorf("fleet: node name %q is not usable; give every gateway a unique name without '/' (cluster.node)", o.Node)
	case o.Local == nil:
		return nil, errors.New("fleet: Options.Local is nil; the fleet needs a local publisher to enforce with")
	case o.Accept == nil:
		return nil, errors.New("fleet: Options.Accept is nil; elements from etcd must be checked against the policy (fleet.Accept)")
	case o.Prefix != "" && !strings.HasSuffix(o.Prefix, "/"):
		return nil, fmt.Errorf("fleet: prefix %q must end with '/'", o.Prefix)
	}
	o.setDefaults()
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{
		cli:           cli,
		o:             o,
		log:           log,
		m:             m,
		learnedPrefix: o.Prefix + learnedDir,
		nodesPrefix:   o.Prefix + nodesDir,
		nodeKey:       o.Prefix + nodesDir + o.Node,
		loaded:        make(chan struct{}),
		kick:          make(chan struct{}, 1),
		downErr:       errConnecting,
		changed:       make(chan struct{}),
		live:          map[string]int64{},
		mirror:        newMirror(),
		queued:        map[string]*op{},
		inflight:      map[string]*op{},
		boot:          uint64(time.Now().UnixNano()),
	}
	f.ownBatches = batchKey(o.Node, f.boot, 0)[:len(o.Node)+1+16]
	f.drops, _ = o.Local.(dropCounter)
	f.check.Store(&check{accept: o.Accept, maxPerName: o.MaxPerName})
	m.degraded.Set(1)
	return f, nil
}

// SetAccept replaces the check of elements from etcd, for a reloaded
// policy: elements read from now on must pass accept, and a name takes at
// most maxPerName of them (0: no bound). Before it returns, every live
// element etcd holds that accept passes and the previous check did not
// (a gateway that started on its local file alone and now has its first
// shared revision, a revision that adds a rule or a group) is programmed
// through Local, which must already have the new policy. Elements
// programmed already stay until they expire or the local publisher drops
// them (with their rule's set); those accept refuses stop counting
// against maxPerName. A nil accept refuses everything.
func (f *Fleet) SetAccept(ctx context.Context, accept func(learn.Entry) error, maxPerName int) {
	if accept == nil {
		accept = func(learn.Entry) error { return &Refusal{ReasonUnknownRule, "no policy to check against"} }
	}
	f.check.Store(&check{accept: accept, maxPerName: maxPerName})
	f.rescan(ctx)
}

// Loaded is closed once this gateway has programmed the whole learned set
// from etcd and registered itself, so that the others wait for it: only
// then may it report ready.
func (f *Fleet) Loaded() <-chan struct{} { return f.loaded }

// Degraded returns why this gateway is not working with etcd (unreachable,
// without quorum, not reached yet), or nil when it is. Meanwhile it
// enforces what it has and holds answers locally only.
func (f *Fleet) Degraded() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.downErr
}

// IsLeader reports whether this gateway should run the fleet's refresh
// timers: it is the leader elected through etcd, or it has lost etcd (once
// reached), so that the leader's refreshes cannot reach it and it keeps
// its own names fresh.
func (f *Fleet) IsLeader() bool {
	if f.leader.Load() {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.up && f.downErr != errConnecting && f.downErr != errStopped
}

// Dropped implements dnsfw.DropCounter: Local's count when Local keeps
// one, plus the elements that were enforced locally but never reached
// etcd (see Options.MaxPending), so that the DNS firewall publishes their
// names again. When Local keeps no count, the answer changes on every
// call, and every answer is published.
func (f *Fleet) Dropped() uint64 {
	n := f.overflow.Load()
	if f.drops == nil {
		return n + f.calls.Add(1)
	}
	return n + f.drops.Dropped()
}

// Publish enforces batch through Local, hands what etcd does not hold yet
// to the flusher, and returns when Options.Hold says the answer may go
// (see learn.Publisher). With hold peers, that is when every other live
// gateway has acknowledged the revision that wrote the entries, or when
// Options.HoldTimeout has passed (then OnTimeout decides); at once when
// etcd is unreachable.
func (f *Fleet) Publish(ctx context.Context, batch []learn.Entry) error {
	if err := f.o.Local.Publish(ctx, batch); err != nil {
		return err
	}
	start := time.Now()
	f.mu.Lock()
	rev, waits, added := f.enqueueLocked(batch, f.o.Now().Unix())
	up := f.up
	f.mu.Unlock()
	if added {
		f.wake()
	}
	switch {
	case f.o.Hold == HoldLocal:
		f.m.holds.WithLabelValues("local").Inc()
		return nil
	case !up:
		f.m.holds.WithLabelValues("degraded").Inc()
		return nil
	}
	return f.hold(ctx, start, rev, waits, batch)
}

// wake wakes the flusher.
func (f *Fleet) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// broadcastLocked wakes every hold waiting for a change.
func (f *Fleet) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
	f.wakeAckedLocked()
}

// wakeAckedLocked wakes the holds whose revision every live gateway has
// acknowledged, after live changed.
func (f *Fleet) wakeAckedLocked() {
	low := int64(math.MaxInt64)
	for _, wm := range f.live {
		low = min(low, wm)
	}
	for len(f.acks) > 0 && f.acks[0].rev <= low {
		close(heap.Pop(&f.acks).(*ackWait).ch)
	}
}

// ackWait is a hold waiting for every live gateway to acknowledge rev.
type ackWait struct {
	rev int64
	ch  chan struct{} // closed when they have, or the hold should look again
	i   int           // index in the heap; -1 once out of it
}

// ackHeap is a min-heap of waiting holds by revision (container/heap).
type ackHeap []*ackWait

func (h ackHeap) Len() int           { return len(h) }
func (h ackHeap) Less(i, j int) bool { return h[i].rev < h[j].rev }
func (h ackHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].i = i; h[j].i = j }
func (h *ackHeap) Push(x any)        { w := x.(*ackWait); w.i = len(*h); *h = append(*h, w) }
func (h *ackHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.i = -1
	return w
}

// hold waits until every live gateway other than this one has
// acknowledged rev and the revisions waits will write, the hold times out,
// or etcd is lost.
func (f *Fleet) hold(ctx context.Context, start time.Time, rev int64, waits []*flush, batch []learn.Entry) error {
	timer := time.NewTimer(f.o.HoldTimeout)
	defer timer.Stop()
	var w *ackWait // once every flush is written: waiting for rev's acknowledgement
	defer func() {
		if w != nil {
			f.mu.Lock()
			if w.i >= 0 {
				heap.Remove(&f.acks, w.i)
			}
			f.mu.Unlock()
		}
	}()
	for {
		var (
			next   <-chan struct{} // a flush still to be written
			failed bool
		)
		for _, fl := range waits {
			select {
			case <-fl.done:
				if fl.err != nil {
					failed = true
				}
				rev = max(rev, fl.rev)
			default:
				if next == nil {
					next = fl.done
				}
			}
		}
		f.mu.Lock()
		up, changed := f.up, f.changed
		acked := next == nil && f.ackedLocked(rev)
		var ackCh <-chan struct{}
		if up && !failed && next == nil && !acked {
			// Wait to be woken when the watermarks reach rev: rev no
			// longer changes (every flush is written).
			if w == nil || w.i < 0 {
				w = &ackWait{rev: rev, ch: make(chan struct{})}
				heap.Push(&f.acks, w)
			}
			ackCh = w.ch
		}
		f.mu.Unlock()
		switch {
		case !up || failed:
			f.m.holdTime.Observe(time.Since(start).Seconds())
			f.m.holds.WithLabelValues("degraded").Inc()
			return nil
		case acked:
			f.m.holdTime.Observe(time.Since(start).Seconds())
			f.m.holds.WithLabelValues("acked").Inc()
			return nil
		}
		select {
		case <-next:
		case <-ackCh:
		case <-changed:
		case <-timer.C:
			f.m.holdTime.Observe(time.Since(start).Seconds())
			return f.timedOut(rev, next != nil, batch)
		case <-ctx.Done():
			return fmt.Errorf("fleet: holding the answer for the other gateways: %w", ctx.Err())
		}
	}
}

// ackedLocked reports whether every live gateway other than this one has
// acknowledged rev.
func (f *Fleet) ackedLocked(rev int64) bool {
	for _, wm := range f.live {
		if wm < rev {
			return false
		}
	}
	return true
}

// timedOut ends a hold that took longer than Options.HoldTimeout.
func (f *Fleet) timedOut(rev int64, unwritten bool, batch []learn.Entry) error {
	f.mu.Lock()
	var lagging []string
	for node, wm := range f.live {
		if unwritten || wm < rev {
			lagging = append(lagging, node)
		}
	}
	f.mu.Unlock()
	slices.Sort(lagging)
	why := "gateways " + strings.Join(lagging, ", ") + " did not acknowledge"
	if unwritten {
		why = "etcd did not take the write"
	}
	name := ""
	if len(batch) > 0 {
		name = string(batch[0].Name)
	}
	result := "timeout_release"
	if f.o.OnTimeout == ServFail {
		result = "timeout_servfail"
	}
	f.m.holds.WithLabelValues(result).Inc()
	f.logTimeout(name, why, result)
	if f.o.OnTimeout == ServFail {
		return fmt.Errorf("%w (%s within %v)", ErrHoldTimeout, why, f.o.HoldTimeout)
	}
	if f.o.Released != nil {
		f.o.Released(batch, why)
	}
	return nil
}

// logTimeout logs a hold's timeout, at most one line a second: a lagging
// gateway times out every answer, and must not flood the log.
func (f *Fleet) logTimeout(name, why, result string) {
	f.logMu.Lock()
	now := time.Now()
	if now.Sub(f.lastLog) < time.Second {
		f.suppressed++
		f.logMu.Unlock()
		return
	}
	n := f.suppressed
	f.lastLog, f.suppressed = now, 0
	f.logMu.Unlock()
	f.log.Warn("hold timed out: an answer went out before every gateway enforced its addresses",
		"name", name, "why", why, "hold_timeout", f.o.HoldTimeout, "result", result, "more_since_last_line", n)
}
