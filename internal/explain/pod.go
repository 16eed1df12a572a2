package explain

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// Errors of PodSource, for the admin endpoint's status codes.
var (
	// ErrNoPods: the policy selects no pods, so the daemon follows none.
	ErrNoPods = errors.New("no source group selects pods (sources.*.kubernetes), so this daemon follows no pods; give the pod's address with from")
	// ErrPodsNotSynced: the pods have not been listed yet.
	ErrPodsNotSynced = errors.New("the pods are not listed yet (kubernetes not synced; see /readyz); try again in a moment")
	// ErrUnknownPod: the pod is not in the daemon's pod snapshot.
	ErrUnknownPod = errors.New("unknown pod")
)

// PodSource returns the address to explain for the pod named
// "namespace/name", by p's current pod snapshot (the daemon's view of the
// cluster): the pod's address of the family of t's address, when t is an
// address, or else its first (IPv4 before IPv6).
func PodSource(p *policy.Policy, pod string, t Target) (netip.Addr, error) {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return netip.Addr{}, fmt.Errorf("pod %q: give it as NAMESPACE/NAME, e.g. payments/checkout-7d9f", pod)
	}
	if len(p.Pods) == 0 {
		return netip.Addr{}, ErrNoPods
	}
	m := p.Members()
	if !m.Synced() {
		return netip.Addr{}, ErrPodsNotSynced
	}
	want := policy.PodRef{Namespace: ns, Name: name}
	var addrs []netip.Addr
	m.Each(func(a netip.Addr, mb policy.Member) {
		if mb.Pod == want {
			addrs = append(addrs, a)
		}
	})
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("%w %s: this daemon follows no such pod with an address (it may be on another node, have no address yet, run on the host's network, or not exist)", ErrUnknownPod, want)
	}
	if t.Addr.IsValid() {
		for _, a := range addrs {
			if a.Is4() == t.Addr.Unmap().Is4() {
				return a, nil
			}
		}
	}
	return addrs[0], nil
}

// ExplainPod is Explain with the source given as a pod, "namespace/name",
// resolved by PodSource.
func ExplainPod(p *policy.Policy, pod, to string, host netaddr.Host) (Result, error) {
	t, err := ParseTarget(to)
	if err != nil {
		return Result{}, err
	}
	src, err := PodSource(p, pod, t)
	if err != nil {
		return Result{}, err
	}
	return Explain(p, src.String(), to, host)
}
