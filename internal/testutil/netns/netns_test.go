package netns

import (
	"io"
	"testing"
	"time"
)

// TestVethTCP checks the helpers end to end: two namespaces, one veth, a
// listener in one and a dial from the other.
func TestVethTCP(t *testing.T) {
	a, b := New(t), New(t)
	Veth(t, a, "a0", b, "b0")
	a.Addr("a0", "192.0.2.1/24")
	b.Addr("b0", "192.0.2.2/24")
	a.Addr("a0", "2001:db8::1/64")
	b.Addr("b0", "2001:db8::2/64")

	for _, addr := range []string{"192.0.2.2:7000", "[2001:db8::2]:7000"} {
		ln := b.Listen("tcp", addr)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}()
		c, err := a.Dial("tcp", "", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "hi" {
			t.Errorf("read from %s: got %q, want %q", addr, got, "hi")
		}
	}
	// The namespaces are isolated: b's address does not exist in a fresh one.
	c := New(t)
	if _, err := c.Dial("tcp", "", "192.0.2.2:7000", 300*time.Millisecond); err == nil {
		t.Error("dial from an unconnected namespace succeeded, want failure")
	}
}
