package nft

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"

	"github.com/fqdngate/fqdngate/internal/policy"
)

// This file holds the sets of the source groups that select pods: one set
// per group and family (pod4.<group>, pod6.<group>) of the addresses of
// the pods the group selects, beside the group's own prefixes (src4.<group>,
// an interval set: a pod address inside one of the group's prefixes would
// overlap it). Apply fills them from the policy's current snapshot, with
// the rest of the table; SetMembers follows the snapshot between applies,
// in one transaction of element deletions and additions.

func podSetName(group string, f family) string { return "pod" + f.String() + "." + ident(group) }

// isPodSetName reports whether name is a pod set's (podSetName).
func isPodSetName(name string) bool {
	return strings.HasPrefix(name, "pod4.") || strings.HasPrefix(name, "pod6.")
}

// adoptPodSetLocked records the addresses an adopted table's pod set s
// holds, for keepAdoptedPodsLocked.
func (b *Backend) adoptPodSetLocked(s *nftables.Set) error {
	elems, err := b.conn.GetSetElements(s)
	if err != nil {
		return netlinkErr("listing set "+s.Name, err)
	}
	var addrs []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if b.adoptedPods == nil {
		b.adoptedPods = map[string][]netip.Addr{}
	}
	b.adoptedPods[s.Name] = slices.Compact(addrs)
	return nil
}

// keepAdoptedPodsLocked keeps, in d, the pod sets a previous process left
// in the table, as long as m is not from a synced view of the cluster: a
// restarted agent has not listed the pods yet, and emptying the sets
// would cut every pod off until it has (new connections dropped for that
// moment). The kernel keeps the last known pods, as during an API outage;
// the first synced snapshot replaces them (in this Apply, or through
// SetMembers, which diffs against what was applied) and ends the carry.
func (b *Backend) keepAdoptedPodsLocked(d *desired, m *policy.Members) {
	if b.adoptedPods == nil {
		return
	}
	if m.Synced() {
		b.adoptedPods = nil
		return
	}
	for i := range d.sets {
		if s := &d.sets[i]; s.kind == podSet && len(s.addrs) == 0 {
			s.addrs = b.adoptedPods[s.name]
		}
	}
}

// podKey names one pod set's contents: a group and a family.
type podKey struct {
	group string
	fam   family
}

// podAddrs returns, for every group and family, the addresses m puts in
// it, sorted: one pass over the snapshot for all the pod sets.
func podAddrs(m *policy.Members) map[podKey][]netip.Addr {
	out := make(map[podKey][]netip.Addr)
	m.Each(func(a netip.Addr, mb policy.Member) {
		f := familyOf(a)
		for _, g := range mb.Groups {
			k := podKey{g, f}
			out[k] = append(out[k], a.Unmap())
		}
	})
	return out
}

// addrElements encodes a pod set's contents.
func addrElements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		out[i] = nftables.SetElement{Key: a.AsSlice()}
	}
	return out
}

// fillPods sets the contents of d's pod sets from m.
func fillPods(d *desired, m *policy.Members) {
	var byKey map[podKey][]netip.Addr
	for i := range d.sets {
		if s := &d.sets[i]; s.kind == podSet {
			if byKey == nil {
				byKey = podAddrs(m)
			}
			s.addrs = byKey[podKey{s.group, s.fam}]
		}
	}
}

// diffAddrs returns what is in old and not in cur (gone), and what is in
// cur and not in old (added); both lists sorted.
func diffAddrs(old, cur []netip.Addr) (gone, added []netip.Addr) {
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case j == len(cur) || (i < len(old) && old[i].Less(cur[j])):
			gone = append(gone, old[i])
			i++
		case i == len(old) || cur[j].Less(old[i]):
			added = append(added, cur[j])
			j++
		default:
			i++
			j++
		}
	}
	return gone, added
}

// ErrStaleMembers is returned by SetMembers for a snapshot of another
// policy than the one applied: its groups are that policy's.
var ErrStaleMembers = errors.New("nftables: the pod snapshot is not of the applied policy")

// MembersChange counts what one SetMembers changed in the kernel.
type MembersChange struct{ Added, Removed int }

// SetMembers makes the pod sets hold what the snapshot m says, in one
// netlink transaction that holds only element changes: every address
// leaving a set is deleted before any is added, so an address that went
// from one pod to another is never, even within the transaction, in a
// group of the old pod's that the new one is not in (and the kernel
// applies the transaction atomically anyway). m must be of the policy
// last applied (else ErrStaleMembers, and nothing changes). Before the
// first Apply there is nothing to change: Apply fills the sets from its
// policy's snapshot.
//
// If the transaction fails (someone else changed a set: an element to
// delete is missing), the pod sets are rewritten whole, with the rest of
// the table, in one transaction, as Apply does.
func (b *Backend) SetMembers(ctx context.Context, m *policy.Members) (MembersChange, error) {
	var ch MembersChange
	if err := ctx.Err(); err != nil {
		return ch, err
	}
	b.nlMu.Lock()
	defer b.nlMu.Unlock()
	if b.applied == nil {
		return ch, nil
	}
	if !m.For(b.appliedPolicy) {
		return ch, ErrStaleMembers
	}
	next := *b.applied
	next.sets = slices.Clone(b.applied.sets)
	fillPods(&next, m)
	b.keepAdoptedPodsLocked(&next, m)
	var dels, adds []podChange
	broken := false
	for i := range next.sets {
		s := &next.sets[i]
		if s.kind != podSet {
			continue
		}
		gone, added := diffAddrs(b.applied.sets[i].addrs, s.addrs)
		if len(gone)+len(added) == 0 {
			continue
		}
		ks := b.sets[s.name]
		if ks == nil {
			broken = true
			break
		}
		if len(gone) > 0 {
			dels = append(dels, podChange{ks, gone})
		}
		if len(added) > 0 {
			adds = append(adds, podChange{ks, added})
		}
		ch.Removed += len(gone)
		ch.Added += len(added)
	}
	if !broken && len(dels)+len(adds) == 0 {
		return ch, nil
	}
	if !broken {
		err := b.transactMembersLocked(dels, adds)
		if err == nil {
			b.applied = &next
			b.recordShapeLocked()
			return ch, nil
		}
		b.log.Warn("pod set update failed; rewriting the table's sets", "err", err)
	}
	if _, err := b.commitLocked(&next, false); err != nil {
		return MembersChange{}, err
	}
	b.applied = &next
	return ch, nil
}

// podChange is the addresses one pod set loses or gains.
type podChange struct {
	set  *nftables.Set
	list []netip.Addr
}

// transactMembersLocked sends the deletions, then the additions, as one
// transaction on the backend's own connection, whose commits the watcher
// knows as the backend's. A failed transaction changed nothing.
func (b *Backend) transactMembersLocked(dels, adds []podChange) error {
	c := b.conn
	for _, op := range []struct {
		list []podChange
		send func(*nftables.Set, []nftables.SetElement) error
	}{{dels, c.SetDeleteElements}, {adds, c.SetAddElements}} {
		for _, pc := range op.list {
			es := addrElements(pc.list)
			for len(es) > 0 {
				n := min(len(es), maxPerMsg)
				if err := op.send(pc.set, es[:n]); err != nil {
					return fmt.Errorf("nftables: encoding set %s: %w", pc.set.Name, err)
				}
				es = es[n:]
			}
		}
	}
	b.expectCommit(false)
	if err := c.Flush(); err != nil {
		b.forgetCommit()
		b.drainLocked()
		return netlinkErr("updating pod sets of table "+b.cfg.Table, err)
	}
	return nil
}
