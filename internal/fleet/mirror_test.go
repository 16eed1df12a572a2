package fleet

import (
	"net/netip"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/dnsname"
	"github.com/fqdngate/fqdngate/internal/learn"
)

// TestMirrorKeys: the mirror decides what is not written to etcd again,
// so two different elements must never share an entry, and one element
// (however its address is spelled) must have one; numbers given back
// when their last element is forgotten are given again without
// confusing the elements.
func TestMirrorKeys(t *testing.T) {
	m := newMirror()
	el := func(name, addr, rule, group string) learn.Entry {
		return learn.Entry{Name: dnsname.Name(name), Addr: netip.MustParseAddr(addr), Rule: rule, Group: group}
	}
	base := el("api.bank.example", "192.0.2.1", "bank", "payments")
	others := []learn.Entry{
		el("www.bank.example", "192.0.2.1", "bank", "payments"),
		el("api.bank.example", "192.0.2.2", "bank", "payments"),
		el("api.bank.example", "::ffff:c000:202", "bank", "payments"), // 192.0.2.2 again, mapped
		el("api.bank.example", "2001:db8::c000:201", "bank", "payments"),
		el("api.bank.example", "::c000:201", "bank", "payments"),
		el("api.bank.example", "192.0.2.1", "bank2", "payments"),
		el("api.bank.example", "192.0.2.1", "bank", "web"),
		el("api.bank.example", "192.0.2.1", "bank", ""),
		el("api.bank.example", "192.0.2.1", "", "bankpayments"),
		el("api.bank.example", "192.0.2.1", "bankpayments", ""),
	}
	m.raise(&base, 100, 1)
	for i, e := range others {
		if _, _, ok := m.lookup(&e); ok && i != 2 {
			t.Fatalf("%s %s %q %q: the mirror holds it, having only %s %s %q %q", e.Name, e.Addr, e.Rule, e.Group, base.Name, base.Addr, base.Rule, base.Group)
		}
		m.raise(&e, 200+int64(i), 2+int64(i))
	}
	// Every element distinct but the mapped spelling of one.
	if got, want := len(m.elems), 1+len(others)-1; got != want {
		t.Fatalf("the mirror holds %d elements, want %d", got, want)
	}
	for _, e := range append([]learn.Entry{base}, others...) {
		k, h, ok := m.lookup(&e)
		if !ok {
			t.Fatalf("%s %s: not held", e.Name, e.Addr)
		}
		got := m.entry(k, h.exp())
		if got.Name != e.Name || got.Addr != e.Addr.Unmap() || got.Rule != e.Rule || got.Group != e.Group {
			t.Errorf("entry: got %s %s %q %q, want %s %s %q %q", got.Name, got.Addr, got.Rule, got.Group, e.Name, e.Addr.Unmap(), e.Rule, e.Group)
		}
	}

	// raise keeps the latest expiry, and for it the earliest revision.
	for _, r := range []struct{ exp, rev int64 }{{90, 7}, {100, 9}, {100, 1}} {
		m.raise(&base, r.exp, r.rev)
	}
	if _, h, _ := m.lookup(&base); h.exp() != 100 || h.rev != 1 {
		t.Errorf("after raises: got expiry %d revision %d, want 100, 1", h.exp(), h.rev)
	}

	// Counting against the cap, and forgetting.
	k, _, _ := m.lookup(&base)
	if !m.count(k, 2) {
		t.Fatal("count: no room under a cap of 2 with nothing counted")
	}
	if h := m.elems[k]; !h.counted() || h.exp() != 100 {
		t.Errorf("counted element: got counted %v expiry %d, want true, 100", h.counted(), h.exp())
	}
	m.raise(&base, 300, 5)
	if h := m.elems[k]; !h.counted() || h.exp() != 300 {
		t.Errorf("counted element raised: got counted %v expiry %d, want true, 300", h.counted(), h.exp())
	}
	k2, _, _ := m.lookup(&others[1])
	if !m.count(k2, 2) {
		t.Fatal("count: no room for the second element under a cap of 2")
	}
	k3, _, _ := m.lookup(&others[3])
	if m.count(k3, 2) {
		t.Error("count: room for a third element under a cap of 2")
	}
	if got := m.counted(base.Name); got != 2 {
		t.Errorf("counted: got %d, want 2", got)
	}
	m.forget(k)
	if got := m.counted(base.Name); got != 1 {
		t.Errorf("counted after forgetting one: got %d, want 1", got)
	}

	// Forget every element of www.bank.example: its number goes back, and
	// a new name takes it; an old key must not name the new element.
	wk, _, _ := m.lookup(&others[0])
	old := others[0]
	m.forget(wk)
	if _, ok := m.names.ids[old.Name]; ok {
		t.Error("a name without elements is still interned")
	}
	fresh := el("new.bank.example", "192.0.2.1", "bank", "payments")
	nk := m.raise(&fresh, 100, 50)
	if nk != wk {
		t.Logf("the freed number was not given again (%v, %v); the check below is weaker", nk, wk)
	}
	if m.is(nk, &old) {
		t.Error("is: the new element's key names the forgotten one")
	}
	if !m.is(nk, &fresh) {
		t.Error("is: the new element's key does not name it")
	}
	got := m.entry(nk, 100)
	if got.Name != fresh.Name || !got.Expires.Equal(time.Unix(100, 0)) {
		t.Errorf("entry of the new element: got %s expiring %v", got.Name, got.Expires)
	}
	for k := range m.elems {
		m.forget(k)
	}
	if len(m.names.ids) != 0 || len(m.rgs.ids) != 0 {
		t.Errorf("with no element left, %d names and %d rule and group pairs are interned, want none", len(m.names.ids), len(m.rgs.ids))
	}
}

// TestHeldFarExpiry: an expiry beyond what a batch's line can hold is
// taken as the latest it can, and never sets the counted bit.
func TestHeldFarExpiry(t *testing.T) {
	for _, exp := range []int64{maxExpiry, maxExpiry + 1, countedBit, countedBit + 5, 1<<63 - 1} {
		var h held
		h.raise(exp, 1)
		if h.exp() != maxExpiry || h.counted() {
			t.Errorf("raise(%d): got expiry %d, counted %v; want %d, false", exp, h.exp(), h.counted(), int64(maxExpiry))
		}
		h.setCounted(true)
		h.raise(exp, 1)
		if h.exp() != maxExpiry || !h.counted() {
			t.Errorf("raise(%d) counted: got expiry %d, counted %v; want %d, true", exp, h.exp(), h.counted(), int64(maxExpiry))
		}
	}
}
