package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/fqdngate/fqdngate/internal/netaddr"
	"github.com/fqdngate/fqdngate/internal/policy"
)

// hostSet is a netaddr.Host of fixed addresses.
type hostSet []netip.Addr

func (h hostSet) Contains(a netip.Addr) bool { return slices.Contains(h, a) }

// classResolver fails every lookup as the DNS firewall does when rebinding
// protection left out every address.
type classResolver struct{ class netaddr.Class }

func (r classResolver) LookupNetIP(_ context.Context, host string) ([]netip.Addr, error) {
	ce := &netaddr.ClassError{Class: r.class}
	return nil, &net.DNSError{Err: ce.Error(), Name: host, UnwrapErr: ce}
}

// TestLocalAddressesNeverDialled (issue 11, item 5): a name that resolves
// to an address of this host is refused, whatever proxy.deny_private
// says, and nothing is dialled; a CIDR rule naming the address lets it be
// dialled.
func TestLocalAddressesNeverDialled(t *testing.T) {
	var (
		mu      sync.Mutex
		dialled []string
	)
	dial := func(c *Config) {
		c.Local = hostSet(addrs("192.0.2.1", "2001:db8::1"))
		c.DialContext = func(_ context.Context, _, address string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, address)
			mu.Unlock()
			return nil, errors.New("test: not dialled")
		}
	}
	res := mapResolver{
		"gw.test":    addrs("192.0.2.1"),
		"gw6.test":   addrs("2001:db8::1", "::ffff:192.0.2.1"),
		"mixed.test": addrs("192.0.2.1", "192.0.2.2"),
	}
	for _, denyPrivate := range []bool{true, false} {
		pol := "proxy: {deny_private: false}\n"
		if denyPrivate {
			pol = ""
		}
		pol += "rules:\n  - name: gw\n    to: [gw.test, gw6.test, mixed.test]\n    ports: [80]\n"
		h := startProxy(t, pol, res, dial)
		for _, target := range []string{"gw.test:80", "gw6.test:80"} {
			r := connectVia(t, h.addr, "", target, "")
			if r.status != 403 || r.reason != RefusedLocal.String() {
				t.Errorf("deny_private %v, CONNECT %s: got %d %q, want 403 %q", denyPrivate, target, r.status, r.reason, RefusedLocal)
			}
			checkAudit(t, h.auditOf(t, r.conn), refusedBy(RefusedLocal, policy.ReasonLocal, "gw"))
			r.conn.Close()
		}
		// Another address of the name is dialled; the host's is not.
		r := connectVia(t, h.addr, "", "mixed.test:80", "")
		r.conn.Close()
	}
	mu.Lock()
	if !slices.Equal(dialled, []string{"192.0.2.2:80", "192.0.2.2:80"}) {
		t.Errorf("dialled %v, want only 192.0.2.2:80, once per policy", dialled)
	}
	dialled = nil
	mu.Unlock()

	// Named by a CIDR rule: dialled.
	h := startProxy(t, "rules:\n  - name: gw\n    to: [gw.test]\n    ports: [80]\n  - name: gw-ip\n    to: [192.0.2.1/32]\n    ports: [80]\n", res, dial)
	r := connectVia(t, h.addr, "", "gw.test:80", "")
	r.conn.Close()
	mu.Lock()
	if !slices.Equal(dialled, []string{"192.0.2.1:80"}) {
		t.Errorf("named by a CIDR rule: dialled %v, want 192.0.2.1:80", dialled)
	}
	mu.Unlock()

	// A resolver that left every address out says which class: the
	// refusal is a deny for that class, not a failure to resolve.
	for _, tc := range []struct {
		class  netaddr.Class
		want   Refusal
		reason policy.Reason
	}{
		{netaddr.Local, RefusedLocal, policy.ReasonLocal},
		{netaddr.Private, RefusedPrivate, policy.ReasonPrivate},
	} {
		h := startProxy(t, "rules:\n  - name: any\n    to: [x.test]\n    ports: [80]\n", classResolver{tc.class})
		r := connectVia(t, h.addr, "", "x.test:80", "")
		if r.status != 403 || r.reason != tc.want.String() {
			t.Errorf("resolver left out every %s address: got %d %q, want 403 %q", tc.class, r.status, r.reason, tc.want)
		}
		checkAudit(t, h.auditOf(t, r.conn), refusedBy(tc.want, tc.reason, "any"))
		r.conn.Close()
	}
}
