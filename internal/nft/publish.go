package nft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

const (
	// maxBatch bounds the elements of one transaction: the whole batch is
	// one sendmsg, which must fit the netlink socket's send buffer
	// (about 200 KiB by default; an element costs about 50 bytes).
	maxBatch = 2048
	// maxPerMsg bounds the elements of one netlink message, whose nested
	// attribute length is 16 bits.
	maxPerMsg = 512
	// refreshSlack: a re-learned address already programmed to expire no
	// more than this before its new expiry is not re-sent. Answers for
	// popular names arrive constantly; each would otherwise cost a
	// transaction to move an expiry by milliseconds.
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

// ErrNotRunning is returned by Publish when Run is not running.
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
}

// Stats returns the counters.
func (b *Backend) Stats() Stats {
	return Stats{
		CapEvictions:    b.capEvictions.Load(),
		DropSamples:     b.dropSamples.Load(),
		DropSamplesLost: b.dropSamplesLost.Load(),
	}
}

// Publish programs the learned addresses in batch, each with a timeout
// that ends at its Expires, and returns once the kernel holds them, or
// with an error if it does not. Concurrent calls share transactions. An
// entry whose rule or group is not in the applied policy fails the call.
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
	for _, e := range batch {
		if !e.Expires.After(now) {
			continue
		}
		a := e.Addr.Unmap()
		k := elemKey{b.learned[learnKey{e.Rule, e.Group, familyOf(a)}], a}
		evict = b.holdLocked(e.Name, k, e.Expires, evict)
		have, ok := b.mirror[k]
		if ok && have.After(now) && !have.Before(e.Expires.Add(-refreshSlack)) {
			continue
		}
		todo = append(todo, pending{k, e.Expires, ok && have.After(now)})
	}
	if len(evict) > 0 {
		// A big answer can push out addresses it brought itself.
		todo = slices.DeleteFunc(todo, func(p pending) bool { return b.refs[p.key] == 0 })
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

func (b *Backend) stopped() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// lead flushes the pending requests, a transaction's worth at a time,
// while it is the one call that may. A Publish that finds no flush under
// way leads with its own requests (mine), so a lone answer costs no
// hand-off to another goroutine and back; once they are done, it leaves
// whatever queued meanwhile to Run, which leads until the queue is empty.
// Requests that queue while a transaction runs share the next one.
func (b *Backend) lead(mine []*request) {
	var batch []*request
	for {
		b.qMu.Lock()
		if len(b.pending) == 0 || b.stopped() {
			for _, r := range b.pending {
				r.done <- ErrNotRunning
			}
			b.pending = b.pending[:0]
			b.flushing = false
			b.qMu.Unlock()
			return
		}
		if mine != nil && allDone(mine) {
			// Still flushing: Run takes over.
			b.qMu.Unlock()
			select {
			case b.kick <- struct{}{}:
			default:
			}
			return
		}
		batch = batch[:0]
		n := 0
		for len(b.pending) > 0 && (n == 0 || n+b.pending[0].size() <= maxBatch) {
			batch = append(batch, b.pending[0])
			n += b.pending[0].size()
			b.pending[0] = nil
			b.pending = b.pending[1:]
		}
		b.qMu.Unlock()
		b.flush(batch)
	}
}

// allDone reports whether every request of reqs has its answer.
func allDone(reqs []*request) bool {
	for _, r := range reqs {
		if len(r.done) == 0 {
			return false
		}
	}
	return true
}

func (r *request) size() int { return len(r.elems) + len(r.evict) }

// holdLocked records that name holds k until expires, and applies the
// per-name cap. It returns evict with the elements that no name holds any
// more appended.
func (b *Backend) holdLocked(name dnsname.Name, k elemKey, expires time.Time, evict []elemKey) []elemKey {
	held := b.names[name]
	if old, ok := held[k]; ok {
		if expires.After(old) {
			held[k] = expires
		}
		return evict
	}
	for len(held) >= b.perName {
		victim := soonest(held)
		delete(held, victim)
		if b.unrefLocked(victim) {
			evict = append(evict, victim)
		}
		b.capEvictions.Add(1)
	}
	if held == nil {
		held = make(map[elemKey]time.Time, 1)
		b.names[name] = held
	}
	held[k] = expires
	b.refs[k]++
	return evict
}

// unrefLocked drops one name's hold on k, and reports whether it was the
// last.
func (b *Backend) unrefLocked(k elemKey) bool {
	n := b.refs[k] - 1
	if n > 0 {
		b.refs[k] = n
		return false
	}
	delete(b.refs, k)
	return true
}

// soonest returns the key of held that expires first; held is not empty.
func soonest(held map[elemKey]time.Time) elemKey {
	var (
		victim elemKey
		when   time.Time
		found  bool
	)
	for k, t := range held {
		if !found || t.Before(when) {
			victim, when, found = k, t, true
		}
	}
	return victim
}

// Run programs what Publish queues, and writes the state file, until ctx
// ends. It returns nil then, after a last write of the state file. Run
// may be called once.
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
	if b.nflog != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.readDrops(saveCtx, b.nflog)
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

// flush programs reqs in one transaction and acks each. If the
// transaction fails, each request is retried alone, so one bad request
// (say, for a set a reload just removed) fails only its own caller.
func (b *Backend) flush(reqs []*request) {
	err := b.program(reqs)
	if err != nil && len(reqs) > 1 {
		for _, r := range reqs {
			b.flush([]*request{r})
		}
		return
	}
	for _, r := range reqs {
		r.done <- err
	}
}

// program runs reqs as one transaction. Deletes are an optimisation (the
// cap's evictions) or a workaround (extending on old kernels) and can fail
// only if an element left the kernel behind the backend's back; then the
// transaction runs again without them, so that the additions, which are
// what Publish promises, still happen.
func (b *Backend) program(reqs []*request) error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	deleted, err := b.transactLocked(reqs, true)
	if err != nil && deleted {
		b.retriedWithoutDeletes.Add(1)
		b.log.Warn("retrying learned addresses without deletes: an element left the kernel behind fqdngate's back (was the set flushed by hand?)", "err", err)
		_, err = b.transactLocked(reqs, false)
	}
	return err
}

// transactLocked runs one transaction for reqs, with or without deletes,
// and reports whether it had any.
func (b *Backend) transactLocked(reqs []*request, deletes bool) (deleted bool, err error) {
	now := b.now()
	x := &b.tx
	x.reset()
	// Under memMu: which evictions still stand, and which elements are
	// still wanted (another call may have pushed them out meanwhile).
	b.memMu.Lock()
	for _, r := range reqs {
		for _, p := range r.elems {
			if b.refs[p.key] == 0 || !p.expires.After(now) {
				continue
			}
			x.adding[p.key] = true
			if deletes && p.extend && b.replaceToExtend && b.surelyHeldLocked(p.key, now) {
				x.put(x.dels, p.key.set, elem{addr: p.key.addr})
				deleted = true
			}
			// Round up: an element must not expire before its answer.
			ttl := (p.expires.Sub(now) + time.Millisecond - 1).Truncate(time.Millisecond)
			x.put(x.adds, p.key.set, elem{p.key.addr, ttl})
		}
	}
	if deletes {
		for _, r := range reqs {
			for _, k := range r.evict {
				if b.refs[k] != 0 || x.adding[k] || !b.surelyHeldLocked(k, now) {
					continue
				}
				x.put(x.dels, k.set, elem{addr: k.addr})
				x.gone = append(x.gone, k)
				deleted = true
			}
		}
	}
	b.memMu.Unlock()
	if len(x.order) == 0 {
		return false, nil
	}

	w := b.elems
	w.begin()
	for _, name := range x.order {
		if b.sets[name] == nil {
			return deleted, fmt.Errorf("nftables: set %s is not in the table (the policy was reloaded); retry the query", name)
		}
		// Deletes first: on old kernels an element is extended by deleting
		// and adding it again.
		for _, del := range [2]bool{true, false} {
			elems := x.adds[name]
			if del {
				elems = x.dels[name]
			}
			for len(elems) > 0 {
				n := min(len(elems), maxPerMsg)
				w.add(name, elems[:n], del)
				elems = elems[n:]
			}
		}
	}
	if err := w.commit(); err != nil {
		return deleted, netlinkErr("adding learned addresses", err)
	}
	b.memMu.Lock()
	for _, r := range reqs {
		for _, p := range r.elems {
			if x.adding[p.key] && p.expires.After(b.mirror[p.key]) {
				b.mirror[p.key] = p.expires
			}
		}
	}
	for _, k := range x.gone {
		delete(b.mirror, k)
	}
	b.dirty = true
	b.memMu.Unlock()
	return deleted, nil
}

// txScratch is transactLocked's working memory, kept between
// transactions (under nlMu) so that a transaction allocates nothing once
// the backend has warmed up.
type txScratch struct {
	adds, dels map[string][]elem
	order      []string // sets in first-seen order
	adding     map[elemKey]bool
	gone       []elemKey
}

func (x *txScratch) reset() {
	if x.adds == nil {
		x.adds, x.dels, x.adding = make(map[string][]elem), make(map[string][]elem), make(map[elemKey]bool)
	}
	for _, name := range x.order {
		x.adds[name] = x.adds[name][:0]
		x.dels[name] = x.dels[name][:0]
	}
	x.order = x.order[:0]
	clear(x.adding)
	x.gone = x.gone[:0]
}

func (x *txScratch) put(m map[string][]elem, set string, e elem) {
	if len(x.adds[set]) == 0 && len(x.dels[set]) == 0 {
		x.order = append(x.order, set)
	}
	m[set] = append(m[set], e)
}

// surelyHeldLocked reports whether the kernel holds k, and will for long
// enough that a delete sent now cannot miss it.
func (b *Backend) surelyHeldLocked(k elemKey, now time.Time) bool {
	exp, ok := b.mirror[k]
	return ok && exp.After(now.Add(deleteMargin))
}

// sweepLoop drops expired entries from memory every sweepEvery.
func (b *Backend) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.sweep()
		}
	}
}

// sweep forgets expired holds and mirror entries.
func (b *Backend) sweep() {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	yield := b.yielderLocked()
	for name, held := range b.names {
		for k, t := range held {
			if !t.After(now) {
				delete(held, k)
				b.unrefLocked(k)
			}
			yield()
		}
		if len(held) == 0 {
			delete(b.names, name)
		}
	}
	for k, t := range b.mirror {
		if !t.After(now) {
			delete(b.mirror, k)
		}
		yield()
	}
}

// Learned returns the learned addresses the kernel holds, as the backend
// knows them: for tests, the admin API and the state file.
func (b *Backend) Learned() []learn.Entry {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	yield := b.yielderLocked()
	out := make([]learn.Entry, 0, len(b.mirror))
	for k, exp := range b.mirror {
		if !exp.After(now) {
			delete(b.mirror, k) // the kernel expired it too
		} else if o, ok := b.owner[k.set]; ok { // else adopted, and not yet claimed by an Apply
			out = append(out, learn.Entry{Rule: o.rule, Group: o.group, Addr: k.addr, Expires: exp})
		}
		yield() // last: exp is stale once the lock was let go
	}
	return out
}

// yielderLocked returns a function to call once per entry while ranging
// over the backend's maps under memMu: every sweepChunk calls it lets
// go of the lock for a moment, so that a walk over millions of entries
// (a sweep, the state file, the admin API) never stalls Publish for long.
// Ranging over a map that others change between iterations is allowed:
// entries they add may or may not be visited.
func (b *Backend) yielderLocked() func() {
	n := 0
	return func() {
		if n++; n%sweepChunk == 0 {
			b.memMu.Unlock()
			b.memMu.Lock()
		}
	}
}

var _ learn.Publisher = (*Backend)(nil)
