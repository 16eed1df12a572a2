package nft

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watching the table. The table is fqdngate's enforcement, and it
// outlives the process on purpose; but while the daemon runs, a table
// that someone else deletes or changes (nft delete table, nft flush
// ruleset, a firewall manager's restart, fqdngate firewall remove) must
// not stay open until the next reload. With Config.Watch the backend
// subscribes to nf_tables' notifications (monitor.go) before it reads
// the table, and Run puts the table back, with every learned element and
// the time each has left, in one transaction, as soon as a notification
// shows another socket touched it. From that moment until the table is
// back, Enforcing reports it (the daemon's /readyz).
//
// What the notifications cannot show is covered by checks: when they were
// lost (the socket's buffer overflowed) the backend compares the whole
// table, learned elements included, with what it programmed; and every
// verifyEvery it compares the table's structure (shapeLocked), which is
// cheap, in case the monitor socket failed. The kernel's own expiry of
// elements sends no notification (nor one from a port: it is ignored) and
// the checks allow for it, so it never triggers a restore.

const (
	// verifyEvery is how often the table's structure is compared with
	// what the backend programmed.
	verifyEvery = 10 * time.Second
	// restoreRetry is how soon a failed restore is tried again.
	restoreRetry = 250 * time.Millisecond
	// whoWait bounds the wait for a transaction's NEWGEN message, which
	// names the process, after its changes arrived.
	whoWait = 20 * time.Millisecond
	// restoreLogEvery rate-limits the restore warning: a process that
	// keeps changing the table (a second fqdngate on the same table) is
	// restored every time, but logged at most this often.
	restoreLogEvery = time.Second
	// expiryTolerance is how far the kernel's expiry of a learned element
	// may be from the mirror's before a full check calls it changed: the
	// kernel counts in jiffies and reports milliseconds.
	expiryTolerance = time.Second
)

// tamper is what another process did to the table.
type tamper struct {
	seq   uint64
	what  string // the first change seen
	n     int    // changes seen
	port  uint32 // the netlink port that sent it, if known
	pid   uint32 // from the transaction's NEWGEN, if seen
	comm  string
	found string // "" if notified; else how it was found
	since time.Time
	err   string // why the last restore failed
}

func (t *tamper) summary() string {
	if t.n > 1 {
		return fmt.Sprintf("%s (%d changes)", t.what, t.n)
	}
	return t.what
}

func (t *tamper) who() string {
	switch {
	case t.pid != 0:
		return fmt.Sprintf("process %d (%s), netlink port %d", t.pid, t.comm, t.port)
	case t.port != 0:
		return fmt.Sprintf("netlink port %d", t.port)
	case t.found != "":
		return "unknown (" + t.found + ")"
	}
	return "unknown"
}

// Enforcing reports nil while the table is as the backend programmed it,
// and otherwise what another process changed, from the moment the watcher
// saw it until the table is back. It is the daemon's readiness.
func (b *Backend) Enforcing() error {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	t := b.bad
	if t == nil {
		return nil
	}
	msg := fmt.Sprintf("nftables table inet %s was changed by another process (%s; by %s) %s ago; restoring it",
		b.cfg.Table, t.summary(), t.who(), b.now().Sub(t.since).Round(time.Millisecond))
	if t.err != "" {
		msg += "; the last attempt failed: " + t.err
	}
	return errors.New(msg)
}

// tampered returns a copy of what is wrong with the table, or nil.
func (b *Backend) tampered() *tamper {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if b.bad == nil {
		return nil
	}
	t := *b.bad
	return &t
}

// markTampered records a change, unless one is already recorded.
func (b *Backend) markTampered(c change, found string) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	b.markTamperedLocked(c, found)
}

func (b *Backend) markTamperedLocked(c change, found string) {
	if b.bad == nil {
		b.badSeq++
		b.bad = &tamper{seq: b.badSeq, what: c.what, port: c.port, found: found, since: b.now()}
	} else if weight(c.what) > weight(b.bad.what) {
		// Deleting a table deletes its rules, chains and sets first; say
		// what was meant.
		b.bad.what = c.what
	}
	b.bad.n++
}

// weight ranks changes for the summary: the table's own first.
func weight(what string) int {
	switch {
	case what == "table deleted":
		return 2
	case strings.HasPrefix(what, "table "):
		return 1
	}
	return 0
}

// clearTamper forgets the tamper t (nil: whatever is recorded), unless a
// later change was recorded meanwhile: that one still needs a restore.
func (b *Backend) clearTamper(t *tamper) {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	if t == nil || b.badSeq == t.seq {
		b.bad = nil
	}
}

// expectCommit tells the watcher a commit of conn's is under way;
// forgetCommit, that it failed (and so has no NEWGEN). Both run under
// nlMu, so the failed commit is the last one expected.
func (b *Backend) expectCommit(rebuild bool) {
	if b.mon == nil {
		return
	}
	b.watchMu.Lock()
	b.commits = append(b.commits, rebuild)
	b.watchMu.Unlock()
}

func (b *Backend) forgetCommit() {
	if b.mon == nil {
		return
	}
	b.watchMu.Lock()
	if len(b.commits) > 0 {
		b.commits = b.commits[:len(b.commits)-1]
	}
	b.watchMu.Unlock()
}

// noteNotifications records what one datagram of notifications shows.
// Notifications arrive in the order the kernel committed their
// transactions, and the backend's own commits show as their NEWGEN
// messages; a rebuild put right everything the monitor reported before
// it, even what it reads only after the restore (a large change arrives
// in many datagrams), so such a change is forgotten rather than restored
// a second time. A change a check found is not in that order, and stays.
func (b *Backend) noteNotifications(buf []byte) {
	changes, procs := parseNotifications(buf, b.cfg.Table, b.ports)
	if len(changes) == 0 && len(procs) == 0 {
		return
	}
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	for _, c := range changes {
		b.markTamperedLocked(c, "")
	}
	for _, p := range procs {
		if p.port == b.ports[0] {
			if len(b.commits) == 0 {
				continue // expected before the monitor knew (after an overrun)
			}
			rebuild := b.commits[0]
			b.commits = b.commits[1:]
			if rebuild && b.bad != nil && b.bad.found == "" {
				b.bad = nil
			}
			continue
		}
		if t := b.bad; t != nil && t.pid == 0 && p.port == t.port {
			t.pid, t.comm = p.pid, p.comm
		}
	}
}

// waitingForWho reports whether a recorded change still lacks its
// process.
func (b *Backend) waitingForWho() bool {
	b.watchMu.Lock()
	defer b.watchMu.Unlock()
	return b.bad != nil && b.bad.pid == 0 && b.bad.port != 0
}

func (b *Backend) noteOverrun() {
	b.watchOverruns.Add(1)
	b.watchMu.Lock()
	b.overrun = true
	// A lost NEWGEN would pair the next one with the wrong commit; a
	// commit of conn's whose NEWGEN arrives unexpected clears nothing.
	b.commits = nil
	b.watchMu.Unlock()
}

func (b *Backend) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// watch runs the watcher until ctx ends.
func (b *Backend) watch(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.readMonitor(ctx)
	}()
	stop := context.AfterFunc(ctx, b.closeMon)
	defer func() {
		stop()
		b.closeMon()
		wg.Wait()
	}()
	tick := time.NewTicker(verifyEvery)
	defer tick.Stop()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		case <-tick.C:
			b.check(false)
		case <-retry:
		}
		b.watchMu.Lock()
		full := b.overrun
		b.overrun = false
		b.watchMu.Unlock()
		if full {
			b.check(true)
		}
		retry = nil
		if err := b.restore(); err != nil {
			retry = time.After(restoreRetry)
		}
	}
}

// readMonitor records notifications as they arrive and wakes watch,
// until ctx ends or the socket fails.
func (b *Backend) readMonitor(ctx context.Context) {
	for {
		if b.beforeRead != nil {
			b.beforeRead()
		}
		buf, err := b.mon.read(true, time.Time{})
		for err == nil && buf != nil {
			b.monReads.Add(1)
			b.noteNotifications(buf)
			buf, err = b.mon.read(false, time.Time{})
		}
		if err == nil && b.waitingForWho() {
			// The transaction's NEWGEN follows its changes at once, but a
			// large transaction (a table deleted with its rules and sets)
			// spans several datagrams: read them all, so that the restore
			// starts once and the log names the whole change.
			deadline := time.Now().Add(whoWait)
			for err == nil && b.waitingForWho() {
				if buf, err = b.mon.read(true, deadline); buf == nil {
					break
				}
				b.monReads.Add(1)
				b.noteNotifications(buf)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
		}
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return
		case errors.Is(err, errOverrun):
			b.noteOverrun()
		default:
			b.log.Error("stopped watching the nftables table for changes; it is still checked every "+verifyEvery.String(), "err", err)
			b.noteOverrun()
			b.signal()
			return
		}
		b.signal()
	}
}

// restore puts the table back if another process changed it. Before the
// first Apply there is nothing to put back; that Apply rebuilds the table.
func (b *Backend) restore() error {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	t := b.tampered()
	if t == nil || b.applied == nil {
		return nil
	}
	start := time.Now()
	res, err := b.commitLocked(b.applied, true)
	if err != nil {
		b.restoreFailures.Add(1)
		b.watchMu.Lock()
		logIt := b.bad != nil && b.bad.err != err.Error()
		if b.bad != nil {
			b.bad.err = err.Error()
		}
		b.watchMu.Unlock()
		if logIt {
			b.log.Error("could not restore the nftables table; retrying", "table", b.cfg.Table, "change", t.summary(), "by", t.who(), "err", err)
		}
		return err
	}
	b.restoredLocked(t, res, time.Since(start))
	return nil
}

// restoredLocked counts, logs and forgets a tamper the commit just put
// right.
func (b *Backend) restoredLocked(t *tamper, res commitResult, took time.Duration) {
	b.restores.Add(1)
	b.clearTamper(t)
	now := time.Now()
	b.watchMu.Lock()
	if now.Sub(b.lastRestoreLog) < restoreLogEvery {
		b.quietRestores++
		b.watchMu.Unlock()
		return
	}
	quiet := b.quietRestores
	b.quietRestores = 0
	b.lastRestoreLog = now
	b.watchMu.Unlock()
	attrs := []any{
		"table", b.cfg.Table, "change", t.summary(), "by", t.who(),
		"open_for", now.Sub(t.since).Round(time.Millisecond).String(),
		"took", took.Round(time.Microsecond).String(), "learned", res.learned,
	}
	if quiet > 0 {
		attrs = append(attrs, "restores_not_logged", quiet)
	}
	if t.comm == "fqdngate" {
		// fqdngate firewall remove, or a second daemon.
		attrs = append(attrs, "hint", "to uninstall, stop this daemon before fqdngate firewall remove; two daemons on one table undo each other's changes: give each its own firewall.table")
	}
	b.log.Warn("another process changed the nftables table; restored it", attrs...)
}

// check compares the table with what the backend programmed, and records
// a tamper if they differ. The structure is always compared; full also
// compares the learned elements with the mirror (after notifications were
// lost, or the monitor failed), which reads every element.
func (b *Backend) check(full bool) {
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	if b.applied == nil || b.query == nil {
		return
	}
	what, err := b.diffLocked(full)
	if err != nil {
		b.log.Warn("could not check the nftables table", "table", b.cfg.Table, "err", err)
		return
	}
	if what == "" {
		return
	}
	found := "found by the periodic check"
	if full {
		found = "found by a full check after notifications were lost"
	}
	b.markTampered(change{what: what}, found)
}

// diffLocked says how the kernel's table differs from what the backend
// programmed, or "" if it does not.
func (b *Backend) diffLocked(full bool) (string, error) {
	shape, err := b.shapeLocked()
	if err != nil {
		return "", err
	}
	if shape == tableAbsent {
		return "table deleted", nil
	}
	if b.shape != "" && shape != b.shape {
		return "the table's chains, rules or sets differ from what fqdngate programmed", nil
	}
	if !full {
		return "", nil
	}
	now := b.now()
	for _, name := range b.applied.learned {
		s := b.sets[name]
		if s == nil {
			continue
		}
		elems, err := b.conn.GetSetElements(s)
		if err != nil {
			return "", netlinkErr("listing set "+name, err)
		}
		kernel := make(map[netip.Addr]time.Time, len(elems))
		for _, e := range elems {
			a, ok := netip.AddrFromSlice(e.Key)
			switch {
			case !ok:
			case e.Expires > 0:
				kernel[a] = now.Add(e.Expires)
			case e.Timeout == 0:
				// Added without a timeout, by someone else: it never
				// expires.
				kernel[a] = now.AddDate(100, 0, 0)
			}
		}
		if what := b.compareSetLocked(name, kernel, now); what != "" {
			return what, nil
		}
	}
	return "", nil
}

// compareSetLocked compares one learned set as the kernel holds it with
// the mirror. Elements within expiryTolerance of their expiry may be
// there or not: the kernel expires them on its own clock.
func (b *Backend) compareSetLocked(set string, kernel map[netip.Addr]time.Time, now time.Time) string {
	b.memMu.Lock()
	defer b.memMu.Unlock()
	id, keyed := lookupSet(set) // if not, the mirror holds nothing of set
	for k, exp := range b.mirrorAll {
		if !keyed || k.s != id {
			continue
		}
		got, ok := kernel[k.addr()]
		switch {
		case !ok && exp.After(now.Add(expiryTolerance)):
			return fmt.Sprintf("element %s deleted from set %s", k.addr(), set)
		case ok && (got.Sub(exp.Time()) > expiryTolerance || exp.Sub(got) > expiryTolerance):
			return fmt.Sprintf("element %s of set %s given another timeout", k.addr(), set)
		}
	}
	for a, got := range kernel {
		held := false
		if keyed {
			_, held = b.mirrorGet(elemKey{a.As16(), id})
		}
		if !held && got.After(now.Add(expiryTolerance)) {
			return fmt.Sprintf("element %s added to set %s", a, set)
		}
	}
	return ""
}

// tableAbsent is the shape of a table that does not exist.
const tableAbsent = "absent"

// recordShapeLocked remembers the table's structure after a commit. A
// change by someone else between the commit and this read is not missed:
// the monitor reports it.
func (b *Backend) recordShapeLocked() {
	if b.query == nil {
		return
	}
	shape, err := b.shapeLocked()
	if err != nil {
		b.log.Warn("could not read the nftables table back; the periodic check is off until the next commit", "table", b.cfg.Table, "err", err)
	}
	b.shape = shape
}

// shapeLocked describes the table's structure: the handles of the table,
// its chains, rules and sets, which the kernel never reuses, so any
// object deleted and added again shows; the table's flags (dormant turns
// every chain off) and the chains' hooks and policies, which change in
// place; and the elements of the static sets, which a CIDR rule opens,
// and of the pod sets, which admit sources.
// Learned elements are not in it: reading them all every few seconds
// would cost as much as the table is large.
func (b *Backend) shapeLocked() (string, error) {
	name := netlink.Attribute{Type: 1, Data: append([]byte(b.cfg.Table), 0)} // every object's table is attribute 1
	msgs, err := b.nftGet(unix.NFT_MSG_GETTABLE, false, name)
	if errors.Is(err, unix.ENOENT) {
		return tableAbsent, nil
	}
	if err != nil {
		return "", netlinkErr("reading table "+b.cfg.Table, err)
	}
	var lines []string
	for _, m := range msgs {
		lines = append(lines, "table "+attrsHex(m.Data, nftaTableHandle, unix.NFTA_TABLE_FLAGS))
	}
	ours := func(m netlink.Message) bool { return len(m.Data) > 4 && attrString(m.Data[4:], 1) == b.cfg.Table }
	for _, q := range []struct {
		kind  uint16
		label string
		keep  []uint16
	}{
		{unix.NFT_MSG_GETCHAIN, "chain", []uint16{unix.NFTA_CHAIN_HANDLE, unix.NFTA_CHAIN_NAME, unix.NFTA_CHAIN_HOOK, unix.NFTA_CHAIN_POLICY, unix.NFTA_CHAIN_TYPE}},
		{unix.NFT_MSG_GETRULE, "rule", []uint16{unix.NFTA_RULE_HANDLE, unix.NFTA_RULE_CHAIN}},
		{unix.NFT_MSG_GETSET, "set", []uint16{nftaSetHandle, unix.NFTA_SET_NAME, unix.NFTA_SET_FLAGS}},
	} {
		msgs, err := b.nftGet(q.kind, true, name)
		if err != nil {
			return "", netlinkErr("reading table "+b.cfg.Table, err)
		}
		for _, m := range msgs {
			if !ours(m) {
				continue
			}
			lines = append(lines, q.label+" "+attrsHex(m.Data, q.keep...))
			if q.kind != unix.NFT_MSG_GETSET {
				continue
			}
			var flags uint32
			forAttrs(m.Data[4:], func(typ uint16, v []byte) {
				if typ == unix.NFTA_SET_FLAGS && len(v) == 4 {
					flags = uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
				}
			})
			set := attrString(m.Data[4:], unix.NFTA_SET_NAME)
			if flags&(unix.NFT_SET_INTERVAL|unix.NFT_SET_TIMEOUT) == 0 && strings.HasPrefix(set, "pod") {
				line, err := b.podShapeLocked(set)
				if err != nil {
					return "", err
				}
				lines = append(lines, line)
				continue
			}
			if flags&unix.NFT_SET_INTERVAL == 0 {
				continue
			}
			elems, err := b.nftGet(unix.NFT_MSG_GETSETELEM, true, name, netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: append([]byte(set), 0)})
			if err != nil {
				return "", netlinkErr("reading set "+set, err)
			}
			for _, e := range elems {
				lines = append(lines, "elements "+set+" "+attrsHex(e.Data, unix.NFTA_SET_ELEM_LIST_ELEMENTS))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}

// nftGet sends one nf_tables get request (a dump if dump) for the
// backend's inet table over the query socket and returns the replies.
func (b *Backend) nftGet(kind uint16, dump bool, attrs ...netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	flags := netlink.Request
	if dump {
		flags |= netlink.Dump
	}
	return b.query.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | kind), Flags: flags},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
}

// attrsHex writes the attributes keep of an nf_tables message (after its
// nfgenmsg header) as type=hex pairs, in the message's order.
func attrsHex(msg []byte, keep ...uint16) string {
	if len(msg) < 4 {
		return ""
	}
	var out strings.Builder
	forAttrs(msg[4:], func(typ uint16, v []byte) {
		if slices.Contains(keep, typ) {
			fmt.Fprintf(&out, "%d=%s ", typ, hex.EncodeToString(v))
		}
	})
	return out.String()
}

// podShapeLocked describes a pod set's elements, sorted: a hash set lists
// them in an order of its own.
func (b *Backend) podShapeLocked(set string) (string, error) {
	s := b.sets[set]
	if s == nil {
		return "pod set " + set + " unknown", nil
	}
	elems, err := b.conn.GetSetElements(s)
	if err != nil {
		return "", netlinkErr("reading set "+set, err)
	}
	keys := make([]string, len(elems))
	for i, e := range elems {
		keys[i] = hex.EncodeToString(e.Key)
	}
	slices.Sort(keys)
	return "elements " + set + " " + strings.Join(keys, ","), nil
}
