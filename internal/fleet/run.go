package fleet

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"

	"github.com/fqdngate/fqdngate/internal/learn"
)

// loadPage is how many batch keys one read of a load returns (each holds
// up to maxBatch elements); programPage how many elements rescan programs
// at once.
const (
	loadPage    = 256
	programPage = 5000
)

// Run connects to etcd, loads the learned set, registers this gateway and
// follows the other gateways' elements and watermarks until ctx ends. When
// etcd is lost it goes into degraded mode and tries again every
// Options.ProbeEvery; on return it withdraws this gateway (its watermark
// key and any leadership go with its lease), so the others stop waiting
// for it at once.
func (f *Fleet) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	fctx, stopFlusher := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.flushLoop(fctx)
	}()
	defer func() {
		stopFlusher()
		wg.Wait()
	}()
	retry := time.NewTicker(f.o.ProbeEvery)
	defer retry.Stop()
	for {
		err := f.connect(ctx)
		if ctx.Err() != nil {
			f.stopped()
			return nil
		}
		f.setDown(err)
		select {
		case <-ctx.Done():
			f.stopped()
			return nil
		case <-retry.C:
		}
	}
}

// fail ends the current connection because of err, and puts the fleet in
// degraded mode at once: holds stop waiting now, not when Run notices.
func (f *Fleet) fail(err error) {
	f.mu.Lock()
	cancel := f.cancel
	f.mu.Unlock()
	if cancel != nil {
		cancel(err)
	}
	f.setDown(err)
}

// setDown records that the fleet works without etcd, because of err.
func (f *Fleet) setDown(err error) {
	f.leader.Store(false)
	f.m.leader.Set(0)
	f.mu.Lock()
	if f.downErr == errStopped {
		f.mu.Unlock()
		return // a write that failed as Run returned
	}
	was := f.up
	f.up, f.downErr = false, err
	f.broadcastLocked()
	f.mu.Unlock()
	f.m.degraded.Set(1)
	if was {
		f.m.outages.Inc()
		f.log.Warn("etcd lost: enforcing what this gateway has, holding answers locally until it is back", "error", err)
	}
}

// stopped records that Run has returned: Publish holds locally from now on.
func (f *Fleet) stopped() {
	f.leader.Store(false)
	f.m.leader.Set(0)
	f.mu.Lock()
	f.up, f.downErr = false, errStopped
	f.broadcastLocked()
	f.mu.Unlock()
	f.m.degraded.Set(1)
}

// setUp records that the fleet is connected, loaded and registered.
func (f *Fleet) setUp() {
	f.mu.Lock()
	recovered := f.everUp
	f.up, f.downErr, f.everUp = true, nil, true
	f.broadcastLocked()
	f.mu.Unlock()
	f.m.degraded.Set(0)
	if recovered {
		f.log.Info("etcd back: learned set resynchronised, holding answers for the fleet again")
	}
	f.loadOnce.Do(func() { close(f.loaded) })
	f.wake()
}

// ttlSeconds is d in whole seconds, rounded up, at least 1.
func ttlSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}

// connect is one connection to etcd: it loads what changed since the last
// one (everything, the first time), registers, and follows etcd until
// something fails, which it returns.
func (f *Fleet) connect(ctx context.Context) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	f.mu.Lock()
	f.cancel = cancel
	f.mu.Unlock()

	// This connection's lease: the watermark key and the election key live
	// on it, and go with it.
	tctx, tcancel := context.WithTimeout(sctx, f.o.WriteTimeout)
	lease, err := f.cli.Grant(tctx, ttlSeconds(f.o.NodeTTL))
	tcancel()
	if err != nil {
		return fmt.Errorf("etcd: granting this gateway's lease: %w", err)
	}
	f.m.writes.WithLabelValues("lease").Inc()
	sess, err := concurrency.NewSession(f.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(sctx))
	if err != nil {
		return fmt.Errorf("etcd: keeping this gateway's lease alive: %w", err)
	}
	defer func() {
		f.mu.Lock()
		f.ackLease = 0
		f.mu.Unlock()
		sess.Orphan()
		if ctx.Err() == nil {
			// Reconnecting: the watermark key stays, with its lease,
			// until the next connection writes it anew (or the lease
			// expires), so that the others wait for this gateway while it
			// resyncs: it still enforces, and still carries traffic.
			return
		}
		// Stopping: withdraw now rather than when the lease expires, if
		// etcd answers; if not, the lease expires by itself.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), f.o.WriteTimeout)
		f.cli.Revoke(rctx, lease.ID)
		rcancel()
	}()

	nodesRev, err := f.loadNodes(sctx)
	if err != nil {
		return err
	}
	from := f.applied.Load() + 1
	rev, _, err := f.load(sctx, from, 0)
	if err != nil {
		return err
	}
	if from > 1 {
		// Deletions made while this gateway was away were not seen.
		f.sweep(f.o.Now().Unix())
	}
	f.m.resyncs.Inc()
	f.applied.Store(max(f.applied.Load(), rev))

	// Register with the watermark just reached, then catch up with what
	// was written between the load and the registration: a gateway that
	// saw this one's key waits for it from then on, so before this
	// gateway reports ready it must have what came before too.
	regRev, err := f.putWatermark(sctx, sess.Lease(), f.applied.Load(), "node")
	if err != nil {
		return err
	}
	acked := f.applied.Load()
	if regRev > acked {
		_, n, err := f.load(sctx, acked+1, regRev)
		if err != nil {
			return err
		}
		f.applied.Store(max(f.applied.Load(), regRev))
		if n > 0 {
			if _, err := f.putWatermark(sctx, sess.Lease(), regRev, "watermark"); err != nil {
				return err
			}
		}
		// With no element in between, the watermark written already
		// covers regRev too: nothing to write.
		acked = regRev
	}
	// From now on the flusher moves the watermark, with the learned
	// elements it writes or alone (see take).
	f.mu.Lock()
	f.ackLease, f.ackSent = sess.Lease(), acked
	f.mu.Unlock()
	f.setUp()

	g, gctx := errgroup.WithContext(sctx)
	for _, fn := range []func(context.Context) error{
		func(ctx context.Context) error { return f.watchLearned(ctx, f.applied.Load()+1) },
		func(ctx context.Context) error { return f.watchNodes(ctx, nodesRev+1, sess.Lease()) },
		func(ctx context.Context) error { return f.campaign(ctx, sess) },
		f.probe,
		func(ctx context.Context) error {
			select {
			case <-sess.Done():
				return errors.New("etcd: this gateway's lease was lost")
			case <-ctx.Done():
				return nil
			}
		},
	} {
		g.Go(func() error {
			err := fn(gctx)
			if err != nil && gctx.Err() == nil {
				// Degraded now, not once every part has stopped.
				f.fail(err)
			}
			return err
		})
	}
	err = g.Wait()
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	if err == nil && ctx.Err() == nil {
		err = errors.New("etcd: connection ended")
	}
	return err
}

// putWatermark writes this gateway's watermark key, bound to lease, and
// returns the revision of the write.
func (f *Fleet) putWatermark(ctx context.Context, lease clientv3.LeaseID, wm int64, kind string) (int64, error) {
	tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
	defer cancel()
	start := time.Now()
	resp, err := f.cli.Put(tctx, f.nodeKey, encodeWatermark(wm), clientv3.WithLease(lease))
	if err != nil {
		return 0, fmt.Errorf("etcd: writing this gateway's watermark: %w", err)
	}
	if kind == "watermark" {
		f.m.writeTime.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	}
	f.m.writes.WithLabelValues(kind).Inc()
	return resp.Header.Revision, nil
}

// load reads the batches of learned elements written at minRev or later
// (all of them for minRev 1) as of revision atRev (the current one for 0),
// a page at a time, and programs their elements. It returns the revision
// read and how many batches it read.
func (f *Fleet) load(ctx context.Context, minRev, atRev int64) (int64, int, error) {
	key, end := f.learnedPrefix, clientv3.GetPrefixRangeEnd(f.learnedPrefix)
	n := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPage)}
		if atRev > 0 {
			opts = append(opts, clientv3.WithRev(atRev))
		}
		if minRev > 1 {
			opts = append(opts, clientv3.WithMinModRev(minRev))
		}
		tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
		resp, err := f.cli.Get(tctx, key, opts...)
		cancel()
		if err != nil {
			return 0, n, fmt.Errorf("etcd: loading learned addresses: %w", err)
		}
		if atRev == 0 {
			atRev = resp.Header.Revision
		}
		evs := make([]*clientv3.Event, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			evs[i] = &clientv3.Event{Type: clientv3.EventTypePut, Kv: kv}
		}
		f.apply(ctx, evs)
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return atRev, n, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// watchLearned follows the learned elements from revision from, programs
// them and moves the watermark.
func (f *Fleet) watchLearned(ctx context.Context, from int64) error {
	wch := f.cli.Watch(clientv3.WithRequireLeader(ctx), f.learnedPrefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	for wresp := range wch {
		if err := wresp.Err(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("etcd: watching learned addresses: %w", err)
		}
		if len(wresp.Events) == 0 {
			continue
		}
		last := int64(0)
		for _, ev := range wresp.Events {
			last = max(last, ev.Kv.ModRevision)
		}
		f.apply(ctx, wresp.Events)
		// Events come in revision order, a revision's together: every
		// element up to last has been seen.
		if last > f.applied.Load() {
			f.applied.Store(last)
			f.wake() // to acknowledge it
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("etcd: the watch of learned addresses ended")
}

// apply checks and programs the elements of the batches that evs, in
// revision order, put. A key that is not a batch, or a batch that does not
// parse, is ignored as a whole and counted. A deleted batch (its lease
// expired, after its latest element) makes the elements that have expired
// by now be forgotten: an element may be in several batches, and lives
// until the latest of its expiries.
func (f *Fleet) apply(ctx context.Context, evs []*clientv3.Event) {
	type batch struct {
		rev   int64
		elems []batchElement
	}
	// Parsed outside mu: answers are not held up meanwhile.
	var (
		batches []batch
		n       int
		deleted bool
	)
	for _, ev := range evs {
		key := string(ev.Kv.Key[len(f.learnedPrefix):])
		if ev.Type == clientv3.EventTypeDelete {
			deleted = true
			continue
		}
		if _, ok := parseBatchKey(key); !ok {
			f.ignore(ReasonUnknownKey, key, nil)
			continue
		}
		if strings.HasPrefix(key, f.ownBatches) {
			// This process wrote it: its elements are in the kernel
			// since Publish, and written puts them in the mirror.
			continue
		}
		elems, err := parseBatch(ev.Kv.Value)
		if err != nil {
			f.ignore(ReasonMalformed, key, err)
			continue
		}
		batches = append(batches, batch{ev.Kv.ModRevision, elems})
		n += len(elems)
	}
	now := f.o.Now()
	program := make([]learn.Entry, 0, n)
	f.mu.Lock()
	if deleted {
		f.sweepLocked(now.Unix())
	}
	// The check is read under mu: an element checked against the
	// previous one is in the mirror before SetAccept's rescan takes its
	// snapshot.
	c := f.check.Load()
	for _, b := range batches {
		for _, el := range b.elems {
			e := el.e
			k := f.mirror.raise(&e, e.Expires.Unix(), b.rev)
			// The mirror's copies of the strings, not pieces of the
			// batch's text: the local publisher may keep them.
			f.mirror.share(k, &e)
			if f.admitLocked(c, el.key, e, k, now) {
				program = append(program, e)
			}
		}
	}
	f.mu.Unlock()
	f.program(ctx, program)
}

// admitLocked decides whether e, an element etcd holds (the mirror's k;
// key is its text, for the log),
// counts as taken from etcd: it has not expired at now, the check c
// accepts it, and its name's cap has room (or it is counted already).
// Refusals are counted. apply programs what it admits; written admits
// this gateway's own elements, which its kernel has already, so that they
// count against the cap exactly as if they had come back through the
// watch.
func (f *Fleet) admitLocked(c *check, key string, e learn.Entry, k elemKey, now time.Time) bool {
	if !e.Expires.After(now) {
		return false
	}
	if err := c.accept(e); err != nil {
		reason := ReasonRefused
		var r *Refusal
		if errors.As(err, &r) {
			reason = r.Reason
		}
		f.ignore(reason, key, err)
		return false
	}
	if !f.mirror.elems[k].counted() && !f.mirror.count(k, c.maxPerName) {
		f.ignore(ReasonPerNameCap, key, nil)
		return false
	}
	return true
}

// program programs batch, elements from etcd that passed the check,
// through the local publisher.
func (f *Fleet) program(ctx context.Context, batch []learn.Entry) {
	if len(batch) == 0 {
		return
	}
	if err := f.o.Local.Publish(ctx, batch); err != nil {
		// One entry the local publisher refuses must not keep the rest
		// out: program them one by one.
		failed := 0
		for i := range batch {
			if err := f.o.Local.Publish(ctx, batch[i:i+1]); err != nil {
				failed++
				f.m.ignored.WithLabelValues(ReasonProgram).Inc()
			}
		}
		f.log.Warn("programming learned addresses from etcd failed", "failed", failed, "of", len(batch), "error", err)
		f.m.programd.Add(float64(len(batch) - failed))
		return
	}
	f.m.programd.Add(float64(len(batch)))
}

// rescan checks every live element etcd holds (the mirror: this
// gateway's load, watch and writes) against the check in force, after
// SetAccept stored it: elements it refuses stop counting against the
// per-name cap (their rule or group went, and their set with it), and
// elements it accepts that were not counted (refused by the previous
// check, or never checked) are programmed, a page at a time. It reads
// nothing from etcd, so it cannot fail. The checks run outside mu, so
// that answers are not held up meanwhile; an element that apply handles
// at the same time meets the new check there, since apply reads it under
// mu.
func (f *Fleet) rescan(ctx context.Context) {
	type seen struct {
		k elemKey
		e learn.Entry
	}
	now := f.o.Now().Unix()
	f.mu.Lock()
	c := f.check.Load()
	keys := make([]elemKey, 0, len(f.mirror.elems))
	for k, h := range f.mirror.elems {
		if h.exp() > now {
			keys = append(keys, k)
		}
	}
	f.mu.Unlock()

	// The elements are checked a page at a time, outside mu; only those
	// whose count changes are kept.
	var refused, accepted []seen
	page := make([]seen, 0, min(len(keys), programPage))
	counted := make([]bool, 0, cap(page))
	for len(keys) > 0 {
		n := min(len(keys), programPage)
		page, counted = page[:0], counted[:0]
		f.mu.Lock()
		for _, k := range keys[:n] {
			if h, ok := f.mirror.elems[k]; ok {
				page = append(page, seen{k, f.mirror.entry(k, h.exp())})
				counted = append(counted, h.counted())
			}
		}
		f.mu.Unlock()
		keys = keys[n:]
		for i, x := range page {
			switch {
			case c.accept(x.e) != nil:
				if counted[i] {
					refused = append(refused, x)
				}
			case !counted[i]:
				accepted = append(accepted, x)
			}
		}
	}

	var batch []learn.Entry
	f.mu.Lock()
	for _, x := range refused {
		if f.mirror.is(x.k, &x.e) && f.mirror.elems[x.k].counted() {
			f.mirror.uncount(x.k)
		}
	}
	// Counted only once the refused ones have made room.
	for _, x := range accepted {
		if !f.mirror.is(x.k, &x.e) || f.mirror.elems[x.k].counted() {
			continue // forgotten, or counted by apply meanwhile
		}
		if !f.mirror.count(x.k, c.maxPerName) {
			f.ignore(ReasonPerNameCap, string(appendKey(nil, x.e.Name, x.e.Addr, x.e.Rule, x.e.Group)), nil)
			continue
		}
		batch = append(batch, x.e)
	}
	f.mu.Unlock()
	for len(batch) > 0 {
		n := min(len(batch), programPage)
		f.program(ctx, batch[:n])
		batch = batch[n:]
	}
}

// sweep forgets the elements etcd held that have expired by now (Unix
// seconds): after an outage, the deletions of their leases' expiry went
// unseen, and they would count against the per-name cap.
func (f *Fleet) sweep(now int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweepLocked(now)
}

// sweepLocked is sweep, with mu held.
func (f *Fleet) sweepLocked(now int64) {
	for k, h := range f.mirror.elems {
		if h.exp() <= now {
			f.mirror.forget(k)
		}
	}
}

// ignore counts an element from etcd that is not programmed, and logs it
// at debug level: a writer that fills etcd with refused elements must not
// flood the log, and the counter says it happens.
func (f *Fleet) ignore(reason, key string, err error) {
	f.m.ignored.WithLabelValues(reason).Inc()
	f.log.Debug("ignoring a learned element from etcd", "key", key, "reason", reason, "error", err)
}

// loadNodes reads the other gateways' watermarks and returns the revision
// read.
func (f *Fleet) loadNodes(ctx context.Context) (int64, error) {
	tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
	resp, err := f.cli.Get(tctx, f.nodesPrefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return 0, fmt.Errorf("etcd: reading the fleet's gateways: %w", err)
	}
	live := map[string]int64{}
	for _, kv := range resp.Kvs {
		if node := string(kv.Key[len(f.nodesPrefix):]); node != f.o.Node {
			live[node] = f.parseWatermark(node, kv.Value)
		}
	}
	f.mu.Lock()
	f.live = live
	f.broadcastLocked()
	f.mu.Unlock()
	f.m.live.Set(float64(len(live)))
	return resp.Header.Revision, nil
}

// parseWatermark reads a gateway's watermark. One that cannot be read
// counts as 0: the gateway is live, and holds wait for it until they time
// out, as for a gateway that never acknowledges.
func (f *Fleet) parseWatermark(node string, v []byte) int64 {
	wm, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		f.log.Warn("a gateway's watermark cannot be read; holds will time out waiting for it", "node", node, "value", string(v))
		return 0
	}
	return wm
}

// watchNodes follows the gateways' watermark keys from revision from.
func (f *Fleet) watchNodes(ctx context.Context, from int64, lease clientv3.LeaseID) error {
	wch := f.cli.Watch(clientv3.WithRequireLeader(ctx), f.nodesPrefix, clientv3.WithPrefix(), clientv3.WithRev(from))
	for wresp := range wch {
		if err := wresp.Err(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("etcd: watching the fleet's gateways: %w", err)
		}
		f.mu.Lock()
		for _, ev := range wresp.Events {
			node := string(ev.Kv.Key[len(f.nodesPrefix):])
			if node == f.o.Node {
				switch {
				case ev.Type == clientv3.EventTypeDelete:
					f.mu.Unlock()
					return errors.New("etcd: this gateway's watermark key was deleted")
				case clientv3.LeaseID(ev.Kv.Lease) != lease:
					f.log.Error("another gateway uses this gateway's node name; give each a unique cluster.node", "node", node)
				}
				continue
			}
			if ev.Type == clientv3.EventTypeDelete {
				delete(f.live, node)
			} else {
				f.live[node] = f.parseWatermark(node, ev.Kv.Value)
			}
		}
		n := len(f.live)
		f.wakeAckedLocked()
		f.mu.Unlock()
		f.m.live.Set(float64(n))
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("etcd: the watch of the fleet's gateways ended")
}

// campaign runs for the refresh leadership on sess, and holds it until
// ctx ends (the connection ends with the session's lease).
//
// concurrency.Election's Campaign, cancelled while it waits, resigns with
// no deadline of its own, which blocks for as long as etcd is away: it
// runs in a goroutine of its own, which campaign does not wait for once
// ctx ends. That goroutine ends when etcd answers or the client is
// closed; the candidacy goes with the session's lease regardless.
func (f *Fleet) campaign(ctx context.Context, sess *concurrency.Session) error {
	e := concurrency.NewElection(sess, f.o.Prefix+leaderKey)
	won := make(chan error, 1)
	go func() { won <- e.Campaign(ctx, f.o.Node) }()
	select {
	case <-ctx.Done():
		return nil
	case err := <-won:
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("etcd: running for refresh leadership: %w", err)
		}
	}
	f.leader.Store(true)
	f.m.leader.Set(1)
	f.log.Info("elected to run the fleet's refresh timers")
	<-ctx.Done()
	f.leader.Store(false)
	f.m.leader.Set(0)
	return nil
}

// probe checks every Options.ProbeEvery that etcd still answers with a
// quorum (a linearizable read) and still holds this gateway's key.
func (f *Fleet) probe(ctx context.Context) error {
	t := time.NewTicker(f.o.ProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		tctx, cancel := context.WithTimeout(ctx, f.o.WriteTimeout)
		resp, err := f.cli.Get(tctx, f.nodeKey)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("etcd: no answer with a quorum: %w", err)
		}
		if resp.Count == 0 {
			return errors.New("etcd: this gateway's watermark key is gone")
		}
	}
}
