package sockmark

import (
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestControlMarks dials through Control and reads the socket's mark back:
// Mark with CAP_NET_ADMIN, and without it no mark and no error (the dial
// must not fail on a host that runs fqdngate without the nftables backend).
func TestControlMarks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: Control}
	for i := range 2 { // the second dial takes the remembered answer
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var mark int
		var gerr error
		rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		c.Close()
		if gerr != nil {
			t.Fatal(gerr)
		}
		want := 0
		if os.Geteuid() == 0 && !unpermitted.Load() {
			want = Mark
		}
		if mark != want {
			t.Errorf("dial %d: mark %#x, want %#x", i, mark, want)
		}
	}
}
