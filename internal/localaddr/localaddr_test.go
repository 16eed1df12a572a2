package localaddr

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fqdngate/fqdngate/internal/testutil/netns"
)

// TestSetFollowsAddresses: in a namespace the test makes, the Set holds
// the addresses there at start, and follows addresses added and removed
// afterwards, including one address on two interfaces.
func TestSetFollowsAddresses(t *testing.T) {
	ns := netns.New(t)
	// A veth pair within the namespace: two interfaces of its own.
	ns.IP("link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.Addr("d0", "192.0.2.1/24")
	ns.Addr("d0", "2001:db8::1/64")

	s, err := New(Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	mustHold := func(what string, want map[string]bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			bad := ""
			for a, in := range want {
				if s.Contains(netip.MustParseAddr(a)) != in {
					bad = a
					break
				}
			}
			if bad == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Contains(%s) = %v, want %v; the set holds %v", what, bad, !want[bad], want[bad], s.Addrs())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// At start: what the namespace has, loopback included, in either
	// spelling of an IPv4 address; nothing else.
	mustHold("at start", map[string]bool{
		"192.0.2.1": true, "::ffff:192.0.2.1": true, "2001:db8::1": true, "127.0.0.1": true, "::1": true,
		"192.0.2.2": false, "198.51.100.1": false, "2001:db8::2": false,
	})
	if slices.Contains(s.Addrs(), netip.MustParseAddr("2001:db8::1")) != true {
		t.Errorf("Addrs() = %v, want 2001:db8::1 among them", s.Addrs())
	}

	v := s.Version()
	ns.Addr("d1", "198.51.100.7/32")
	ns.Addr("d1", "2001:db8:1::7/128")
	mustHold("after adding", map[string]bool{"198.51.100.7": true, "2001:db8:1::7": true})
	if s.Version() == v {
		t.Error("Version did not change when addresses were added")
	}

	// The same address on two interfaces stays until removed from both.
	ns.Addr("d1", "192.0.2.1/32")
	ns.IP("addr", "del", "192.0.2.1/24", "dev", "d0")
	ns.Addr("d0", "203.0.113.9/32") // a change after the removal, to wait for
	mustHold("after removing from one interface", map[string]bool{"203.0.113.9": true, "192.0.2.1": true})
	ns.IP("addr", "del", "192.0.2.1/32", "dev", "d1")
	ns.IP("addr", "del", "2001:db8::1/64", "dev", "d0")
	mustHold("after removing from both", map[string]bool{"192.0.2.1": false, "2001:db8::1": false})

	// An interface removed takes its addresses with it (and its peer's).
	ns.IP("link", "del", "d1")
	mustHold("after removing the interfaces", map[string]bool{"198.51.100.7": false, "2001:db8:1::7": false, "203.0.113.9": false, "127.0.0.1": true})
}

// TestRunStops: Run returns nil soon after its context is done.
func TestRunStops(t *testing.T) {
	ns := netns.New(t)
	s, err := New(Config{NetNS: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was done")
	}
}
