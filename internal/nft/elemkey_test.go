package nft

import (
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"unsafe"
)

// hasPointers reports whether a value of type t holds a pointer the
// collector would have to scan.
func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	}
	return true // pointers, maps, slices, strings, interfaces, channels, funcs
}

func TestHasPointers(t *testing.T) {
	for _, c := range []struct {
		v    any
		want bool
	}{
		{[16]byte{}, false},
		{struct {
			a int64
			b [2]uint32
		}{}, false},
		{"", true},
		{[1]string{}, true},
		{[0]*int{}, false},
		{struct{ p *int }{}, true},
		{netip.Addr{}, true}, // its zone
	} {
		if got := hasPointers(reflect.TypeOf(c.v)); got != c.want {
			t.Errorf("hasPointers(%T) = %v, want %v", c.v, got, c.want)
		}
	}
}

// The backend keeps an elemKey, an elemState and a hold per learned
// address: a pointer in any of them makes the collector scan a million of
// them every cycle, and every byte is a megabyte at that scale.
func TestPerAddressStateIsSmallAndPointerFree(t *testing.T) {
	backend := reflect.TypeFor[Backend]()
	known, _ := backend.FieldByName("known")
	names, _ := backend.FieldByName("names")
	heldT := names.Type.Elem().Elem()
	few, _ := heldT.FieldByName("few")
	many, _ := heldT.FieldByName("many")
	for _, c := range []struct {
		what string
		t    reflect.Type
	}{
		{"Backend.known's key", known.Type.Key()},
		{"Backend.known's value", known.Type.Elem()},
		{"held.few's element", few.Type.Elem()},
		{"held.many's key", many.Type.Key()},
		{"held.many's value", many.Type.Elem()},
	} {
		if hasPointers(c.t) {
			t.Errorf("%s (%v) holds a pointer: the collector scans it once per learned address", c.what, c.t)
		}
	}
	type knownSlot struct { // how the map lays out an entry
		K elemKey
		V elemState
	}
	for _, c := range []struct {
		what      string
		got, want uintptr
	}{
		{"elemKey", unsafe.Sizeof(elemKey{}), 20},
		{"elemState", unsafe.Sizeof(elemState{}), 12},
		{"known's slot", unsafe.Sizeof(knownSlot{}), 32},
		{"hold", unsafe.Sizeof(hold{}), 28},
	} {
		if c.got != c.want {
			t.Errorf("%s is %d bytes, want %d", c.what, c.got, c.want)
		}
	}
}

func TestInternSet(t *testing.T) {
	if _, ok := lookupSet("learn4.never-keyed-in-this-test"); ok {
		t.Error("lookupSet found a name never interned")
	}
	// Concurrent interning of the same names gives each one id.
	const workers, sets = 4, 50
	ids := make([][]setID, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range sets {
				ids[w] = append(ids[w], internSet(fmt.Sprintf("learn6.intern-test-%d", i)))
			}
		})
	}
	wg.Wait()
	seen := make(map[setID]bool)
	for i := range sets {
		name := fmt.Sprintf("learn6.intern-test-%d", i)
		id := ids[0][i]
		for w := 1; w < workers; w++ {
			if ids[w][i] != id {
				t.Fatalf("%s interned as %d and %d", name, id, ids[w][i])
			}
		}
		if seen[id] {
			t.Fatalf("%s got the id %d of another name", name, id)
		}
		seen[id] = true
		if got := id.name(); got != name {
			t.Errorf("id %d names %q, want %q", id, got, name)
		}
		if got, ok := lookupSet(name); !ok || got != id {
			t.Errorf("lookupSet(%q) = %d, %v; want %d, true", name, got, ok, id)
		}
	}
	a := netip.MustParseAddr("192.0.2.7")
	k := keyOf("learn4.intern-test", a)
	if k.set() != "learn4.intern-test" || k.addr() != a || k != keyOf("learn4.intern-test", a) {
		t.Errorf("keyOf(learn4.intern-test, %s) = %v: set %q, address %s", a, k, k.set(), k.addr())
	}
}

func TestWall4(t *testing.T) {
	for _, w := range []wall{0, 1, -1, 1 << 32, 1<<32 - 1, math.MaxInt64, math.MinInt64, 1_796_000_000_123_456_789} {
		if got := w.pack().wall(); got != w {
			t.Errorf("wall %d packed and unpacked: %d", w, got)
		}
	}
	if (wall(0).pack() != wall4{}) {
		t.Error("wall 0 does not pack to the zero wall4: elemState.programmed depends on it")
	}
}

func TestElemState(t *testing.T) {
	var st elemState
	st.addHolder()
	st.addHolder()
	st.setExpiry(42, true)
	if st.holders() != 2 || !st.unverified() || st.expiry() != 42 || !st.programmed() {
		t.Fatalf("after two holders and an unverified expiry: holders %d, unverified %v, expiry %d", st.holders(), st.unverified(), st.expiry())
	}
	st.dropHolder()
	st.dropHolder()
	st.dropHolder() // none left stays none
	if st.holders() != 0 || !st.unverified() {
		t.Fatalf("after dropping three: holders %d, unverified %v", st.holders(), st.unverified())
	}
	st.setExpiry(0, false)
	if st.programmed() || st.unverified() || st != (elemState{}) {
		t.Fatalf("after clearing: %+v", st)
	}
}
