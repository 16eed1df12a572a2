package policy

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
)

// Pod is what the policy needs to know of a pod to place it in groups.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	// NamespaceLabels are the labels of the pod's namespace.
	NamespaceLabels map[string]string
	// Addrs are the pod's own addresses (status.podIPs). Pods on the
	// host's network have none of their own: leave them out.
	Addrs []netip.Addr
}

// PodRef names a pod, for audit lines and explain.
type PodRef struct{ Namespace, Name string }

func (r PodRef) String() string { return r.Namespace + "/" + r.Name }

// Member is what an address is in the cluster: the pod that has it, and
// the groups that pod is in (sorted).
type Member struct {
	Pod    PodRef
	Groups []string
}

// PodGroups returns the groups that select pod, sorted: the one decision
// of which pod-selecting groups a pod is in.
func (p *Policy) PodGroups(pod *Pod) []string {
	var out []string
	for _, g := range p.dynOrder {
		if p.Pods[g].Matches(pod) {
			out = append(out, g)
		}
	}
	return out
}

// Members is an immutable snapshot of the cluster's pods as the policy
// sees them: each pod address with its pod and groups. A policy consults
// its current snapshot (see SetMembers) for the groups that select pods;
// a snapshot belongs to the one policy it was computed for.
type Members struct {
	p      *Policy
	byAddr map[netip.Addr]Member
	synced bool
}

// Synced reports whether the snapshot comes from a synced view of the
// cluster. One that does not holds no members.
func (m *Members) Synced() bool { return m != nil && m.synced }

// For reports whether m was computed for p.
func (m *Members) For(p *Policy) bool { return m != nil && m.p == p }

// Len returns the number of addresses in the snapshot.
func (m *Members) Len() int {
	if m == nil {
		return 0
	}
	return len(m.byAddr)
}

// Lookup returns the member with address a.
func (m *Members) Lookup(a netip.Addr) (Member, bool) {
	if m == nil {
		return Member{}, false
	}
	mb, ok := m.byAddr[sourceAddr(a)]
	return mb, ok
}

// Each calls f for every address of the snapshot, in address order.
func (m *Members) Each(f func(netip.Addr, Member)) {
	if m == nil {
		return
	}
	addrs := make([]netip.Addr, 0, len(m.byAddr))
	for a := range m.byAddr {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		f(a, m.byAddr[a])
	}
}

// Placed is a pod placed in the groups of one policy (Place): what a
// snapshot is made of. Keeping them lets a follower of the cluster place
// only the pods that changed.
type Placed struct {
	p      *Policy
	Pod    PodRef
	Addrs  []netip.Addr // canonical: unmapped, without zone
	Groups []string     // sorted
}

// Place places pod in p's groups, with PodGroups.
func (p *Policy) Place(pod *Pod) Placed {
	pl := Placed{p: p, Pod: PodRef{pod.Namespace, pod.Name}, Groups: p.PodGroups(pod)}
	for _, a := range pod.Addrs {
		if a = sourceAddr(a); a.IsValid() {
			pl.Addrs = append(pl.Addrs, a)
		}
	}
	return pl
}

// NewMembers computes p's snapshot of pods: Place, then MembersOf.
func (p *Policy) NewMembers(pods []Pod, synced bool) *Members {
	placed := make([]Placed, len(pods))
	for i := range pods {
		placed[i] = p.Place(&pods[i])
	}
	return p.MembersOf(placed, synced)
}

// MembersOf makes p's snapshot of the placed pods. Pods placed by another
// policy are left out: their groups are not p's. synced false gives the
// snapshot of a view of the cluster that is not complete yet: it holds
// no members, so the groups that select pods let nothing through (fail
// closed).
//
// An address claimed by two pods (the API can show a pod that is going
// while its address already went to a new one) is in the groups both
// pods are in, never in one only the other pod is in; it is named after
// the pod that sorts first.
func (p *Policy) MembersOf(placed []Placed, synced bool) *Members {
	m := &Members{p: p, byAddr: make(map[netip.Addr]Member, len(placed)), synced: synced}
	if !synced {
		return m
	}
	for _, pl := range placed {
		if pl.p != p {
			continue
		}
		for _, a := range pl.Addrs {
			prev, claimed := m.byAddr[a]
			if !claimed {
				m.byAddr[a] = Member{Pod: pl.Pod, Groups: pl.Groups}
				continue
			}
			prev.Groups = intersect(prev.Groups, pl.Groups)
			if comparePods(pl.Pod, prev.Pod) < 0 {
				prev.Pod = pl.Pod
			}
			m.byAddr[a] = prev
		}
	}
	return m
}

func comparePods(a, b PodRef) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// intersect returns the names in both sorted lists.
func intersect(a, b []string) []string {
	var out []string
	for _, g := range a {
		if _, ok := slices.BinarySearch(b, g); ok {
			out = append(out, g)
		}
	}
	return out
}

// ErrForeignMembers is returned by SetMembers for a snapshot computed for
// another policy: its groups are that policy's.
var ErrForeignMembers = errors.New("policy: the pod snapshot was computed for another policy")

// membership holds a policy's current snapshot. It is the one mutable
// part of a Policy, shared by nothing else.
type membership struct{ cur atomic.Pointer[Members] }

// SetMembers makes m p's current snapshot, for every decision from now on.
func (p *Policy) SetMembers(m *Members) error {
	if m == nil || m.p != p {
		return ErrForeignMembers
	}
	if p.members == nil {
		return nil // no group selects pods: nothing to consult
	}
	p.members.cur.Store(m)
	return nil
}

// Members returns p's current snapshot: until SetMembers, an empty one
// that is not synced.
func (p *Policy) Members() *Members {
	if p.members != nil {
		if m := p.members.cur.Load(); m != nil {
			return m
		}
	}
	return &Members{p: p}
}

// memberOf is the one lookup of a source address in the cluster: the pod
// that has it and its groups, in p's current snapshot.
func (p *Policy) memberOf(src netip.Addr) (Member, bool) {
	if p.members == nil {
		return Member{}, false
	}
	m := p.members.cur.Load()
	if m == nil {
		return Member{}, false
	}
	mb, ok := m.byAddr[src]
	return mb, ok
}

// PodOf names the pod that has address a in p's current snapshot, for
// audit lines and explain.
func (p *Policy) PodOf(a netip.Addr) (PodRef, bool) {
	mb, ok := p.memberOf(sourceAddr(a))
	return mb.Pod, ok
}

// inDynamic reports whether src is, by the current snapshot, in the
// pod-selecting group g.
func inDynamic(mb Member, ok bool, g string) bool {
	if !ok {
		return false
	}
	_, in := slices.BinarySearch(mb.Groups, g)
	return in
}
