package nft

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

const (
	// maxBatch bounds the elements of one transaction: the whole batch is
	// one sendmsg, which must fit the netlink socket's send buffer
	// (about 200 KiB by default; an element costs at most 56 bytes).
	maxBatch = 2048
	// maxPerMsg bounds the elements of one netlink message, whose nested
	// attribute length is 16 bits.
	maxPerMsg = 512
	// refreshSlack: elements are programmed to expire this much after
	// their answer needs, so that answers re-learning an address within
	// that time find it programmed long enough and cost no transaction.
	// Answers for popular names arrive constantly; each would otherwise
	// cost one to move an expiry by milliseconds. Programming early and
	// skipping what is close instead would close addresses before answers
	// handed out expire, which matters with a short dns.grace.
	refreshSlack = time.Second
	// saveDelay is how soon after a change the state file is written.
	saveDelay = 500 * time.Millisecond
	// deleteMargin: an element due to expire sooner than this is never
	// deleted, since it may be gone by the time the transaction reaches
	// the kernel, and deleting a missing element aborts the transaction.
	// It is left to expire by itself.
	deleteMargin = time.Second
	// sweepEvery is how often expired entries leave the backend's memory
	// (the kernel expires its elements itself); sweepChunk is how many
	// entries a sweep visits before letting Publish have the lock.
	sweepEvery = 10 * time.Second
	sweepChunk = 4096
)

// ErrNotRunning is returned by Publish once Run has returned.
var ErrNotRunning = errors.New("nftables backend is not running: learned addresses cannot be programmed")

// request is one Publish call's share of a transaction.
type request struct {
	elems []pending
	// evict are elements pushed out by the per-name cap, to delete from
	// the kernel if nothing else needs them by then.
	evict []elemKey
	done  chan error // buffered; receives exactly once
}

// pending is an element on its way to the kernel.
type pending struct {
	key     elemKey
	expires time.Time
	// extend: the kernel holds the element already, with an earlier
	// timeout (see Backend.replaceToExtend).
	extend bool
}

// Stats are the backend's counters since New, for metrics.
type Stats struct {
	// CapEvictions counts learned addresses pushed out because their name
	// reached dns.max_learned_per_name.
	CapEvictions uint64
	// DropSamples counts sampled drops handed to Config.OnDrop;
	// DropSamplesLost counts samples lost before fqdngate read them
	// (the socket overflowed) or that it could not parse.
	DropSamples     uint64
	DropSamplesLost uint64
	// AllowLogs counts new connections handed to Config.OnAllow;
	// AllowLogsLost counts those lost before fqdngate read them, or that
	// it could not parse or attribute.
	AllowLogs     uint64
	AllowLogsLost uint64
	// Learned is how many learned elements the kernel's sets hold (expired
	// ones count until the sweep forgets them, within seconds).
	Learned int
	// Restores counts the times the table was put back after another
	// process deleted or changed it; RestoreFailures counts attempts that
	// failed (each is retried).
	Restores        uint64
	RestoreFailures uint64
	// WatchOverruns counts the times change notifications were lost (the
	// watcher's socket buffer overflowed) and the table was checked whole.
	WatchOverruns uint64
	// StateWriteFailures counts failed writes of the state file.
	StateWriteFailures uint64
}

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	b.memMu.Lock()
	n := b.programmed
	b.memMu.Unlock()
	return Stats{
		CapEvictions:    b.capEvictions.Load(),
		DropSamples:     b.dropSamples.Load(),
		DropSamplesLost: b.dropSamplesLost.Load(),
		AllowLogs:       b.allowLogs.Load(),
		AllowLogsLost:   b.allowLogsLost.Load(),
		Learned:         n,

		Restores:           b.restores.Load(),
		RestoreFailures:    b.restoreFailures.Load(),
		WatchOverruns:      b.watchOverruns.Load(),
		StateWriteFailures: b.stateWriteFailures.Load(),
	}
}

// Publish programs the learned addresses in batch, each with a timeout
// that ends refreshSlack after its Expires, and returns once the kernel
// holds them, or with an error if it does not. Concurrent calls share
// transactions. An entry whose rule or group is not in the applied policy
// fails the call.
//
// A name holds at most the policy's dns.max_learned_per_name addresses
// (across its rules and groups): a new one beyond that pushes out the
// name's address that expires soonest, which leaves the kernel in the same
// transaction unless another name still holds it.
func (b *Backend) Publish(ctx context.Context, batch []learn.Entry) error {
	now := b.now()
	var (
		todo  []pending
		evict []elemKey
	)
	b.memMu.Lock()
	// Check the whole batch before holding any of it, so that a failed
	// call leaves no trace.
	for _, e := range batch {
		a := e.Addr.Unmap()
		if !a.IsValid() {
			b.memMu.Unlock()
			return fmt.Errorf("nftables: publishing %s for rule %q: invalid address", e.Name, e.Rule)
		}
		if _, ok := b.learned[learnKey{e.Rule, e.Group, familyOf(a)}]; !ok {
			b.memMu.Unlock()
			return fmt.Errorf("nftables: publishing %s for rule %q group %q: not in the applied policy (was it reloaded?)", e.Name, e.Rule, e.Group)
		}
	}
	for i, e := range batch {
		if !e.Expires.After(now) {
			continue
		}
		a := e.Addr.Unmap()
		k := keyOf(b.learned[learnKey{e.Rule, e.Group, familyOf(a)}], a)
		hint := 1
		for hint < manyHeld && i+hint < len(batch) && batch[i+hint].Name == e.Name {
			hint++
		}
		evict = b.holdLocked(e.Name, k, e.Expires, evict, hint)
		if h := b.names[e.Name]; h != nil {
			h.dnssec = verdictOf(e.DNSSEC)
		}
		have, ok := b.mirrorGet(k)
		if ok && have.After(now) && !have.Before(e.Expires) {
			continue
		}
		todo = append(todo, pending{k, e.Expires.Add(refreshSlack), ok && have.After(now)})
	}
	if len(evict) > 0 {
		// A big answer can push out addresses it brought itself.
		todo = slices.DeleteFunc(todo, func(p pending) bool { return b.refsOf(p.key) == 0 })
	}
	b.memMu.Unlock()
	if len(todo) == 0 && len(evict) == 0 {
		return nil
	}

	var reqs []*request
	for len(todo) > 0 || len(evict) > 0 {
		n := min(len(todo), maxBatch)
		m := min(len(evict), maxBatch-n)
		reqs = append(reqs, &request{elems: todo[:n], evict: evict[:m], done: make(chan error, 1)})
		todo, evict = todo[n:], evict[m:]
	}
	if b.stopped() {
		return ErrNotRunning
	}
	b.qMu.Lock()
	b.pending = append(b.pending, reqs...)
	lead := !b.flushing
	b.flushing = true
	b.qMu.Unlock()
	if lead {
		b.lead(reqs)
	}
	var errs []error
	for _, r := range reqs {
		select {
		case err := <-r.done:
			errs = append(errs, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-b.stop:
			return ErrNotRunning
		}
	}
	return errors.Join(errs...)
}

// Dropped counts the times learned elements left the kernel before the
// expiry they were published with: pushed out by the per-name cap, gone
// with their set (Apply) or the table (Remove) (dnsfw.DropCounter). While
// it stands still, an address published before is held until its expiry
// whenever the table enforces at all. A table deleted or changed behind
// fqdngate's back is put back with every learned element (by the watcher
// at once, or else by the next Apply), so it does not count; meanwhile
// Publish fails for want of the sets, and Enforcing says so.
func (b *Backend) Dropped() uint64 {
	return b.capEvictions.Load() + b.resets.Load()
}

func (b *Backend) stopped() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// Run leads the transactions of Publish calls that queued behind another
// (see lead), checks what New took from the state file (see verify),
// writes the state file, forgets what expired, hands drop
// samples to Config.OnDrop and the allow log to Config.OnAllow and, with
// Config.Watch, restores the table when another process changes it (see
// watch.go), until ctx ends. It returns nil then, after a last write of
// the state file. Run may be called once.
func (b *Backend) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("nftables: Run called twice")
	}
	var wg sync.WaitGroup
	saveCtx, cancelSave := context.WithCancel(context.Background())
	wg.Add(2)
	go func() {
		defer wg.Done()
		b.saveLoop(saveCtx)
	}()
	go func() {
		defer wg.Done()
		b.sweepLoop(saveCtx)
	}()
	if b.toVerify > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.verify(saveCtx)
		}()
	}
	if b.nflog != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.readNflog(saveCtx, b.nflog, b.closeNflog, &b.dropSamplesLost, "drop samples", b.handleDrop)
		}()
	}
	if b.allowNflog != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.readNflog(saveCtx, b.allowNflog, b.closeAllowNflog, &b.allowLogsLost, "allowed connections", b.handleAllow)
		}()
	}
	if b.mon != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.watch(saveCtx)
		}()
	}
	defer func() {
		// Whoever leads fails what is still queued, and Publish watches
		// stop for anything that slips in after this.
		close(b.stop)
		b.qMu.Lock()
		lead := !b.flushing
		b.flushing = true
		b.qMu.Unlock()
		if lead {
			b.lead(nil)
		}
		cancelSave()
		wg.Wait()
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.kick:
			b.lead(nil)
		}
	}
}

// Learned returns the learned addresses the kernel holds, as the backend
// knows them: for tests, the admin API and the state file.
func (b *Backend) Learned() []learn.Entry {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	yield := b.yielderLocked()
	out := make([]learn.Entry, 0, b.programmed)
	for k, exp := range b.mirrorAll {
		if !exp.After(now) {
			b.mirrorDel(k) // the kernel expired it too
		} else if o, ok := b.owner[k.set()]; ok { // else adopted, and not yet claimed by an Apply
			out = append(out, learn.Entry{Rule: o.rule, Group: o.group, Addr: k.addr(), Expires: exp.Time()})
		}
		yield() // last: exp is stale once the lock was let go
	}
	return out
}

// All yields the learned addresses the kernel holds, one entry per name
// holding each (an element that no name holds, adopted from a previous
// process or restored from the state file, once, without a name), in no
// particular order: for the admin API, which pages through them (see
// learn.Page). It copies sweepChunk entries at a time under the lock and
// yields them without it, so a listing of a million holds up Publish no
// longer than a sweep does and never holds them all. With a name, only
// that name's entries, found with one lookup.
func (b *Backend) All(name dnsname.Name) iter.Seq[learn.Entry] {
	return func(yield func(learn.Entry) bool) {
		buf := make([]learn.Entry, 0, sweepChunk)
		flush := func() bool {
			b.memMu.Unlock()
			defer b.memMu.Lock()
			for _, e := range buf {
				if !yield(e) {
					return false
				}
			}
			buf = buf[:0]
			return true
		}
		now := b.now()
		b.memMu.Lock()
		defer b.memMu.Unlock()
		// Ranging over a map that others change between iterations
		// is allowed: entries they add may or may not be visited.
		cut := now.UnixNano()
		for n, h := range b.names {
			if name != "" {
				if n, h = name, b.names[name]; h == nil {
					break
				}
			}
			for k, exp := range h.all {
				if o, ok := b.owner[k.set()]; ok && exp > cut {
					if mexp, ok := b.mirrorGet(k); ok && mexp.After(now) {
						buf = append(buf, learn.Entry{Name: n, Rule: o.rule, Group: o.group, Addr: k.addr(), Expires: time.Unix(0, exp), DNSSEC: h.dnssec.String()})
					}
				}
			}
			if name != "" {
				break
			}
			if len(buf) >= sweepChunk && !flush() {
				return
			}
		}
		if name != "" {
			// Elements no name holds are no name's.
			flush()
			return
		}
		for k, exp := range b.mirrorAll {
			if b.refsOf(k) > 0 || !exp.After(now) {
				continue
			}
			if o, ok := b.owner[k.set()]; ok {
				buf = append(buf, learn.Entry{Rule: o.rule, Group: o.group, Addr: k.addr(), Expires: exp.Time()})
			}
			if len(buf) >= sweepChunk && !flush() {
				return
			}
		}
		flush()
	}
}

var _ learn.Publisher = (*Backend)(nil)
