package nft

import (
	"fmt"
	"time"
)

// Transactions: Publish calls queue requests, one of them (or Run) leads,
// and each transaction goes to the kernel through elemConn.

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
			if b.refsOf(p.key) == 0 || !p.expires.After(now) {
				continue
			}
			x.adding[p.key] = true
			if deletes && p.extend && b.replaceToExtend && b.surelyHeldLocked(p.key, now) {
				x.put(x.dels, p.key.set(), elem{addr: p.key.addr()})
				deleted = true
			}
			// Round up: an element must not expire before its answer.
			ttl := (p.expires.Sub(now) + time.Millisecond - 1).Truncate(time.Millisecond)
			x.put(x.adds, p.key.set(), elem{p.key.addr(), ttl})
		}
	}
	if deletes {
		for _, r := range reqs {
			for _, k := range r.evict {
				if b.refsOf(k) != 0 || x.adding[k] || !b.surelyHeldLocked(k, now) {
					continue
				}
				x.put(x.dels, k.set(), elem{addr: k.addr()})
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
			if have, ok := b.mirrorGet(p.key); x.adding[p.key] && (!ok || p.expires.After(have.Time())) {
				b.mirrorSet(p.key, wallOf(p.expires))
			}
		}
	}
	for _, k := range x.gone {
		b.mirrorDel(k)
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
	exp, ok := b.mirrorGet(k)
	return ok && exp.After(now.Add(deleteMargin))
}
