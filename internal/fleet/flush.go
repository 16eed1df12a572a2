package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fqdngate/fqdngate/internal/learn"
)

// op is one element on its way to etcd.
type op struct {
	key string // below learnedPrefix
	// exp is the expiry to write, in Unix seconds. It rises while the op
	// is queued (a later answer for the same element); once its flush is
	// taken it no longer changes.
	exp int64
	fl  *flush
	// e is the entry as published (its Expires aside: exp), for the
	// check written runs on it.
	e learn.Entry
}

// flush is one transaction's worth of elements, and what it came to.
type flush struct {
	ops []*op
	// key is the batch's key below learnedPrefix, given when the flush
	// is taken; "" for a watermark alone.
	key string
	// wm, when not 0, is this gateway's watermark, written in the same
	// transaction on lease (see take).
	wm    int64
	lease clientv3.LeaseID
	done  chan struct{} // closed once written, or failed
	// Set before done is closed:
	rev int64 // the revision peers must acknowledge
	err error // non-nil if the write failed
}

// maxKeyLen bounds a key below learnedPrefix: a name, an IPv6 address, a
// rule and a group, with three slashes.
const maxKeyLen = 253 + 45 + 63 + 63 + 3

// enqueueLocked queues the entries of batch that etcd does not hold yet
// with the same or a later expiry, ignoring those expired at now (Unix
// seconds) and those whose address is invalid or has a zone. It returns the revision to wait for because of entries etcd
// holds already, the flushes to wait for because of the others, and
// whether it queued anything new.
func (f *Fleet) enqueueLocked(batch []learn.Entry, now int64) (rev int64, waits []*flush, added bool) {
	var (
		buf  [maxKeyLen]byte
		last lastIDs // the mirror does not change in this loop
	)
	coalesced := 0
	for i := range batch {
		e := &batch[i]
		exp := min(ceilUnix(e.Expires), maxExpiry) // what a batch's line can hold
		if exp <= now {
			continue
		}
		if !e.Addr.IsValid() || e.Addr.Zone() != "" {
			// Not an element etcd can carry (parseElement refuses it, and
			// the whole batch with it), nor one the mirror can name.
			// Answers' addresses never are.
			continue
		}
		if _, h, ok := f.mirror.lookupLast(&last, e); ok && h.exp() >= exp {
			rev = max(rev, h.rev)
			coalesced++
			continue
		}
		kb := appendKey(buf[:0], e.Name, e.Addr.Unmap(), e.Rule, e.Group)
		// Lookups with string(kb) do not allocate.
		if o, ok := f.inflight[string(kb)]; ok && o.exp >= exp {
			waits = addWait(waits, o.fl)
			coalesced++
			continue
		}
		if o, ok := f.queued[string(kb)]; ok {
			o.exp = max(o.exp, exp)
			waits = addWait(waits, o.fl)
			coalesced++
			continue
		}
		o := &op{key: string(kb), exp: exp, e: *e}
		if !f.queueLocked(o) {
			continue
		}
		waits = addWait(waits, o.fl)
		added = true
	}
	if coalesced > 0 {
		f.m.coalesced.Add(float64(coalesced))
	}
	return rev, waits, added
}

func addWait(waits []*flush, fl *flush) []*flush {
	for _, w := range waits {
		if w == fl {
			return waits
		}
	}
	return append(waits, fl)
}

// queueLocked adds o to the last queued flush, or to a new one if that is
// full. It reports false, and counts the overflow, when MaxPending
// elements wait already.
func (f *Fleet) queueLocked(o *op) bool {
	if len(f.queued) >= f.o.MaxPending {
		f.overflow.Add(1)
		f.m.overflow.Inc()
		return false
	}
	var fl *flush
	if n := len(f.queue); n > 0 && len(f.queue[n-1].ops) < maxBatch {
		fl = f.queue[n-1]
	} else {
		fl = &flush{done: make(chan struct{})}
		f.queue = append(f.queue, fl)
	}
	fl.ops = append(fl.ops, o)
	o.fl = fl
	f.queued[o.key] = o
	f.queuedPeak = max(f.queuedPeak, len(f.queued))
	f.m.pending.Set(float64(len(f.queued)))
	return true
}

// roomyAfter is how many elements queued or inflight may have held
// before the map is replaced by a new one once it is empty again
// (shrinkLocked).
const roomyAfter = maxBatch

// shrinkLocked replaces queued and inflight by new maps when they are
// empty after having held more than roomyAfter elements: a Go map keeps
// the room it grew to, and after an outage (up to MaxPending elements
// queued) or a burst that room would stay for good, scanned by the
// collector at every cycle.
func (f *Fleet) shrinkLocked() {
	if len(f.queued) == 0 && f.queuedPeak > roomyAfter {
		f.queued, f.queuedPeak = map[string]*op{}, 0
	}
	if len(f.inflight) == 0 && f.inflightPeak > roomyAfter {
		f.inflight, f.inflightPeak = map[string]*op{}, 0
	}
}

// flushLoop writes the queued flushes, and this gateway's watermark, while
// the fleet is up, until ctx ends. It commits in groups: one transaction
// of elements is in flight at a time, and the answers that arrive
// meanwhile share the next, so that under load the batches grow with the
// rate rather than the etcd proposals (each one costs every etcd member
// CPU and an fsync); only a full batch (maxBatch) leaves beside others,
// up to maxInflight. The watermark rides with the next transaction of
// elements that leaves after it moved, so that under load
// acknowledgements cost no write of their own. It goes alone, one at a
// time, in a slot of its own, only when no transaction of elements is in
// flight: otherwise it waits for that one (at most one round trip) and
// rides with the next, or goes alone if none follows.
func (f *Fleet) flushLoop(ctx context.Context) {
	var (
		wg     sync.WaitGroup
		slots  = make(chan struct{}, maxInflight) // transactions of elements
		alone  = make(chan struct{}, 1)           // the watermark alone
		leases = &leases{ids: map[int64]clientv3.LeaseID{}}
	)
	defer wg.Wait()
	// next returns the next transaction to write and the slot it holds;
	// nil if none can leave now.
	next := func() (*flush, chan struct{}) {
		for _, s := range []chan struct{}{slots, alone} {
			select {
			case s <- struct{}{}:
				if fl := f.take(s == alone); fl != nil {
					return fl, s
				}
				<-s
			default:
			}
		}
		return nil, nil
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		for ctx.Err() == nil {
			fl, slot := next()
			if fl == nil {
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				f.write(ctx, fl, leases)
				<-slot
				f.wake() // a flush may have waited for a slot, or for a key
			}()
		}
	}
}

// take returns what the next transaction writes: the first queued flush
// none of whose elements is being written (two writes of one element must
// not race), its elements marked in flight, with this gateway's watermark
// if it moved since the last transaction that carried it; or, if alone,
// a flush of the watermark only, if it moved. nil if there is nothing to
// write, or the fleet is not up.
func (f *Fleet) take(alone bool) *flush {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		return nil
	}
	var taken *flush
next:
	for i, fl := range f.queue {
		if alone {
			break
		}
		if len(f.inflight) > 0 && len(fl.ops) < maxBatch {
			// Group commit: while a transaction of elements is in
			// flight, the next one waits for it and takes everything
			// that arrived meanwhile, unless it is full already. Under
			// load the batches grow with the rate, not the proposals.
			break
		}
		for _, o := range fl.ops {
			if _, busy := f.inflight[o.key]; busy {
				continue next
			}
		}
		f.queue = append(f.queue[:i], f.queue[i+1:]...)
		for _, o := range fl.ops {
			delete(f.queued, o.key)
			f.inflight[o.key] = o
		}
		f.inflightPeak = max(f.inflightPeak, len(f.inflight))
		f.shrinkLocked()
		fl.key = batchKey(f.o.Node, f.boot, f.seq)
		f.seq++
		f.m.pending.Set(float64(len(f.queued)))
		taken = fl
		break
	}
	// The watermark goes alone only when no transaction of elements is in
	// flight: otherwise the next one, which leaves as soon as that one is
	// written, carries it, or it goes alone then (at most one round trip
	// later).
	if wm := f.applied.Load(); f.ackLease != 0 && wm > f.ackSent && (taken != nil || alone && len(f.inflight) == 0) {
		if taken == nil {
			taken = &flush{done: make(chan struct{})}
		}
		taken.wm, taken.lease = wm, f.ackLease
		f.ackSent = wm
	}
	return taken
}

// write writes fl in one transaction: its elements as one new batch key
// (key.go), on the lease of the bucket of their latest expiry, and this
// gateway's watermark if it carries it. A batch is never rewritten: the
// transaction writes it only if the key does not exist yet (a process
// never reuses one; this only catches two gateways with one node name).
// No element needs a comparison: its expiry in etcd is the latest of the
// batches holding it, so no write can shorten it. The watermark, last,
// only raises the key's value, and only on this connection's lease:
// transactions in flight together may be applied in any order, and one
// sent before a reconnection must not take the key back to the old lease.
func (f *Fleet) write(ctx context.Context, fl *flush, leases *leases) {
	var (
		resp *clientv3.TxnResponse
		err  error
	)
	kind := "learned"
	if len(fl.ops) == 0 {
		kind = "watermark"
	}
	var (
		val    []byte
		latest int64
	)
	if len(fl.ops) > 0 {
		val = make([]byte, 0, len(batchHeader)+len(fl.ops)*(len(fl.ops[0].key)+2+expiryDigits+16))
		val = append(val, batchHeader...)
		for _, o := range fl.ops {
			val = appendBatchLine(val, o.key, o.exp)
			latest = max(latest, o.exp)
		}
	}
	key := f.learnedPrefix + fl.key
	for attempt := 0; attempt < 2; attempt++ {
		var (
			cmps []clientv3.Cmp
			ops  = make([]clientv3.Op, 0, 2)
		)
		if len(fl.ops) > 0 {
			var lease clientv3.LeaseID
			lease, err = leases.get(ctx, f, latest)
			if err != nil {
				break
			}
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
			ops = append(ops, clientv3.OpPut(key, string(val), clientv3.WithLease(lease)))
		}
		if fl.wm > 0 {
			wm := encodeWatermark(fl.wm)
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.Value(f.nodeKey), "<", wm),
					clientv3.Compare(clientv3.LeaseValue(f.nodeKey), "=", fl.lease),
				},
				[]clientv3.Op{clientv3.OpPut(f.nodeKey, wm, clientv3.WithLease(fl.lease))},
				nil,
			))
		}
		tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
		start := time.Now()
		resp, err = f.cli.Txn(tctx).If(cmps...).Then(ops...).Commit()
		cancel()
		if err == nil {
			f.m.writeTime.WithLabelValues(kind).Observe(time.Since(start).Seconds())
			if !resp.Succeeded {
				err = fmt.Errorf("etcd holds batch %s already: does another gateway use the node name %q? give each a unique cluster.node", key, f.o.Node)
			}
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// A bucket's lease expired or was revoked under us: grant
			// anew and try once more.
			leases.forget()
			continue
		}
		break
	}
	if err != nil {
		what := "writing learned addresses to etcd"
		if kind == "watermark" {
			what = "etcd: writing this gateway's watermark"
		}
		f.failed(ctx, fl, fmt.Errorf("%s: %w", what, err))
		return
	}
	f.m.writes.WithLabelValues(kind).Inc()
	if len(fl.ops) > 0 {
		f.m.flushSize.Observe(float64(len(fl.ops)))
		if fl.wm > 0 {
			f.m.acksCarried.Inc()
		}
	}
	f.written(fl, resp.Header.Revision)
}

// written records that fl's transaction was applied at revision rev.
//
// The elements are this gateway's own: its kernel has them since Publish,
// and apply skips the batch when it comes back through the watch. They
// are admitted here instead (see admitLocked), so that they count against
// their name's cap as elements etcd holds.
func (f *Fleet) written(fl *flush, rev int64) {
	now := f.o.Now()
	f.mu.Lock()
	c := f.check.Load()
	for _, o := range fl.ops {
		delete(f.inflight, o.key)
		e := o.e
		e.Expires = time.Unix(o.exp, 0)
		k := f.mirror.raise(&e, o.exp, rev)
		f.admitLocked(c, o.key, e, k, now)
	}
	if len(fl.ops) > 0 {
		fl.rev = rev
	}
	f.shrinkLocked()
	close(fl.done)
	f.mu.Unlock()
	f.m.written.Add(float64(len(fl.ops)))
}

// failed puts fl's elements back in the queue, to be written once etcd is
// back, releases whoever waits for fl, and ends the connection (unless the
// fleet is stopping, ctx done).
func (f *Fleet) failed(ctx context.Context, fl *flush, err error) {
	f.mu.Lock()
	for _, o := range fl.ops {
		delete(f.inflight, o.key)
		if q, ok := f.queued[o.key]; ok {
			q.exp = max(q.exp, o.exp)
			continue
		}
		f.queueLocked(&op{key: o.key, exp: o.exp, e: o.e})
	}
	f.shrinkLocked()
	fl.err = err
	close(fl.done)
	f.mu.Unlock()
	if ctx.Err() == nil {
		f.fail(err)
	}
}

// leases are the leases of the expiry buckets, shared by the flushes:
// elements that expire close together share one lease, which etcd
// revokes, deleting them, a little after the last of them expires.
type leases struct {
	mu  sync.Mutex                 // guards ids, and is held while granting
	ids map[int64]clientv3.LeaseID // by bucket end, Unix seconds
}

// get returns the lease of the expiry bucket of exp (Unix seconds),
// granting it if need be.
func (l *leases) get(ctx context.Context, f *Fleet, exp int64) (clientv3.LeaseID, error) {
	width := int64(f.o.Bucket / time.Second)
	end := (exp + width - 1) / width * width
	l.mu.Lock()
	defer l.mu.Unlock()
	if id, ok := l.ids[end]; ok {
		return id, nil
	}
	now := f.o.Now().Unix()
	for e := range l.ids {
		if e < now {
			delete(l.ids, e)
		}
	}
	ttl := end - now + int64(leaseSlack/time.Second)
	tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
	resp, err := f.cli.Grant(tctx, ttl)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("granting a lease for learned addresses: %w", err)
	}
	f.m.writes.WithLabelValues("lease").Inc()
	l.ids[end] = resp.ID
	return resp.ID, nil
}

// forget drops every lease: one was not found (expired, or revoked).
func (l *leases) forget() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.ids)
}
