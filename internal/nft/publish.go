package nft

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/nftables"

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
)

// ErrNotRunning is returned by Publish when Run is not running.
var ErrNotRunning = errors.New("nftables backend is not running: learned addresses cannot be programmed")

// request is one Publish call's share of a transaction.
type request struct {
	elems []pending
	done  chan error // buffered; receives exactly once
}

// pending is an element on its way to the kernel.
type pending struct {
	key     elemKey
	expires time.Time
}

// Publish programs the learned addresses in batch, each with a timeout
// that ends at its Expires, and returns once the kernel holds them, or
// with an error if it does not. Concurrent calls share transactions. An
// entry whose rule or group is not in the applied policy fails the call.
func (b *Backend) Publish(ctx context.Context, batch []learn.Entry) error {
	now := b.now()
	var todo []pending
	b.memMu.Lock()
	for _, e := range batch {
		a := e.Addr.Unmap()
		if !a.IsValid() {
			b.memMu.Unlock()
			return fmt.Errorf("nftables: publishing %s for rule %q: invalid address", e.Name, e.Rule)
		}
		set, ok := b.learned[learnKey{e.Rule, e.Group, familyOf(a)}]
		if !ok {
			b.memMu.Unlock()
			return fmt.Errorf("nftables: publishing %s for rule %q group %q: not in the applied policy (was it reloaded?)", e.Name, e.Rule, e.Group)
		}
		if !e.Expires.After(now) {
			continue
		}
		k := elemKey{set, a}
		if have, ok := b.mirror[k]; ok && have.After(now) && !have.Before(e.Expires.Add(-refreshSlack)) {
			continue
		}
		todo = append(todo, pending{k, e.Expires})
	}
	b.memMu.Unlock()
	if len(todo) == 0 {
		return nil
	}

	var reqs []*request
	for len(todo) > 0 {
		n := min(len(todo), maxBatch)
		reqs = append(reqs, &request{elems: todo[:n], done: make(chan error, 1)})
		todo = todo[n:]
	}
	for _, r := range reqs {
		select {
		case b.queue <- r:
		case <-ctx.Done():
			return ctx.Err()
		case <-b.stop:
			return ErrNotRunning
		}
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

// Run programs what Publish queues, and writes the state file, until ctx
// ends. It returns nil then, after a last write of the state file. Run
// may be called once.
func (b *Backend) Run(ctx context.Context) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("nftables: Run called twice")
	}
	var wg sync.WaitGroup
	saveCtx, cancelSave := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.saveLoop(saveCtx)
	}()
	defer func() {
		close(b.stop)
		// Fail whatever is still queued; Publish watches stop for
		// anything that slips in after this.
		for {
			select {
			case r := <-b.queue:
				r.done <- ErrNotRunning
				continue
			default:
			}
			break
		}
		cancelSave()
		wg.Wait()
	}()

	reqs := make([]*request, 0, 64)
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-b.queue:
			// Drain what queued up while the last transaction ran, up
			// to a transaction's worth.
			reqs = append(reqs[:0], r)
			n := len(r.elems)
		drain:
			for n < maxBatch {
				select {
				case r := <-b.queue:
					reqs = append(reqs, r)
					n += len(r.elems)
				default:
					break drain
				}
			}
			b.flush(reqs)
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

func (b *Backend) program(reqs []*request) error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	now := b.now()
	bySet := make(map[string][]nftables.SetElement)
	var order []string
	for _, r := range reqs {
		for _, p := range r.elems {
			ttl := p.expires.Sub(now)
			if ttl <= 0 {
				continue
			}
			// Round up: an element must not expire before its answer.
			ttl = (ttl + time.Millisecond - 1).Truncate(time.Millisecond)
			if _, ok := bySet[p.key.set]; !ok {
				order = append(order, p.key.set)
			}
			bySet[p.key.set] = append(bySet[p.key.set], nftables.SetElement{Key: p.key.addr.AsSlice(), Timeout: ttl})
		}
	}
	for _, name := range order {
		s := b.sets[name]
		if s == nil {
			return fmt.Errorf("nftables: set %s is not in the table (the policy was reloaded); retry the query", name)
		}
		elems := bySet[name]
		for len(elems) > 0 {
			n := min(len(elems), maxPerMsg)
			if err := b.conn.SetAddElements(s, elems[:n]); err != nil {
				return fmt.Errorf("nftables: encoding elements of set %s: %w", name, err)
			}
			elems = elems[n:]
		}
	}
	if err := b.conn.Flush(); err != nil {
		return netlinkErr("adding learned addresses", err)
	}
	b.memMu.Lock()
	for _, r := range reqs {
		for _, p := range r.elems {
			if p.expires.After(b.mirror[p.key]) {
				b.mirror[p.key] = p.expires
			}
		}
	}
	b.dirty = true
	b.memMu.Unlock()
	return nil
}

// Learned returns the learned addresses the kernel holds, as the backend
// knows them: for tests, the admin API and the state file.
func (b *Backend) Learned() []learn.Entry {
	now := b.now()
	b.memMu.Lock()
	defer b.memMu.Unlock()
	out := make([]learn.Entry, 0, len(b.mirror))
	for k, exp := range b.mirror {
		if !exp.After(now) {
			delete(b.mirror, k) // the kernel expired it too
			continue
		}
		o, ok := b.owner[k.set]
		if !ok {
			continue // adopted, and not yet claimed by an Apply
		}
		out = append(out, learn.Entry{Rule: o.rule, Group: o.group, Addr: k.addr, Expires: exp})
	}
	return out
}

var _ learn.Publisher = (*Backend)(nil)
